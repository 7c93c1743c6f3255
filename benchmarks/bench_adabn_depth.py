"""Which BatchNorm layers should AdaBN adapt? Partial adaptation, block by block from the input.

Run: python benchmarks/bench_adabn_depth.py [--models lucchi-pp vnc em-generalist ...] [--models-dir DIR]

Needs ``../shared/data/real/`` (not shipped). For every model and every target of
``bench_real_generalisation.py`` (real held-out slices and the simulated other labs, inverted contrast
left out: no setting works there), AdaBN is run once (cumulative, 64 patches, seed 0, at the stated
pixel size) and the model is then segmented with the adapted statistics in the first ``k`` U-Net blocks
(counted from the input: ``inc``, ``down1``..``down4``, ``up1``..``up4``) and the source statistics in
the rest (:func:`napari_bnadapt.adabn.need.mix_statistics` with per-layer weights 1 and 0). ``k = 0`` is
the source model, ``k = 9`` plain AdaBN, ``k = 5`` the encoder only.

The question is whether a depth other than "all" is better across pairs, which needs the depth to be
chosen on some models and judged on others: the table keeps every model's row so that the choice and
its check can be read off (docs/real-data.md states which depth was chosen on which models, before
which others were seen). One run, 3 real slices and one simulated crop per target: differences under
about 0.05 on one target are not established. Rows are appended to ``<name>.partial.jsonl`` as they
finish and skipped by a rerun. Writes ``benchmarks/results/<name>.{txt,json}``. Foreground IoU at
threshold 0.5 on the target's grid.
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

#: U-Net blocks adapted, counted from the input (0: source only; 9: every block, plain AdaBN)
DEPTHS = (0, 1, 2, 3, 4, 5, 7, 9)


def evaluate(model: Any, t: dict[str, Any]) -> dict[str, float]:
    """IoU at every depth on one target (one AdaBN run; the depths only choose which statistics to keep)."""
    from napari_bnadapt.adabn.depth import block_weights, choose_depth
    from napari_bnadapt.adabn.need import mix_statistics

    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    if px is None:
        px = (getattr(model, "meta", None) or {}).get("pixel_size_nm")  # "not stated": run as is
    adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
    out: dict[str, float] = {}
    for depth in DEPTHS:
        m = mix_statistics(model, adapted, block_weights(model, depth))
        out[f"depth {depth}"] = nb.iou(nb.predict(m, x, device="cpu", pixel_size_nm=px) > 0.5, y > 0)
    t0 = time.perf_counter()
    _, choice = choose_depth(model, adapted, x, device="cpu", pixel_size_nm=px)
    out["chosen depth"] = float(choice.depth)
    out["chosen seconds"] = time.perf_counter() - t0
    out["auto"] = out[f"depth {choice.depth}"]  # the chosen depth is one of DEPTHS (1, 3, 5, 7, 9)
    return out


def run(models: list[str], models_dir: Path | None, name: str) -> dict[str, Any]:
    rows, reused = run_suite(models, models_dir, name, evaluate, lambda res: (
        " ".join(f"{d}:{res[f'depth {d}']:.3f}" for d in DEPTHS) + f" | chosen {res['chosen depth']:.0f}: {res['auto']:.3f}"))
    return {"rows": rows, "reused": reused, "depths": list(DEPTHS)}


def table(result: dict[str, Any]) -> str:
    cols = [f"depth {d}" for d in result["depths"]]
    head = ("| model | target | domain | " + " | ".join(c.replace("depth ", "") for c in cols)
            + " | chosen | IoU at the chosen depth | choice s |")
    lines = [head, "|" + "---|" * (6 + len(cols))]
    for r in result["rows"]:
        best = max(r[c] for c in cols)
        lines.append(f"| {r['model']} | {r['target']} | {r['domain']} | "
                     + " | ".join(f"**{r[c]:.3f}**" if r[c] == best else f"{r[c]:.3f}" for c in cols)
                     + f" | {r['chosen depth']:.0f} | {r['auto']:.3f} | {r['chosen seconds']:.1f} |")
    lines += ["", "Means per model and domain (real and simulated targets pooled; auto: the depth "
              "choose_depth picked per target, without labels; worst: its largest loss against plain AdaBN):", "",
              "| model | targets | " + " | ".join(c.replace("depth ", "") for c in cols) + " | auto | auto - 9 | worst |",
              "|" + "---|" * (5 + len(cols))]
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        for dom in ("in-domain", "cross-lab"):
            rr = [r for r in result["rows"] if r["model"] == model and r["domain"] == dom]
            if rr:
                means = [statistics.fmean(r[c] for r in rr) for c in cols]
                auto = statistics.fmean(r["auto"] for r in rr)
                worst = min(r["auto"] - r["depth 9"] for r in rr)
                lines.append(f"| {model} | {dom} ({len(rr)}) | "
                             + " | ".join(f"**{m:.3f}**" if m == max(means) else f"{m:.3f}" for m in means)
                             + f" | {auto:.3f} | {auto - means[-1]:+.3f} | {worst:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, doc=__doc__, script="bench_adabn_depth.py",
                      title="AdaBN on the first k U-Net blocks only (the rest keep the source statistics)",
                      legend="depth k: the first k blocks (inc, down1..down4, up1..up4) adapted; 0: source only, 9: AdaBN", run=run, table=table)


if __name__ == "__main__":
    raise SystemExit(main())
