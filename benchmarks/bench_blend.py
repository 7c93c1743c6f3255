"""Weight-space blends (WiSE-FT) of a first bundled specialist and its robust fine-tuning, along the line.

Run: python benchmarks/bench_blend.py --models-dir DIR [--pairs lucchi-blend vnc-blend] [--weights 0 0.25 0.5 0.75 1]
     python benchmarks/bench_blend.py --models-dir DIR --statistics mixed --pairs lucchi-blend --weights 0.5 \
         --name bench_blend_mixed_statistics

For each pair (``lucchi-pp`` and ``DIR/lucchi-pp-robust-half``; ``vnc`` and ``DIR/vnc-robust-half``: trained by
the commands of docs/real-data.md) and each weight (the fine-tuned model's share), the blend
(:func:`napari_bnadapt.blend_models`, running statistics estimated again on the training slices, as
``scripts/train_em_models.py <pair>-blend`` makes it) is judged on every slice of two held-out test volumes:
its own training volume's (in-domain) and the other lab's (cross-lab): source only, AdaBN and AdaBN behind
the guard (``bench_whole_test_volume.measure``). Weight 0 is the specialist with its running statistics
estimated again, 1 the fine-tuned model likewise. ``--statistics mixed``: the blends keep the same mix of both
models' running statistics instead (what re-estimating them buys). Needs ``../shared/data/real/``. Writes
``benchmarks/results/<name>.{txt,json}`` and ``docs/images/<name without bench_>.png``. Foreground IoU at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import header, save_results  # noqa: E402
from bench_whole_test_volume import measure  # noqa: E402
from em_data import BLENDS, RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402


def figure(result: dict[str, Any], path: Path) -> None:
    """IoU against the weight, one panel per pair: in-domain behind the guard, cross-lab source only and AdaBN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["pair"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        rows = [r for r in result["rows"] if r["pair"] == pair]
        for domain, key, style in (("in-domain", "guard", "o-"), ("cross-lab", "source", "s--"),
                                   ("cross-lab", "adabn", "s-")):
            pts = sorted((r["weight"], r[key]) for r in rows if r["domain"] == domain)
            target = next(r["target"] for r in rows if r["domain"] == domain)
            step = {"guard": "AdaBN behind the guard", "source": "source only", "adabn": "AdaBN"}[key]
            ax.plot(*zip(*pts), style, label=f"{target} ({domain}), {step}")
        ax.set_xlabel(f"weight of {BLENDS[pair]['tuned']}  (0: {BLENDS[pair]['base']})")
        ax.set_ylabel("foreground IoU, whole test volume")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
        ax.set_title(f"{BLENDS[pair]['name']}: weight-space blends", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=None, help="the folder with the fine-tuned models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="bench_blend", help="results/<name>.{txt,json}")
    ap.add_argument("--pairs", nargs="+", choices=sorted(BLENDS), default=sorted(BLENDS))
    ap.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--statistics", choices=["training", "mixed"], default="training",
                    help="the blends' running statistics: estimated again on the training slices (default), or the "
                    "same mix of both models'")
    args = ap.parse_args(argv)
    if args.models_dir is None:
        ap.error("--models-dir: the folder with the fine-tuned models (lucchi-pp-robust-half, vnc-robust-half)")
    if not real_data_ready(args.threads):
        return 1
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for pair in args.pairs:
        r = BLENDS[pair]
        base = nb.load_model(r["base"], device="cpu")
        tuned = nb.load_model(args.models_dir / f"{r['tuned']}.safetensors", device="cpu")
        (train_images, _), = [load_split(s, "train") for s in r["sources"]]
        for weight in args.weights:
            t = time.perf_counter()
            again = args.statistics == "training"
            blend = nb.blend_models(base, tuned, weight, statistics_images=train_images if again else None,
                                    pixel_size_nm=r["pixel_size_nm"])
            made = time.perf_counter() - t
            for target in [*r["sources"], *sorted(set(RECIPES) - set(r["sources"]))]:
                row = measure(blend, blend.meta["name"], target)
                rows.append({**row, "pair": pair, "weight": weight, "blend_seconds": made,
                             "domain": "in-domain" if target in r["sources"] else "cross-lab"})
                print(f"{pair} w={weight:g} -> {row['target']}: source {row['source']:.3f}, AdaBN {row['adabn']:.3f}, "
                      f"+guard {row['guard']:.3f} ({row['seconds']:.0f} s)", flush=True)
    command = f"python benchmarks/bench_blend.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    lines = [header("Weight-space blends of a specialist and its robust fine-tuning, on whole test volumes"),
             f"# command: {command}", f"# wall time: {time.perf_counter() - t0:.0f} s",
             "# weight: the fine-tuned model's share; running statistics " + (
                 "estimated again on the training slices" if args.statistics == "training"
                 else "the same mix of both models'"), "",
             "| pair | weight | target (whole test volume) | domain | source only | AdaBN | +guard | kept (guard) | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {BLENDS[r['pair']]['base']} + {BLENDS[r['pair']]['tuned']} | {r['weight']:g} | {r['target']} | "
              f"{r['domain']} | {r['source']:.3f} | {r['adabn']:.3f} | {r['guard']:.3f} | {r['kept'] or 'no: adapted'} | "
              f"{r['seconds']:.0f} |" for r in rows]
    save_results(args.name, "\n".join(lines) + "\n", {"rows": rows, "command": command},
                 figure if len(args.weights) > 1 else None)  # a line needs two points
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
