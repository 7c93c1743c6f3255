"""BatchNorm adaptation (AdaBN): re-estimate BatchNorm statistics on the unlabelled target.

All weights stay frozen; only the running mean and variance of the BatchNorm
layers change, and only in a copy of the model. Four estimators
(docs/method.md, 'The estimators, and their traps'):

``cumulative`` (default)
    Reset, then the equal-weight average over all target patches. The
    statistics are pooled per channel in float64 from the layer inputs (shifted
    sums), so the variance BETWEEN batches is kept (PyTorch's own cumulative
    average of per-batch variances drops it).
``ema``
    The paper's Alg. 1: an exponential moving average with rate ``alpha``,
    starting FROM the source statistics. With few updates it keeps much of the
    source statistics; kept for reproducing the paper.
``prior``
    Schneider et al. (NeurIPS 2020): ``mu = N/(N+n) mu_s + n/(N+n) mu_t`` and the
    same for the variance, with ``N = prior`` and ``n`` the number of target
    patches; useful when the target set is tiny.
``balanced``
    ``cumulative``, then the target pixels reweighted so that the share the model calls
    mitochondria counts as on its training data (:mod:`napari_bnadapt.adabn.balanced`): a stack
    with fewer (or more) mitochondria than the training data no longer moves the statistics by
    its content. Needs the card's source statistics; plain modules only.

Any ``torch.nn.Module`` with BatchNorm is adapted the same way (:mod:`napari_bnadapt.model.foreign`).
TorchScript takes no Python hooks: each batch's statistics are read back from the BatchNorm buffers
and combined here, the same first three estimators (the report's notes say so; ``balanced`` needs hooks
and refuses them); traced models are refused.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.resample import model_grid
from ..io.stack_view import check_stack, resolve_normalization
from ..model.device import get_device
from ..model.files import default_meta
from ..progress import Progress, Result, forward, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet
from .balanced import balance_statistics_iter, balancing_share
from .estimators import MODES, BatchNormStatistics, _bn_layers, adapt_batchnorm_iter

#: Smallest number of samples per batch in the deepest (1/16 resolution) layer. The forward pass of
#: adaptation normalises each batch with its own statistics; with fewer samples than this the
#: deep layers see noisy normalisation and the pooled estimates drift (measured on the toy model:
#: 128 samples per batch -> up to 4.6 % of a standard deviation off the exact statistics,
#: 2048 -> 0.5 %). Small patches therefore get larger batches.
MIN_DEEP_SAMPLES_PER_BATCH = 2048
#: ``mode="balanced"`` keeps the patches in memory up to this size (float32 network input), else reads them
#: from the stack again for each of its passes.
BALANCE_CACHE_BYTES = 256 * 2**20
#: Estimates from half of the patches must lie within this many source sigmas of the final ones.
CONVERGENCE_TOLERANCE = 0.05


@dataclass
class LayerShift:
    """How far one BatchNorm layer's statistics moved (source -> adapted).

    Attributes
    ----------
    name : str
        Qualified module name.
    channels : int
    mean_shift : float
        Mean over channels of |mu_target - mu_source| / sigma_source.
    std_ratio : float
        Geometric mean over channels of sigma_target / sigma_source.
    """

    name: str
    channels: int
    mean_shift: float
    std_ratio: float


@dataclass
class AdaptReport:
    """What :func:`adapt` did.

    Attributes
    ----------
    mode, alpha, prior : the estimator and its parameter.
    n_patches, patch_size, n_voxels : how much target data was used.
    stack_voxels : int or None
        Voxels of the whole stack on the grid the patches were drawn from (None: not recorded).
    exhaustive : bool
        True when the patches covered the whole stack.
    batch_size, seed : sampling settings.
    converged : bool
        True when the patches covered the whole stack, or when estimates from the
        first half of the patches agree with the final ones within
        ``CONVERGENCE_TOLERANCE`` source sigmas in every layer.
    drift : float
        The largest such disagreement (in source sigmas); small is good. NaN when it
        cannot be judged (EMA with a single update).
    device : str
        The device the work ran on.
    seconds : float
        Wall-clock time.
    layers : list of LayerShift
    intensity_range : (float, float)
        The grey values mapped onto the model's input range.
    notes : list of str
        How a model built elsewhere was handled (TorchScript: statistics read batch by batch), and
        the resampling to the model's pixel size.
    zoom : (float, float) or None
        Model-grid pixels per image pixel (y, x) when the patches were drawn from the stack
        resampled to the model's pixel size (``pixel_size_nm``); None when it ran as it is.
    """

    mode: str
    alpha: float | None
    prior: float | None
    n_patches: int
    patch_size: tuple[int, int]
    n_voxels: int
    exhaustive: bool
    batch_size: int
    seed: int
    converged: bool
    drift: float
    device: str
    seconds: float
    intensity_range: tuple[float, float]
    layers: list[LayerShift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    zoom: tuple[float, float] | None = None
    stack_voxels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the adapted model's card)."""
        return asdict(self)

    def _convergence_line(self) -> str:
        if not math.isfinite(self.drift):
            return "  converged: unknown (a single update: use more patches to judge convergence)"
        detail = f"half-sample drift {self.drift:.3f} sigma; tolerance {CONVERGENCE_TOLERANCE}"
        if self.exhaustive:
            return f"  converged: the whole stack was used ({detail})"
        return f"  converged: {'yes' if self.converged else 'NO'} ({detail})"

    def __str__(self) -> str:
        shifts = [layer.mean_shift for layer in self.layers]
        lines = [
            f"BatchNorm adaptation ({self.mode}"
            + (f", alpha={self.alpha}" if self.mode == "ema" else "")
            + (f", prior N={self.prior}" if self.mode == "prior" else "")
            + f") on {self.device} in {self.seconds:.1f} s",
            f"  target data: {self.n_patches} patches of {self.patch_size[0]}x{self.patch_size[1]} "
            f"= {self.n_voxels:,} voxels" + (" (the whole stack)" if self.exhaustive else " (random sample)"),
            f"  {len(self.layers)} BatchNorm layers; mean shift {np.mean(shifts):.2f} source sigma "
            f"(largest {max(shifts):.2f} in {self.layers[int(np.argmax(shifts))].name})",
            self._convergence_line(),
        ]
        if not self.converged and math.isfinite(self.drift):
            lines.append("  -> the estimates still move: use more patches (n_patches) or a larger patch_size")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _layer_shifts(stats: BatchNormStatistics) -> list[LayerShift]:
    shifts = []
    for name, _ in stats.layers:
        ms, vs = (t.double().cpu() for t in stats.source[name])
        mt, vt = (t.double().cpu() for t in stats.target[name])
        ss = vs.clamp_min(1e-12).sqrt()
        ratio = (vt.clamp_min(1e-12) / vs.clamp_min(1e-12)).sqrt()
        shifts.append(
            LayerShift(name, int(ms.numel()), float(((mt - ms).abs() / ss).mean()), float(ratio.log().mean().exp()))
        )
    return shifts


def adapt(
    model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    mode: str = "cumulative",
    alpha: float = 0.1,
    prior: float | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> tuple[UNet, AdaptReport]:
    """Adapt a source-trained model to a target stack by BatchNorm adaptation.

    Works on a copy: the source model (object and file) is never changed.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The source model (see :func:`load_model`), or a model built elsewhere: any PyTorch
        ``nn.Module`` or TorchScript module (``torch.jit.script``/``torch.jit.load``) with BatchNorm
        layers, one grey input channel and 1 (sigmoid) or 2 (softmax) output channels
        (:mod:`napari_bnadapt.model.foreign`). Its weights are never changed, only the BatchNorm
        statistics of the copy. A traced TorchScript model is refused (its BatchNorm cannot adapt).
    images : array-like or napari Image layer
        The unlabelled target: (Y, X) image or (Z, Y, X) stack (numpy,
        ``tifffile.memmap``, zarr, dask); only the sampled patches are read.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    mode : {"cumulative", "ema", "prior", "balanced"}, default "cumulative"
        The estimator (see the module docstring).
    alpha : float, default 0.1
        EMA rate per batch for ``mode="ema"``, in (0, 1].
    prior : float or None, default None
        Source pseudo-count N (in patches) for ``mode="prior"`` (None: 16).
    n_patches : int or None, default None
        Random patches to use; None: the whole stack when small, else 64 patches
        of 256 x 256 (the cost does not grow with the stack).
    patch_size : int, default 256
        Patch side in pixels (rounded down to a multiple of 16).
    batch_size : int, default 8
        Patches per forward pass; raised automatically so that every batch holds at least
        :data:`MIN_DEEP_SAMPLES_PER_BATCH` samples in the deepest layer (steady normalisation).
    seed : int, default 0
        Seed of the patch positions: same seed, same result.
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`predict`: ``(lo, hi)`` in the data's grey
        values maps onto the model's input range; "auto": the 0.5 and 99.5 percentiles
        of a sample; None: the data must already be in the model's range. A model built
        elsewhere without a card (``model.meta``) takes ``lo`` -> 0, ``hi`` -> 1, not
        standardised (:func:`napari_bnadapt.model.foreign.meta_for` sets another convention).
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm (None: a napari layer's scale and units, else unknown).
        When it and the model's training pixel size (``model.meta["pixel_size_nm"]``) differ by more
        than :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE` (2 %), the patches are drawn
        from the stack resampled (linear, slice by slice) to the model's pixel size, so
        ``patch_size`` counts pixels of the model's grid; the report records the ``zoom``. Either one
        unknown: runs as it is, and a :class:`~napari_bnadapt.io.resample.PixelSizeWarning` says so once.

    Returns
    -------
    (UNet or torch.nn.Module, AdaptReport)
        The adapted copy (its card ``meta`` records the adaptation) and the report.
    """
    return run_to_end(adapt_iter(
        model, images, device=device, mode=mode, alpha=alpha, prior=prior, n_patches=n_patches,
        patch_size=patch_size, batch_size=batch_size, seed=seed, intensity_range=intensity_range,
        pixel_size_nm=pixel_size_nm,
    ))


@shares_docstring(adapt)
def adapt_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    mode: str = "cumulative",
    alpha: float = 0.1,
    prior: float | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, AdaptReport]]]:
    import torch

    from ..model.foreign import (
        card_of,
        check_adaptable,
        copy_model,
        describe,
        traced_error,
    )
    from .patches import iter_patch_batches, plan_patches

    t0 = time.perf_counter()
    if mode not in MODES:
        raise BNAdaptError(f"unknown adaptation mode {mode!r}; choose one of {', '.join(MODES)}")
    _bn_layers(model)  # refuse a model without BatchNorm before reading any data
    balanced_share = balancing_share(model) if mode == "balanced" else None
    pooled_mode = "cumulative" if mode == "balanced" else mode
    kind = describe(model)
    if kind.kind == "traced":  # the same for a traced graph, read without running it
        raise traced_error(kind)
    view = check_stack(images)
    card = card_of(model)
    meta = card or default_meta(model)
    norm = resolve_normalization(view, meta["normalization"], intensity_range)
    grid = model_grid(model, images, pixel_size_nm)
    work = grid.view(view)  # the stack at the model's pixel size (resampled lazily), or as it is
    plan = plan_patches(work.shape3d, n_patches, patch_size, seed)
    if batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    deep = max(1, (plan.height // 16) * (plan.width // 16))
    batch_size = max(batch_size, -(-MIN_DEEP_SAMPLES_PER_BATCH // deep))
    dev = get_device(device)
    adapted = copy_model(model).to(dev)
    check_adaptable(adapted, dev)  # models built elsewhere: one grey channel in, 1 or 2 out, BatchNorm that adapts
    n_batches = -(-len(plan.corners) // batch_size)

    def read_batches() -> Iterator[torch.Tensor]:
        return (torch.from_numpy(b).to(dev) for b in iter_patch_batches(work, plan, norm.apply, batch_size))

    batches: Any = read_batches
    if balanced_share is not None and plan.n_voxels * 4 <= BALANCE_CACHE_BYTES:
        cached = list(read_batches())  # read again by every round of the reweighting: keep them when small
        batches = lambda: cached  # noqa: E731
    stats = yield from forward(adapt_batchnorm_iter(adapted, batches(), n_batches, mode=pooled_mode, alpha=alpha,
                                                    prior=prior, total_items=len(plan.corners)))
    extra_notes = []
    if balanced_share is not None:
        balance = yield from forward(balance_statistics_iter(adapted, batches, n_batches, balanced_share))
        stats = replace(stats, target=balance.target)
        extra_notes.append(balance.note())
    report = AdaptReport(
        mode=mode,
        alpha=alpha if mode == "ema" else None,
        prior=(16.0 if prior is None else float(prior)) if mode == "prior" else None,
        n_patches=len(plan.corners),
        patch_size=(plan.height, plan.width),
        n_voxels=plan.n_voxels,
        exhaustive=plan.exhaustive,
        batch_size=batch_size,
        seed=seed,
        # the whole stack used: there is no more data, the estimate is as good as it gets
        converged=plan.exhaustive or stats.drift <= CONVERGENCE_TOLERANCE,
        drift=stats.drift,
        device=str(dev),
        seconds=time.perf_counter() - t0,
        intensity_range=(norm.in_low, norm.in_high),
        layers=_layer_shifts(stats),
        notes=_notes(kind, card is None, norm) + ([f"patches drawn from the stack {grid.zoom_phrase()}"]
                                                   if grid.resamples else []) + extra_notes,
        zoom=grid.zoom,
        stack_voxels=int(np.prod(work.shape3d)),
    )
    adapted.meta = copy.deepcopy(meta)
    adapted.meta["name"] = f"{meta.get('name') or 'model'}-adapted"
    adapted.meta["adaptation"] = {
        "source_model": meta.get("name"),
        "target": {"shape": list(view.data.shape), "dtype": str(view.dtype),
                   "pixel_size_nm": list(grid.image_nm) if grid.image_nm else None},
        "report": report.to_dict(),
    }
    yield Result((adapted, report))


def _notes(kind: Any, no_card: bool, norm: Any) -> list[str]:
    """What the report says about a model built elsewhere (nothing for this project's U-Net)."""
    if kind.is_unet:
        return []
    notes = [f"{kind}: segmentation runs it as it is (no BatchNorm folding); the reliability check needs "
             "this project's U-Net"]
    if kind.is_torchscript:
        notes.append("TorchScript takes no Python hooks: each batch's BatchNorm statistics were read back from "
                     "the running buffers and combined here (convergence judged on whole batches)")
    if no_card:
        notes.append(f"no model card: grey values {norm.in_low:g}..{norm.in_high:g} were mapped to "
                     f"{norm.low:g}..{norm.high:g}" + ("" if (norm.mean, norm.std) == (0.0, 1.0) else
                                                      f", then standardised with mean {norm.mean:g}, std {norm.std:g}"))
    return notes
