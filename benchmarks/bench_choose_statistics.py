"""Choosing between the source and the adapted statistics per stack, without labels: what the witnesses would pick.

Run: python benchmarks/bench_choose_statistics.py [--models lucchi-pp vnc em-generalist-2]

AdaBN helps where the target differs from the training data and can cost a little where it does not
(small crops of the model's own volumes, ``bench_small_crops.py``). A label-free per-stack choice
between the source model and its adapted copy would keep the gains and drop the losses. The
candidates are the reliability check's witnesses (``napari_bnadapt.bound.witnesses``), measured on
BOTH models on the same central crops (2 slices, 256 px, model grid): flip consistency (a quarter turn,
a left-right and an up-down flip), scale consistency (0.8x, 1.25x), mean pixel entropy, and the
predicted foreground fraction against the model's training data (``foreground_match``: minus the
absolute log ratio). Each rule is parameter-free: it picks the model with the better value of one
witness (ties: the adapted one). No threshold is fitted, so nothing is tuned on these cases; the last
rule ("both": the source only when it is more flip-consistent AND its foreground fraction is no farther
from the training one; ``napari_bnadapt.adabn.statistics_choice.keep_source``, the library's
``choose_statistics``) was written after the others were seen on the first two runs' rows, and checked on
new crops afterwards (``--crop-seed 1``).

Targets: the suite's (``bench_real_generalisation.targets(3, 1)``: real held-out slices of both volumes and the
simulated other labs) and ``bench_small_crops``' seeded crops of the models' own test slices with their
mild shifts. ``--witness-slices 6 --witness-crop 1024 --name bench_choose_statistics_large``: the
witnesses on (nearly) the whole stack instead of the reliability check's two 256 px crops, as the
library's choice does (``--suite-only``: the suite's targets alone; about 20-30 s a case). Source-only and
AdaBN IoU of the crops are read from ``results/bench_small_crops.json`` (the same adaptation: 64 patches,
seed 0). ``--crop-seed N`` (N > 0): new crops of the same sizes drawn with that seed, their IoU measured
here, and no suite targets, so that a rule fixed beforehand is checked on cases it was not written on.
``--cost``: only what the library's choice costs against one segmentation, and whether its witnesses
equal this benchmark's (``<name>_cost``). Rows are appended to ``<name>.partial.jsonl`` as they finish;
a rerun reuses them. Needs ``../shared/data/real/``. Writes ``benchmarks/results/<name>.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, add_model_arguments, header, load_em_model, read_partial, save_results  # noqa: E402
from bench_real_generalisation import TRAINED_ON, targets  # noqa: E402
from bench_small_crops import SHIFTS, crops  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.adabn.statistics_choice import keep_source  # noqa: E402
from napari_bnadapt.bound.decision import signal_log_ratio  # noqa: E402
from napari_bnadapt.bound.witnesses import foreground_match  # noqa: E402


def witnesses(model: Any, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities of ``model`` on the crops ``x`` (network input) and its witnesses there."""
    import torch

    from napari_bnadapt.bound.witnesses import WITNESS_SCALES, _back, _iou, crop_probabilities, _rescaled, flip_consistency

    dev = torch.device("cpu")
    model.eval()
    p0 = crop_probabilities(model, x, dev)
    flip = flip_consistency(model, x, dev, p0)
    scales = [_iou(_back(crop_probabilities(model, _rescaled(x, f), dev), x.shape[1:]), p0) for f in WITNESS_SCALES]
    entropy = float(np.mean(-(p0 * np.log(p0 + 1e-7) + (1 - p0) * np.log(1 - p0 + 1e-7))))
    return p0, {"flip": flip, "scale": float(np.mean(scales)), "fg": float((p0 > 0.5).mean()),
                "entropy": entropy}


def measure(model: Any, name: str, x: np.ndarray, truth: np.ndarray, px: Any, key: str,
            ious: dict[str, float] | None = None, slices: int = 2, crop: int = 256) -> dict[str, Any]:
    """One case: source-only and AdaBN IoU (unless given) and both models' witnesses on the same crops
    (``slices`` evenly spaced slices, central ``crop`` px on the model's grid: the reliability check's 2 x 256)."""
    from napari_bnadapt.bound.witnesses import _iou, witness_crops

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted, report = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
        if ious is None:
            ious = {"source": nb.iou(nb.predict(model, x, device="cpu", pixel_size_nm=px) > 0.5, truth),
                    "adabn": nb.iou(nb.predict(adapted, x, device="cpu", pixel_size_nm=px) > 0.5, truth)}
        t1 = time.perf_counter()
        xc = witness_crops(x, model, px, None, slices, crop)
    ps, ws = witnesses(model, xc)
    pa, wa = witnesses(adapted, xc)
    return {"key": key, "model": name, **ious, "S": ws, "A": wa, "agree": _iou(ps, pa),
            "fg_train": model.meta["source_statistics"]["signals"]["foreground_fraction"],
            "drift": report.drift, "seconds": time.perf_counter() - t0, "witness_seconds": time.perf_counter() - t1}


def _fg_match(w: dict[str, float], fg_train: float) -> float:
    return foreground_match(signal_log_ratio(w["fg"], fg_train))


#: rule name -> does it pick the adapted model? (parameter-free; ties go to the adapted model)
RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "flip consistency": lambda r: r["A"]["flip"] >= r["S"]["flip"],
    "flip + scale consistency": lambda r: r["A"]["flip"] + r["A"]["scale"] >= r["S"]["flip"] + r["S"]["scale"],
    "lower entropy": lambda r: r["A"]["entropy"] <= r["S"]["entropy"],
    "foreground match": lambda r: _fg_match(r["A"], r["fg_train"]) >= _fg_match(r["S"], r["fg_train"]),
    # written after the first four were seen on the first runs' rows; the library's choose_statistics
    "both": lambda r: not keep_source(r["S"]["flip"], r["A"]["flip"], r["S"]["fg"], r["A"]["fg"], r["fg_train"]),
}


def group(row: dict[str, Any]) -> str:
    """The table group of a row: model, then suite domain and kind, or crops as they are / shifted."""
    model, kind, domain, what, case = row["key"].split("|")
    if kind == "crop":
        return f"{model} | crops, {'as they are' if case == 'as it is' else 'shifted'}"
    return f"{model} | {'in-domain' if domain == 'in' else 'cross-lab'} {what}"


def tables(rows: list[dict[str, Any]]) -> str:
    """Mean IoU per group: source, AdaBN, the oracle (the better of the two), each rule; then the totals."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    names = list(RULES)
    lines = ["| model | targets | cases | source | AdaBN | better of the two (oracle) | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for g, rs in groups.items():
        pick = {k: [r["adabn"] if f(r) else r["source"] for r in rs] for k, f in RULES.items()}
        lines.append(f"| {g} | {len(rs)} | {np.mean([r['source'] for r in rs]):.3f} | {np.mean([r['adabn'] for r in rs]):.3f} "
                     f"| {np.mean([max(r['source'], r['adabn']) for r in rs]):.3f} | "
                     + " | ".join(f"{np.mean(pick[k]):.3f}" for k in names) + " |")
    lines += ["", "Over all cases, each rule against plain AdaBN (rule - AdaBN): mean, worst case, cases it lost "
              "more than 0.02 on:", "", "| rule | mean | worst | lost > 0.02 | picked the source |", "|---|---|---|---|---|"]
    for k, f in RULES.items():
        d = [(r["adabn"] if f(r) else r["source"]) - r["adabn"] for r in rows]
        lines.append(f"| {k} | {np.mean(d):+.4f} | {min(d):+.3f} | {sum(x < -0.02 for x in d)} of {len(d)} | "
                     f"{sum(not f(r) for r in rows)} |")
    return "\n".join(lines)


def cost(names: list[str], models_dir: Any, repeats: int = 3) -> tuple[str, list[dict[str, Any]]]:
    """Seconds of the library's choice (``choose_statistics``, its default sample) against one segmentation of the
    same stack (``predict``), on 6 held-out slices of each real volume: medians of ``repeats`` runs, measured
    alternately so that the machine's load falls on both alike. Also the largest difference between the
    library's witnesses and this benchmark's (:func:`witnesses`) on the same sample: the rows above measure
    what the library does only if it is 0."""
    from napari_bnadapt.adabn.statistics_choice import DEFAULT_SIDE, DEFAULT_SLICES, choose_statistics
    from napari_bnadapt.bound.witnesses import witness_crops

    lines = ["| model | stack | segmentation (s) | choice (s) | choice / segmentation | library - benchmark witnesses "
             "(largest) | kept |", "|---|---|---|---|---|---|---|"]
    rows = []
    for name in names:
        model = load_em_model(name, models_dir)
        for vol in ("lucchi", "vnc"):
            xm, _ = load_split(vol, "test")
            x = np.asarray(xm[np.linspace(0, len(xm) - 1, 6).round().astype(int)])
            px = RECIPES[vol]["pixel_size_nm"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
            seg, cho = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                nb.predict(adapted, x, device="cpu", pixel_size_nm=px)
                seg.append(time.perf_counter() - t)
                cho.append(choose_statistics(model, adapted, x, device="cpu", pixel_size_nm=px)[1].seconds)
            choice = choose_statistics(model, adapted, x, device="cpu", pixel_size_nm=px)[1]
            xc = witness_crops(x, model, px, None, DEFAULT_SLICES, DEFAULT_SIDE)
            (_, ws), (_, wa) = witnesses(model, xc), witnesses(adapted, xc)
            diff = max(abs(choice.flip_source - ws["flip"]), abs(choice.flip_adapted - wa["flip"]),
                       abs(choice.foreground_source - ws["fg"]), abs(choice.foreground_adapted - wa["fg"]))
            s, c = float(np.median(seg)), float(np.median(cho))
            rows.append({"model": name, "volume": vol, "shape": list(x.shape), "segmentation_s": seg, "choice_s": cho,
                         "choice": choice.to_dict(), "witness_difference": diff})
            lines.append(f"| {name} | {RECIPES[vol]['label']} test, {' x '.join(map(str, x.shape))} | {s:.1f} | {c:.1f} "
                         f"| {c / s:.1f} | {diff:.1e} | {'adapted' if choice.adapted else 'source'} |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc", "em-generalist-2"], name="bench_choose_statistics")
    ap.add_argument("--witness-slices", type=int, default=2, help="slices the witnesses look at (default 2)")
    ap.add_argument("--witness-crop", type=int, default=256, help="side of their central crops, px (default 256)")
    ap.add_argument("--suite-only", action="store_true", help="the suite's targets only, not the small crops")
    ap.add_argument("--crop-seed", type=int, default=0,
                    help="seed of the small crops (default 0: bench_small_crops' crops, IoU read from its results; "
                         "any other: new crops, IoU measured here, and no suite targets)")
    ap.add_argument("--cost", action="store_true",
                    help="only time the library's choice against one segmentation (writes <name>_cost)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    command = "python benchmarks/bench_choose_statistics.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.cost:
        table, rows = cost(args.models, args.models_dir)
        text = header("What choosing source or adapted statistics costs, against one segmentation") + (
            f"# command: {command}\n\n{table}\n")
        save_results(f"{args.name}_cost", text, {"command": command, "rows": rows})
        return 0
    partial = RESULTS / f"{args.name}.partial.jsonl"
    done = {r["key"]: r for r in read_partial(partial)}
    small = {} if args.crop_seed else {(r["model"], r["volume"], r["crop"], r["shift"]): r
                                       for r in json.loads((RESULTS / "bench_small_crops.json").read_text())["rows"]}
    rows, reused = [], 0

    def run(model: Any, name: str, x: np.ndarray, truth: np.ndarray, px: Any, key: str,
            ious: dict[str, float] | None = None) -> None:
        nonlocal reused
        if key in done:
            rows.append(done[key])
            reused += 1
            return
        row = measure(model, name, x, truth, px, key, ious, args.witness_slices, args.witness_crop)
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"{key}: source {row['source']:.3f} AdaBN {row['adabn']:.3f}", flush=True)

    for name in args.models:
        model = load_em_model(name, args.models_dir)
        for t in [] if args.crop_seed else targets(3, 1):
            px = t["pixel_size_nm"] or model.meta.get("pixel_size_nm")
            domain = "in" if t["volume"] in TRAINED_ON[name] else "cross"
            run(model, name, t["image"], t["labels"] > 0, px, f"{name}|suite|{domain}|{t['kind']}|{t['name']}")
        for volume in [] if args.suite_only else sorted(TRAINED_ON[name]):
            px, label = RECIPES[volume]["pixel_size_nm"], RECIPES[volume]["label"]
            seed = f" seed {args.crop_seed}" if args.crop_seed else ""
            for crop, x0, truth in crops(volume, args.crop_seed):
                for shift, f in SHIFTS.items():
                    s = small.get((name, label, crop, shift)) if not seed else None
                    run(model, name, f(x0), truth, px, f"{name}|crop|in|{label} {crop}{seed}|{shift}",
                        {"source": s["source"], "adabn": s["adabn"]} if s else None)
    text = header("Source or adapted statistics per stack, chosen by one witness (no labels)") + (
        f"# witnesses on {args.witness_slices} slices x {args.witness_crop} px central crops (model grid)\n"
        f"# command: {command}\n# wall time: {time.perf_counter() - t0:.0f} s"
        + (f" ({reused} of {len(rows)} rows read back from {args.name}.partial.jsonl)" if reused else "")
        + "\n\n" + tables(rows) + "\n")
    save_results(args.name, text, {"rows": rows, "command": command,
                                   "witness_crops": [args.witness_slices, args.witness_crop]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
