"""The trust verdict on volumes from other labs: witnesses, leave-one-volume-out validation, every false promise.

Run: python benchmarks/bench_trust.py [--models lucchi-pp vnc em-generalist] [--models-dir /work/models]

Needs ``../shared/data/real/`` (not shipped). The cases are the targets of
``bench_real_generalisation.py`` (its :func:`targets`, reused): per real volume (Lucchi++, VNC) its
held-out test slices at their true pixel size, and the simulated other-lab versions of held-out
slices (pixel sizes, low dose, blur and stripes, inversion, a combination). For every (model,
target) case: the true IoU after AdaBN (the library default: 64 patches, seed 0), the witnesses of
:mod:`napari_bnadapt.bound.witnesses`, the noise-floor test of
:func:`napari_bnadapt.adabn.need.adaptation_needed` (the in-domain route of
:mod:`napari_bnadapt.bound.trust`), the label-free gate signals, and what the reliability report
of the model file as bundled before issue 15 promised (its W2 curve read at the measured distance).

Validation, leave one volume out: the trust calibration (:func:`napari_bnadapt.bound.trust.fit_trust`)
is fitted on the cases derived from one real volume and applied to the cases derived from the
other (every model), and the other way round. Reported per fold and pooled: coverage of the stated
bounds, how often a bound is stated, the median gap, the verdicts, and EVERY case where a bound
was stated above the true IoU or "reliable" was said with a true IoU below 0.6.

Rows are appended to ``bench_trust.partial.jsonl`` as they finish; a rerun with the same arguments
reads them back (delete the file to start over). Writes ``benchmarks/results/bench_trust.{txt,json}``.
Torch runs on 1 thread by default (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, add_model_arguments, header, load_em_model, read_partial, write  # noqa: E402
from bench_real_generalisation import domain_of, targets  # noqa: E402
from em_data import real_data_ready  # noqa: E402

from napari_bnadapt.bound.trust import FALSE_RELIABLE_BELOW  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

NAME = "bench_trust"


def measure(model: Any, name: str, t: dict[str, Any]) -> dict[str, Any]:
    """One case: true adapted IoU, witnesses, gate signals and the pre-issue-15 promise."""
    from napari_bnadapt.bound.curve import LowerBound
    from napari_bnadapt.bound.witnesses import measure_witnesses

    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    run_px = px if px is not None else (model.meta or {}).get("pixel_size_nm")  # "not stated": runs as is
    t0 = time.perf_counter()
    adapted, adapt_report = nb.adapt(model, x, device="cpu", pixel_size_nm=run_px, seed=0)
    iou = nb.iou(nb.predict(adapted, x, device="cpu", pixel_size_nm=run_px) > 0.5, y > 0)
    t_adapt = time.perf_counter() - t0
    # what the model file promised before issue 15: its W2 calibration as it is, degenerate or not
    with mock.patch("napari_bnadapt.bound.assess.calibration_problem", lambda cal: ""):
        rep = nb.reliability(model, adapted, x, device="cpu", pixel_size_nm=run_px, witnesses=False)
    cal = (model.meta or {}).get("calibration")
    old_bound = None
    if cal is not None and rep.calibration_x is not None and math.isfinite(rep.calibration_x):
        old_bound = 0.0 if rep.gate_failures else float(LowerBound.from_dict(cal["curve"])(rep.calibration_x))
    t1 = time.perf_counter()
    w = measure_witnesses(model, adapted, x, pixel_size_nm=run_px, device="cpu")
    domain = domain_of(name, t["volume"])
    return {
        "model": name, "target": t["name"], "volume": t["volume"], "kind": t["kind"], "domain": domain,
        "iou": float(iou), "witnesses": w.to_dict(), **_need(model, adapted, adapt_report),
        "gate_failures": [list(g[:1]) for g in rep.gate_failures],
        "features": {k: float(v) for k, v in rep.signals.items() if isinstance(v, (int, float))},
        "old_bound": old_bound, "old_verdict": rep.verdict if cal is not None else None, "old_x": rep.calibration_x,
        "seconds": {"adapt_segment": t_adapt, "witnesses": time.perf_counter() - t1},
    }


def _need(model: Any, adapted: Any, adapt_report: Any) -> dict[str, Any]:
    """Whether the target's statistics were beyond the noise floor (the in-domain route of bound/trust.py)."""
    from napari_bnadapt.adabn.need import adaptation_needed

    v = adaptation_needed(model, adapted, adapt_report)
    return {"needed": bool(v.needed), "need_ratio": float(v.ratio), "need_std_change": float(v.std_change)}


def _backfill(model: Any, t: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A row written before the noise-floor test and the object-size witness were recorded: adapt again
    (same seed, same result) and add them (the size witness as ``measure_witnesses`` computes it)."""
    import torch

    from napari_bnadapt.bound.witnesses import SIZE_CROP, WITNESS_SLICES, crop_probabilities, size_ratio, witness_crops

    run_px = t["pixel_size_nm"] if t["pixel_size_nm"] is not None else (model.meta or {}).get("pixel_size_nm")
    adapted, adapt_report = nb.adapt(model, t["image"], device="cpu", pixel_size_nm=run_px, seed=0)
    x = witness_crops(t["image"], model, run_px, None, WITNESS_SLICES, SIZE_CROP)
    p0 = crop_probabilities(adapted, x, torch.device("cpu"))
    return {**row, **_need(model, adapted, adapt_report),
            "witnesses": {**row["witnesses"], "size_ratio": size_ratio(model, p0)}}


def run_cases(models: list[str], models_dir: Path | None, real_slices: int, sim_slices: int) -> tuple[list, int]:
    partial = RESULTS / f"{NAME}.partial.jsonl"
    done = read_partial(partial)
    rows, reused, backfilled = [], 0, False
    tg = targets(real_slices, sim_slices)
    for name in models:
        model = load_em_model(name, models_dir)
        for t in tg:
            old = [r for r in done if r["model"] == name and r["target"] == t["name"]]
            if old:
                if "needed" not in old[0] or "size_ratio" not in old[0]["witnesses"]:
                    old[0].update(_backfill(model, t, old[0]))
                    backfilled = True
                    print(f"{name:>14} | {t['name']:<34} | recorded: needed {old[0]['needed']}, size ratio "
                          f"{old[0]['witnesses']['size_ratio']:.2f}", flush=True)
                rows.append(old[0])
                reused += 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = measure(model, name, t)
            rows.append(row)
            with partial.open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            w = row["witnesses"]
            print(f"{name:>14} | {t['name']:<34} | IoU {row['iou']:.3f} | old {row['old_bound']} | agree "
                  f"{w['patch_agreement']:.3f} flip {w['flip_consistency']:.3f} scale {w['scale_consistency']:.3f} "
                  f"| {sum(row['seconds'].values()):.0f} s", flush=True)
    if backfilled:  # the partial file keeps every row, now with the noise-floor test
        partial.write_text("".join(json.dumps(r, default=float) + "\n" for r in done))
    return rows, reused


# ---------------------------------------------------------------------------- analysis

def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a_) & np.isfinite(b_)
    return float(spearmanr(a_[ok], b_[ok]).statistic) if ok.sum() > 2 else math.nan


def analyse(rows: list[dict[str, Any]], models_dir: Path | None = None) -> dict[str, Any]:
    from napari_bnadapt.bound.trust import case_from_row, heldout_iou, leave_one_volume_out, shipped_trust
    from napari_bnadapt.bound.validity import calibration_problem

    # as the product decides: only a gate of a usable W2 calibration overrules the trust calibration
    usable, heldout = {}, {}
    for name in dict.fromkeys(r["model"] for r in rows):
        meta = load_em_model(name, models_dir).meta or {}
        usable[name] = meta.get("calibration") is not None and calibration_problem(meta["calibration"]) == ""
        heldout[name] = heldout_iou(meta)
    cases = [case_from_row({**r, "gate_failures": r["gate_failures"] if usable[r["model"]] else []}, heldout[r["model"]])
             for r in rows]
    shipped = shipped_trust(cases)
    lovo = leave_one_volume_out(cases, level=shipped["level"], witnesses=list(shipped["thresholds"]))
    corr = {}
    for label, keep in (("all", lambda r: True), ("cross-lab", lambda r: r["domain"] == "cross-lab"),
                        ("real + simulated, not inverted", lambda r: "inverted" not in r["target"])):
        sel = [r for r in rows if keep(r)]
        corr[label] = {"n": len(sel), **{k: _spearman([r["witnesses"][k] for r in sel], [r["iou"] for r in sel])
                                         for k in ("patch_agreement", "flip_consistency", "scale_consistency")},
                       "foreground_match": _spearman([-abs(r["features"]["fg_logratio"]) for r in sel],
                                                     [r["iou"] for r in sel]),
                       "confidence": _spearman([r["features"]["confidence"] for r in sel], [r["iou"] for r in sel])}
    return {"lovo": lovo, "shipped": shipped, "spearman": corr, "heldout_iou": heldout}


#: the toy example of docs/reliability.md (both grey levels +40; tests/conftest.py BRIGHT, tests/bound/test_assess.py)
TOY_BRIGHT = {"mu0": 136, "sigma0": 18, "mu1": 178, "sigma1": 18}


def toy_section() -> str:
    """The toy model must not regress: its stored W2 calibration, verdict-conditional coverage, one example."""
    from napari_bnadapt import synthetic
    from napari_bnadapt.bound.validity import calibration_problem, verdict_coverage

    model = nb.load_model("toy-perlin", device="cpu")
    cal = model.meta["calibration"]
    lines = ["## Toy model (no regression check)", "",
             f"Stored W2 calibration usable: {'yes' if not calibration_problem(cal) else calibration_problem(cal)}; "
             f"held-out coverage overall {cal['validation']['coverage']:.3f} "
             f"(n {cal['validation']['n']}), out-of-family hold-out {cal['holdout']['coverage']:.3f} "
             f"(n {cal['holdout']['n']}).", "",
             "| verdict | held-out cases | coverage given the verdict | lowest true IoU |", "|---|---|---|---|"]
    for v in ("reliable", "uncertain", "unreliable"):
        cov, n = verdict_coverage(cal, v)
        lo = cal["verdicts"].get(v, {}).get("iou_min")
        lines.append(f"| {v} | {n} | {_f(cov)} | {_f(lo)} |")
    hold = cal["holdout"]["verdicts"].get("reliable", {})
    lines += ["", f"Lowest true IoU behind a 'reliable' verdict: validation {_f(cal['verdicts']['reliable']['iou_min'])}, "
              f"out-of-family hold-out {_f(hold.get('iou_min'))} (no false 'reliable' below {FALSE_RELIABLE_BELOW}).", "",
              "Example (both grey levels +40, 32 images of 64 x 64, seed 21): `print(report)`", "", "```"]
    images, truth = synthetic.generate(32, (64, 64), seed=21, **TOY_BRIGHT)
    adapted, _ = nb.adapt(model, images, device="cpu")
    rep = nb.reliability(model, adapted, images, device="cpu")
    lines += [str(rep), "```", "",
              f"true IoU of the adapted model {nb.iou(nb.segment(adapted, images, device='cpu'), truth):.3f}"]
    return "\n".join(lines)


def _f(v: Any, d: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{d}f}"


def report(rows: list[dict[str, Any]], res: dict[str, Any]) -> str:
    lines = ["## Cases (true IoU after AdaBN, witnesses, what was promised)", "",
             "| model | target | kind | IoU | patch agreement | flip | scale | foreground match | "
             "object size ratio | within noise floor | bound before issue 15 | verdict now (leave-one-volume-out) | bound now | route |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lovo = res["lovo"]
    by_key = {(d["model"], d["target"]): d for d in lovo["decisions"]}
    for r in rows:
        w = r["witnesses"]
        d = by_key[(r["model"], r["target"])]
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']}, {r['domain']} | {r['iou']:.3f} | "
                     f"{_f(w['patch_agreement'])} | {_f(w['flip_consistency'])} | {_f(w['scale_consistency'])} | "
                     f"{-abs(r['features']['fg_logratio']):.2f} | {_f(w.get('size_ratio'), 2)} | "
                     f"{'yes' if r['needed'] is False else 'no'} | "
                     f"{_f(r['old_bound'], 2)} | {d['verdict']} | {_f(d['bound'], 2)} | "
                     f"{d['route'] if d['bound'] is not None else ''} |")
    lines += ["", "## Leave one volume out (fit on the cases of one real volume, judged on the other's)", "",
              "| judged on | cases | bound stated | coverage of stated bounds | median gap | reliable | "
              "uncertain | unreliable | no guarantee | false promises |", "|---|---|---|---|---|---|---|---|---|---|"]
    for fold in lovo["folds"] + [lovo["pooled"]]:
        v = fold["verdicts"]
        lines.append(f"| {fold['judged_on']} | {fold['n']} | {fold['n_stated']} | {_f(fold['coverage'], 2)} | "
                     f"{_f(fold['median_gap'], 3)} | {v.get('reliable', 0)} | {v.get('uncertain', 0)} | "
                     f"{v.get('unreliable', 0)} | {v.get('no guarantee', 0)} | {len(fold['false_promises'])} |")
    lines += ["", "Thresholds fitted per fold (the witnesses must reach all of them for a bound to be stated), "
              "and the in-domain route (statistics within the noise floor: min(level, the model's held-out IoU "
              f"{', '.join(f'{k} {_f(v)}' for k, v in res['heldout_iou'].items())})):", ""]
    for fold in lovo["folds"]:
        cal = fold["calibration"]
        route = cal["in_domain"]
        lines.append(f"- fitted on {fold['fitted_on']}: " + ", ".join(
            f"{k} >= {v:.3f}" for k, v in cal["thresholds"].items()) + f"; bound {_f(cal['bound'], 3)} "
            f"({cal['n_accepted']} of {cal['n']} fit cases accepted); in-domain route "
            f"{'used' if route['enabled'] else 'not used'} ({route['n']} fit cases took it, lowest true IoU "
            f"{_f(route['iou_min'])}, {route['n_contradicted']} below what it would state)")
    routed = [d for d in lovo["decisions"] if d["route"] == "in-domain" and d["bound"] is not None]
    cross = [r for r in rows if r["domain"] == "cross-lab"]
    lines += ["", f"The noise-floor test said 'within the noise floor' for {sum(r['needed'] is False for r in rows)} "
              f"of {len(rows)} cases: {sum(r['needed'] is False for r in rows if r['domain'] == 'in-domain')} of "
              f"{len(rows) - len(cross)} in-domain, {sum(r['needed'] is False for r in cross)} of {len(cross)} "
              f"cross-lab. Bounds stated by the in-domain route (leave one volume out): {len(routed)}, "
              f"{sum(d['iou'] >= d['bound'] for d in routed)} held."]
    lines += ["", "## Every false promise (leave one volume out)", ""]
    fps = lovo["pooled"]["false_promises"]
    if not fps:
        lines.append("none: no stated bound above the true IoU, no 'reliable' with a true IoU below "
                     f"{FALSE_RELIABLE_BELOW}")
    for d in fps:
        lines.append(f"- {d['model']} on {d['target']}: {d['verdict']}, bound {_f(d['bound'], 2)}, true IoU "
                     f"{d['iou']:.3f} ({d['why']})")
    old = [r for r in rows if r["old_bound"] is not None and r["old_bound"] > r["iou"]]
    lines += ["", f"Before issue 15 (the bundled W2 calibrations read at the measured distance), {len(old)} of "
              f"{sum(r['old_bound'] is not None for r in rows)} cases with a bound had it above the true IoU:", ""]
    for r in old:
        lines.append(f"- {r['model']} on {r['target']}: promised >= {r['old_bound']:.2f}, true IoU {r['iou']:.3f}")
    s = res["shipped"]
    lines += ["", "## Which witnesses and which level: every pair, validated leaving one volume out", "",
              "| witnesses thresholded | level promised | bounds stated | coverage | median gap | "
              "false promises | false 'reliable' |", "|---|---|---|---|---|---|---|"]
    for r in s.get("rule_selection", []):
        lines.append(f"| {', '.join(w.replace('_', ' ') for w in r['witnesses'])} | {r['level']:.1f} | "
                     f"{r['n_stated']} of {r['n']} | {_f(r['coverage'], 2)} | {_f(r['median_gap'], 3)} | "
                     f"{r['n_false_promises']} | {r['n_false_reliable']} |")
    lines += ["", f"Chosen: {', '.join(s['thresholds'])} at level {s['level']:.1f} (among the pairs with a bound "
              "stated and no false promise: the highest level, then the most bounds stated, then the most "
              "witnesses). The choice is made on the same validation that reports it: its figures are "
              "optimistic.", "",
              "## The shipped trust calibration (fitted on every case)", "",
              ", ".join(f"{k} >= {v:.3f}" for k, v in s["thresholds"].items())
              + f"; predicted foreground fraction {_f(s['foreground_range'][0])}-{_f(s['foreground_range'][1])}, "
              f"object size ratio {_f(s['size_range'][0], 2)}-{_f(s['size_range'][1], 2)} (accepted cases' ranges, "
              "widened)"
              + f"; bound {_f(s['bound'], 3)} ({s['n_accepted']} of {s['n']} cases accepted); "
              f"leave-one-volume-out coverage of stated bounds {_f(lovo['pooled']['coverage'], 3)} "
              f"({lovo['pooled']['n_stated']} stated of {lovo['pooled']['n']})", "",
              "## Spearman correlation of each witness with the true IoU", "",
              "| cases | n | patch agreement | flip | scale | foreground match | mean confidence |",
              "|---|---|---|---|---|---|---|"]
    for label, c in res["spearman"].items():
        lines.append(f"| {label} | {c['n']} | {_f(c['patch_agreement'], 2)} | {_f(c['flip_consistency'], 2)} | "
                     f"{_f(c['scale_consistency'], 2)} | {_f(c['foreground_match'], 2)} | {_f(c['confidence'], 2)} |")
    secs = [sum(r["seconds"].values()) for r in rows]
    wsec = [r["seconds"]["witnesses"] for r in rows]
    lines += ["", f"Witnesses: median {np.median(wsec):.1f} s per case (max {max(wsec):.1f} s), 1 torch thread; "
              f"whole case median {np.median(secs):.1f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc", "em-generalist"], threads=1)
    ap.add_argument("--real-slices", type=int, default=2, help="held-out test slices per real target (default 2)")
    ap.add_argument("--sim-slices", type=int, default=1, help="slices per simulated target (default 1)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    rows, reused = run_cases(args.models, args.models_dir, args.real_slices, args.sim_slices)
    res = analyse(rows, args.models_dir)
    command = "python benchmarks/bench_trust.py " + " ".join(sys.argv[1:] if argv is None else argv)
    seconds = round(time.perf_counter() - t0)
    text = header("Trust verdict: witnesses and leave-one-volume-out validation on real and simulated other labs") + (
        f"# command: {command}\n# wall time: {seconds} s"
        + (f" ({reused} of {len(rows)} cases read back from {NAME}.partial.jsonl, written by earlier runs of the "
           "same command; each case's seconds are its own)" if reused else "")
        + "\n\n" + report(rows, res) + "\n\n" + toy_section() + "\n")
    write(NAME, text)
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"command": command, "seconds": seconds, "rows": rows, **res},
                                                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
