"""The trust calibration's cases with the noise-floor test as the current models give it: what changes.

Run: python benchmarks/bench_trust_recheck_need.py [--models em-generalist em-generalist-2]

``bench_trust.py`` records, for every case, whether :func:`napari_bnadapt.adabn.need.adaptation_needed`
found adaptation needed (the in-domain route of :mod:`napari_bnadapt.bound.trust`). When a model file
gains what that test reads (the training-volume statistics of ``napari_bnadapt.adabn.volumes``) but keeps
its weights, every other field of its cases stays true, and this script recomputes only that test: it
adapts each case of the named models again (same targets, patches and seed as ``bench_trust.py``),
refits the shipped calibration and the leave-one-volume-out validation on the updated cases (held-out
IoUs and gates as ``bench_trust.json`` recorded them), and reports every case whose answer changed and
every figure of the calibration that moved. It does not rewrite ``bench_trust.json`` (whose other
models' files may be elsewhere). Needs ``../shared/data/real/``. Writes
``benchmarks/results/bench_trust_recheck_need.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, add_model_arguments, header, load_em_model, save_results  # noqa: E402
from bench_real_generalisation import targets  # noqa: E402
from bench_trust import NAME, _need  # noqa: E402
from em_data import real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402


def usable_calibrations(rows: list[dict[str, Any]], models_dir: Path | None) -> dict[str, bool]:
    """Per model, whether its W2 calibration is usable, so its gates count (as ``bench_trust.analyse`` decides).
    A model file that is not here is accepted only when none of its cases was gated (the answer changes nothing)."""
    from napari_bnadapt.bound.validity import calibration_problem
    from napari_bnadapt.errors import BNAdaptError

    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        try:
            meta = load_em_model(name, models_dir).meta or {}
        except BNAdaptError:
            if any(r["gate_failures"] for r in rows if r["model"] == name):
                raise SystemExit(f"{name!r}: its cases were gated and its model file is not here (--models-dir)")
            out[name] = False
            continue
        out[name] = meta.get("calibration") is not None and calibration_problem(meta["calibration"]) == ""
    return out


def refit(rows: list[dict[str, Any]], heldout: dict[str, float],
          usable: dict[str, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped calibration and the leave-one-volume-out validation of ``rows``, as ``bench_trust.analyse``
    makes them."""
    from napari_bnadapt.bound.trust import case_from_row, leave_one_volume_out, shipped_trust

    cases = [case_from_row({**r, "gate_failures": r["gate_failures"] if usable[r["model"]] else []}, heldout[r["model"]])
             for r in rows]
    shipped = shipped_trust(cases)
    return shipped, leave_one_volume_out(cases, level=shipped["level"], witnesses=list(shipped["thresholds"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["em-generalist", "em-generalist-2"], threads=1)
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    recorded = json.loads((RESULTS / f"{NAME}.json").read_text())
    trust_args = recorded["command"].split()
    real_slices = int(trust_args[trust_args.index("--real-slices") + 1]) if "--real-slices" in trust_args else 2
    sim_slices = int(trust_args[trust_args.index("--sim-slices") + 1]) if "--sim-slices" in trust_args else 1
    rows = [dict(r) for r in recorded["rows"]]
    tg = {t["name"]: t for t in targets(real_slices, sim_slices)}
    changed = []
    for name in args.models:
        model = load_em_model(name, args.models_dir)
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            raise SystemExit(f"{name!r} has no cases in {NAME}.json")
        for r in mine:
            t = tg[r["target"]]
            px = t["pixel_size_nm"] if t["pixel_size_nm"] is not None else (model.meta or {}).get("pixel_size_nm")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adapted, report = nb.adapt(model, t["image"], device="cpu", pixel_size_nm=px, seed=0)
            new = _need(model, adapted, report)
            if new["needed"] != r["needed"]:
                changed.append({"model": name, "target": r["target"], "iou_after_adabn": r["iou"],
                                "was": r["needed"], "now": new["needed"]})
            r.update(new)
            print(f"{name:>16} | {r['target']:<34} | needed {new['needed']}", flush=True)
    usable = usable_calibrations(rows, args.models_dir)
    before, lovo_before = refit(recorded["rows"], recorded["heldout_iou"], usable)
    if json.dumps(before, default=float) != json.dumps(recorded["shipped"], default=float):
        raise SystemExit(f"the recorded cases no longer give the calibration {NAME}.json shipped: rerun bench_trust.py")
    after, lovo_after = refit(rows, recorded["heldout_iou"], usable)
    moved = {k: (before.get(k), after.get(k)) for k in after
             if json.dumps(before.get(k), default=float) != json.dumps(after[k], default=float)}
    rerouted = [(b["model"], b["target"], b["route"], a["route"]) for b, a in
                zip(lovo_before["decisions"], lovo_after["decisions"]) if a["route"] != b["route"]]
    outcome = ("verdict", "bound", "reason")
    same_outcomes = all(json.dumps([b.get(k) for k in outcome], default=float) == json.dumps([a.get(k) for k in outcome], default=float)
                        for b, a in zip(lovo_before["decisions"], lovo_after["decisions"]))
    lines = [header("Trust calibration cases with the current noise-floor test"),
             f"# command: python benchmarks/bench_trust_recheck_need.py {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# cases of: {recorded['command']}", f"# wall time: {time.perf_counter() - t0:.0f} s", "",
             f"Cases whose noise-floor answer changed ({len(changed)} of "
             f"{sum(r['model'] in args.models for r in rows)} rechecked):", "",
             "| model | target | IoU after AdaBN | needed before | needed now |", "|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['target']} | {c['iou_after_adabn']:.3f} | {c['was']} | {c['now']} |" for c in changed]
    lines += ["", "Shipped calibration, what moved (before -> now):", ""]
    lines += [f"- {k}: {json.dumps(a, default=float)} -> {json.dumps(b, default=float)}" for k, (a, b) in moved.items()]
    lines += ["- nothing" if not moved else "",
              "Leave one volume out: every verdict, bound and reason " + ("unchanged" if same_outcomes else "NOT the same")
              + f" (pooled: {lovo_after['pooled']['n_stated']} bounds stated of {lovo_after['pooled']['n']}, coverage "
              f"{lovo_after['pooled']['coverage']}, false promises {len(lovo_after['pooled']['false_promises'])}); "
              f"{len(rerouted)} decisions reached by another route:", ""]
    lines += [f"- {m}, {t}: {b} -> {a}" for m, t, b, a in rerouted]
    save_results("bench_trust_recheck_need", "\n".join(lines) + "\n",
                 {"changed": changed, "moved": moved, "lovo_outcomes_unchanged": same_outcomes, "rerouted": rerouted,
                  "lovo": lovo_after,
                  "shipped": after, "command": lines[1][len("# command: "):]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
