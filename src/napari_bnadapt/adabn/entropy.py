"""A few steps of entropy minimisation after AdaBN (TENT-style), with a guard against collapse.

AdaBN renormalises every layer with the target's statistics; TENT (Wang et al., ICLR 2021) goes one
cheap step further: it adjusts the BatchNorm *affine* parameters (``weight`` = gamma, ``bias`` =
beta) so that the network's predictions on the unlabelled target become confident, i.e. the
mean per-pixel prediction entropy falls. :func:`entropy_step` does that on a COPY of an (already
adapted) model, on random target patches, with Adam, for a handful of steps (seconds on a CPU).

Choices, and why:

- **Only the BatchNorm affine parameters** are optimised; every other parameter has
  ``requires_grad=False`` and stays byte-identical (tested). Their number is small (two per channel),
  so a few steps cannot overfit the patches much.
- **The BatchNorm layers stay in eval mode**: they normalise with the running statistics that AdaBN
  estimated on the whole target sample, and those statistics are not updated. TENT itself normalises
  with each batch's statistics, which with 4 patches of 256 px is noisy in the deep layers (see
  ``MIN_DEEP_SAMPLES_PER_BATCH`` in :mod:`.adaptation`) and would leave the running statistics out of
  step with the learnt affine parameters. AdaBN then entropy: the statistics come from AdaBN, only the
  affine map after the normalisation learns.
- **A class-balance term.** Mitochondria are a minority class: plain entropy minimisation is
  happiest when everything is confidently background (entropy 0), and drifts there. SHOT's
  "information maximisation" adds the entropy of the *mean* prediction, which pulls the
  foreground share towards 50 %: wrong for a minority class too. Here the anchor is the
  AdaBN model's own prediction: the loss is ``mean H(p) + balance * KL(pi_0 || mean p)`` per batch, with
  ``pi_0`` the mean foreground probability the starting (AdaBN) model gives on the same patches
  (binary KL divergence). The entropy may sharpen the boundaries, the balance keeps the amount of
  foreground where AdaBN put it.
- **A guard.** After every step the predicted foreground fraction (pixels with ``p > 0.5``) of the
  batch is compared with the starting model's on the same batch; when it moved by more than a
  factor ``max_foreground_ratio`` (default 2, either way), the last step is undone and the
  optimisation stops. At the end the whole patch sample is measured again: if its foreground moved
  by more than that factor, or its mean entropy did not fall, the copy gets back the starting affine
  parameters (the model is then the AdaBN model; the report says so).

Measured (defaults: 20 steps of 4 patches, lr 5e-3, balance 1). On the toy model, with a target of lower
contrast and more noise (grey values 110/135, sigma 30) where AdaBN restores only part of the IoU,
the step helps: IoU on fresh images 0.742 (AdaBN) -> 0.831, entropy 0.046 -> 0.019 nats. On REAL EM
data it HURT: the ``lucchi-pp`` model on Lucchi++ test slices (in-domain) 0.883 -> 0.861, and on VNC
(Lucchi++ -> VNC, 6 slices) 0.455 -> 0.350 (balance 10: 0.377). The entropy falls (0.0099 -> 0.0027
nats) while the predicted foreground shrinks by 10-30 %, within the guard's factor 2. It is therefore
an opt-in experiment, not part of the default workflow.

The reliability bound (:mod:`napari_bnadapt.bound`) was calibrated on AdaBN models: its latent
spaces are taken after the BatchNorm affine map, which this step changes. Assess the reliability
with the AdaBN model, segment with the model this step returns.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.resample import model_grid
from ..io.stack_view import check_stack, resolve_normalization
from ..model.device import get_device
from ..model.files import default_meta
from ..progress import Progress, Result, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: Default number of Adam steps (one batch of patches each).
DEFAULT_STEPS = 20
#: Default patches per step.
DEFAULT_BATCH_SIZE = 4
#: Default Adam learning rate for the BatchNorm affine parameters (gamma ~ 1, beta ~ 0).
DEFAULT_LR = 5e-3
#: Default weight of the class-balance term KL(pi_0 || mean p).
DEFAULT_BALANCE = 1.0
#: The guard: the predicted foreground fraction may move by at most this factor (either way).
MAX_FOREGROUND_RATIO = 2.0
#: Foreground fractions are compared as (f + FRACTION_FLOOR) / (f0 + FRACTION_FLOOR): an image with
#: almost no foreground does not trip the guard over a handful of pixels.
FRACTION_FLOOR = 1e-3


@dataclass
class EntropyReport:
    """What :func:`entropy_step` did.

    Attributes
    ----------
    steps : int
        Steps requested.
    steps_run : int
        Adam steps kept (fewer when the guard stopped the optimisation; 0 when it reverted all).
    lr, balance : float
        Learning rate and weight of the class-balance term.
    n_patches : int
        Target patches drawn (``steps * batch_size``, each step its own batch).
    patch_size : (int, int)
    batch_size, seed : int
    n_parameters : int
        Number of BatchNorm affine parameters optimised.
    entropy_before, entropy_after : float
        Mean binary prediction entropy per pixel (nats; at most ln 2 = 0.693) on all the
        patches, with the starting and with the returned parameters.
    foreground_before, foreground_after : float
        Predicted foreground fraction (``p > 0.5``) on all the patches, before and after.
    guard_fired : bool
        True when the guard undid a step or reverted the copy.
    reverted : bool
        True when the copy got back the starting affine parameters (it is the starting model).
    guard : str
        What the guard did, in words ("" when it did nothing).
    device : str
    seconds : float
    """

    steps: int
    steps_run: int
    lr: float
    balance: float
    n_patches: int
    patch_size: tuple[int, int]
    batch_size: int
    seed: int
    n_parameters: int
    entropy_before: float
    entropy_after: float
    foreground_before: float
    foreground_after: float
    guard_fired: bool
    reverted: bool
    guard: str
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the model copy's card)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"Entropy minimisation of the BatchNorm affine parameters on {self.device} in {self.seconds:.1f} s: "
            f"{self.steps_run} of {self.steps} steps kept (lr {self.lr:g}, balance {self.balance:g})",
            f"  {self.n_patches} patches of {self.patch_size[0]}x{self.patch_size[1]}; "
            f"mean entropy {self.entropy_before:.4f} -> {self.entropy_after:.4f} nats, "
            f"foreground {self.foreground_before:.3f} -> {self.foreground_after:.3f}",
        ]
        if self.guard:
            lines.append(f"  guard: {self.guard}")
        return "\n".join(lines)


def _foreground_logit(logits: Any) -> Any:
    """(B, H, W) foreground logit of a 1-channel (sigmoid) or 2-channel (softmax) output."""
    from ..model.foreign import output_to_foreground

    c = int(logits.shape[1]) if logits.dim() == 4 else -1
    if c == 1:
        return logits[:, 0].float()
    if c == 2:
        return (logits[:, 1] - logits[:, 0]).float()
    output_to_foreground(logits)  # raises the project's message for any other output
    raise BNAdaptError(f"unsupported model output of shape {tuple(logits.shape)}")


def binary_entropy(z: Any) -> Any:
    """Per-pixel entropy (nats) of ``p = sigmoid(z)``, from the logit ``z`` (stable for large |z|)."""
    import torch
    from torch.nn import functional as F

    p = torch.sigmoid(z)
    return p * F.softplus(-z) + (1 - p) * F.softplus(z)


def _binary_kl(p0: Any, p: Any) -> Any:
    """KL(Bernoulli(p0) || Bernoulli(p)), with both clamped away from 0 and 1."""
    import torch

    eps = 1e-6
    p0 = torch.as_tensor(p0, dtype=p.dtype, device=p.device).clamp(eps, 1 - eps)
    p = p.clamp(eps, 1 - eps)
    return p0 * torch.log(p0 / p) + (1 - p0) * torch.log((1 - p0) / (1 - p))


def _fraction_ratio(f: float, f0: float) -> float:
    return (f + FRACTION_FLOOR) / (f0 + FRACTION_FLOOR)


def _outside(ratio: float, limit: float) -> bool:
    return not (1.0 / limit <= ratio <= limit)


def affine_parameters(model: Any) -> list[Any]:
    """The BatchNorm ``weight`` and ``bias`` parameters of ``model`` (layers without affine skipped)."""
    from ..model.foreign import batchnorm_layers

    params = []
    for _, bn in batchnorm_layers(model):
        for name in ("weight", "bias"):
            p = getattr(bn, name, None)
            if p is not None and getattr(p, "requires_grad", None) is not None:
                params.append(p)
    return params


def entropy_step(
    model: UNet,
    images: ArrayLike | Image,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    balance: float = DEFAULT_BALANCE,
    patch_size: int = 256,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    max_foreground_ratio: float = MAX_FOREGROUND_RATIO,
    pixel_size_nm: tuple[float, float] | None = None,
) -> tuple[UNet, EntropyReport]:
    """Lower the prediction entropy on the target by tuning the BatchNorm affine parameters of a copy.

    A few Adam steps on random target patches (module docstring): only BatchNorm ``weight`` and
    ``bias`` change, BatchNorm stays in eval mode with the (AdaBN) running statistics, a
    class-balance term and a guard keep the foreground share where the starting model put it.
    Run it on the model :func:`adapt` returned. The model given is never changed.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The starting model, normally the AdaBN-adapted copy; any module with BatchNorm layers that
        have affine parameters, one grey input channel and 1 or 2 output channels.
    images : array-like or napari Image layer
        The unlabelled target: (Y, X) image or (Z, Y, X) stack; only the sampled patches are read.
    steps : int, default 20
        Adam steps, each on its own batch of random patches.
    lr : float, default 5e-3
        Adam learning rate.
    balance : float, default 1.0
        Weight of the class-balance term ``KL(pi_0 || mean p)``; 0: plain TENT entropy (which
        tends to drift towards all background on a minority class).
    patch_size : int, default 256
        Patch side in pixels (rounded down to a multiple of 16 and to the slice size).
    batch_size : int, default 4
        Patches per step.
    seed : int, default 0
        Seed of the patch positions: same seed, same result.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`adapt` (use the same as for the adaptation).
    max_foreground_ratio : float, default 2.0
        The guard: the predicted foreground fraction may move by at most this factor (> 1).
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm: the patches are drawn at the model's pixel size,
        as :func:`~napari_bnadapt.adabn.adaptation.adapt` draws them.

    Returns
    -------
    (UNet or torch.nn.Module, EntropyReport)
        The copy (its card records the step: ``meta["adaptation"]["entropy_step"]`` for an adapted
        model, else ``meta["entropy_step"]``) and the report.
    """
    return run_to_end(entropy_step_iter(
        model, images, steps=steps, lr=lr, balance=balance, patch_size=patch_size, batch_size=batch_size,
        seed=seed, device=device, intensity_range=intensity_range, max_foreground_ratio=max_foreground_ratio,
        pixel_size_nm=pixel_size_nm,
    ))


def _check(steps: int, lr: float, balance: float, batch_size: int, max_foreground_ratio: float) -> None:
    if steps < 0:
        raise BNAdaptError(f"steps must be at least 0, not {steps}")
    if not lr > 0 or not math.isfinite(lr):
        raise BNAdaptError(f"lr must be a positive number, not {lr}")
    if not balance >= 0 or not math.isfinite(balance):
        raise BNAdaptError(f"balance must be 0 or more, not {balance}")
    if batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    if not max_foreground_ratio > 1:
        raise BNAdaptError(f"max_foreground_ratio must be above 1, not {max_foreground_ratio}")


@shares_docstring(entropy_step)
def entropy_step_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    balance: float = DEFAULT_BALANCE,
    patch_size: int = 256,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    max_foreground_ratio: float = MAX_FOREGROUND_RATIO,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, EntropyReport]]]:
    import torch

    t0 = time.perf_counter()
    _check(steps, lr, balance, batch_size, max_foreground_ratio)
    target = tuning_target(model, images, n_patches=max(1, steps) * batch_size, patch_size=patch_size, seed=seed,
                           device=device, intensity_range=intensity_range, pixel_size_nm=pixel_size_nm)
    meta, plan, dev, tuned = target.meta, target.plan, target.device, target.copy
    params = affine_parameters(tuned)
    if not params:
        raise BNAdaptError("this model's BatchNorm layers have no affine parameters (affine=False): "
                           "there is nothing for the entropy step to tune")
    stage = "entropy minimisation"
    yield Progress(stage, 0, steps + 2)
    batches = target.batches(batch_size)
    flags = {id(p): p.requires_grad for p in tuned.parameters()}
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    tuned.eval()  # BatchNorm with the running (AdaBN) statistics, never updated
    start = [p.detach().clone() for p in params]
    try:
        before = _measure(tuned, batches)  # per batch: (mean p, fraction, mean entropy)
        yield Progress(stage, 1, steps + 2)
        opt = torch.optim.Adam(params, lr=lr)
        kept, guard, last = 0, "", start
        for i in range(steps):
            x = batches[i % len(batches)]
            pi0, f0, _ = before[i % len(batches)]
            with torch.enable_grad():  # grad mode is thread-local: never yield inside it
                z = _foreground_logit(tuned(x))
                frac = float((z > 0).float().mean())
                ratio = _fraction_ratio(frac, f0)
                if i > 0 and _outside(ratio, max_foreground_ratio):
                    _restore(params, last)
                    kept -= 1
                    guard = (f"step {i} moved the foreground of a batch from {f0:.3f} to {frac:.3f} (more than "
                             f"x{max_foreground_ratio:g}): that step was undone and the optimisation stopped")
                    break
                last = [p.detach().clone() for p in params]
                loss = binary_entropy(z).mean()
                if balance > 0:
                    loss = loss + balance * _binary_kl(pi0, torch.sigmoid(z).mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                kept += 1
            yield Progress(stage, i + 1, steps + 2)
        # the last step's result is judged by the whole-sample check below
        after = _measure(tuned, batches)
        e0, f0_all = _pooled(before)
        e1, f1_all = _pooled(after)
        reverted = False
        if kept > 0 and _outside(_fraction_ratio(f1_all, f0_all), max_foreground_ratio):
            guard = (guard + "; " if guard else "") + (
                f"the foreground of the patches moved from {f0_all:.3f} to {f1_all:.3f} (more than "
                f"x{max_foreground_ratio:g}): the starting parameters were restored")
            reverted = True
        elif kept > 0 and not e1 < e0:
            guard = (guard + "; " if guard else "") + (
                f"the mean entropy did not fall ({e0:.4f} -> {e1:.4f} nats): the starting parameters were restored")
            reverted = True
        if reverted:
            _restore(params, start)
            kept, e1, f1_all = 0, e0, f0_all
    finally:
        for p in tuned.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        tuned.eval()
    yield Progress(stage, steps + 2, steps + 2)
    report = EntropyReport(
        steps=steps, steps_run=kept, lr=float(lr), balance=float(balance), n_patches=len(plan.corners),
        patch_size=(plan.height, plan.width), batch_size=batch_size, seed=seed,
        n_parameters=int(sum(p.numel() for p in params)), entropy_before=e0, entropy_after=e1,
        foreground_before=f0_all, foreground_after=f1_all, guard_fired=bool(guard), reverted=reverted,
        guard=guard, device=str(dev), seconds=time.perf_counter() - t0,
    )
    record_in_card(tuned, meta, "entropy_step", report.to_dict())
    yield Result((tuned, report))


@dataclass
class TuningTarget:
    """What a tuning step after AdaBN (this module's, :mod:`.self_train`'s) works on: a copy and target patches.

    Attributes
    ----------
    meta : dict
        A copy of the model's card (the step records itself in it, :func:`record_in_card`).
    plan : PatchPlan
        The target patches, at the model's pixel size.
    device : torch.device
    copy : torch.nn.Module
        A copy of the model on ``device``; the model itself is never changed.
    """

    meta: dict[str, Any]
    plan: Any
    device: Any
    copy: Any
    _view: Any
    _normalize: Any

    def batches(self, batch_size: int) -> list[Any]:
        """The planned patches as normalised float32 tensors (B, 1, H, W) on ``device`` (read now)."""
        import torch

        from .patches import iter_patch_batches

        return [torch.from_numpy(b).to(self.device)
                for b in iter_patch_batches(self._view, self.plan, self._normalize, batch_size)]


def tuning_target(
    model: Any,
    images: Any,
    *,
    n_patches: int,
    patch_size: int,
    seed: int,
    device: str | torch.device,
    intensity_range: tuple[float, float] | str | None,
    pixel_size_nm: tuple[float, float] | None,
) -> TuningTarget:
    """Check the model and the stack, plan ``n_patches`` target patches, copy the model to the device.

    A model without BatchNorm, or a bad stack, is refused here, before any patch is read.
    """
    from ..model.foreign import card_of, copy_model, require_module
    from .estimators import _bn_layers
    from .patches import plan_patches

    require_module(model)
    _bn_layers(model)  # a model without BatchNorm: refused before any data is read
    view = check_stack(images)
    meta = copy.deepcopy(card_of(model) or default_meta(model))
    norm = resolve_normalization(view, meta["normalization"], intensity_range)
    work = model_grid(model, images, pixel_size_nm).view(view)  # patches at the model's pixel size
    plan = plan_patches(work.shape3d, n_patches, patch_size, seed)
    dev = get_device(device)
    return TuningTarget(meta=meta, plan=plan, device=dev, copy=copy_model(model).to(dev), _view=work,
                        _normalize=norm.apply)


def record_in_card(tuned: Any, meta: dict[str, Any], key: str, report: dict[str, Any]) -> None:
    """Store a step's report in ``meta`` (under ``adaptation`` for an adapted model) and give it to ``tuned``."""
    if isinstance(meta.get("adaptation"), dict):
        meta["adaptation"][key] = report
    else:
        meta[key] = report
    tuned.meta = meta


def _restore(params: list[Any], values: list[Any]) -> None:
    import torch

    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _measure(model: Any, batches: list[Any]) -> list[tuple[float, float, float]]:
    """Per batch: (mean foreground probability, foreground fraction, mean entropy), no gradients."""
    import torch

    out = []
    with torch.no_grad():
        for x in batches:
            z = _foreground_logit(model(x))
            out.append((float(torch.sigmoid(z).mean()), float((z > 0).float().mean()),
                        float(binary_entropy(z).mean())))
    return out


def _pooled(per_batch: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(mean entropy, foreground fraction) over all batches (the last one may be smaller: equal weight per batch)."""
    arr = np.array(per_batch, dtype=np.float64)
    return float(arr[:, 2].mean()), float(arr[:, 1].mean())
