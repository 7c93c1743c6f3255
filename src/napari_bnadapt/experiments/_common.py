"""Shared machinery of the U-Net experiments: datasets, scales, seeds, the source-model
cache, the resumable CSV, the per-pair evaluation and the (optionally parallel) runner.

Reproducibility: every random draw is seeded from the experiment seed and the
*parameters* of the dataset it belongs to (never from an index or the order of
work), and torch runs single-threaded in every process, so a rerun, a resumed
run and a run with any ``--jobs`` give the same CSV, byte for byte.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result

#: Latent spaces whose Gaussian distances are written to the CSV (ls0..ls4: encoder
#: stages; dec: the decoder's last BatchNorm).
LAYERS: tuple[str, ...] = ("ls0", "ls1", "ls2", "ls3", "ls4", "dec")
CSV_NAME = "results.csv"
CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.json"


# --------------------------------------------------------------------------- seeds
def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from any printable parts (stable across runs, platforms and Python versions)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# ------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Dataset:
    """One toy domain: the generator's parameters (see :func:`napari_bnadapt.synthetic.generate`).

    Attributes
    ----------
    id : str
        Short unique name used in the CSV (``source_id`` / ``target_id``).
    label : str
        Axis label in the figures.
    mu0, sigma0, mu1, sigma1 : float
        Background and object grey-value means and standard deviations.
    shapes, style : str
        Generator options (``"perlin"``/``"circles"``/``"triangles"``; ``"noise"``/``"gradient"``/``"edges"``).
    distractors : bool
        Circles/triangles only: objects of the other kind drawn but not labelled.
    group : str
        Group name (experiment #3 draws lines between groups).
    """

    id: str
    label: str
    mu0: float
    sigma0: float
    mu1: float
    sigma1: float
    shapes: str = "perlin"
    style: str = "noise"
    distractors: bool = False
    group: str = ""
    random: bool = False

    @property
    def key(self) -> str:
        """The parameters as text: the seed of this dataset's images depends on this only."""
        if self.random:
            return f"random,{self.shapes},{self.style},{int(self.distractors)}"
        return (f"{self.mu0:g},{self.sigma0:g},{self.mu1:g},{self.sigma1:g},"
                f"{self.shapes},{self.style},{int(self.distractors)}")

    def params(self, prefix: str) -> dict[str, Any]:
        """The parameters as CSV columns (``prefix`` = "src" or "tgt"); NaN for per-image random ones."""
        nan = math.nan
        return {f"{prefix}_mu0": nan if self.random else self.mu0,
                f"{prefix}_sigma0": nan if self.random else self.sigma0,
                f"{prefix}_mu1": nan if self.random else self.mu1,
                f"{prefix}_sigma1": nan if self.random else self.sigma1,
                f"{prefix}_shapes": self.shapes + ("+distractors" if self.distractors else ""),
                f"{prefix}_style": "random" if self.random else self.style}

    def generate(self, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``n`` images of ``size`` x ``size`` and masks, and the clipped fraction (no warning)."""
        from ..synthetic import ClippingWarning, draw_parameters, generate

        if self.random:  # every image its own random parameters (thesis #3 "random")
            p = draw_parameters(seed=derive_seed("random-params", seed), n=n)
            mu0, sigma0, mu1, sigma1 = p["mu0"], p["sigma0"], p["mu1"], p["sigma1"]
        else:
            mu0, sigma0, mu1, sigma1 = self.mu0, self.sigma0, self.mu1, self.sigma1
        with warnings.catch_warnings():
            # experiments #1/#2 use the thesis' sigma = 50, which clips on purpose;
            # the clipped fraction goes to the CSV instead
            warnings.simplefilter("ignore", ClippingWarning)
            x, y, stats = generate(n, (size, size), mu0, sigma0, mu1, sigma1, seed=seed,
                                   shapes=self.shapes, style=self.style, distractors=self.distractors,
                                   return_stats=True)
        return x, y, float(stats.clipped_fraction)


# -------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class UNetScale:
    """Sizes of a U-Net experiment (the defaults are the reduced CPU scale).

    Attributes
    ----------
    image_size : int
        Side of the square toy images (pixels, multiple of 16).
    n_train : int
        Labelled source images per source model (10 % of them for validation).
    n_test : int
        Unlabelled target images per target (also the source images on which the
        source-side latent statistics are measured).
    width : int
        U-Net base width (the thesis: 64).
    steps : int
        Optimiser steps when ``epochs`` is None.
    epochs : float or None
        If set, ``steps = ceil(epochs * training images / batch_size)``.
    batch_size, lr, eval_every, patience, val_fraction :
        Training recipe (:func:`napari_bnadapt.train`).
    evals_per_epoch : int or None
        If set, ``eval_every`` is one epoch divided by it (the thesis validated 5 times per epoch).
    adapt_batch_size : int
        Images per forward pass during BatchNorm adaptation.
    augment : bool
        Random 90-degree rotations and flips during training (the thesis had none).
    optimizer : str
        "adam" (cosine decay) or "rmsprop" (the thesis' recipe; see :func:`napari_bnadapt.train`).
    """

    image_size: int = 64
    n_train: int = 256
    n_test: int = 32
    width: int = 8
    steps: int = 300
    epochs: float | None = None
    batch_size: int = 8
    lr: float = 3e-3
    eval_every: int = 50
    evals_per_epoch: int | None = None
    patience: int = 20
    val_fraction: float = 0.1
    adapt_batch_size: int = 16
    augment: bool = True
    optimizer: str = "adam"

    def train_steps(self) -> int:
        if self.epochs is None:
            return int(self.steps)
        n_tr = self.n_train - int(round(self.n_train * self.val_fraction))
        return int(math.ceil(self.epochs * n_tr / self.batch_size))

    def train_eval_every(self) -> int:
        if self.evals_per_epoch is None:
            return int(self.eval_every)
        n_tr = self.n_train - int(round(self.n_train * self.val_fraction))
        return max(1, int(n_tr / self.batch_size / self.evals_per_epoch))

    def training_key(self) -> dict[str, Any]:
        """What determines a trained source model (besides its dataset and the seed)."""
        keep = ("image_size", "n_train", "width", "batch_size", "lr", "patience", "val_fraction")
        d = {k: getattr(self, k) for k in keep}
        d.update(steps=self.train_steps(), eval_every=self.train_eval_every())
        if not self.augment:  # listed only when off: the default needs no entry
            d["augment"] = False
        if self.optimizer != "adam":
            d["optimizer"] = self.optimizer
        return d


def apply_overrides(base: Any, overrides: dict[str, Any] | None) -> Any:
    """``dataclasses.replace`` with a clear error for unknown names and string values converted."""
    if not overrides:
        return base
    fields = {f.name: f for f in dataclasses.fields(base)}
    clean = {}
    for k, v in overrides.items():
        if k not in fields:
            raise BNAdaptError(f"unknown scale setting {k!r}; choose among {', '.join(fields)}")
        if isinstance(v, str):
            cur = getattr(base, k)
            try:
                if v.lower() in ("none", "null"):
                    v = None
                elif isinstance(cur, bool):
                    v = v.lower() in ("1", "true", "yes")
                elif isinstance(cur, int):
                    v = int(v)
                else:
                    v = float(v)
            except ValueError:
                raise BNAdaptError(f"scale setting {k} needs a number, not {v!r}") from None
        clean[k] = v
    return dataclasses.replace(base, **clean)


# ------------------------------------------------------------------ resumable CSV
class ResultsCSV:
    """Append-only CSV with one row per finished (source, target) pair.

    Every row is flushed and fsync'ed when written, so a crash loses at most the
    pair being computed; a half-written last line (power cut) is dropped on resume.
    """

    def __init__(self, path: Path, columns: Sequence[str], key: Sequence[str] = ("source_id", "target_id")):
        self.path = Path(path)
        self.columns = list(columns)
        self.key = tuple(key)
        self.rows: list[dict[str, str]] = []
        if self.path.exists():
            self._load()
        else:
            self._write_all([])

    def _load(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # an interrupted write: drop the partial line
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            self._write_all([])
            return
        if list(reader.fieldnames) != self.columns:
            raise BNAdaptError(
                f"{self.path} was written with other columns (another version or experiment); "
                "start over with resume=False (CLI: --overwrite) or choose another output folder"
            )
        self.rows = [r for r in reader if None not in r.values() and len(r) == len(self.columns)]

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in self.columns})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def done(self) -> set[tuple[str, ...]]:
        return {tuple(r[k] for k in self.key) for r in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        text = {k: _fmt(row.get(k)) for k in self.columns}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(text)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(text)

    def finalize(self, order: Callable[[dict[str, str]], Any]) -> None:
        """Rewrite the file sorted (rows arrive in completion order with several jobs)."""
        self.rows.sort(key=order)
        self._write_all(self.rows)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        # 9 significant digits: far below any effect measured here, and half the file size
        return "nan" if math.isnan(v) else format(v, ".9g")
    return str(v)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers converted to float (and ints where whole)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = v
            out.append(row)
    return out


def check_config(out: Path, config: dict[str, Any], resume: bool) -> None:
    """Start a results folder, or check that a resumed one was made with the same settings."""
    path = out / CONFIG_NAME
    if path.exists() and resume:
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
            raise BNAdaptError(
                f"the results in {out} were made with other settings ({', '.join(diff)} differ); "
                "resume with the same settings, or start over (resume=False, CLI: --overwrite), "
                "or choose another output folder"
            )
        return
    if not resume:
        for name in (CSV_NAME, SUMMARY_NAME):
            (out / name).unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------- source models
@dataclass(frozen=True)
class TrainJob:
    experiment: str
    dataset: Dataset
    scale: UNetScale
    seed: int
    path: str


def model_path(cache: Path, ds: Dataset, scale: UNetScale, seed: int) -> Path:
    """Cache file of a source model: keyed by its dataset, the training settings and the seed."""
    h = hashlib.sha256(json.dumps([ds.key, scale.training_key(), seed], sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"source_{ds.id}_{h}.safetensors"


def train_source_iter(job: TrainJob) -> Iterator[Progress | Result[str]]:
    """Train one source model (single-threaded) and save it to ``job.path`` (atomically)."""
    from ..modelfile import save_model
    from ..training import train_iter

    sc = job.scale
    x, y, _ = job.dataset.generate(sc.n_train, sc.image_size, derive_seed("train", job.seed, job.dataset.key))
    with _torch_threads(1):
        model = None
        for item in train_iter(x, y, width=sc.width, steps=sc.train_steps(), batch_size=sc.batch_size,
                               patch_size=sc.image_size, lr=sc.lr, val_fraction=sc.val_fraction,
                               eval_every=sc.train_eval_every(), patience=sc.patience,
                               seed=derive_seed("init", job.seed, job.dataset.key), device="cpu",
                               augment=sc.augment, optimizer=sc.optimizer,
                               name=f"{job.experiment}-source-{job.dataset.id}",
                               data_description=f"toy source {job.dataset.key}"):
            if isinstance(item, Result):
                model = item.value
            else:
                yield item
    assert model is not None
    model.meta["training"].pop("seconds", None)  # keep the file identical across reruns
    model.meta.pop("created", None)
    tmp = Path(job.path).with_name(Path(job.path).stem + ".partial.safetensors")
    save_model(model, tmp, overwrite=True)
    os.replace(tmp, job.path)
    yield Result(job.path)


def train_source(job: TrainJob) -> str:
    from ..progress import run_to_end

    return run_to_end(train_source_iter(job))


# ---------------------------------------------------------------- pair evaluation
@dataclass(frozen=True)
class PairJob:
    source: Dataset
    target: Dataset
    scale: UNetScale
    seed: int
    model_path: str


_CACHE: dict[str, Any] = {"models": {}, "target": (None, None)}


def init_worker() -> None:
    """Process-pool initialiser: one torch thread per worker (the pool uses the cores)."""
    import torch

    torch.set_num_threads(1)


class _torch_threads:
    """Run a block with ``n`` torch threads (restored afterwards)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.old)


def _batches(model: Any, x: np.ndarray, batch_size: int) -> list[Any]:
    import torch

    from ..images import Normalization

    norm = Normalization.from_meta(model.meta["normalization"])
    return [torch.from_numpy(norm.apply(x[i:i + batch_size])[:, None].copy()) for i in range(0, len(x), batch_size)]


def _source(job: PairJob) -> tuple[Any, dict[str, Any]]:
    """The source model and its latent Gaussians on held-out source images (cached per process)."""
    from ..modelfile import load_model
    from ..moments import collect_latent_moments

    hit = _CACHE["models"].get(job.model_path)
    if hit is None:
        model = load_model(job.model_path, device="cpu")
        sc = job.scale
        xs, _, _ = job.source.generate(sc.n_test, sc.image_size, derive_seed("source-test", job.seed, job.source.key))
        moments = collect_latent_moments(model, _batches(model, xs, sc.adapt_batch_size))
        hit = (model, moments)
        if len(_CACHE["models"]) >= 64:
            _CACHE["models"].clear()
        _CACHE["models"][job.model_path] = hit
    return hit


def _target(job: PairJob) -> tuple[np.ndarray, np.ndarray, float]:
    key = (job.target.key, job.scale.n_test, job.scale.image_size, job.seed)
    if _CACHE["target"][0] != key:
        sc = job.scale
        data = job.target.generate(sc.n_test, sc.image_size, derive_seed("target", job.seed, job.target.key))
        _CACHE["target"] = (key, data)
    return _CACHE["target"][1]


def latent_distances(src: dict[str, Any], tgt: dict[str, Any]) -> dict[str, float]:
    """Plain, source- and target-normalised W2^2 per latent space, with the normalised noise floor.

    The first Gaussian is the source (source model on source images), the second
    the target (adapted model on target images): ``snW2`` is whitened by the
    source, ``tnW2`` by the target. A value that cannot be computed (singular
    reference covariance) is NaN.
    """
    from ..wasserstein import noise_floor, w2_squared, w2_squared_diag

    out: dict[str, float] = {}
    for name in LAYERS:
        if name not in src or name not in tgt:
            continue
        a, b = src[name], tgt[name]
        full = a.cov is not None and b.cov is not None
        for norm, col in ((None, "w2"), ("source", "snw2"), ("target", "tnw2")):
            try:
                if full:
                    v = w2_squared(a.mean, a.cov, b.mean, b.cov, normalize=norm)
                else:
                    v = w2_squared_diag(a.mean, a.var, b.mean, b.var, normalize=norm)
            except BNAdaptError:
                v = math.nan
            out[f"{col}_{name}"] = float(v)
        out[f"floor_{name}"] = float(noise_floor(a.dim, a.effective_count, b.effective_count, "target",
                                                 form="full" if full else "diagonal"))
    return out


def evaluate_pair(job: PairJob) -> dict[str, Any]:
    """Source-only and adapted IoU of one (source, target) pair, and the latent distances."""
    from ..adaptation import adapt
    from ..inference import segment
    from ..metrics import iou
    from ..moments import collect_latent_moments

    with _torch_threads(1):
        model, src_moments = _source(job)
        x, y, clipped = _target(job)
        bs = job.scale.adapt_batch_size
        pred0 = segment(model, x, device="cpu", batch_size=bs, overlap=0)
        adapted, report = adapt(model, x, device="cpu", batch_size=bs, seed=derive_seed("adapt", job.seed))
        pred1 = segment(adapted, x, device="cpu", batch_size=bs, overlap=0)
        tgt_moments = collect_latent_moments(adapted, _batches(adapted, x, bs))
    row: dict[str, Any] = {"source_id": job.source.id, "target_id": job.target.id}
    row.update(job.source.params("src"))
    row.update(job.target.params("tgt"))
    row.update(
        iou_source_only=iou(pred0, y),
        iou_adapted=iou(pred1, y),
        fg_true=float(np.mean(y > 0)),
        fg_source_only=float(np.mean(pred0 > 0)),
        fg_adapted=float(np.mean(pred1 > 0)),
        tgt_clipped=clipped,
        adapt_drift=float(report.drift),
    )
    row.update(latent_distances(src_moments, tgt_moments))
    return row


def pair_columns() -> list[str]:
    cols = ["source_id", "target_id"]
    for p in ("src", "tgt"):
        cols += [f"{p}_mu0", f"{p}_sigma0", f"{p}_mu1", f"{p}_sigma1", f"{p}_shapes", f"{p}_style"]
    cols += ["iou_source_only", "iou_adapted", "fg_true", "fg_source_only", "fg_adapted", "tgt_clipped", "adapt_drift"]
    for name in LAYERS:
        cols += [f"w2_{name}", f"snw2_{name}", f"tnw2_{name}", f"floor_{name}"]
    return cols


# -------------------------------------------------------------------- the runner
@dataclass
class ExperimentResult:
    """What :func:`napari_bnadapt.experiments.run` returns.

    Attributes
    ----------
    name : str
        The experiment.
    folder : Path
        Its results folder (``results.csv``, ``summary.json``, ``config.json``, ``figures/``, ``cache/``).
    csv : Path
        The results table, one row per (source, target) pair.
    figures : list of Path
        The PNG figures.
    findings : dict
        The checked findings (see ``docs/experiments.md``).
    seconds : float
        Wall time of this call.
    computed : int
        Rows computed by this call (the others were already in the CSV).
    rows : int
        Rows in the CSV.
    scale : dict
        The scale used.
    """

    name: str
    folder: Path
    csv: Path
    figures: list[Path] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    computed: int = 0
    rows: int = 0
    scale: dict[str, Any] = field(default_factory=dict)


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

    from . import _findings

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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
