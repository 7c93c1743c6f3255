"""Cross-domain evaluation on real EM: Lucchi++ (FIB-SEM) <-> VNC (ssTEM), with the bundled EM models.

Run: python benchmarks/bench_real_cross_domain.py [--seeds 3] [--ablation-seeds 3]

Needs ``../shared/data/real/`` (not shipped) and the bundled ``lucchi-pp`` and ``vnc``
models (``scripts/train_em_models.py``, ``scripts/calibrate_em_models.py``).

For each direction source -> target, on the target's held-out TEST slices (Lucchi++:
the 42 test slices; VNC: slices 14-19, never trained on by the VNC model):

* source-only IoU (the source model as trained);
* AdaBN IoU in each mode (cumulative: ``--seeds`` patch-sampling seeds, mean and sd;
  EMA with alpha 0.1 and prior with N = 16: seed 0), with the time ``adapt`` took;
* the target-trained upper bound (the other bundled model, in its own domain);
* the reliability report of the cumulative adaptation (seed 0): the predicted IoU lower
  bound and verdict next to the true IoU (the bound was calibrated on grey-value shifts
  of the SOURCE lab's data only: this shift is of a kind it never saw);
* ablation: IoU against the number of 256 x 256 target patches AdaBN uses
  (cumulative, ``--ablation-seeds`` seeds; segmentation on every 3rd Lucchi++ test
  slice / all VNC test slices to keep it short).

Writes ``benchmarks/results/bench_real_cross_domain.{txt,json}`` and the figures
``docs/images/real_ablation_patches.png`` and ``docs/images/real_examples.png``.
Foreground IoU, threshold 0.5, whole slices. Threads: all (the machine should be idle).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, header, write  # noqa: E402
from em_data import RECIPES, available, load_split, split_description  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("lucchi", "vnc"), ("vnc", "lucchi"))
PATCH_COUNTS = (1, 2, 4, 16, 64, 256)
#: Published Attention Y-Net (Franco-Barranco et al. 2022), as reported in the authors' repository
PUBLISHED = {("lucchi", "vnc"): "0.40 +- 0.04", ("vnc", "lucchi"): "0.54 +- 0.02"}


def _iou(model, x, y) -> float:
    return nb.iou(nb.segment(model, x, device="cpu"), y > 0)


def evaluate_pair(src: str, tgt: str, seeds: int) -> dict:
    """Every row of the table for one direction."""
    model = nb.load_model(RECIPES[src]["name"], device="cpu")
    upper = nb.load_model(RECIPES[tgt]["name"], device="cpu")
    xm, y = load_split(tgt, "test")
    x = np.asarray(xm)
    row: dict = {"source": src, "target": tgt, "target_slices": split_description(tgt, "test"),
                 "target_shape": list(x.shape), "published_attention_ynet": PUBLISHED[(src, tgt)]}
    row["source_only"] = _iou(model, x, y)
    row["upper_bound_target_trained"] = _iou(upper, x, y)
    modes = {"cumulative": {}, "ema": {"alpha": 0.1}, "prior": {"prior": 16.0}}
    for mode, kw in modes.items():
        ious, secs = [], []
        for seed in range(seeds if mode == "cumulative" else 1):
            t = time.perf_counter()
            adapted, rep = nb.adapt(model, x, mode=mode, seed=seed, device="cpu", **kw)
            secs.append(time.perf_counter() - t)
            ious.append(_iou(adapted, x, y))
            if mode == "cumulative" and seed == 0:
                t = time.perf_counter()
                rel = nb.reliability(model, adapted, x, device="cpu")
                row["reliability"] = {
                    "true_iou": ious[-1], "iou_lower_bound": rel.iou_lower_bound, "verdict": rel.verdict,
                    "x_label": rel.x_label, "x": rel.calibration_x, "gate_failures": list(rel.gate_failures),
                    "sentence": rel.sentence, "seconds": round(time.perf_counter() - t, 2),
                    "bound_holds": None if rel.iou_lower_bound is None else bool(ious[-1] >= rel.iou_lower_bound),
                }
                row["adapt_patches"] = rep.n_patches
        row[f"adabn_{mode}"] = {"ious": ious, "mean": float(np.mean(ious)),
                                "sd": float(np.std(ious, ddof=1)) if len(ious) > 1 else 0.0,
                                "adapt_seconds_median": statistics.median(secs)}
    return row


def ablation(src: str, tgt: str, seeds: int) -> dict:
    """IoU against the number of target patches (cumulative AdaBN)."""
    model = nb.load_model(RECIPES[src]["name"], device="cpu")
    xm, y = load_split(tgt, "test")
    step = 3 if tgt == "lucchi" else 1
    x, y = np.asarray(xm[::step]), y[::step]
    out = {"slices_segmented": int(x.shape[0]), "counts": list(PATCH_COUNTS), "ious": []}
    for n in PATCH_COUNTS:
        out["ious"].append([_iou(nb.adapt(model, x, n_patches=n, seed=s, device="cpu")[0], x, y) for s in range(seeds)])
    out["source_only"] = _iou(model, x, y)
    out["default"] = _iou(nb.adapt(model, x, device="cpu")[0], x, y)
    return out


def draw(results: dict, path_ablation: Path, path_examples: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (src, tgt) in zip(axes, PAIRS):
        ab = results["ablation"][f"{src}->{tgt}"]
        a = np.array(ab["ious"])
        n = np.array(ab["counts"])
        ax.plot(n, a.mean(1), "o-", label="AdaBN, cumulative (mean of seeds)")
        ax.fill_between(n, a.min(1), a.max(1), alpha=0.25, label="min-max over seeds")
        ax.axhline(ab["source_only"], color="0.4", ls="--", label="source only")
        ax.axhline(ab["default"], color="tab:green", ls=":", label="default sampling")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("target patches of 256 x 256 used by AdaBN")
        ax.set_title(f"{RECIPES[src]['label']} -> {RECIPES[tgt]['label']} "
                     f"({ab['slices_segmented']} test slices segmented)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("foreground IoU")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path_ablation, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(2, 4, figsize=(13, 6.8))
    for row, (src, tgt) in zip(axes, PAIRS):
        model = nb.load_model(RECIPES[src]["name"], device="cpu")
        xm, y = load_split(tgt, "test")
        x = np.asarray(xm[:1, 128:640, 128:640])
        adapted, _ = nb.adapt(model, np.asarray(xm), device="cpu")
        panels = [(x[0], "target image", "gray"), (y[0, 128:640, 128:640], "ground truth", "gray"),
                  (nb.segment(model, x)[0], "source only", "gray"), (nb.segment(adapted, x)[0], "AdaBN (cumulative)", "gray")]
        for ax, (img, title, cmap) in zip(row, panels):
            ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title(f"{RECIPES[src]['label']} -> {RECIPES[tgt]['label']}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path_examples, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ablation-seeds", type=int, default=3)
    p.add_argument("--skip-ablation", action="store_true")
    args = p.parse_args()
    if not available():
        raise SystemExit("the real EM data (../shared/data/real) is not here: nothing to evaluate")
    t0 = time.perf_counter()
    results: dict = {"pairs": {}, "ablation": {}}
    for src, tgt in PAIRS:
        results["pairs"][f"{src}->{tgt}"] = evaluate_pair(src, tgt, args.seeds)
        print(json.dumps(results["pairs"][f"{src}->{tgt}"], indent=1), flush=True)
    for name in ("lucchi", "vnc"):
        card = nb.model_card(RECIPES[name]["name"])
        results.setdefault("models", {})[name] = {
            "test_iou": card.training["metrics"].get("test_iou"), "val_iou": card.training["metrics"].get("val_iou"),
            "steps": card.training["metrics"].get("steps_run"), "seconds": card.training["seconds"]}
    if not args.skip_ablation:
        for src, tgt in PAIRS:
            results["ablation"][f"{src}->{tgt}"] = ablation(src, tgt, args.ablation_seeds)
        draw(results, ROOT / "docs" / "images" / "real_ablation_patches.png", ROOT / "docs" / "images" / "real_examples.png")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (RESULTS / "bench_real_cross_domain.json").write_text(json.dumps(results, indent=1))
    lines = [header("real EM cross-domain evaluation: Lucchi++ <-> VNC (foreground IoU on the target's test slices)")]
    for name, m in results["models"].items():
        lines.append(f"model {RECIPES[name]['name']}: in-domain test IoU {m['test_iou']}, val IoU {m['val_iou']:.3f}, "
                     f"{m['steps']} steps, {m['seconds']:.0f} s training on CPU")
    for key, r in results["pairs"].items():
        c = r["adabn_cumulative"]
        lines.append(f"\n{key}  (target: {r['target_slices']}, {r['target_shape']})")
        lines.append(f"  source only                {r['source_only']:.3f}")
        lines.append(f"  AdaBN cumulative           {c['mean']:.3f} +- {c['sd']:.3f} ({len(c['ious'])} seeds; "
                     f"adapt {c['adapt_seconds_median']:.1f} s median, {r['adapt_patches']} patches)")
        for mode in ("ema", "prior"):
            m = r[f"adabn_{mode}"]
            lines.append(f"  AdaBN {mode:<20} {m['mean']:.3f} (adapt {m['adapt_seconds_median']:.1f} s)")
        lines.append(f"  target-trained upper bound {r['upper_bound_target_trained']:.3f}")
        lines.append(f"  published Attention Y-Net  {r['published_attention_ynet']} (full volumes, 10 runs)")
        rel = r["reliability"]
        lb = "none" if rel["iou_lower_bound"] is None else f"{rel['iou_lower_bound']:.3f}"
        lines.append(f"  reliability: predicted IoU >= {lb}, verdict {rel['verdict']}, true {rel['true_iou']:.3f}, "
                     f"holds: {rel['bound_holds']} ({rel['x_label']} = {rel['x']}; gate failures {rel['gate_failures']})")
    for key, ab in results["ablation"].items():
        means = [f"{n}:{np.mean(v):.3f}" for n, v in zip(ab["counts"], ab["ious"])]
        lines.append(f"\nablation {key} ({ab['slices_segmented']} slices): source only {ab['source_only']:.3f}, "
                     f"default {ab['default']:.3f}; mean IoU by patches " + " ".join(means))
    lines.append(f"\ntotal {results['seconds']:.0f} s")
    write("bench_real_cross_domain", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
