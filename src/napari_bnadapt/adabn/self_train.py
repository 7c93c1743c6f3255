"""A short self-training pass after AdaBN: fit a copy to its own confident predictions on the target.

AdaBN re-estimates the BatchNorm statistics; the weights stay those of the source. Self-training
(pseudo-labelling) lets the convolution weights move a little towards the target: the adapted
model segments random target patches once, the pixels it is confident about (probability at least
``confidence`` for mitochondria, at most ``1 - confidence`` for background) become labels, and a
COPY of the model takes a few Adam steps on those pixels only. The model given is never changed.

Choices, and why:

- **One round of fixed pseudo-labels**, made by the starting model before any step: a model that
  relabels its own output as it trains drifts towards whatever it already believes.
- **Class-balanced loss**: binary cross-entropy averaged separately over the confident
  mitochondria pixels and the confident background pixels, then the two means averaged.
  Mitochondria are a minority class; a plain mean would teach "background" above all.
- **BatchNorm frozen**: BatchNorm layers stay in eval mode with the AdaBN statistics and their affine
  parameters do not learn; every other parameter does (small learning rate). The pass changes
  the convolutions, not what AdaBN estimated.
- **Flips and 90-degree rotations** of each batch (image and pseudo-labels together), so that the
  copy does not just memorise the patches.
- **A guard**, as in :mod:`.entropy`: when the predicted foreground fraction of the whole patch
  sample moves by more than ``max_foreground_ratio`` (either way), the copy gets back the starting
  weights and the report says so.

Measured by ``benchmarks/bench_self_training.py`` (``benchmarks/results/bench_self_training.txt``,
``docs/real-data.md``) on 24 (model, target) pairs of held-out EM slices: better in the 6 pairs where a
single-source model under-segments the other volume after AdaBN (+0.07 to +0.33 IoU), worse in the
other 18 (in-domain -0.005 to -0.17; ``lucchi-pp-robust`` on VNC -0.04 to -0.07). It raised the
predicted foreground fraction every time. Hence an opt-in option (``workflow.run(self_train=True)``,
``bnadapt segment --adapt --self-train``), not the default.

The reliability bound (:mod:`napari_bnadapt.bound`) was calibrated on AdaBN models; assess the
reliability with the AdaBN model, segment with the model this pass returns.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..progress import Progress, Result, run_to_end, shares_docstring
from .entropy import (
    MAX_FOREGROUND_RATIO,
    _foreground_logit,
    _fraction_ratio,
    _outside,
    record_in_card,
    tuning_target,
)

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: Default number of Adam steps (one batch of patches each).
DEFAULT_STEPS = 30
#: Default Adam learning rate for the non-BatchNorm parameters.
DEFAULT_LR = 1e-4
#: Default probability a pixel's prediction must reach (or stay under 1 - it) to become a label.
DEFAULT_CONFIDENCE = 0.9


@dataclass
class SelfTrainReport:
    """What :func:`self_train` did.

    Attributes
    ----------
    steps, steps_run : int
        Steps requested, and steps kept (0 when the guard restored the starting weights).
    lr, confidence : float
    n_patches : int
        Target patches drawn and pseudo-labelled.
    patch_size : (int, int)
    batch_size, seed : int
    n_parameters : int
        Parameters trained (every parameter outside the BatchNorm layers).
    confident_fraction : float
        Share of the patch pixels that became labels.
    pseudo_foreground : float
        Share of the labelled pixels labelled mitochondria.
    foreground_before, foreground_after : float
        Predicted foreground fraction (``p > 0.5``) on all the patches, before and after.
    loss_before, loss_after : float
        The balanced pseudo-label loss on all the patches, before and after.
    reverted : bool
        True when the guard restored the starting weights.
    guard : str
        What the guard did, in words ("" when it did nothing).
    device : str
    seconds : float
    """

    steps: int
    steps_run: int
    lr: float
    confidence: float
    n_patches: int
    patch_size: tuple[int, int]
    batch_size: int
    seed: int
    n_parameters: int
    confident_fraction: float
    pseudo_foreground: float
    foreground_before: float
    foreground_after: float
    loss_before: float
    loss_after: float
    reverted: bool
    guard: str
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the model copy's card)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"Self-training on {self.device} in {self.seconds:.1f} s: {self.steps_run} of {self.steps} steps kept "
            f"(lr {self.lr:g}, confidence {self.confidence:g})",
            f"  {self.n_patches} patches of {self.patch_size[0]}x{self.patch_size[1]}; "
            f"{self.confident_fraction:.1%} of the pixels labelled ({self.pseudo_foreground:.1%} of them mitochondria); "
            f"loss {self.loss_before:.4f} -> {self.loss_after:.4f}, "
            f"foreground {self.foreground_before:.3f} -> {self.foreground_after:.3f}",
        ]
        if self.guard:
            lines.append(f"  guard: {self.guard}")
        return "\n".join(lines)


def self_train(
    model: UNet,
    images: ArrayLike | Image,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    confidence: float = DEFAULT_CONFIDENCE,
    patch_size: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    max_foreground_ratio: float = MAX_FOREGROUND_RATIO,
    pixel_size_nm: tuple[float, float] | None = None,
) -> tuple[UNet, SelfTrainReport]:
    """Fit a copy of the (adapted) model to its own confident predictions on the target.

    See the module docstring for the recipe. Run it on the model :func:`adapt` returned; the model
    given is never changed.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The starting model, normally the AdaBN-adapted copy (one grey input channel, 1 or 2 outputs).
    images : array-like or napari Image layer
        The unlabelled target: (Y, X) image or (Z, Y, X) stack; only the sampled patches are read.
    steps : int, default 30
        Adam steps, each on one batch of patches (flipped/rotated at random).
    lr : float, default 1e-4
        Adam learning rate.
    confidence : float, default 0.9
        A pixel becomes a label when the starting model's probability is at least this (mitochondrion)
        or at most ``1 - confidence`` (background); in (0.5, 1).
    patch_size : int, default 256
        Patch side in pixels (rounded down to a multiple of 16 and to the slice size).
    batch_size : int, default 4
        Patches per step; ``steps * batch_size`` patches are drawn and labelled once.
    seed : int, default 0
        Seed of the patch positions and of the flips: same seed, same result.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`adapt` (use the same as for the adaptation).
    max_foreground_ratio : float, default 2.0
        The guard: the predicted foreground fraction may move by at most this factor (> 1).
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm: the patches are drawn at the model's pixel size.

    Returns
    -------
    (UNet or torch.nn.Module, SelfTrainReport)
        The copy (its card records the pass: ``meta["adaptation"]["self_train"]`` for an adapted model,
        else ``meta["self_train"]``) and the report.
    """
    return run_to_end(self_train_iter(
        model, images, steps=steps, lr=lr, confidence=confidence, patch_size=patch_size, batch_size=batch_size,
        seed=seed, device=device, intensity_range=intensity_range, max_foreground_ratio=max_foreground_ratio,
        pixel_size_nm=pixel_size_nm,
    ))


def _check(steps: int, lr: float, confidence: float, batch_size: int, max_foreground_ratio: float) -> None:
    if steps < 0:
        raise BNAdaptError(f"steps must be at least 0, not {steps}")
    if not lr > 0 or not math.isfinite(lr):
        raise BNAdaptError(f"lr must be a positive number, not {lr}")
    if not 0.5 < confidence < 1:
        raise BNAdaptError(f"confidence must be between 0.5 and 1 (exclusive), not {confidence}")
    if batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    if not max_foreground_ratio > 1:
        raise BNAdaptError(f"max_foreground_ratio must be above 1, not {max_foreground_ratio}")


def balanced_loss(z: Any, target: Any, weight: Any) -> Any:
    """Binary cross-entropy of logits ``z``, averaged over the labelled foreground and background apart.

    ``target`` is 1 (mitochondrion) or 0, ``weight`` 1 where the pixel is labelled, else 0. The two
    class means are averaged; a class without labelled pixels is left out.
    """
    from torch.nn import functional as F

    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    terms = []
    for mask in (weight * target, weight * (1 - target)):
        n = mask.sum()
        if float(n) > 0:
            terms.append((bce * mask).sum() / n)
    return sum(terms) / len(terms) if terms else z.sum() * 0.0


@shares_docstring(self_train)
def self_train_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    confidence: float = DEFAULT_CONFIDENCE,
    patch_size: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    max_foreground_ratio: float = MAX_FOREGROUND_RATIO,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, SelfTrainReport]]]:
    import torch

    from ..model.foreign import batchnorm_layers

    t0 = time.perf_counter()
    _check(steps, lr, confidence, batch_size, max_foreground_ratio)
    target = tuning_target(model, images, n_patches=max(1, steps) * batch_size, patch_size=patch_size, seed=seed,
                           device=device, intensity_range=intensity_range, pixel_size_nm=pixel_size_nm)
    meta, plan, dev, tuned = target.meta, target.plan, target.device, target.copy
    stage = "self-training"
    yield Progress(stage, 0, steps + 2)
    batches = target.batches(batch_size)
    bn_params = {id(p) for _, bn in batchnorm_layers(tuned) for p in bn.parameters(recurse=False)}
    flags = {id(p): p.requires_grad for p in tuned.parameters()}
    params = [p for p in tuned.parameters() if id(p) not in bn_params]
    for p in tuned.parameters():
        p.requires_grad_(id(p) not in bn_params)
    tuned.eval()  # BatchNorm normalises with the AdaBN statistics, never updated
    start = copy.deepcopy(tuned.state_dict())
    try:
        with torch.no_grad():
            labels = []
            for x in batches:
                prob = torch.sigmoid(_foreground_logit(tuned(x)))
                labels.append(((prob >= 0.5).float(), ((prob >= confidence) | (prob <= 1 - confidence)).float()))
        n_pix = sum(float(w.numel()) for _, w in labels)
        confident = sum(float(w.sum()) for _, w in labels) / n_pix
        pseudo_fg = sum(float((t * w).sum()) for t, w in labels) / max(1.0, confident * n_pix)
        f0, l0 = _measure(tuned, batches, labels)
        yield Progress(stage, 1, steps + 2)
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for i in range(steps):
            x = batches[i % len(batches)]
            target, weight = labels[i % len(labels)]
            k, flip = int(torch.randint(4, (1,), generator=gen)), bool(torch.randint(2, (1,), generator=gen))
            x, target, weight = (_turn(a, k, flip) for a in (x, target[:, None], weight[:, None]))
            with torch.enable_grad():  # grad mode is thread-local: never yield inside it
                loss = balanced_loss(_foreground_logit(tuned(x)), target[:, 0], weight[:, 0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            yield Progress(stage, i + 1, steps + 2)
        f1, l1 = _measure(tuned, batches, labels)
        guard, reverted = "", False
        if steps > 0 and _outside(_fraction_ratio(f1, f0), max_foreground_ratio):
            guard = (f"the foreground of the patches moved from {f0:.3f} to {f1:.3f} (more than "
                     f"x{max_foreground_ratio:g}): the starting weights were restored")
            tuned.load_state_dict(start)
            reverted, f1, l1 = True, f0, l0
    finally:
        for p in tuned.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        tuned.eval()
    yield Progress(stage, steps + 2, steps + 2)
    report = SelfTrainReport(
        steps=steps, steps_run=0 if reverted else steps, lr=float(lr), confidence=float(confidence),
        n_patches=len(plan.corners), patch_size=(plan.height, plan.width), batch_size=batch_size, seed=seed,
        n_parameters=int(sum(p.numel() for p in params)), confident_fraction=confident,
        pseudo_foreground=pseudo_fg, foreground_before=f0, foreground_after=f1, loss_before=l0, loss_after=l1,
        reverted=reverted, guard=guard, device=str(dev), seconds=time.perf_counter() - t0,
    )
    record_in_card(tuned, meta, "self_train", report.to_dict())
    yield Result((tuned, report))


def _turn(a: Any, k: int, flip: bool) -> Any:
    """A (B, C, H, W) batch rotated by k quarter turns and optionally flipped left-right."""
    import torch

    a = torch.rot90(a, k, dims=(2, 3))
    return torch.flip(a, dims=(3,)) if flip else a


def _measure(model: Any, batches: list[Any], labels: list[tuple[Any, Any]]) -> tuple[float, float]:
    """(foreground fraction, mean balanced loss) over all the batches, no gradients."""
    import torch

    fg, loss = [], []
    with torch.no_grad():
        for x, (target, weight) in zip(batches, labels):
            z = _foreground_logit(model(x))
            fg.append(float((z > 0).float().mean()))
            loss.append(float(balanced_loss(z, target, weight)))
    return sum(fg) / len(fg), sum(loss) / len(loss)
