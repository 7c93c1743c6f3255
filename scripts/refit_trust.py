"""Write the trust calibration fitted by benchmarks/bench_trust.py into EM model files.

Run: python scripts/refit_trust.py --models lucchi-pp vnc [--models-dir DIR] (--out-dir DIR | --in-place)
     [--results benchmarks/results/bench_trust_recheck_need.json]

Reads ``benchmarks/results/bench_trust.json`` (``shipped``: fitted on every case of the benchmark, with
its leave-one-volume-out figures under ``validation``) and stores it as ``meta["trust"]`` of each named
model, with where it came from. Only models the benchmark measured are accepted (the calibration
says nothing about others). Nothing else in the file changes: the weights, the source statistics
and the W2 calibration stay as they are (a degenerate W2 calibration is rejected when it is read,
:func:`napari_bnadapt.bound.validity.calibration_problem`, not deleted).

Without ``--in-place`` the refitted files go to ``--out-dir`` (default ``/tmp/refit_trust``), so the
bundled files are only ever changed on purpose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import napari_bnadapt as nb

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "results" / "bench_trust.json"
BUNDLED = ROOT / "src" / "napari_bnadapt" / "model" / "bundled"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lucchi-pp", "vnc"])
    ap.add_argument("--models-dir", type=Path, default=BUNDLED, help="where <name>.safetensors are read")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/refit_trust"))
    ap.add_argument("--in-place", action="store_true", help="overwrite the files in --models-dir")
    ap.add_argument("--results", type=Path, default=BENCH,
                    help="the benchmark output holding the calibration ('shipped'): bench_trust.json, or "
                    "bench_trust_recheck_need.json (the same cases, the noise-floor test redone)")
    args = ap.parse_args(argv)
    result = json.loads(args.results.read_text())
    trust = dict(result["shipped"])
    measured = set(trust.get("models", []))
    script = "bench_trust_recheck_need.py" if "recheck" in args.results.name else "bench_trust.py"
    trust["provenance"] = {"fitted_by": f"benchmarks/{script}", "command": result.get("command"),
                           "results": f"benchmarks/results/{args.results.stem}.{{txt,json}}"}
    for name in args.models:
        if name not in measured:
            print(f"{name}: not among the models the benchmark measured ({sorted(measured)}); skipped",
                  file=sys.stderr)
            continue
        src = args.models_dir / f"{name}.safetensors"
        model = nb.load_model(src, device="cpu")
        model.meta["trust"] = trust
        out = src if args.in_place else args.out_dir / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nb.save_model(model, out, overwrite=True)
        th = ", ".join(f"{k} >= {v:.3f}" for k, v in trust["thresholds"].items())
        print(f"{name}: meta['trust'] written to {out} ({th}; bound {trust['bound']}; "
              f"leave-one-volume-out coverage {trust['validation']['coverage']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
