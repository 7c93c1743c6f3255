"""Source statistics: the latent Gaussians of a model on its own training data, kept in the model file.

The reliability check (:mod:`napari_bnadapt.bound.assess`) compares the latent
Gaussians of the ADAPTED model on the target with those of the SOURCE model on
the SOURCE images (docs/method.md, 'The reliability bound'). Users do not have the source images
at adaptation time, so the source side travels with the model: :func:`train`
measures it on a sample of the training patches and stores it in the model
file; :func:`compute_source_statistics` adds it to a model trained elsewhere.

What is stored (``model.meta["source_statistics"]`` plus arrays in
``model.meta["arrays"]`` named ``source_statistics.<space>.<field>``):

* for each latent space ``ls0``..``ls4`` (encoder stages), ``dec`` (the
  decoder's last BatchNorm) and ``out`` (the two output logits): the streaming
  float64 moments of :class:`~napari_bnadapt.stats.moments.GaussianMoments` (count,
  mean, centred second moments, per-image cluster sums for the effective sample
  size). The FULL covariance is kept for spaces with at most
  ``full_cov_max_dim`` (default 256) channels, only the per-channel variances
  above (a full 1024 x 1024 float64 covariance of the width-64 bottleneck would
  add 8 MB); the card says which, per space, under ``"form"``;
* label-free output signals of the source model on the source data (predicted
  foreground fraction, mean confidence, ...: see :data:`SIGNAL_NAMES`);
* the provenance (how many patches of what size, the grey-value range, seed).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, resolve_normalization
from ..model.device import get_device, model_on
from ..model.files import default_meta
from ..progress import Progress, Result, forward, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

__all__ = [
    "SIGNAL_NAMES",
    "SourceStatistics",
    "OutputSignals",
    "compute_source_statistics",
    "compute_source_statistics_iter",
    "has_source_statistics",
    "read_source_statistics",
    "store_source_statistics",
    "measure_iter",
    "training_foreground",
]

#: Format version of ``meta["source_statistics"]``.
STATS_VERSION = 1
#: Prefix of the extra arrays in ``meta["arrays"]``.
ARRAY_PREFIX = "source_statistics."
#: Full covariance for latent spaces with at most this many channels, diagonal above.
FULL_COV_MAX_DIM = 256
_FIELDS = ("mean", "m2", "cluster_mean", "cluster_q")

#: Label-free output signals, measured from the foreground probability p of every pixel.
SIGNAL_NAMES: dict[str, str] = {
    "foreground_fraction": "share of pixels with p > 0.5",
    "confidence": "mean of max(p, 1 - p)",
    "uncertain_fraction": "share of pixels with 0.2 < p < 0.8",
    "entropy": "mean binary entropy of p (bits)",
    "foreground_fraction_std": "standard deviation of the per-image foreground fraction",
}


# --------------------------------------------------------------- measuring
class OutputSignals:
    """Streaming sums of label-free output signals (from logits (B, 2, H, W))."""

    def __init__(self) -> None:
        self.n_pixels = 0
        self.n_images = 0
        self._fg = 0.0
        self._conf = 0.0
        self._unc = 0.0
        self._ent = 0.0
        self._img_fg = 0.0
        self._img_fg2 = 0.0

    def update(self, logits: Any) -> None:
        """Add a batch of logits (torch tensor (B, 2, H, W))."""
        import torch

        from ..model.foreign import output_to_foreground

        p = output_to_foreground(logits.detach()).double()
        b = int(p.shape[0])
        per_pix = p[0].numel()
        fg = (p > 0.5).double()
        img_fg = fg.reshape(b, -1).mean(1)
        q = p.clamp(1e-12, 1 - 1e-12)
        ent = -(q * torch.log2(q) + (1 - q) * torch.log2(1 - q))
        self.n_pixels += b * per_pix
        self.n_images += b
        self._fg += float(fg.sum())
        self._conf += float(torch.maximum(p, 1 - p).sum())
        self._unc += float(((p > 0.2) & (p < 0.8)).double().sum())
        self._ent += float(ent.sum())
        self._img_fg += float(img_fg.sum())
        self._img_fg2 += float((img_fg * img_fg).sum())

    def values(self) -> dict[str, float]:
        """The signals (see :data:`SIGNAL_NAMES`)."""
        if self.n_pixels == 0:
            raise BNAdaptError("no images were measured")
        n = float(self.n_pixels)
        k = float(self.n_images)
        m = self._img_fg / k
        var = max(0.0, self._img_fg2 / k - m * m) * (k / (k - 1) if k > 1 else 1.0)
        return {
            "foreground_fraction": self._fg / n,
            "confidence": self._conf / n,
            "uncertain_fraction": self._unc / n,
            "entropy": self._ent / n,
            "foreground_fraction_std": math.sqrt(var),
            "n_pixels": n,
            "n_images": k,
        }


def _modules(model: Any) -> dict[str, Any]:
    if not hasattr(model, "latent_modules"):
        from ..model.foreign import RELIABILITY_MESSAGE, describe

        raise BNAdaptError(RELIABILITY_MESSAGE.format(what=describe(model)))
    mods = dict(model.latent_modules())
    if hasattr(model, "outc"):
        mods["out"] = model.outc
    return mods


def measure_iter(
    model: Any,
    batches: Iterable[Any],
    n_batches: int,
    *,
    device: Any,
    full_cov_max_dim: int = FULL_COV_MAX_DIM,
    stage: str = "measuring latent statistics",
) -> Iterator[Progress | Result[tuple[dict[str, Any], dict[str, float]]]]:
    """Run ``model`` over ``batches`` and collect latent moments and output signals.

    Parameters
    ----------
    model : UNet
        Used in eval mode on ``device`` (a copy when it lives elsewhere); not changed.
    batches : iterable of numpy arrays (B, 1, H, W)
        Normalised network input.
    n_batches : int
        Number of batches (for progress).
    device : torch.device
    full_cov_max_dim : int
        Full covariance for spaces with at most this many channels.
    stage : str
        Progress label.

    Yields
    ------
    Progress, then Result((moments, signals)): ``{space: GaussianMoments}`` for
    ls0..ls4, dec, out and the :class:`OutputSignals` values.
    """
    import torch

    from .latent_moments import LatentMoments

    signals = OutputSignals()
    done = 0
    with model_on(model, device) as m:
        collector = LatentMoments(_modules(m), full_cov_max_dim=full_cov_max_dim)
        yield Progress(stage, 0, n_batches)
        try:
            collector.attach()
            for b in batches:
                x = torch.from_numpy(np.ascontiguousarray(b)).to(device)
                with torch.inference_mode():
                    logits = m(x)
                signals.update(logits)
                done += 1
                yield Progress(stage, done, n_batches)
        finally:
            collector.detach()
    if done == 0:
        raise BNAdaptError("no images were given to measure the latent statistics")
    yield Result(({k: collector.moments[k] for k in collector.modules}, signals.values()))


def model_normalization(model: Any) -> dict[str, Any]:
    """The model card's input normalisation (the 8-bit default for a model without one)."""
    meta = getattr(model, "meta", None) or {}
    return meta.get("normalization") or default_meta(model)["normalization"]


def _plan(view: Any, n_patches: int | None, patch_size: int, seed: int) -> Any:
    from ..adabn.patches import plan_patches

    return plan_patches(view.shape3d, n_patches, patch_size, seed)


# ------------------------------------------------------------------ storage
@dataclass
class SourceStatistics:
    """The source side of the reliability check, as stored in a model file.

    Attributes
    ----------
    moments : dict of str to GaussianMoments
        Per latent space (ls0..ls4, dec, out).
    signals : dict of str to float
        Output signals of the source model on the source data (:data:`SIGNAL_NAMES`).
    provenance : dict
        What data and settings produced them.
    """

    moments: dict[str, Any]
    signals: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)

    def forms(self) -> dict[str, str]:
        """``{space: "full" | "diagonal"}``: which covariance is stored."""
        return {k: ("full" if m.full_covariance else "diagonal") for k, m in self.moments.items()}


def store_source_statistics(model: Any, stats: SourceStatistics) -> None:
    """Write ``stats`` into ``model.meta`` (in place); replaces earlier source statistics.

    Scalars go to ``meta["source_statistics"]`` (JSON), arrays to
    ``meta["arrays"]["source_statistics.<space>.<field>"]`` (float64 tensors in the file).
    """
    meta = getattr(model, "meta", None)
    if meta is None:
        model.meta = meta = {}
    arrays = {k: v for k, v in meta.get("arrays", {}).items() if not k.startswith(ARRAY_PREFIX)}
    layers: dict[str, Any] = {}
    for name, gm in stats.moments.items():
        state = gm.to_dict()
        for f in _FIELDS:
            arrays[f"{ARRAY_PREFIX}{name}.{f}"] = np.ascontiguousarray(state.pop(f), dtype=np.float64)
        state["form"] = "full" if state["full_covariance"] else "diagonal"
        state["effective_count"] = float(gm.effective_count)
        layers[name] = state
    meta["arrays"] = arrays
    meta["source_statistics"] = {
        "version": STATS_VERSION,
        "layers": layers,
        "signals": {k: float(v) for k, v in stats.signals.items()},
        "provenance": copy.deepcopy(stats.provenance),
        "note": (
            f"full covariance for latent spaces with at most "
            f"{stats.provenance.get('full_cov_max_dim', FULL_COV_MAX_DIM)} channels, per-channel variances "
            "(diagonal) above; see layers[*].form"
        ),
    }


def has_source_statistics(model: Any) -> bool:
    """Whether ``model`` carries source statistics (see :func:`read_source_statistics`)."""
    meta = getattr(model, "meta", None) or {}
    return isinstance(meta.get("source_statistics"), dict) and bool(meta["source_statistics"].get("layers"))


def training_foreground(model: Any) -> float | None:
    """The share of pixels the model calls mitochondria on its own training data (from its card's source
    statistics), or None when the card does not say."""
    from ..model.foreign import card_of

    value = ((card_of(model) or {}).get("source_statistics") or {}).get("signals", {}).get("foreground_fraction")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 <= value <= 1 else None


def read_source_statistics(model: Any) -> SourceStatistics | None:
    """The source statistics stored in ``model.meta``, or None when it has none.

    Raises
    ------
    BNAdaptError
        The statistics are damaged or written by a newer version.
    """
    from .moments import GaussianMoments

    if not has_source_statistics(model):
        return None
    meta = model.meta
    card = meta["source_statistics"]
    if int(card.get("version", 0)) > STATS_VERSION:
        raise BNAdaptError(
            f"the source statistics of this model were written by a newer napari-bnadapt (format {card['version']}); "
            "update the plugin"
        )
    arrays = meta.get("arrays", {})
    moments = {}
    for name, state in card["layers"].items():
        full = dict(state)
        for f in _FIELDS:
            key = f"{ARRAY_PREFIX}{name}.{f}"
            if key not in arrays:
                raise BNAdaptError(
                    f"the model file's source statistics are incomplete (no {key!r}); "
                    "measure them again with compute_source_statistics"
                )
            full[f] = np.asarray(arrays[key], dtype=np.float64)
        moments[name] = GaussianMoments.from_dict(full)
    return SourceStatistics(moments, dict(card.get("signals", {})), dict(card.get("provenance", {})))


# ---------------------------------------------------------------- computing
def compute_source_statistics(
    model: UNet,
    images: ArrayLike | Image,
    *,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    full_cov_max_dim: int = FULL_COV_MAX_DIM,
    in_place: bool = False,
) -> UNet:
    """Measure the source statistics of a model on its (labelled or not) source images.

    For a model trained elsewhere (``train`` stores them itself). The images
    should be the data the model was trained on, or data of the same kind:
    everything the reliability check says is relative to them.

    Parameters
    ----------
    model : UNet
        The source model. NOT modified (unless ``in_place=True``): a copy with
        the statistics in its ``meta`` is returned; save it with :func:`save_model`.
    images : array-like or napari Image layer
        (Y, X) image or (Z, Y, X) stack of source data.
    n_patches : int or None, default None
        Random patches to measure; None: the whole stack when it holds at most
        64 x 256 x 256 voxels, else that many voxels in random patches (as
        :func:`adapt` samples the target).
    patch_size : int, default 256
        Patch side in pixels (rounded down to a multiple of 16 and to the slice size).
    batch_size : int, default 8
        Patches per forward pass.
    seed : int, default 0
        Seed of the patch positions.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`predict`.
    full_cov_max_dim : int, default 256
        Full covariance for latent spaces with at most this many channels,
        per-channel variances above (keeps the file small).
    in_place : bool, default False
        Store into ``model.meta`` and return ``model`` itself.

    Returns
    -------
    UNet
        The model (a copy unless ``in_place``) with ``meta["source_statistics"]``.
    """
    return run_to_end(compute_source_statistics_iter(
        model, images, n_patches=n_patches, patch_size=patch_size, batch_size=batch_size, seed=seed, device=device,
        intensity_range=intensity_range, full_cov_max_dim=full_cov_max_dim, in_place=in_place,
    ))


@shares_docstring(compute_source_statistics)
def compute_source_statistics_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    full_cov_max_dim: int = FULL_COV_MAX_DIM,
    in_place: bool = False,
) -> Iterator[Progress | Result[UNet]]:
    import torch

    from ..adabn.patches import iter_patch_batches

    t0 = time.perf_counter()
    view = check_stack(images, what="source images")
    meta = getattr(model, "meta", None) or default_meta(model)
    norm = resolve_normalization(view, model_normalization(model), intensity_range, what="source images")
    plan = _plan(view, n_patches, patch_size, seed)
    dev = get_device(device)
    n_batches = -(-len(plan.corners) // batch_size)
    batches = iter_patch_batches(view, plan, norm.apply, batch_size)
    moments, signals = yield from forward(measure_iter(
        model, batches, n_batches, device=dev, full_cov_max_dim=full_cov_max_dim,
        stage="measuring source statistics",
    ))
    provenance = {
        "images": {"shape": list(view.data.shape), "dtype": str(view.dtype)},
        "n_patches": len(plan.corners),
        "patch_size": [plan.height, plan.width],
        "exhaustive": plan.exhaustive,
        "seed": seed,
        "intensity_range": [norm.in_low, norm.in_high],
        "full_cov_max_dim": int(full_cov_max_dim),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    }
    target = model if in_place else copy.deepcopy(model)
    if getattr(target, "meta", None) is None or not target.meta:
        target.meta = copy.deepcopy(meta)
    store_source_statistics(target, SourceStatistics(moments, signals, provenance))
    yield Result(target)
