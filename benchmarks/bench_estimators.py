"""The AdaBN estimators (cumulative, EMA, source prior, class-balanced) on the real-data suite, per model.

Run: python benchmarks/bench_estimators.py [--models lucchi-pp vnc em-generalist ...] [--models-dir DIR]

Needs ``../shared/data/real/`` (not shipped). For every model and every target of
``bench_real_generalisation.py`` (real held-out slices and the simulated other labs, inverted contrast
left out), the model is adapted by :func:`napari_bnadapt.adapt` with each estimator (64 patches, seed 0,
at the stated pixel size) and segmented; source only (no adaptation) beside them:

* ``cumulative`` (the default): the pooled mean and variance of the target patches;
* ``ema``: PyTorch's running average with rate 0.1 per batch (the recent batches weigh most);
* ``prior``: the source statistics as a prior worth 16 patches, updated by the target's (a mix of
  source and target statistics, weighted by how much target data there is; the issue's "mixing");
* ``balanced``: cumulative, with the target pixels reweighted so that the share the model calls
  mitochondria counts as on its training data (``napari_bnadapt.adabn.balanced``).

The question: does any estimator other than the default help across pairs, not on one? The first
bundled models' comparison on the real pair alone (``bench_real_cross_domain.py``) found the prior
better for ``vnc`` on Lucchi++ and worse for ``lucchi-pp`` on VNC. One run, 3 real slices and one
simulated crop per target: differences under about 0.05 on one target are not established. Rows are
appended to ``<name>.partial.jsonl`` as they finish and skipped by a rerun. Writes
``benchmarks/results/<name>.{txt,json}``. Foreground IoU at threshold 0.5 on the target's grid.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _suite import run_suite, suite_main  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.adabn.estimators import MODES  # noqa: E402

COLUMNS = ("source", *MODES)


def evaluate(model: Any, t: dict[str, Any]) -> dict[str, float]:
    """Source-only IoU and the IoU after AdaBN with each estimator on one target."""
    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    out = {"source": nb.iou(nb.predict(model, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)}
    for mode in MODES:
        adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0, mode=mode)
        out[mode] = nb.iou(nb.predict(adapted, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)
    return out


def run(models: list[str], models_dir: Path | None, name: str) -> dict[str, Any]:
    rows, reused = run_suite(models, models_dir, name, evaluate,
                             lambda res: " ".join(f"{c}:{res[c]:.3f}" for c in COLUMNS))
    return {"rows": rows, "reused": reused, "columns": list(COLUMNS)}


def _bold_best(values: list[float]) -> list[str]:
    return [f"**{v:.3f}**" if v == max(values) else f"{v:.3f}" for v in values]


def table(result: dict[str, Any]) -> str:
    cols, rows = result["columns"], result["rows"]
    lines = ["| model | target | kind | domain | " + " | ".join(cols) + " |", "|" + "---|" * (4 + len(cols))]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']} | {r['domain']} | "
                     + " | ".join(_bold_best([r[c] for c in cols])) + " |")
    lines += ["", "Means per model and domain (real and simulated targets pooled), and each estimator's change "
              "against the default (cumulative): mean, and the worst and best single target:", "",
              "| model | targets | " + " | ".join(cols) + " | " + " | ".join(f"{m} - cumulative" for m in MODES[1:]) + " |",
              "|" + "---|" * (1 + len(cols) + len(MODES))]

    def change(rr: list[dict[str, Any]], mode: str) -> str:
        d = [r[mode] - r["cumulative"] for r in rr]
        return f"{statistics.fmean(d):+.3f} ({min(d):+.3f} .. {max(d):+.3f})"

    for model in dict.fromkeys(r["model"] for r in rows):
        for dom in ("in-domain", "cross-lab"):
            rr = [r for r in rows if r["model"] == model and r["domain"] == dom]
            if rr:
                lines.append(f"| {model} | {dom} ({len(rr)}) | "
                             + " | ".join(_bold_best([statistics.fmean(r[c] for r in rr) for c in cols]))
                             + " | " + " | ".join(change(rr, m) for m in MODES[1:]) + " |")
    lines.append("")
    for mode in MODES[1:]:
        d = [r[mode] - r["cumulative"] for r in rows]
        lines.append(f"{mode} - cumulative over {len(d)} (model, target) pairs: mean {statistics.fmean(d):+.3f}, "
                     f"median {statistics.median(d):+.3f}, worst {min(d):+.3f}, best {max(d):+.3f}; better in "
                     f"{sum(v > 0.01 for v in d)}, worse in {sum(v < -0.01 for v in d)} (by more than 0.01)")
    real = [r for r in rows if r["kind"] == "real" and r["domain"] == "cross-lab"]
    if real:
        lines += ["", "Real cross-lab pairs only: " + "; ".join(
            f"{r['model']} on {r['target']}: " + ", ".join(f"{c} {r[c]:.3f}" for c in cols) for r in real)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, doc=__doc__, script="bench_estimators.py",
                      title="AdaBN estimators (cumulative, EMA, source prior, class-balanced) on the real-data suite",
                      legend="source: no adaptation; cumulative (default), ema (rate 0.1), prior (source worth 16 "
                      "patches), balanced (reweighted to the training share of mitochondria): AdaBN with that "
                      "estimator, 64 patches, seed 0", run=run, table=table)


if __name__ == "__main__":
    raise SystemExit(main())
