"""Class-balanced AdaBN: target statistics reweighted to the training data's share of mitochondria.

Plain AdaBN pools every target pixel alike. A stack holding fewer mitochondria than the training data
(a small crop, a sparse region) then gives BatchNorm statistics that differ from the training ones by
what the stack holds, not only by how it was imaged, and re-centring on them moves the boundary: the
adapted model calls background mitochondria (measured on small crops of the models' own volumes,
docs/real-data.md). Here each target pixel is weighted so that the stack's foreground share, as the
model predicts it, counts as the training data's (importance weighting for a shift of the class
prior, as in Saerens et al. 2002):

    w(pixel) = p * pi / P + (1 - p) * (1 - pi) / (1 - P)

with ``p`` the pixel's foreground probability, ``P`` its mean over the sample and ``pi`` the share the
model calls mitochondria on its own training data (its card's source statistics). Each ratio is kept
within ``[1 / MAX_WEIGHT_RATIO, MAX_WEIGHT_RATIO]``, so a stack without any predicted mitochondria is
adapted almost as plain AdaBN would. The statistics are pooled in float64 in one evaluation-mode pass
in which every BatchNorm layer normalises each batch with that batch's weighted statistics (as training
mode does with the unweighted ones); each layer reads the weight map average-pooled to its resolution.
The first ``p`` comes from plain AdaBN; each of ``iterations`` rounds predicts again with the latest
estimate. Weights (convolutions, affine parameters) stay frozen, only the running statistics change.

Measured (docs/real-data.md, "Class-balanced statistics"): it helps on small stacks of a kind the model
was trained on, where its predictions are sound, and loses across labs, where the predictions it trusts
are poor; an option (``mode="balanced"``), not the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..progress import Progress, Result

if TYPE_CHECKING:
    import torch

#: Rounds of prediction and reweighting after plain AdaBN.
DEFAULT_ITERATIONS = 2
#: Largest factor by which a class's pixels are up- or down-weighted.
MAX_WEIGHT_RATIO = 4.0
_BALANCING = "balancing BatchNorm statistics"


@dataclass(frozen=True)
class Balance:
    """What :func:`balance_statistics_iter` did.

    Attributes
    ----------
    training_share : float
        pi: the share of pixels the model calls mitochondria on its own training data.
    target_shares : tuple of float
        P, the mean foreground probability of the sample, before each round (the first from plain AdaBN).
    foreground_weight, background_weight : float
        The last round's weights of a foreground and of a background pixel.
    target : dict of str to (torch.Tensor, torch.Tensor)
        The reweighted mean and variance (float64) per BatchNorm layer, as written into the model.
    """

    training_share: float
    target_shares: tuple[float, ...]
    foreground_weight: float
    background_weight: float
    target: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def note(self) -> str:
        """One line for the adaptation report."""
        shares = " -> ".join(f"{100 * s:.1f} %" for s in self.target_shares)
        return (f"class-balanced: predicted share of mitochondria {shares} (training data {100 * self.training_share:.1f} %); "
                f"pixels weighted {self.foreground_weight:.2f} (mitochondria) and {self.background_weight:.2f} "
                f"(background) in the last of {len(self.target_shares)} rounds")


def _refuse_torchscript(layers: list[tuple[str, Any]]) -> None:
    import torch

    if any(isinstance(bn, torch.jit.ScriptModule) for _, bn in layers):
        raise BNAdaptError("mode='balanced' needs Python hooks, which TorchScript models do not take; "
                           "use mode='cumulative'")


def balancing_share(model: torch.nn.Module) -> float:
    """The training data's share of mitochondria that ``mode="balanced"`` weighs a target to (the card's
    source statistics), checked before any data is read: a clear refusal for a TorchScript model or a card
    that does not give it."""
    from ..stats.source_statistics import training_foreground
    from .estimators import _bn_layers

    _refuse_torchscript(_bn_layers(model))
    share = training_foreground(model)
    if share is None or not 0.0 < share < 1.0:
        raise BNAdaptError("mode='balanced' needs the share of pixels the model calls mitochondria on its training "
                           "data (its card's source statistics: nb.compute_source_statistics on that data); this "
                           "model's card does not give one, so use mode='cumulative'")
    return share


def class_weights(share: float, training_share: float) -> tuple[float, float]:
    """(foreground, background) pixel weights that make a predicted ``share`` count as ``training_share``,
    each kept within [1 / MAX_WEIGHT_RATIO, MAX_WEIGHT_RATIO]."""
    def bounded(ratio: float) -> float:
        return min(max(ratio, 1.0 / MAX_WEIGHT_RATIO), MAX_WEIGHT_RATIO)

    eps = 1e-6
    return (bounded(training_share / max(share, eps)),
            bounded((1.0 - training_share) / max(1.0 - share, eps)))


def _foreground(model: Any, batch: Any) -> Any:
    """Foreground probability (B, 1, H, W) of one batch (no gradients)."""
    import torch

    from ..model.foreign import output_to_foreground

    with torch.no_grad():
        p = output_to_foreground(model(batch), tuple(batch.shape))
    return p.reshape(batch.shape[0], 1, *batch.shape[-2:])


class _WeightedPool:
    """float64 sums of w, w^2 (per pixel), w x and w x^2 (per channel) of one BatchNorm input."""

    def __init__(self) -> None:
        self.sums: tuple[Any, ...] = (0.0, 0.0, 0.0, 0.0)

    @staticmethod
    def moments(x: Any, w: Any) -> tuple[Any, Any, Any, Any]:
        """The sums over (batch, y, x) of one batch (x: (B, C, h, w), w: (B, 1, h, w))."""
        x, w = x.double(), w.double()
        return w.sum(), (w * w).sum(), (w * x).sum((0, 2, 3)), (w * x * x).sum((0, 2, 3))

    def add(self, sums: tuple[Any, ...]) -> None:
        self.sums = tuple(a + b for a, b in zip(self.sums, sums))

    def mean_var(self) -> tuple[Any, Any]:
        return _mean_var(self.sums)


def _mean_var(sums: tuple[Any, ...], unbiased: bool = True) -> tuple[Any, Any]:
    """Weighted mean and variance; ``unbiased``: for Kish's effective sample size (sum w)^2 / sum w^2 (equal
    weights: the pixel count, as the cumulative estimator's), else as training mode normalises a batch."""
    sw, sw2, s1, s2 = sums
    m = s1 / sw
    var = (s2 / sw - m * m).clamp_min(0)
    if not unbiased:
        return m, var
    n_eff = float(sw * sw / sw2)
    return m, var * (n_eff / max(n_eff - 1.0, 1.0))


def _weighted_pass_iter(
    model: Any, layers: list[tuple[str, Any]], batches: Iterable[Any], weight_of: Callable[[Any], Any],
    progress: Callable[[int], Progress],
) -> Iterator[Progress | Result[dict[str, tuple[Any, Any]]]]:
    """Pooled weighted statistics of every layer's input (``weight_of(batch)``: (B, 1, H, W) weights), each batch
    normalised with its own weighted ones; ``progress(i)`` after the i-th batch."""
    import torch
    import torch.nn.functional as F

    from .estimators import set_statistics

    pools = {name: _WeightedPool() for name, _ in layers}
    current: dict[str, Any] = {}

    def hook(name: str, bn: Any) -> Any:
        def pre(_module: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            w = current["w"]
            if tuple(w.shape[-2:]) != tuple(x.shape[-2:]):
                w = F.adaptive_avg_pool2d(w, x.shape[-2:])
            sums = _WeightedPool.moments(x, w)
            pools[name].add(sums)
            set_statistics(bn, *_mean_var(sums, unbiased=False))
        return pre

    model.eval()
    hooks = [bn.register_forward_pre_hook(hook(name, bn)) for name, bn in layers]
    try:
        for i, b in enumerate(batches):
            current["w"] = weight_of(b)
            with torch.no_grad():  # never yield inside no_grad (grad mode is thread-local)
                model(b)
            yield progress(i + 1)
    finally:
        for h in hooks:
            h.remove()
    yield Result({name: pools[name].mean_var() for name, _ in layers})


def balance_statistics_iter(
    model: torch.nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
    n_batches: int,
    training_share: float,
    *,
    iterations: int = DEFAULT_ITERATIONS,
) -> Iterator[Progress | Result[Balance]]:
    """Replace the BatchNorm statistics of ``model`` (already adapted by plain AdaBN) IN PLACE with
    class-balanced ones (module docstring). Call it on a copy.

    Each round reads the batches twice (the predicted share, then the weighted pass, which predicts each
    batch again with the previous round's copy of the model), so memory does not grow with their number.

    Parameters
    ----------
    model : torch.nn.Module
        A model whose BatchNorm layers hold plain AdaBN statistics of the batches; only those
        running statistics change. Plain modules only (TorchScript takes no Python hooks).
    batches : callable returning an iterable of torch.Tensor
        Gives the network inputs AdaBN read, afresh and in the same order each call, on the model's device.
    n_batches : int
        How many batches it gives (for progress).
    training_share : float
        The share of pixels the model calls mitochondria on its own training data, in (0, 1).
    iterations : int, default DEFAULT_ITERATIONS
        Rounds of prediction and reweighting (at least 1).

    Yields
    ------
    Progress, then Result(Balance)
    """
    from ..model.foreign import copy_model
    from ..progress import forward
    from .estimators import _bn_layers, write_statistics

    if not 0.0 < training_share < 1.0:
        raise BNAdaptError(f"the training data's share of mitochondria must be in (0, 1), not {training_share}")
    if iterations < 1:
        raise BNAdaptError(f"iterations must be at least 1, not {iterations}")
    layers = _bn_layers(model)
    _refuse_torchscript(layers)
    saved = {name: (bn.running_mean.clone(), bn.running_var.clone()) for name, bn in layers}
    total = 2 * iterations * n_batches
    shares: list[float] = []
    target: dict[str, tuple[Any, Any]] = {}
    fg_w = bg_w = 1.0
    ok = False
    try:
        yield Progress(_BALANCING, 0, total)
        for k in range(iterations):
            previous = copy_model(model).eval()  # predicts this round's weights while the hooks rewrite ``model``
            done = 2 * k * n_batches
            fg_sum, pixels = 0.0, 0
            for i, b in enumerate(batches()):
                p = _foreground(previous, b)
                fg_sum, pixels = fg_sum + float(p.double().sum()), pixels + p.numel()
                yield Progress(_BALANCING, done + i + 1, total)
            if pixels == 0:
                raise BNAdaptError("no target data was given to balance the statistics on")
            share = fg_sum / pixels
            shares.append(share)
            fg_w, bg_w = class_weights(share, training_share)

            def weight_of(b: Any, _prev: Any = previous, _w: tuple[float, float] = (fg_w, bg_w)) -> Any:
                p = _foreground(_prev, b)
                return p * _w[0] + (1 - p) * _w[1]

            target = yield from forward(_weighted_pass_iter(
                model, layers, batches(), weight_of,
                lambda i, _d=done + n_batches: Progress(_BALANCING, _d + i, total)))
            write_statistics(layers, target)
        ok = True
    finally:
        if not ok:  # cancelled or failed: the plain AdaBN statistics, not a half-written mix
            write_statistics(layers, saved)
        model.eval()
    yield Result(Balance(training_share=training_share, target_shares=tuple(shares), foreground_weight=fg_w,
                         background_weight=bg_w, target=target))
