"""Does the spot check's interval contain the whole-stack IoU? Leave one volume out, on held-out stacks.

Run: python benchmarks/bench_spot_check.py [--models lucchi-pp vnc lucchi-pp-robust] [--models-dir /work/models]
     [--threads 1]

Needs ``../shared/data/real/`` (not shipped). The held-out stacks are those of
``benchmarks/bench_real_generalisation.py`` (its ``targets``: the whole Lucchi++ test volume, 42 slices, and
VNC slices 14-19 at their true pixel sizes; and its simulated other labs, here ``--sim-slices`` 512 x 512
crops each). Per (model, stack): the model is adapted (cumulative AdaBN, the library default) and the
whole stack segmented once; its IoU is the truth the interval should contain. Then every way a user
could annotate one slice is a case: the whole slice (``region="slice"``), the bounding box of its
mitochondria (``"bbox"``), and each quarter of it that holds at least ``MIN_PIXELS`` labelled pixels
(a rectangle, given as ``mask``). Slices without mitochondria are skipped (a user would annotate
another). Each case gets :func:`score_segmentation`'s IoU and bootstrap SD.

The between-slice SD is fitted leave one volume out: cases from stacks made from Lucchi++ (real and
simulated) fit it for the VNC-derived stacks and the other way round; coverage and width are then
measured on the left-out volume. Every stack counts once per annotation kind (its cases are
weighted 1 / their number). The shipped constant (``BETWEEN_SLICE_SD``) is the fit on every case.
Rows are appended to ``bench_spot_check.partial.jsonl`` as they finish; a rerun skips them.

Writes ``benchmarks/results/bench_spot_check.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, header, write  # noqa: E402
from bench_real_generalisation import TRAINED_ON, targets  # noqa: E402
from em_data import available  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.bound.spot_check import (  # noqa: E402
    BETWEEN_SLICE_SD,
    LEVEL,
    arcsine,
    fit_between_sd,
    score_segmentation,
    stack_interval,
)

#: a quarter-slice rectangle is annotated only when it holds at least this many labelled pixels
MIN_PIXELS = 200
KINDS = ("slice", "bbox", "quarter")


def cases(seg: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Every one-slice annotation of a segmented stack: its IoU, bootstrap SD and tiles."""
    out = []
    for z in range(len(y)):
        t = y[z] > 0
        if not t.any():
            continue
        for region in ("slice", "bbox"):
            s = score_segmentation(seg[z], y[z], region=region)
            out.append({"z": z, "kind": region, "iou": s.iou, "within": s.within_sd, "tiles": s.n_tiles})
        h, w = t.shape
        for q, (ys, xs) in enumerate([(slice(0, h // 2), slice(0, w // 2)), (slice(0, h // 2), slice(w // 2, w)),
                                      (slice(h // 2, h), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))]):
            if np.count_nonzero(t[ys, xs]) < MIN_PIXELS:
                continue
            m = np.zeros_like(t)
            m[ys, xs] = True
            s = score_segmentation(seg[z], y[z], mask=m)
            out.append({"z": z, "kind": "quarter", "q": q, "iou": s.iou, "within": s.within_sd, "tiles": s.n_tiles})
    return out


def run(models: list[str], models_dir: Path | None, real_slices: int, sim_slices: int) -> dict[str, Any]:
    partial = RESULTS / "bench_spot_check.partial.jsonl"
    done = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    rows, reused, timing = [], 0, []
    tg = targets(real_slices, sim_slices)
    for name in models:
        path = models_dir / f"{name}.safetensors" if models_dir and (models_dir / f"{name}.safetensors").exists() else name
        model = nb.load_model(path, device="cpu")
        for t in tg:
            old = [r for r in done if r["model"] == name and r["target"] == t["name"]]
            if old:
                rows.append(old[0])
                reused += 1
                continue
            t0 = time.perf_counter()
            x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
            if px is None:  # "not stated": runs as it is
                px = (getattr(model, "meta", None) or {}).get("pixel_size_nm")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=px, seed=0)
                seg = nb.predict(adapted, x, device="cpu", pixel_size_nm=px) > 0.5
                if t["kind"] == "real":  # the check as a user runs it: one slice, the network included
                    z = int(np.argmax((y > 0).reshape(len(y), -1).sum(1)))
                    lab = np.zeros_like(y)
                    lab[z] = y[z]
                    t1 = time.perf_counter()
                    nb.spot_check(adapted, x, lab, device="cpu", pixel_size_nm=px)
                    timing.append({"model": name, "target": t["name"], "slice": list(y.shape[1:]),
                                   "seconds": time.perf_counter() - t1})
            truth = nb.iou(seg, y)
            domain = "in-domain" if t["volume"] in TRAINED_ON.get(name, set()) else "cross-lab"
            rows.append({"model": name, "target": t["name"], "volume": t["volume"], "kind": t["kind"],
                         "domain": domain, "shape": list(y.shape), "stack_iou": truth, "cases": cases(seg, y)})
            with partial.open("a") as f:
                f.write(json.dumps(rows[-1], default=float) + "\n")
            print(f"{name:>16} | {t['name']:<34} | stack IoU {truth:.3f} | {len(rows[-1]['cases'])} cases | "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    return {"rows": rows, "reused": reused, "timing": timing}


def flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per case, with its stack's facts, the gap on the arcsine scale and its weight."""
    out = []
    for r in rows:
        for kind in KINDS:
            cs = [c for c in r["cases"] if c["kind"] == kind]
            for c in cs:
                out.append({**{k: r[k] for k in ("model", "target", "volume", "kind", "domain", "stack_iou")},
                            "region": kind, "iou": c["iou"], "within": c["within"], "tiles": c["tiles"],
                            "gap": float(arcsine(r["stack_iou"]) - arcsine(c["iou"])), "w": 1.0 / len(cs)})
    return out


def evaluate(cs: list[dict[str, Any]], sd: float) -> dict[str, float]:
    """Coverage (each stack once per annotation kind) and median width of the intervals with ``sd``."""
    if not cs:
        return {"n": 0}
    iv = [stack_interval(c["iou"], c["within"], 1, between_sd=sd) for c in cs]
    hit = np.array([lo <= c["stack_iou"] <= hi for c, (lo, hi) in zip(cs, iv)], float)
    w = np.array([c["w"] for c in cs])
    return {"n": len(cs), "stacks": len({(c["model"], c["target"]) for c in cs}),
            "coverage": float((hit * w).sum() / w.sum()), "coverage_cases": float(hit.mean()),
            "median_width": float(np.median([hi - lo for lo, hi in iv])),
            "median_abs_error": float(np.median([abs(c["iou"] - c["stack_iou"]) for c in cs]))}


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cs = flat(rows)
    fit = lambda sel: fit_between_sd([c["gap"] for c in sel], [c["within"] for c in sel], [c["w"] for c in sel])  # noqa: E731
    folds = {}
    held = []
    for vol in ("lucchi", "vnc"):
        sd = fit([c for c in cs if c["volume"] != vol])
        folds[vol] = sd
        held += [{**c, "sd": sd} for c in cs if c["volume"] == vol]
    groups: dict[str, Any] = {}

    def add(label: str, sel: list[dict[str, Any]]) -> None:
        by_fold = [evaluate([c for c in sel if c["volume"] == v], folds[v]) for v in folds]
        n = sum(g["n"] for g in by_fold)
        if not n:
            return
        wsum = lambda key: sum(g[key] * g["stacks"] for g in by_fold if g["n"]) / sum(g["stacks"] for g in by_fold if g["n"])  # noqa: E731
        groups[label] = {"n": n, "stacks": sum(g["stacks"] for g in by_fold if g["n"]), "coverage": wsum("coverage"),
                         "median_width": float(np.median([stack_interval(c["iou"], c["within"], 1, between_sd=c["sd"])[1]
                                                          - stack_interval(c["iou"], c["within"], 1, between_sd=c["sd"])[0]
                                                          for c in sel])),
                         "median_abs_error": float(np.median([abs(c["iou"] - c["stack_iou"]) for c in sel])),
                         "no_between": evaluate(sel, 0.0)["coverage"]}

    add("all held-out cases", held)
    add("all but inverted contrast", [c for c in held if "inverted" not in c["target"]])
    for kind in KINDS:
        add(f"annotation: {kind}", [c for c in held if c["region"] == kind and "inverted" not in c["target"]])
    for label, keep in (("real, in-domain", lambda c: c["kind"] == "real" and c["domain"] == "in-domain"),
                        ("real, cross-lab", lambda c: c["kind"] == "real" and c["domain"] == "cross-lab"),
                        ("simulated, in-domain volume", lambda c: c["kind"] == "simulated" and c["domain"] == "in-domain"
                         and "inverted" not in c["target"]),
                        ("simulated, cross-lab volume", lambda c: c["kind"] == "simulated" and c["domain"] == "cross-lab"
                         and "inverted" not in c["target"])):
        add(label, [c for c in held if keep(c)])
    for model in dict.fromkeys(c["model"] for c in held):
        add(f"model {model} (all but inverted)", [c for c in held if c["model"] == model and "inverted" not in c["target"]])
    for vol in folds:
        add(f"left-out volume {vol} (all but inverted)", [c for c in held if c["volume"] == vol and "inverted" not in c["target"]])
    worst = sorted(({"model": c["model"], "target": c["target"], "region": c["region"], "iou": c["iou"],
                     "stack_iou": c["stack_iou"], "interval": stack_interval(c["iou"], c["within"], 1, between_sd=c["sd"])}
                    for c in held), key=lambda c: -abs(c["iou"] - c["stack_iou"]))[:8]
    return {"folds": folds, "fit_all": fit(cs), "shipped": BETWEEN_SLICE_SD, "groups": groups, "worst": worst,
            "in_sample_shipped": evaluate(cs, BETWEEN_SLICE_SD), "n_cases": len(cs)}


def report(result: dict[str, Any], a: dict[str, Any]) -> str:
    lines = [f"Nominal level {LEVEL:.0%}. Between-slice SD (arcsine scale) fitted leave one volume out: "
             + ", ".join(f"for {v} {sd:.4f} (fitted on the other volume's cases)" for v, sd in a["folds"].items()),
             f"fitted on all cases: {a['fit_all']:.4f}; shipped BETWEEN_SLICE_SD: {a['shipped']:.4f}"
             + ("" if round(a["fit_all"], 2) == round(a["shipped"], 2) else "  <-- differs: update the constant"),
             "", "Held-out coverage (each stack counts once per annotation kind; the interval must contain the"
             " whole-stack IoU):", "",
             "| cases | stacks | annotated one-slice cases | coverage | median width | median abs(slice - stack) |"
             " coverage without the between-slice term |", "|---|---|---|---|---|---|---|"]
    for label, g in a["groups"].items():
        lines.append(f"| {label} | {g['stacks']} | {g['n']} | {g['coverage']:.2f} | {g['median_width']:.2f} | "
                     f"{g['median_abs_error']:.3f} | {g['no_between']:.2f} |")
    s = a["in_sample_shipped"]
    lines += ["", f"In sample, with the shipped constant: coverage {s['coverage']:.2f}, median width {s['median_width']:.2f}"
              f" ({s['n']} cases, {s['stacks']} stacks).", "", "Largest slice-vs-stack gaps (held out):", "",
              "| model | stack | annotation | slice IoU | stack IoU | interval |", "|---|---|---|---|---|---|"]
    for w in a["worst"]:
        lines.append(f"| {w['model']} | {w['target']} | {w['region']} | {w['iou']:.3f} | {w['stack_iou']:.3f} | "
                     f"{w['interval'][0]:.2f}-{w['interval'][1]:.2f} |")
    lines += ["", "Per stack: whole-stack IoU after AdaBN, and the spread of its one-slice IoUs:", "",
              "| model | stack | kind | stack IoU | whole-slice IoUs min-max |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        v = [c["iou"] for c in r["cases"] if c["kind"] == "slice"]
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']}, {r['domain']} | {r['stack_iou']:.3f} | "
                     + (f"{min(v):.3f}-{max(v):.3f} ({len(v)} slices)" if v else "no labelled slice") + " |")
    if result["timing"]:
        lines += ["", "Time of nb.spot_check on one annotated slice (segmenting it included; 1 torch thread):", ""]
        lines += [f"- {t['model']} on {t['target']} ({t['slice'][0]} x {t['slice'][1]} px): {t['seconds']:.1f} s"
                  for t in result["timing"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lucchi-pp", "vnc", "lucchi-pp-robust"])
    ap.add_argument("--models-dir", type=Path, default=Path("/work/models"), help="look for <name>.safetensors here first")
    ap.add_argument("--real-slices", type=int, default=42, help="slices of each real held-out stack (default: all)")
    ap.add_argument("--sim-slices", type=int, default=6, help="slices per simulated stack (default 6)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not available():
        print("../shared/data/real is missing: nothing to evaluate", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args.models, args.models_dir, args.real_slices, args.sim_slices)
    a = analyse(result["rows"])
    command = "python benchmarks/bench_spot_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    seconds = round(time.perf_counter() - t0)
    text = header("Spot check: does the one-slice interval contain the whole-stack IoU? (leave one volume out)") + (
        f"# command: {command}\n# wall time: {seconds} s"
        + (f" ({result['reused']} of {len(result['rows'])} stacks read back from bench_spot_check.partial.jsonl, "
           "written by earlier runs of the same command)" if result["reused"] else "")
        + "\n\n" + report(result, a) + "\n")
    write("bench_spot_check", text)
    (RESULTS / "bench_spot_check.json").write_text(json.dumps({"command": command, "seconds": seconds, **result,
                                                               "analysis": a}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
