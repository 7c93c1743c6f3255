"""Running a U-Net experiment: its spec, the (optionally parallel) worker pool, resuming, findings, figures.

Datasets and scales are in :mod:`.datasets`, the jobs (train a source model,
evaluate a pair) in :mod:`.jobs`, the resumable CSV in :mod:`.results`.

Reproducibility: every random draw is seeded from the experiment seed and the
*parameters* of the dataset it belongs to (never from an index or the order of
work), and torch runs single-threaded in every process, so a rerun, a resumed
run and a run with any ``--jobs`` give the same CSV, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..progress import Progress, Result
from . import _findings
from .datasets import Dataset, UNetScale
from .jobs import (
    PairJob,
    TrainJob,
    evaluate_pair,
    init_worker,
    model_path,
    pair_columns,
    train_source,
    train_source_iter,
)
from .results import (
    CSV_NAME,
    SUMMARY_NAME,
    ExperimentResult,
    ResultsCSV,
    _json_default,
    check_config,
    read_csv,
)


@dataclass(frozen=True)
class UNetSpec:
    """An experiment of the U-Net family: sources x targets (every pair)."""

    name: str
    sources: tuple[Dataset, ...]
    targets: tuple[Dataset, ...]
    layout: str  # "matrix" or "grid"
    title: str


#: Environment of the worker processes: one thread for every math library. Measured on
#: this project's 2-core machine, numpy/scipy's multi-threaded OpenBLAS alone made a
#: (source, target) pair 3x slower (0.36 s -> 1.09 s), spinning on the cores that the
#: other jobs need; one thread per process and one process per core is the fast layout.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Pool:
    """A spawn-context process pool whose workers start with :data:`WORKER_ENV`."""

    def __init__(self, jobs: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # the workers inherit os.environ when they start (lazily, at a submit): keep
        # WORKER_ENV set until close() and restore the caller's environment then
        self._saved = {k: os.environ.get(k) for k in WORKER_ENV}
        os.environ.update(WORKER_ENV)
        # spawn, not fork: a forked torch process can hang in its thread pool
        self.executor = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                            initializer=init_worker)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args)

    def close(self) -> None:
        try:
            self.executor.shutdown(wait=True, cancel_futures=True)
        finally:
            for k, v in self._saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_unet_iter(spec: UNetSpec, scale: UNetScale, out: Path, *, jobs: int = 1, resume: bool = True,
                  seed: int = 0, figures: bool = True) -> Iterator[Progress | Result[ExperimentResult]]:
    """Generator behind :func:`napari_bnadapt.experiments.run` for the U-Net experiments."""
    from concurrent.futures import FIRST_COMPLETED, wait

    t0 = time.perf_counter()
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    config = {"experiment": spec.name, "seed": seed, "scale": dataclasses.asdict(scale),
              "sources": [s.id for s in spec.sources], "targets": [t.id for t in spec.targets]}
    check_config(out, config, resume)
    table = ResultsCSV(out / CSV_NAME, pair_columns())

    # 1. source models (cached files: a resumed run never retrains)
    paths = {s.id: model_path(cache, s, scale, seed) for s in spec.sources}
    if not resume:
        for p in paths.values():
            p.unlink(missing_ok=True)
    todo = [TrainJob(spec.name, s, scale, seed, str(paths[s.id])) for s in spec.sources if not paths[s.id].exists()]
    n_src = len(spec.sources)
    done_src = n_src - len(todo)
    pool = None
    try:
        if todo:
            yield Progress("training source models", done_src, n_src)
            if jobs == 1:  # in this process, with a progress bar per model (torch: one thread)
                for job in todo:
                    for item in train_source_iter(job):
                        if isinstance(item, Progress):
                            yield Progress(f"training source model {done_src + 1}/{n_src} ({job.dataset.id})",
                                           item.done, item.total)
                    done_src += 1
                    yield Progress("training source models", done_src, n_src)
            else:
                pool = _Pool(jobs)
                futures = {pool.submit(train_source, job) for job in todo}
                while futures:
                    finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()
                        done_src += 1
                    yield Progress("training source models", done_src, n_src)

        t_train = time.perf_counter() - t0
        # 2. pairs, target-major (a worker reuses the target images for every source)
        src_index = {s.id: i for i, s in enumerate(spec.sources)}
        tgt_index = {t.id: i for i, t in enumerate(spec.targets)}
        done = table.done
        pending = [PairJob(s, t, scale, seed, str(paths[s.id])) for t in spec.targets for s in spec.sources
                   if (s.id, t.id) not in done]
        total = len(spec.sources) * len(spec.targets)
        computed = 0
        stage = "adapting and segmenting targets"
        yield Progress(stage, total - len(pending), total)
        # always in worker processes (also for jobs=1): single-threaded math libraries there
        if pending:
            pool = pool or _Pool(jobs)
            it = iter(pending)
            running = set()
            for job in it:  # a bounded queue, so that cancelling stops quickly
                running.add(pool.submit(evaluate_pair, job))
                if len(running) >= 4 * jobs:
                    break
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    table.append(f.result())
                    computed += 1
                    nxt = next(it, None)
                    if nxt is not None:
                        running.add(pool.submit(evaluate_pair, nxt))
                yield Progress(stage, total - len(pending) + computed, total)
    finally:
        if pool is not None:
            pool.close()

    t_pairs = time.perf_counter() - t0 - t_train
    # 3. sorted CSV, findings, figures (all from the CSV)
    table.finalize(lambda r: (src_index.get(r["source_id"], 1 << 30), tgt_index.get(r["target_id"], 1 << 30)))
    rows = read_csv(out / CSV_NAME)
    findings = _findings.unet_findings(spec, rows)
    figs: list[Path] = []
    if figures:
        yield Progress("drawing figures", 0, 1)
        from . import _figures

        figs = _figures.unet_figures(spec, rows, out / "figures")
        yield Progress("drawing figures", 1, 1)
    seconds = time.perf_counter() - t0
    summary = {"experiment": spec.name, "rows": len(rows), "computed_this_run": computed,
               "seconds_this_run": round(seconds, 1), "seconds_training": round(t_train, 1),
               "seconds_pairs": round(t_pairs, 1), "seconds_figures": round(seconds - t_train - t_pairs, 1),
               "trained_this_run": len(todo), "jobs": jobs, "findings": findings}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    yield Result(ExperimentResult(spec.name, out, out / CSV_NAME, figs, findings, seconds, computed, len(rows),
                                  dataclasses.asdict(scale)))
