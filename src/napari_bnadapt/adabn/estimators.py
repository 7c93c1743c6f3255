"""The BatchNorm statistics estimators behind ``adapt``: pooled (cumulative), EMA and prior.

Two ways to collect them: forward hooks on the BatchNorm inputs (plain modules: exact pooled
float64 sums), or per batch from the running buffers (TorchScript modules accept no Python hooks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..progress import Progress, Result

if TYPE_CHECKING:
    import torch



#: The estimators :func:`adapt_batchnorm_iter` pools itself.
POOLED_MODES = ("cumulative", "ema", "prior")
#: Every ``mode`` of :func:`napari_bnadapt.adapt` (``balanced``: cumulative, then reweighted by
#: :mod:`napari_bnadapt.adabn.balanced`).
MODES = (*POOLED_MODES, "balanced")


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

    if mode not in POOLED_MODES:
        raise BNAdaptError(f"unknown adaptation mode {mode!r}; choose one of {', '.join(POOLED_MODES)}")
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
        write_statistics(layers, target)
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


def set_statistics(bn: Any, mean: Any, var: Any) -> None:
    """Set one BatchNorm layer's running mean and variance (converted to the buffers' dtype)."""
    bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
    bn.running_var.copy_(var.to(bn.running_var.dtype))


def write_statistics(layers: list[tuple[str, Any]], stats: dict[str, tuple[Any, Any]]) -> None:
    """Set every layer's running statistics to ``stats[name]`` (mean, variance)."""
    for name, bn in layers:
        set_statistics(bn, *stats[name])


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
