"""BatchNorm adaptation (AdaBN): re-estimate BatchNorm statistics on the unlabelled target.

All weights stay frozen; only the running mean and variance of the BatchNorm
layers change, and only in a copy of the model. Three estimators
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

Any ``torch.nn.Module`` with BatchNorm is adapted the same way (:mod:`napari_bnadapt.model.foreign`).
TorchScript takes no Python hooks: each batch's statistics are read back from the BatchNorm buffers
and combined here, the same three estimators (the report's notes say so); traced models are refused.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, resolve_normalization
from ..model.device import get_device
from ..model.files import default_meta
from ..progress import Progress, Result, forward, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

MODES = ("cumulative", "ema", "prior")
#: Smallest number of samples per batch in the deepest (1/16 resolution) layer. The forward pass of
#: adaptation normalises each batch with its own statistics; with fewer samples than this the
#: deep layers see noisy normalisation and the pooled estimates drift (measured on the toy model:
#: 128 samples per batch -> up to 4.6 % of a standard deviation off the exact statistics,
#: 2048 -> 0.5 %). Small patches therefore get larger batches.
MIN_DEEP_SAMPLES_PER_BATCH = 2048
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
        How a model built elsewhere was handled (TorchScript: statistics read batch by batch).
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


class _PooledStats:
    """Per-channel float64 sums of one BatchNorm layer's input, shifted by a fixed reference.

    With ``split=True`` the first half of the samples is also pooled on its own
    (``self.half``), which tells whether the estimate has converged.
    """

    def __init__(self, shift: Any, split: bool = False) -> None:
        import torch

        self.shift = shift.detach().to(torch.float64)
        self.n = 0
        self.s1 = torch.zeros_like(self.shift)
        self.s2 = torch.zeros_like(self.shift)
        self.half = _PooledStats(shift) if split else None

    def update(self, x: Any, first_half_items: int = 0) -> None:
        """Add a batch (B, C, ...); its first ``first_half_items`` items also go to the half-sample."""
        import torch

        c = x.shape[1]
        xs = x.detach().transpose(0, 1).reshape(c, -1).to(torch.float64) - self.shift[:, None]
        self.n += xs.shape[1]
        self.s1 += xs.sum(1)
        self.s2 += (xs * xs).sum(1)
        if self.half is not None and first_half_items > 0:
            self.half.update(x[:first_half_items])

    def mean_var(self) -> tuple[Any, Any]:
        m = self.s1 / self.n
        var = (self.s2 / self.n - m * m).clamp_min(0) * (self.n / max(self.n - 1, 1))
        return m + self.shift, var


@dataclass(frozen=True)
class BatchNormStatistics:
    """What :func:`adapt_batchnorm_iter` measured (the statistics are already in the model).

    Attributes
    ----------
    source : dict of str to (torch.Tensor, torch.Tensor)
        Running mean and variance of every BatchNorm layer before adaptation.
    target : dict of str to (torch.Tensor, torch.Tensor)
        The re-estimated mean and variance (float64), as written into the model.
    drift : float
        Half-sample disagreement in source sigmas (largest over the layers); NaN
        when it cannot be judged (a single batch and no ``total_items``).
    layers : list of (str, BatchNorm module)
        The adapted layers, by qualified name.
    """

    source: dict[str, tuple[torch.Tensor, torch.Tensor]]
    target: dict[str, tuple[torch.Tensor, torch.Tensor]]
    drift: float
    layers: list[tuple[str, torch.nn.modules.batchnorm._BatchNorm]]


def _bn_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.modules.batchnorm._BatchNorm]]:
    import torch

    from ..model.foreign import batchnorm_layers, require_module

    require_module(model)
    layers = batchnorm_layers(model)
    if not layers:
        hint = (" (a frozen or optimised TorchScript model, torch.jit.freeze / optimize_for_inference, has its "
                "BatchNorm folded into the convolutions: export the unfrozen model)"
                if isinstance(model, torch.jit.ScriptModule) else "")
        raise BNAdaptError(
            "this model has no BatchNorm layers, so BatchNorm adaptation cannot change it; "
            "use a model trained with BatchNorm (every napari-bnadapt U-Net has them)" + hint
        )
    for name, bn in layers:
        if not getattr(bn, "track_running_stats", True) or getattr(bn, "running_mean", None) is None:
            raise BNAdaptError(f"the BatchNorm layer {name!r} keeps no running statistics; it cannot be adapted")
    return layers


def adapt_batchnorm_iter(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    n_batches: int,
    *,
    mode: str = "cumulative",
    alpha: float = 0.1,
    prior: float | None = None,
    n_samples: int | None = None,
    total_items: int | None = None,
) -> Iterator[Progress | Result[BatchNormStatistics]]:
    """Re-estimate the BatchNorm statistics of ``model`` IN PLACE from ``batches``.

    The generic engine behind :func:`adapt`, for any network with BatchNorm
    layers (the toy classification experiment uses it directly). Call it on a copy.
    Plain modules are measured with forward pre-hooks on the BatchNorm inputs; a model with
    TorchScript BatchNorm layers through their running buffers, batch by batch (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place: only BatchNorm running statistics change.
    batches : iterable of torch.Tensor
        Network inputs, already on the model's device.
    n_batches : int
        Length of ``batches`` (for progress).
    mode : {"cumulative", "ema", "prior"}
    alpha : float, default 0.1
        EMA rate (``mode="ema"``).
    prior : float or None
        Source pseudo-count N (``mode="prior"``; default 16).
    n_samples : int or None
        Number of target samples n for ``mode="prior"`` (default: total batch items).
    total_items : int or None
        Total number of items in ``batches``; with it, convergence is judged by pooling the
        first half of the items on its own (else by the estimate after half of the batches).

    Yields
    ------
    Progress, then Result(BatchNormStatistics)
        The ``source`` and ``target`` statistics per layer and the ``drift``
        (half-sample disagreement, source sigmas).
    """
    import torch

    if mode not in MODES:
        raise BNAdaptError(f"unknown adaptation mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "ema" and not 0.0 < alpha <= 1.0:
        raise BNAdaptError(f"alpha must be in (0, 1], not {alpha}")
    if mode == "prior" and prior is not None and prior < 0:
        raise BNAdaptError(f"prior must be >= 0, not {prior}")
    layers = _bn_layers(model)
    if any(isinstance(bn, torch.jit.ScriptModule) for _, bn in layers):  # no hooks: read the buffers
        yield from _adapt_batchwise_iter(model, layers, batches, n_batches, mode=mode, alpha=alpha, prior=prior,
                                         n_samples=n_samples, total_items=total_items)
        return
    source = {n: (bn.running_mean.detach().clone(), bn.running_var.detach().clone()) for n, bn in layers}
    momenta = {n: bn.momentum for n, bn in layers}
    counters = {n: bn.num_batches_tracked.clone() for n, bn in layers if bn.num_batches_tracked is not None}
    pooled: dict[str, _PooledStats] = {}
    hooks = []
    model.eval()
    for name, bn in layers:
        bn.train()
        if mode == "ema":
            bn.momentum = alpha
        else:
            pooled[name] = _PooledStats(source[name][0], split=bool(total_items and total_items >= 2))
            hooks.append(bn.register_forward_pre_hook(
                lambda mod, inp, _p=pooled[name]: _p.update(inp[0], state["first_half_items"])))
    half: dict[str, tuple[Any, Any]] | None = None
    seen = 0
    state = {"first_half_items": 0}
    split = bool(pooled) and bool(total_items and total_items >= 2)
    try:
        # grad mode is thread-local: never yield inside torch.no_grad(), or a cancelled run
        # would leave the worker thread without gradients for the next job
        yield Progress("adapting BatchNorm", 0, n_batches)
        for i, x in enumerate(batches):
            if split:
                state["first_half_items"] = max(0, min(int(x.shape[0]), total_items // 2 - seen))
            with torch.no_grad():
                model(x)
            seen += int(x.shape[0])
            if not split and i + 1 == max(1, n_batches // 2) and n_batches > 1:
                half = _current(layers, pooled)
            yield Progress("adapting BatchNorm", i + 1, n_batches)
        if seen == 0:
            raise BNAdaptError("no target data was given to adapt on")
        target = _current(layers, pooled)
        if split:
            half = {n: pooled[n].half.mean_var() for n, _ in layers}
        if mode == "prior":
            target = _mix_prior(source, target, prior, n_samples or seen)
        for name, bn in layers:
            bn.running_mean.copy_(target[name][0].to(bn.running_mean.dtype))
            bn.running_var.copy_(target[name][1].to(bn.running_var.dtype))
    finally:
        for h in hooks:
            h.remove()
        for name, bn in layers:
            bn.momentum = momenta[name]
            if name in counters:  # a counter PyTorch bumps in train mode; not a statistic
                bn.num_batches_tracked.copy_(counters[name])
        model.eval()
    drift = _drift(source, half, target)
    yield Result(BatchNormStatistics(source=source, target=target, drift=drift, layers=layers))


def _mix_prior(source: dict[str, Any], target: dict[str, Any], prior: float | None, n: int) -> dict[str, Any]:
    """Schneider et al.: ``N/(N+n)`` source plus ``n/(N+n)`` target, mean and variance alike."""
    wt = float(n) / ((16.0 if prior is None else float(prior)) + float(n))
    return {k: ((1 - wt) * source[k][0] + wt * m, (1 - wt) * source[k][1] + wt * v) for k, (m, v) in target.items()}


def _drift(source: dict[str, Any], half: dict[str, Any] | None, target: dict[str, Any]) -> float:
    """Largest mean |half - final| over the layers, in source sigmas (NaN: no half-sample estimate)."""
    if half is None:
        return math.nan  # unknown: a single batch without a split
    drift = 0.0
    for name in target:
        sd = source[name][1].double().clamp_min(1e-12).sqrt()
        drift = max(drift, ((half[name][0].double() - target[name][0].double()).abs() / sd).mean().item())
    return drift


def _adapt_batchwise_iter(
    model: Any, layers: list[tuple[str, Any]], batches: Iterable[Any], n_batches: int, *, mode: str, alpha: float,
    prior: float | None, n_samples: int | None, total_items: int | None,
) -> Iterator[Progress | Result[BatchNormStatistics]]:
    """:func:`adapt_batchnorm_iter` for TorchScript modules (no hooks, the momentum a compiled constant).

    Each batch's statistics (mean, unbiased variance) are read back from the running buffers
    (:class:`~napari_bnadapt.model.foreign.BatchStatisticsReader`) and combined in float64: pooled
    with the variance between batches (cumulative, prior) or averaged with rate ``alpha`` (ema). The
    half-sample estimate is the one after the batch that reaches half of ``total_items`` (ema, or no
    ``total_items``: after half of the batches, as for plain modules).
    """
    import torch

    from ..model.foreign import BatchStatisticsReader

    reader = BatchStatisticsReader(model, layers)
    source = reader.source
    shift = {n: m.double() for n, (m, _) in source.items()}
    sums = {n: [0, 0.0, 0.0] for n in source}  # items, sum w (mu - shift), sum w (var + (mu - shift)^2)
    ema = {n: (m.double(), v.double()) for n, (m, v) in source.items()}

    def current() -> dict[str, tuple[Any, Any]]:
        if mode == "ema":
            return {k: (m.clone(), v.clone()) for k, (m, v) in ema.items()}
        out = {}
        for k, (items, s1, s2) in sums.items():
            m = s1 / items
            out[k] = (m + shift[k], (s2 / items - m * m).clamp_min(0))
        return out

    half, half_seen, seen, ok = None, 0, 0, False
    split_at = total_items // 2 if total_items and total_items >= 2 else None
    try:
        yield Progress("adapting BatchNorm", 0, n_batches)
        for i, x in enumerate(batches):
            w = int(x.shape[0])
            reader.reset()
            with torch.no_grad():
                model(x)
            for name, (mu, var) in reader.read(first=i == 0).items():
                acc, d = sums[name], mu - shift[name]
                acc[0], acc[1], acc[2] = acc[0] + w, acc[1] + w * d, acc[2] + w * (var + d * d)
                ema[name] = ((1 - alpha) * ema[name][0] + alpha * mu, (1 - alpha) * ema[name][1] + alpha * var)
            seen += w
            if half is None and (seen >= split_at if split_at and mode != "ema" else i + 1 == n_batches // 2):
                half, half_seen = current(), seen
            yield Progress("adapting BatchNorm", i + 1, n_batches)
        if seen == 0:
            raise BNAdaptError("no target data was given to adapt on")
        target = current()
        if half_seen == seen:  # the "half" already held everything: convergence cannot be judged
            half = None
        if mode == "prior":
            target = _mix_prior(source, target, prior, n_samples or seen)
        reader.write(target)
        ok = True
    finally:
        reader.finish(restore_source=not ok)
    yield Result(BatchNormStatistics(source=source, target=target, drift=_drift(source, half, target), layers=layers))


def _current(
    layers: list[tuple[str, torch.nn.modules.batchnorm._BatchNorm]], pooled: dict[str, _PooledStats]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if pooled:
        return {n: pooled[n].mean_var() for n, _ in layers}
    return {n: (bn.running_mean.detach().clone(), bn.running_var.detach().clone()) for n, bn in layers}


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
    mode : {"cumulative", "ema", "prior"}, default "cumulative"
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

    Returns
    -------
    (UNet or torch.nn.Module, AdaptReport)
        The adapted copy (its card ``meta`` records the adaptation) and the report.
    """
    return run_to_end(adapt_iter(
        model, images, device=device, mode=mode, alpha=alpha, prior=prior, n_patches=n_patches,
        patch_size=patch_size, batch_size=batch_size, seed=seed, intensity_range=intensity_range,
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
) -> Iterator[Progress | Result[tuple[UNet, AdaptReport]]]:
    import torch

    from .patches import iter_patch_batches, plan_patches

    from ..model.foreign import card_of, check_adaptable, copy_model, describe, traced_error

    t0 = time.perf_counter()
    _bn_layers(model)  # refuse a model without BatchNorm before reading any data
    kind = describe(model)
    if kind.kind == "traced":  # the same for a traced graph, read without running it
        raise traced_error(kind)
    view = check_stack(images)
    card = card_of(model)
    meta = card or default_meta(model)
    norm = resolve_normalization(view, meta["normalization"], intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    if batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    deep = max(1, (plan.height // 16) * (plan.width // 16))
    batch_size = max(batch_size, -(-MIN_DEEP_SAMPLES_PER_BATCH // deep))
    dev = get_device(device)
    adapted = copy_model(model).to(dev)
    check_adaptable(adapted, dev)  # models built elsewhere: one grey channel in, 1 or 2 out, BatchNorm that adapts
    n_batches = -(-len(plan.corners) // batch_size)
    batches = (torch.from_numpy(b).to(dev) for b in iter_patch_batches(view, plan, norm.apply, batch_size))
    stats = yield from forward(adapt_batchnorm_iter(adapted, batches, n_batches, mode=mode, alpha=alpha,
                                                    prior=prior, total_items=len(plan.corners)))
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
        notes=_notes(kind, card is None, norm),
    )
    adapted.meta = copy.deepcopy(meta)
    adapted.meta["name"] = f"{meta.get('name') or 'model'}-adapted"
    adapted.meta["adaptation"] = {
        "source_model": meta.get("name"),
        "target": {"shape": list(view.data.shape), "dtype": str(view.dtype)},
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
