"""What each part of the EM domain randomisation buys: one part left out at a time, equal training.

Run: python benchmarks/bench_augmentation_ablation.py [--source lucchi] [--steps 300] [--seeds 0 1] [--repeat geometric em]

Needs ``../shared/data/real/`` (not shipped). Every variant fine-tunes the same bundled single-source
model (``--init``, default ``lucchi-pp`` for ``--source lucchi``) for the same number of steps with the
same seed, crops and learning rate; only the augmentation differs:

* ``geometric``: flips and 90-degree rotations only (the control: the recipe of the first bundled models);
* ``em``: the full EM domain randomisation (:class:`napari_bnadapt.model.augment.Augmentation` defaults);
* ``em - <part>``: the full recipe with one part switched off (scale jitter, grey-value curve, blur,
  noise, stripes);
* ``em, half p``: the full recipe with every probability halved (more clean crops: does the in-domain
  cost shrink, and the cross-lab gain with it?).

No validation split and no early stopping here (``val_fraction=0``): every variant keeps its final
weights, so each one sees exactly the same number of crops. Each is then evaluated like
``bench_real_generalisation.py`` (its targets, held-out slices only): source only and AdaBN on the
real held-out slices of both volumes and on the simulated other-lab versions of each (clearly labelled
simulated). One training per (variant, seed): differences smaller than the spread between seeds of the
same variant (reported) are not established. ``--repeat`` names the variants that also run the seeds
after the first (the others run the first seed only), to measure that spread at a fraction of the cost.

Trained models go to ``--out`` (default ``benchmarks/results/ablation_models/``, not committed) and
are reused by a rerun; rows are appended to ``<name>.partial.jsonl`` as they finish and skipped by a
rerun with the same arguments. Writes ``benchmarks/results/<name>.{txt,json}`` and
``docs/images/augmentation_ablation.png``. Foreground IoU at threshold 0.5 on the target's grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, header, load_em_model, read_partial, save_results  # noqa: E402
from bench_real_generalisation import targets  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.model.augment import Augmentation  # noqa: E402

#: the parts of the recipe, and the settings that switch each one off
PARTS: dict[str, dict[str, Any]] = {
    "scale": {"scale_jitter": 1.0},
    "grey": {"p_grey": 0.0},
    "blur": {"p_blur": 0.0},
    "noise": {"p_noise": 0.0},
    "stripes": {"p_stripes": 0.0},
}


def variants() -> dict[str, Augmentation]:
    """Variant name -> augmentation, in the order of the table."""
    full = Augmentation()
    out = {"geometric": Augmentation.geometric(), "em": full}
    out.update({f"em - {part}": dataclasses.replace(full, **off) for part, off in PARTS.items()})
    half = {f.name: getattr(full, f.name) / 2 for f in dataclasses.fields(full) if f.name.startswith("p_")}
    out["em, half p"] = dataclasses.replace(full, **half)
    return out


def _file_name(variant: str, seed: int) -> str:
    return variant.replace(" - ", "-no-").replace(", ", "-").replace(" ", "-") + f"-s{seed}.safetensors"


def trained(variant: str, aug: Augmentation, seed: int, args: argparse.Namespace) -> tuple[Any, float]:
    """The fine-tuned model of one (variant, seed), trained now or read back from ``--out``; and its training seconds."""
    path = args.out / _file_name(variant, seed)
    if path.exists():
        model = nb.load_model(path, device="cpu")
        return model, float(model.meta["training"]["seconds"])
    from napari_bnadapt.progress import run_to_end

    images, labels = load_split(args.source, "train")
    r = RECIPES[args.source]
    model = run_to_end(nb.train_iter(
        [images], [labels], steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr,
        val_fraction=0.0, seed=seed, device="cpu", pixel_size_nm=r["pixel_size_nm"], augment=aug,
        name=f"ablation {variant}", data_description=r["description"], init=load_em_model(args.init, None),
        volume_pixel_sizes_nm=[r["pixel_size_nm"]]))
    args.out.mkdir(parents=True, exist_ok=True)
    nb.save_model(model, path)
    return model, float(model.meta["training"]["seconds"])


def evaluate(model: Any, t: dict[str, Any]) -> dict[str, float]:
    """Source-only and AdaBN IoU (and AdaBN seconds) on one target."""
    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    px = px or model.meta.get("pixel_size_nm")  # "not stated": run as is
    src = nb.iou(nb.predict(model, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)
    t0 = time.perf_counter()
    adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
    ada = nb.iou(nb.predict(adapted, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)
    return {"source": src, "adabn": ada, "adabn_seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    tg = targets(args.real_slices, args.sim_slices)
    partial = RESULTS / f"{args.name}.partial.jsonl"
    done = {(r["variant"], r["seed"], r["target"]): r for r in read_partial(partial)}
    rows, train_seconds = [], {}
    for seed in args.seeds:
        for variant, aug in variants().items():
            if args.variants and variant not in args.variants:
                continue
            if seed != args.seeds[0] and args.repeat and variant not in args.repeat:
                continue
            model, train_seconds[f"{variant} (seed {seed})"] = trained(variant, aug, seed, args)
            for t in tg:
                key = (variant, seed, t["name"])
                if key in done:
                    rows.append(done[key])
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = evaluate(model, t)
                domain = "in-domain" if t["volume"] == args.source else "cross-lab"
                rows.append({"variant": variant, "seed": seed, "target": t["name"], "kind": t["kind"],
                             "domain": domain, **res})
                with partial.open("a") as f:
                    f.write(json.dumps(rows[-1], default=float) + "\n")
                print(f"{variant:>14} s{seed} | {t['name']:<34} | source {res['source']:.3f} adabn {res['adabn']:.3f}",
                      flush=True)
    return {"rows": rows, "train_seconds": train_seconds}


#: the columns of the summary: (label, which rows, which method)
GROUPS = (
    ("in-domain real, source", lambda r: r["kind"] == "real" and r["domain"] == "in-domain", "source"),
    ("in-domain real, AdaBN", lambda r: r["kind"] == "real" and r["domain"] == "in-domain", "adabn"),
    ("cross-lab real, source", lambda r: r["kind"] == "real" and r["domain"] == "cross-lab", "source"),
    ("cross-lab real, AdaBN", lambda r: r["kind"] == "real" and r["domain"] == "cross-lab", "adabn"),
    ("simulated from the training volume, AdaBN", lambda r: r["kind"] == "simulated" and r["domain"] == "in-domain"
     and "inverted" not in r["target"], "adabn"),
    ("simulated from the other volume, AdaBN", lambda r: r["kind"] == "simulated" and r["domain"] == "cross-lab"
     and "inverted" not in r["target"], "adabn"),
)


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """variant -> group label -> one mean per seed."""
    out: dict[str, dict[str, list[float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        out[variant] = {}
        for label, keep, method in GROUPS:
            per_seed = [float(np.mean([r[method] for r in rows if r["variant"] == variant and r["seed"] == s and keep(r)]))
                        for s in dict.fromkeys(r["seed"] for r in rows if r["variant"] == variant)]
            out[variant][label] = per_seed
    return out


def table(result: dict[str, Any]) -> str:
    s = summary(result["rows"])
    labels = [g[0] for g in GROUPS]
    lines = ["| variant | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for variant, groups in s.items():
        cells = []
        for label in labels:
            v = groups[label]
            cells.append(f"{np.mean(v):.3f}" + (f" ({', '.join(f'{x:.3f}' for x in v)})" if len(v) > 1 else ""))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean IoU over the group's targets (simulated: all but 'inverted', which no variant is trained "
              "for); with several seeds, their mean and (each seed's mean).", "",
              "Training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["train_seconds"].items())]
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(result["rows"])
    names = list(s)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(GROUPS)
    for i, (label, _, _) in enumerate(GROUPS):
        means = [np.mean(s[n][label]) for n in names]
        spread = [np.ptp(s[n][label]) / 2 if len(s[n][label]) > 1 else 0 for n in names]
        ax.bar(np.arange(len(names)) + (i - len(GROUPS) / 2 + 0.5) * width, means, width, yerr=spread, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("foreground IoU (mean over targets)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title("Augmentation ablation: one part left out at a time, equal fine-tuning (error bar: half the seed range)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=sorted(RECIPES), default="lucchi", help="the volume every variant trains on")
    ap.add_argument("--init", default=None, help="the model every variant fine-tunes (default: the source's bundled one)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
    ap.add_argument("--repeat", nargs="+", default=None,
                    help="run the seeds after the first only for these variants (to measure the seed spread cheaply)")
    ap.add_argument("--real-slices", type=int, default=3)
    ap.add_argument("--sim-slices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "ablation_models")
    ap.add_argument("--name", default="bench_augmentation_ablation")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    args.init = args.init or RECIPES[args.source]["name"]
    t0 = time.perf_counter()
    result = run(args)
    result["command"] = "python benchmarks/bench_augmentation_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["seconds"] = round(time.perf_counter() - t0)
    text = header("Augmentation ablation: what each part of the EM domain randomisation buys") + (
        f"# command: {result['command']}\n# wall time: {result['seconds']} s (trainings read back from --out count 0)\n"
        f"# every variant: fine-tune {args.init} on {RECIPES[args.source]['label']} train, {args.steps} steps, "
        f"batch {args.batch_size} x {args.patch_size} px, lr {args.lr}, final weights (no early stopping)\n\n"
        + table(result) + "\n")
    save_results(args.name, text, result, figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
