"""The real-data suite's (model, target) loop, shared by the benchmarks that score one method per target.

Needs ``../shared/data/real/``. Every target of ``bench_real_generalisation.py`` (real held-out slices
and the simulated other labs; inverted contrast left out: no setting works there), for every model.
Rows are appended to ``results/<name>.partial.jsonl`` as they finish and read back by a rerun with the
same name (delete the file to start over).
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

from _common import RESULTS, add_model_arguments, header, load_em_model, read_partial, save_results
from bench_real_generalisation import domain_of, targets
from em_data import real_data_ready


def run_suite(models: list[str], models_dir: Path | None, name: str,
              evaluate: Callable[[Any, dict[str, Any]], dict[str, float]],
              describe: Callable[[dict[str, float]], str]) -> tuple[list[dict[str, Any]], int]:
    """Rows ``{model, target, kind, domain, **evaluate(model, target), seconds}``, and how many were read back.

    ``describe(result)`` is printed after the model and target names as each row finishes.
    """
    partial = RESULTS / f"{name}.partial.jsonl"
    done = read_partial(partial)
    rows, reused = [], 0
    for model_name in models:
        model = load_em_model(model_name, models_dir)
        for t in targets(3, 1):
            if t["name"].endswith("inverted"):
                continue
            old = [r for r in done if r["model"] == model_name and r["target"] == t["name"]]
            if old:
                rows.append({**old[0], "domain": domain_of(model_name, t["volume"])})
                reused += 1
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = evaluate(model, t)
            rows.append({"model": model_name, "target": t["name"], "kind": t["kind"],
                         "domain": domain_of(model_name, t["volume"]), **res, "seconds": time.perf_counter() - t0})
            with partial.open("a") as f:
                f.write(json.dumps(rows[-1], default=float) + "\n")
            print(f"{model_name:>22} | {t['name']:<34} | {describe(res)}", flush=True)
    return rows, reused


def suite_main(argv: list[str] | None, *, doc: str, script: str, title: str, legend: str,
               run: Callable[[list[str], Path | None, str], dict[str, Any]],
               table: Callable[[dict[str, Any]], str]) -> int:
    """The command line of a suite benchmark: ``run(models, models_dir, name)``, then ``results/<name>.{txt,json}``.

    ``script`` is the benchmark's file name (also the default ``--name`` without ``.py``); ``title`` heads
    the result file, ``legend`` is its last header line (what the table's columns mean).
    """
    name = Path(script).stem
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc", "em-generalist"], name=name)
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    result = run(args.models, args.models_dir, args.name)
    wall = time.perf_counter() - t0
    text = (header(title)
            + f"# command: python benchmarks/{script} {' '.join(sys.argv[1:] if argv is None else argv)}\n"
            + f"# wall time: {wall:.0f} s ({result['reused']} of {len(result['rows'])} rows read back from "
            f"{args.name}.partial.jsonl; each row's seconds are its own)\n"
            + f"# {legend}\n\n" + table(result) + "\n")
    save_results(args.name, text, result)
    return 0
