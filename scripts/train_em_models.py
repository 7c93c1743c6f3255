"""Train the source U-Nets for real electron microscopy (the bundled ``lucchi-pp`` and ``vnc``).

Usage::

    python scripts/train_em_models.py lucchi [--steps N] [--out DIR]
    python scripts/train_em_models.py vnc    [--steps N] [--out DIR]

Reads the labelled volumes in ``../shared/data/real/`` (``tifffile.memmap``: never
copied, never written) and trains a width-16 bilinear U-Net with the project's own
:func:`napari_bnadapt.train` (cross-entropy + Dice, Adam with cosine decay, random
256-px crops with flips and 90-degree rotations, bfloat16 mixed precision, a seeded
validation split of whole slices, best validation weights kept). Every random choice
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import BUNDLED, DATA, RECIPES, load_split, split_description, test_iou  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--patience", type=int, default=6, help="validations without improvement before stopping")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=BUNDLED)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    args = ap.parse_args(argv)

    import torch

    import napari_bnadapt as nb
    from napari_bnadapt.progress import run_to_end, tqdm_callback

    torch.set_num_threads(args.threads)
    r = RECIPES[args.dataset]
    path = args.out / f"{r['name']}.safetensors"
    if path.exists() and not args.overwrite:
        print(f"{path} exists: pass --overwrite to replace it", file=sys.stderr)
        return 2
    images, labels = load_split(args.dataset, "train", args.data)
    print(f"train images {images.shape} {images.dtype}, labels {labels.shape}", flush=True)
    t0 = time.perf_counter()
    gen = nb.train_iter(
        images, labels, width=16, bilinear=True, steps=args.steps or r["steps"], batch_size=args.batch_size,
        patch_size=args.patch_size, lr=1e-3, val_fraction=0.1, eval_every=args.eval_every,
        patience=args.patience, seed=args.seed, device="cpu", pixel_size_nm=r["pixel_size_nm"], name=r["name"],
        data_description=r["description"], precision=args.precision,
    )
    model = run_to_end(gen, tqdm_callback())
    wall = time.perf_counter() - t0
    metrics = model.meta["training"]["metrics"]
    metrics["test_iou"] = round(test_iou(model, args.dataset, args.data), 4)
    metrics["test_set"] = split_description(args.dataset, "test")
    model.meta["training"]["command"] = "python scripts/train_em_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    nb.save_model(model, path, overwrite=args.overwrite)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"wall time {wall:.0f} s (training {model.meta['training']['seconds']} s); metrics {metrics}")
    for h in model.meta["training"]["history"]:
        print("  ", h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
