"""Smoothing the target to the training data's sharpness, chosen without labels (choose_smoothing).

Run: python benchmarks/bench_smoothing.py [--models lucchi-pp vnc em-generalist ...] [--models-dir DIR]

Needs ``../shared/data/real/`` (not shipped). For every model and every target of
``bench_real_generalisation.py`` (real held-out slices and the simulated other labs, inverted contrast
left out: nothing works there), the target is seen through a Gaussian blur of sigma 0, 0.5, 1, 1.5 and 2
pixels at the model's pixel size (:func:`napari_bnadapt.io.smoothed.smoothed`, slice by slice), adapted
by AdaBN (cumulative, 64 patches, seed 0, at the stated pixel size) and segmented. ``auto`` is the IoU at
the sigma :func:`napari_bnadapt.adabn.smoothing.choose_smoothing` picks without labels (first BatchNorm
layer's statistics against the source's); sigma 0 is plain AdaBN; the best sigma per target (chosen
with the labels) is the oracle.

The score was chosen among four label-free first-layer scores on these same targets (docs/real-data.md),
so ``auto`` is an observation, not a held-out test. One run, 3 real slices and one simulated crop per
target: differences under about 0.05 on one target are not established. Rows are appended to
``<name>.partial.jsonl`` as they finish and skipped by a rerun. Writes
``benchmarks/results/<name>.{txt,json}``. Foreground IoU at threshold 0.5 on the target's grid.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _suite import run_suite, suite_main  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.adabn.smoothing import DEFAULT_SIGMAS, choose_smoothing, image_sigma  # noqa: E402
from napari_bnadapt.io.resample import resolve_grid  # noqa: E402
from napari_bnadapt.io.smoothed import smoothed  # noqa: E402


def evaluate(model: Any, t: dict[str, Any]) -> dict[str, float]:
    """AdaBN IoU at every sigma on one target, and the sigma chosen without labels."""
    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    if px is None:
        px = (getattr(model, "meta", None) or {}).get("pixel_size_nm")  # "not stated": run as is
    grid = resolve_grid(px, model.meta.get("pixel_size_nm"))
    out: dict[str, float] = {}
    for sigma in DEFAULT_SIGMAS:
        xs = smoothed(x, image_sigma(sigma, grid))
        adapted, _ = nb.adapt(model, xs, device="cpu", pixel_size_nm=px, seed=0)
        out[f"sigma {sigma:g}"] = nb.iou(nb.predict(adapted, xs, device="cpu", pixel_size_nm=px) > 0.5, y > 0)
    t0 = time.perf_counter()
    choice = choose_smoothing(model, x, device="cpu", pixel_size_nm=px)
    out["chosen sigma"] = choice.sigma
    out["chosen seconds"] = time.perf_counter() - t0
    out["auto"] = out[f"sigma {choice.sigma:g}"]  # the chosen sigma is one of DEFAULT_SIGMAS
    return out


def run(models: list[str], models_dir: Path | None, name: str) -> dict[str, Any]:
    rows, reused = run_suite(models, models_dir, name, evaluate, lambda res: (
        " ".join(f"{s:g}:{res[f'sigma {s:g}']:.3f}" for s in DEFAULT_SIGMAS) + f" | chosen {res['chosen sigma']:g}: {res['auto']:.3f}"))
    return {"rows": rows, "reused": reused, "sigmas": list(DEFAULT_SIGMAS)}


def table(result: dict[str, Any]) -> str:
    cols = [f"sigma {s:g}" for s in result["sigmas"]]
    rows = result["rows"]
    head = ("| model | target | kind | domain | " + " | ".join(c.replace("sigma ", "") for c in cols)
            + " | chosen sigma | IoU at the chosen sigma | choice s |")
    lines = [head, "|" + "---|" * (7 + len(cols))]
    for r in rows:
        best = max(r[c] for c in cols)
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']} | {r['domain']} | "
                     + " | ".join(f"**{r[c]:.3f}**" if r[c] == best else f"{r[c]:.3f}" for c in cols)
                     + f" | {r['chosen sigma']:g} | {r['auto']:.3f} | {r['chosen seconds']:.1f} |")
    lines += ["", "Means per model and domain (real and simulated targets pooled; 0: plain AdaBN; auto: the sigma "
              "choose_smoothing picked per target, without labels; oracle: the best sigma per target, chosen with "
              "the labels; worst: auto's largest loss against plain AdaBN):", "",
              "| model | targets | " + " | ".join(c.replace("sigma ", "") for c in cols)
              + " | auto | auto - 0 | worst | oracle |", "|" + "---|" * (6 + len(cols))]
    for model in dict.fromkeys(r["model"] for r in rows):
        for dom in ("in-domain", "cross-lab"):
            rr = [r for r in rows if r["model"] == model and r["domain"] == dom]
            if rr:
                means = [statistics.fmean(r[c] for r in rr) for c in cols]
                auto = statistics.fmean(r["auto"] for r in rr)
                worst = min(r["auto"] - r[cols[0]] for r in rr)
                oracle = statistics.fmean(max(r[c] for c in cols) for r in rr)
                lines.append(f"| {model} | {dom} ({len(rr)}) | "
                             + " | ".join(f"**{m:.3f}**" if m == max(means) else f"{m:.3f}" for m in means)
                             + f" | {auto:.3f} | {auto - means[0]:+.3f} | {worst:+.3f} | {oracle:.3f} |")
    diff = [r["auto"] - r[cols[0]] for r in rows]
    lines += ["", f"auto - plain AdaBN over {len(diff)} (model, target) pairs: mean {statistics.fmean(diff):+.3f}, "
              f"median {statistics.median(diff):+.3f}, worst {min(diff):+.3f}, best {max(diff):+.3f}; better in "
              f"{sum(d > 0.01 for d in diff)}, worse in {sum(d < -0.01 for d in diff)} (by more than 0.01); "
              f"choice median {statistics.median(r['chosen seconds'] for r in rows):.1f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, doc=__doc__, script="bench_smoothing.py",
                      title="Smoothing the target to the training data's sharpness (AdaBN on the smoothed target)",
                      legend="sigma: Gaussian blur in the model's pixels before AdaBN and segmentation; 0: plain AdaBN", run=run, table=table)


if __name__ == "__main__":
    raise SystemExit(main())
