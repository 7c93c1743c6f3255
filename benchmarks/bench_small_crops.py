"""AdaBN on small crops of a model's own volumes, as they are and mildly shifted: what it gains, what the guard says.

Run: python benchmarks/bench_small_crops.py [--models em-generalist-2 lucchi-pp vnc]

The suite (``bench_real_generalisation.py``) adapts to whole slices; a user trying the plugin often
adapts to a small crop. Here: random crops (seeded) of the held-out test slices of each volume the
model was trained on, 3 of 6 x 512 x 512 and 2 of 3 x 256 x 256 pixels, at their true pixel size, as
they are and with mild grey-value shifts (``bench_real_generalisation._grey``: offset +0.04, contrast
0.85, blur 1 px, the suite's low dose). Per case: source-only and AdaBN IoU (64 patches, seed 0: on a
crop this small every pixel is used), the guard's answer and against which reference
(:func:`napari_bnadapt.adabn.need.adaptation_needed`), the largest mean shift and contrast change
against that reference, and the half-sample floor. ``--mode prior``: Schneider et al.'s estimator instead,
which weighs the source statistics like ``--prior`` target patches (a small crop moves them less);
``--mode balanced``: the target pixels reweighted to the training data's share of mitochondria.
``--content-floor``: the guard also allows for how far crops of the training data lie from the model's
statistics (:mod:`napari_bnadapt.adabn.content_floor`), and the guard without it is reported beside. Needs
``../shared/data/real/``. Writes
``benchmarks/results/<name>.{txt,json}``. Foreground IoU at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import add_model_arguments, header, load_em_model, save_results  # noqa: E402
from bench_real_generalisation import TRAINED_ON, _grey  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.adabn.estimators import MODES  # noqa: E402

SHIFTS = {"as it is": lambda x: x, "offset +0.04": lambda x: _grey(x, offset=0.04),
          "contrast 0.85": lambda x: _grey(x, gain=0.85), "blur 1 px": lambda x: _grey(x, blur=1.0),
          "low dose": lambda x: _grey(x, gamma=0.7, gain=0.7, noise=0.06, seed=1)}
#: (side, slices, how many) of the crops per volume
CROPS = ((512, 6, 3), (256, 3, 2))


def crops(volume: str, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The seeded random crops of ``volume``'s test slices: (name, image, labels)."""
    rng = np.random.default_rng(seed)
    xm, ym = load_split(volume, "test")
    out = []
    for side, depth, n in CROPS:
        for k in range(n):
            z, y, x = (int(rng.integers(0, s - d + 1)) for s, d in zip(xm.shape, (depth, side, side)))
            box = np.s_[z:z + depth, y:y + side, x:x + side]
            out.append((f"{depth}x{side}x{side} #{k + 1}", np.asarray(xm[box]), np.asarray(ym[box]) > 0))
    return out


def measure(model: Any, x: np.ndarray, truth: np.ndarray, px: tuple[float, float], content_floor: bool = False,
            **adapt_options: Any) -> dict[str, Any]:
    """Source-only and AdaBN IoU of one case (``adapt_options``: the estimator), and the guard's view of it."""
    from napari_bnadapt.adabn.need import STD_CHANGE_LIMIT, adaptation_needed
    from napari_bnadapt.adabn.references import bn_statistics, compare, references

    source = nb.iou(nb.predict(model, x, device="cpu", pixel_size_nm=px) > 0.5, truth)
    adapted, report = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0, **adapt_options)
    adabn = nb.iou(nb.predict(adapted, x, device="cpu", pixel_size_nm=px) > 0.5, truth)
    verdict = adaptation_needed(model, adapted, report, content_floor=content_floor)
    plain = adaptation_needed(model, adapted, report) if content_floor else verdict
    # the reference nearest in the guard's own terms, whatever it decided
    target = bn_statistics(adapted)
    near = {k: compare(ref, target) for k, ref in references(model)}
    nearest = min(near, key=lambda k: max(near[k].shift / verdict.floor, near[k].std_change / STD_CHANGE_LIMIT))
    return {"source": source, "adabn": adabn, "needed": bool(verdict.needed), "floor": verdict.floor,
            "by_content_floor": bool(verdict.by_content_floor), "needed_without_content_floor": bool(plain.needed),
            "nearest": nearest, "mean_shift": near[nearest].shift, "std_change": near[nearest].std_change}


def cost(args: Any, argv: list[str] | None) -> int:
    """Seconds of ``nb.adapt`` with ``args.mode`` and with ``cumulative`` on the same crops, medians of 3, run
    alternately so that both see the same machine load."""
    rows = []
    for name in args.models:
        model = load_em_model(name, args.models_dir)
        volume = sorted(TRAINED_ON[name])[0]
        px = RECIPES[volume]["pixel_size_nm"]
        firsts = {}
        for crop, x, _ in crops(volume, args.seed):
            firsts.setdefault(crop.split(" ")[0], (crop, x))
        for crop, x in firsts.values():
            times: dict[str, list[float]] = {"cumulative": [], args.mode: []}
            for _ in range(3):
                for mode in times:
                    t = time.perf_counter()
                    nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0, mode=mode, prior=args.prior)
                    times[mode].append(time.perf_counter() - t)
            med = {m: float(np.median(v)) for m, v in times.items()}
            rows.append({"model": name, "volume": RECIPES[volume]["label"], "crop": crop, **med})
            print(f"{name} | {crop} | cumulative {med['cumulative']:.2f} s | {args.mode} {med[args.mode]:.2f} s", flush=True)
    lines = [header(f"AdaBN time on small crops: {args.mode} against cumulative"),
             f"# command: python benchmarks/bench_small_crops.py {' '.join(sys.argv[1:] if argv is None else argv)}", "",
             f"| model | volume | crop | cumulative (s) | {args.mode} (s) | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['volume']} | {r['crop']} | {r['cumulative']:.2f} | {r[args.mode]:.2f} | "
              f"{r[args.mode] / r['cumulative']:.1f} |" for r in rows]
    save_results(args.name, "\n".join(lines) + "\n", {"rows": rows, "command": lines[1][len("# command: "):]})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["em-generalist-2", "lucchi-pp", "vnc"], name="bench_small_crops")
    ap.add_argument("--seed", type=int, default=0, help="seeds the crops")
    ap.add_argument("--mode", choices=MODES, default="cumulative",
                    help="the AdaBN estimator (default: the library's, cumulative)")
    ap.add_argument("--prior", type=float, default=None, help="with --mode prior: the source pseudo-count N (default 16)")
    ap.add_argument("--content-floor", action="store_true",
                    help="the guard also allows for how far crops of the training data of the crop's size lie from "
                    "the model's statistics (napari_bnadapt.adabn.content_floor; models that carry one)")
    ap.add_argument("--cost", action="store_true",
                    help="instead: the time of AdaBN with --mode against cumulative on the first crop of each size "
                    "of each model's first volume, as it is (medians of 3)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    if args.cost:
        return cost(args, argv)
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        model = load_em_model(name, args.models_dir)
        for volume in sorted(TRAINED_ON[name]):
            px = RECIPES[volume]["pixel_size_nm"]
            for crop, x0, truth in crops(volume, args.seed):
                for shift, f in SHIFTS.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r = {"model": name, "volume": RECIPES[volume]["label"], "crop": crop, "shift": shift,
                             **measure(model, f(x0), truth, px, args.content_floor, mode=args.mode,
                                       prior=args.prior)}
                    rows.append(r)
                    print(f"{name} | {r['volume']} {crop} | {shift:<13} | source {r['source']:.3f} AdaBN "
                          f"{r['adabn']:.3f} | needed {r['needed']}", flush=True)
    lines = [header("AdaBN on small crops of the models' own volumes"),
             f"# command: python benchmarks/bench_small_crops.py {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# wall time: {time.perf_counter() - t0:.0f} s", "",
             "| model | volume | crop | shift | source only | AdaBN | AdaBN - source | guard: needed | nearest reference "
             "| mean shift / floor | contrast change | kept by the content floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['volume']} | {r['crop']} | {r['shift']} | {r['source']:.3f} | {r['adabn']:.3f} | "
              f"{r['adabn'] - r['source']:+.3f} | {r['needed']} | {r['nearest']} | {r['mean_shift'] / r['floor']:.1f} | "
              f"{r['std_change']:.3f} | {r.get('by_content_floor', False)} |" for r in rows]
    lines += ["", "Per model and volume (AdaBN - source over the crops; the guarded result keeps the source where "
              "'needed' is False; with --content-floor, the last column is the guard without it):", "",
              "| model | volume | shift | cases | mean | worst | best | guarded mean | guarded, no content floor |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["volume"], r["shift"]) for r in rows):
        sel = [r for r in rows if (r["model"], r["volume"], r["shift"]) == key]
        d = [r["adabn"] - r["source"] for r in sel]
        g = [(r["adabn"] if r["needed"] else r["source"]) - r["source"] for r in sel]
        g0 = [(r["adabn"] if r.get("needed_without_content_floor", r["needed"]) else r["source"]) - r["source"]
              for r in sel]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(sel)} | {np.mean(d):+.3f} | {min(d):+.3f} | "
                     f"{max(d):+.3f} | {np.mean(g):+.3f} | {np.mean(g0):+.3f} |")
    save_results(args.name, "\n".join(lines) + "\n", {"rows": rows, "command": lines[1][len("# command: "):]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
