"""One job of an experiment: train a source model, or evaluate a (source, target) pair."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adabn.adaptation import adapt
from ..errors import BNAdaptError
from ..io.stack_view import Normalization
from ..metrics import iou
from ..model.files import load_model, save_model
from ..model.training import train_iter
from ..progress import Progress, Result, forward, run_to_end
from ..stats.wasserstein import noise_floor, w2_squared, w2_squared_diag
from .datasets import LAYERS, Dataset, UNetScale, derive_seed


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
    sc = job.scale
    x, y, _ = job.dataset.generate(sc.n_train, sc.image_size, derive_seed("train", job.seed, job.dataset.key))
    with _torch_threads(1):
        model = yield from forward(train_iter(
            x, y, width=sc.width, steps=sc.train_steps(), batch_size=sc.batch_size, patch_size=sc.image_size,
            lr=sc.lr, val_fraction=sc.val_fraction, eval_every=sc.train_eval_every(), patience=sc.patience,
            seed=derive_seed("init", job.seed, job.dataset.key), device="cpu", augment="geometric" if sc.augment else False,
            optimizer=sc.optimizer, name=f"{job.experiment}-source-{job.dataset.id}",
            data_description=f"toy source {job.dataset.key}",
        ))
    model.meta["training"].pop("seconds", None)  # keep the file identical across reruns
    model.meta.pop("created", None)
    tmp = Path(job.path).with_name(Path(job.path).stem + ".partial.safetensors")
    save_model(model, tmp, overwrite=True)
    os.replace(tmp, job.path)
    yield Result(job.path)


def train_source(job: TrainJob) -> str:
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

    norm = Normalization.from_meta(model.meta["normalization"])
    return [torch.from_numpy(norm.apply(x[i:i + batch_size])[:, None].copy()) for i in range(0, len(x), batch_size)]


def _source(job: PairJob) -> tuple[Any, dict[str, Any]]:
    """The source model and its latent Gaussians on held-out source images (cached per process)."""
    from ..stats.latent_moments import collect_latent_moments

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
    from ..segmentation.predict import segment
    from ..stats.latent_moments import collect_latent_moments

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
