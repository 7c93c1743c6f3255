"""Train the source U-Nets for real electron microscopy (the bundled ``lucchi-pp`` and ``vnc``).

Usage::

    python scripts/train_em_models.py lucchi [--steps N] [--out DIR]
    python scripts/train_em_models.py vnc    [--steps N] [--out DIR]
    python scripts/train_em_models.py generalist-gpu --device cuda --time-budget 380 --no-test ...   # on a GPU
    python scripts/train_em_models.py --score DIR/em-generalist-2.safetensors   # its test IoU, here, afterwards
    python scripts/train_em_models.py --volume-statistics FILE   # a model trained on several volumes, before
                                                                 # they were measured in training
    python scripts/train_em_models.py --content-floor FILE       # the guard's content floor (small stacks)
    python scripts/train_em_models.py lucchi-blend --out DIR     # half lucchi-pp, half DIR/lucchi-pp-robust-half

Reads the labelled volumes in ``../shared/data/real/`` (``tifffile.memmap``: never
copied, never written) and trains a bilinear U-Net (width 16 unless the recipe or ``--width`` says
otherwise; on the CPU unless ``--device``) with the project's own
:func:`napari_bnadapt.train` (cross-entropy + Dice, Adam with cosine decay, random
256-px crops with flips and 90-degree rotations, and the EM domain randomisation for the robust
recipes; float32, or ``--precision bfloat16``; a seeded validation split of whole slices, best
validation weights kept, unless ``--val-fraction 0``). Every random choice
is seeded (``--seed``), so a rerun on the same machine and software gives the same model.

* ``lucchi``: Lucchi++ FIB-SEM train volume (42 x 768 x 1024, ~5 nm); the test
  volume (42 x 768 x 1024) is the held-out test set.
* ``vnc``: VNC ssTEM, slices 0-13 of the 20 labelled ones for training (4.6 nm);
  slices 14-19 are held out as its test set (and the VNC target of the cross-domain
  evaluation uses only them, so the VNC-trained upper bound is a fair one).

The test IoU (one threshold, 0.5, whole slices) is written into the model card
(``meta["training"]["metrics"]["test_iou"]``). The model is saved to
``DIR/<name>.safetensors`` (default: the package's bundled-models folder);
``scripts/calibrate_em_models.py`` then adds the calibrated reliability bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import (BLENDS, BUNDLED, DATA, RECIPES, ROBUST, load_split, model_recipe,  # noqa: E402
                     recipes_by_model_name, split_description, test_iou)


def steps_within(budget_s: float, training: Callable[[int], Iterator[Any]], probe_steps: int = 30) -> int:
    """How many optimiser steps fit ``budget_s`` seconds: ``training(n)`` (an n-step ``train_iter``) is run
    for ``probe_steps`` steps and timed from its tenth step on (past start-up and warm-up); at least 1."""
    from napari_bnadapt.progress import Progress

    stamps = [time.perf_counter() for p in training(probe_steps) if isinstance(p, Progress) and p.done > 0]
    warm = stamps[min(10, len(stamps) - 2):]
    per_step = (warm[-1] - warm[0]) / max(1, len(warm) - 1)
    return max(1, int(budget_s / per_step))


def record_test_iou(model: Any, sources: list[str], data: Path) -> None:
    """Write the model's test IoU on each source's held-out test slices into its card's metrics."""
    metrics = model.meta["training"]["metrics"]
    by_set = {RECIPES[s]["label"]: round(test_iou(model, s, data), 4) for s in sources}
    metrics["test_iou"] = round(sum(by_set.values()) / len(by_set), 4)
    metrics["test_set"] = "; ".join(split_description(s, "test") for s in sources)
    if len(by_set) > 1:
        metrics["test_iou_by_set"] = by_set


def record_volume_statistics(model: Any, sources: list[str], data: Path) -> None:
    """Store each training volume's BatchNorm statistics in the model (the "no adaptation needed" references of a
    model trained on several volumes, ``napari_bnadapt.adabn.volumes``): AdaBN's estimate on its training slices."""
    from napari_bnadapt.adabn.volumes import measure_volume_statistics

    volumes = {RECIPES[s]["label"]: load_split(s, "train", data)[0] for s in sources}
    pixel_sizes = {RECIPES[s]["label"]: RECIPES[s]["pixel_size_nm"] for s in sources}
    measure_volume_statistics(model, volumes, pixel_sizes_nm=pixel_sizes, device="cpu", in_place=True)


def record_content_floor(model: Any, sources: list[str], data: Path) -> None:
    """Store how far AdaBN's statistics of crops of the model's training slices lie from its references (the guard's
    content floor for small stacks, ``napari_bnadapt.adabn.content_floor``)."""
    from napari_bnadapt.adabn.content_floor import measure_content_floor

    volumes = {RECIPES[s]["label"]: load_split(s, "train", data)[0] for s in sources}
    pixel_sizes = {RECIPES[s]["label"]: RECIPES[s]["pixel_size_nm"] for s in sources}
    measure_content_floor(model, volumes, pixel_sizes_nm=pixel_sizes, device="cpu", in_place=True)


def rewrite(path: Path, data: Path, what: str) -> int:
    """``--score`` (``what="test"``): the test IoU of a model trained with ``--no-test`` (elsewhere);
    ``--volume-statistics`` (``what="volumes"``): its training volumes' BatchNorm statistics; ``--content-floor``
    (``what="content"``): the guard's content floor. Written into FILE in place (the weights are not touched); the
    recipe is found by the model's name."""
    import napari_bnadapt as nb
    from napari_bnadapt.errors import BNAdaptError

    model = nb.load_model(path, device="cpu")
    name = model.meta.get("name")
    recipe = recipes_by_model_name().get(name)
    if recipe is None:
        print(f"{path}: no recipe in scripts/em_data.py makes a model named {name!r}", file=sys.stderr)
        return 2
    if what == "volumes" and len(recipe["sources"]) < 2:
        print(f"{path}: {name!r} is trained on one volume, whose statistics its running ones are", file=sys.stderr)
        return 2
    record = {"test": record_test_iou, "volumes": record_volume_statistics, "content": record_content_floor}[what]
    try:
        record(model, recipe["sources"], data)
    except BNAdaptError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    nb.save_model(model, path, overwrite=True)
    said = {"test": lambda: f"{model.meta['training']['metrics']}",
            "volumes": lambda: f"statistics of {[v['label'] for v in model.meta['volume_statistics']['volumes']]}",
            "content": lambda: f"content floor of {[r['reference'] for r in model.meta['content_floor']['references']]}"}
    print(f"{path}: {said[what]()}")
    return 0


def make_blend(r: dict[str, Any], args: argparse.Namespace, path: Path) -> int:
    """A recipe of :data:`em_data.BLENDS`: the bundled specialist and its robust fine-tuning (``--tuned``, else in
    ``--out``) mixed at the recipe's weight (``--weight``), the running statistics estimated again on the training
    slices."""
    import napari_bnadapt as nb
    from napari_bnadapt.model.blend import blend_models

    tuned = args.tuned or args.out / f"{r['tuned']}.safetensors"
    if not tuned.exists():
        print(f"{tuned} is missing: train it first ({r['tuned']}, docs/real-data.md)", file=sys.stderr)
        return 2
    weight = r["weight"] if args.weight is None else args.weight
    (images, _), = [load_split(s, "train", args.data) for s in r["sources"]]
    t0 = time.perf_counter()
    model = blend_models(nb.load_model(r["base"], device="cpu"), nb.load_model(tuned, device="cpu"), weight,
                         name=r["name"], statistics_images=images, pixel_size_nm=r["pixel_size_nm"], seed=args.seed)
    model.meta["description"] = (f"{r['description']}; weights {1 - weight:g} x {r['base']} + {weight:g} x "
                                 f"{r['tuned']} (a blend)")
    model.meta["blend"]["seconds"] = round(time.perf_counter() - t0, 1)
    nb.compute_source_statistics(model, images, seed=args.seed, device="cpu", in_place=True)
    training = model.meta["training"]
    if not args.no_test:
        record_test_iou(model, r["sources"], args.data)
    training["command"] = " ".join(args.command)
    args.out.mkdir(parents=True, exist_ok=True)
    nb.save_model(model, path, overwrite=args.overwrite)
    print(f"saved {path}: {model.meta['blend']}; metrics {training['metrics']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", nargs="?", choices=sorted(RECIPES) + sorted(ROBUST) + sorted(BLENDS))
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--patience", type=int, default=6, help="validations without improvement before stopping")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="share of slices held out to pick the best weights; 0: no validation, the final weights "
                    "are kept (in-domain validation favours the least augmented-looking weights: docs/models.md)")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 is faster only on CPUs with native bfloat16 (AVX-512 BF16, AMX); "
                    "on AVX2-only CPUs it is about 5x slower")
    ap.add_argument("--init", default=None, help="fine-tune from this model (a name or a file) instead of from scratch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=None, help="U-Net width (default: the recipe's, else 16)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="without --steps: as many steps as fit these seconds, measured on a short probe "
                    "training first (the steps chosen are printed and added to the card's command, where they "
                    "take precedence over the budget)")
    ap.add_argument("--no-test", action="store_true",
                    help="skip the test IoU (a machine without the test slices); the card then has none")
    ap.add_argument("--score", type=Path, default=None, metavar="FILE",
                    help="instead of training: write the test IoU into the card of FILE, a model trained with --no-test")
    ap.add_argument("--volume-statistics", type=Path, default=None, metavar="FILE",
                    help="instead of training: write each training volume's BatchNorm statistics (the references of "
                    "'no adaptation needed') into FILE, a model trained on several volumes")
    ap.add_argument("--content-floor", type=Path, default=None, metavar="FILE",
                    help="instead of training: write the guard's content floor (how far crops of the training slices "
                    "lie from the model's statistics) into FILE; after --volume-statistics for a model trained on several")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=BUNDLED)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    ap.add_argument("--weight", type=float, default=None,
                    help="a blend recipe only: the fine-tuned model's share of the weights (default: the recipe's)")
    ap.add_argument("--tuned", type=Path, default=None, metavar="FILE",
                    help="a blend recipe only: the fine-tuned model (default: OUT/<the recipe's fine-tuned model>)")
    args = ap.parse_args(argv)
    args.command = ["python", "scripts/train_em_models.py", *(sys.argv[1:] if argv is None else argv)]
    if args.score is None and args.volume_statistics is None and args.content_floor is None and args.dataset is None:
        ap.error("name a dataset recipe to train, or --score FILE, --volume-statistics FILE or --content-floor FILE")

    import torch

    torch.set_num_threads(args.threads)
    if args.score is not None:
        return rewrite(args.score, args.data, "test")
    if args.volume_statistics is not None:
        return rewrite(args.volume_statistics, args.data, "volumes")
    if args.content_floor is not None:
        return rewrite(args.content_floor, args.data, "content")

    import napari_bnadapt as nb
    from napari_bnadapt.progress import run_to_end, tqdm_callback

    r = model_recipe(args.dataset)
    path = args.out / f"{r['name']}.safetensors"
    if path.exists() and not args.overwrite:
        print(f"{path} exists: pass --overwrite to replace it", file=sys.stderr)
        return 2
    if "base" in r:
        return make_blend(r, args, path)
    if args.weight is not None or args.tuned is not None:
        ap.error(f"--weight and --tuned are for the blend recipes ({', '.join(sorted(BLENDS))}), not {args.dataset!r}")
    splits = [load_split(s, "train", args.data) for s in r["sources"]]
    for s, (im, lb) in zip(r["sources"], splits):
        print(f"{s}: train images {im.shape} {im.dtype}, labels {lb.shape}", flush=True)
    settings = dict(
        width=args.width or r.get("width", 16), bilinear=True, batch_size=args.batch_size,
        patch_size=args.patch_size, lr=args.lr, seed=args.seed, device=args.device, pixel_size_nm=r["pixel_size_nm"],
        precision=args.precision, augment=r["augment"],
        volume_pixel_sizes_nm=[RECIPES[s]["pixel_size_nm"] for s in r["sources"]],
        volume_names=[RECIPES[s]["label"] for s in r["sources"]],
        init=nb.load_model(args.init) if args.init else None,
    )
    images, labels = [im for im, _ in splits], [lb for _, lb in splits]
    steps = args.steps or r["steps"]
    if args.time_budget is not None and args.steps is None:
        steps = steps_within(args.time_budget, lambda n: nb.train_iter(
            images, labels, steps=n, val_fraction=0, source_statistics=False, **settings))
        print(f"time budget {args.time_budget:.0f} s: {steps} steps", flush=True)
    t0 = time.perf_counter()
    gen = nb.train_iter(
        images, labels, steps=steps, val_fraction=args.val_fraction, eval_every=args.eval_every,
        patience=args.patience, name=r["name"], data_description=r["description"], **settings,
    )
    model = run_to_end(gen, tqdm_callback())
    wall = time.perf_counter() - t0
    metrics = model.meta["training"]["metrics"]
    if not args.no_test:
        record_test_iou(model, r["sources"], args.data)
    command = args.command
    if args.time_budget is not None and args.steps is None:  # the steps the budget gave: the command reruns them
        command.append(f"--steps {steps}")
    model.meta["training"]["command"] = " ".join(command)
    args.out.mkdir(parents=True, exist_ok=True)
    nb.save_model(model, path, overwrite=args.overwrite)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"wall time {wall:.0f} s (training {model.meta['training']['seconds']} s); metrics {metrics}")
    for h in model.meta["training"]["history"]:
        print("  ", h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
