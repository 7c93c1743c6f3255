"""ADDA: adversarial discriminative domain adaptation of the U-Net's encoder, with momentum reset and
the confusion score (the thesis in ``../shared/seeds/003_*``, sections 9-12).

What is adapted, and how the skip connections are handled
----------------------------------------------------------
The U-Net's *encoder* is its five stages ``inc, down1 .. down4``; the *decoder* is ``up1 .. up4`` and
``outc``. The decoder reads all five encoder outputs: the bottleneck through ``up1`` and the other
four through the skip connections. The target encoder is a copy of the source encoder (weights and
BatchNorm statistics), and it supplies **all five** features to the frozen source decoder, skips
included. Aligning only the bottleneck would leave the four skip features, which the decoder reads
directly and which carry most of a grey-value shift (the shallow stages), free to stay wherever the
target puts them; so every stage has its own small domain discriminator (a 3x3 then two 1x1
convolutions, one logit per feature-map location), and the adversarial loss is the mean over the five.

Training (one step):

1. a batch of source patches goes through the frozen source encoder (eval mode, no gradient), a
   batch of target patches through the target encoder (train mode: its BatchNorm uses the batch's
   statistics and its running statistics follow the target, as in any training on target batches;
   the decoder's BatchNorm keeps the source's);
2. the discriminators learn to tell them apart (binary cross-entropy, target = 1); the fraction of
   target locations called target (recall) and of source locations called target (false-positive
   rate) are recorded before the update;
3. the target encoder learns to make its features look like the source's (inverted labels).

Adam for both, the thesis' default moments (beta1 0.9). **Momentum reset** (thesis section 11):
every ``momentum_reset`` steps both optimisers forget their moment estimates (``state`` cleared:
first and second moments back to zero, bias correction restarting at step 1), because in an
adversarial game the accumulated momentum of one player points along a loss landscape that the
other player has moved since.

**Confusion score** (thesis eq. 26): at every checkpoint, over the last ``window`` discriminator
steps, ``Cs = 1 - mean(|recall - 1/2| + |fpr - 1/2|)``; 1 when the discriminator is maximally confused
(no better than a coin on both domains), 0 when it separates them perfectly. The checkpoint with the
highest ``Cs`` is the label-free choice. Nothing here ever sees a target label: :func:`adda` takes
none, and choosing a checkpoint by target labels (what a user cannot do) is left to the caller
(:meth:`AddaResult.select`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import BNAdaptError
from ..io.stack_view import Normalization
from ..model.unet import UNet
from .patches import PatchSampler

#: The U-Net's encoder stages, in forward order (their outputs are ls0 .. ls4).
ENCODER_STAGES: tuple[str, ...] = ("inc", "down1", "down2", "down3", "down4")
#: Default Adam learning rates of the target encoder and the discriminators.
DEFAULT_LR = 1e-4
#: Hidden channels of each stage's discriminator.
DISCRIMINATOR_HIDDEN = 32


class UNetEncoder(nn.Module):
    """A copy of a U-Net's five encoder stages; ``forward`` returns their five outputs (the decoder's inputs)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        for name in ENCODER_STAGES:
            setattr(self, name, copy.deepcopy(getattr(unet, name)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for name in ENCODER_STAGES:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


class DomainDiscriminator(nn.Module):
    """One small fully convolutional discriminator per encoder stage; one logit per location (target = 1)."""

    def __init__(self, channels: list[int], hidden: int = DISCRIMINATOR_HIDDEN) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                          nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1))
            for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.heads, feats, strict=True)]


def encoder_channels(unet: UNet) -> list[int]:
    """Output channels of the five encoder stages."""
    bns = list(unet.latent_modules().values())[:len(ENCODER_STAGES)]  # ls0..ls4: each stage's last BatchNorm
    return [bn.num_features for bn in bns]


def with_encoder(model: UNet, encoder_state: dict[str, torch.Tensor]) -> UNet:
    """A copy of ``model`` whose encoder stages carry ``encoder_state`` (the decoder stays the model's)."""
    out = copy.deepcopy(model)
    enc = UNetEncoder(out)
    enc.load_state_dict(encoder_state)
    for name in ENCODER_STAGES:
        setattr(out, name, getattr(enc, name))
    out.eval()
    return out


def confusion_score(recalls: Any, false_positive_rates: Any) -> float:
    """The thesis' confusion score ``1 - mean(|recall - 1/2| + |fpr - 1/2|)`` over a window of steps.

    Parameters
    ----------
    recalls : sequence of float
        Per discriminator step: the fraction of target samples the discriminator called target.
    false_positive_rates : sequence of float
        Per step: the fraction of source samples it called target.

    Returns
    -------
    float
        In [0, 1]: 1 = a discriminator as good as a coin on both domains, 0 = perfect separation
        (or perfectly inverted). NaN for an empty window.
    """
    r = np.asarray(recalls, dtype=np.float64)
    f = np.asarray(false_positive_rates, dtype=np.float64)
    if r.shape != f.shape:
        raise BNAdaptError(f"recalls and false-positive rates differ in length ({r.size} vs {f.size})")
    if r.size == 0:
        return math.nan
    return float(1.0 - np.mean(np.abs(r - 0.5) + np.abs(f - 0.5)))


def reset_moments(optimizer: torch.optim.Optimizer) -> None:
    """Forget an optimiser's moment estimates (Adam: ``exp_avg``, ``exp_avg_sq`` and ``step``): momentum reset."""
    optimizer.state.clear()


@dataclass
class Checkpoint:
    """One saved state of the target encoder.

    Attributes
    ----------
    step : int
        Adversarial steps done.
    confusion : float
        Confusion score over the window of discriminator steps that ends here.
    recall, false_positive_rate : float
        Their window means.
    state : dict
        The target encoder's state dict (a copy).
    """

    step: int
    confusion: float
    recall: float
    false_positive_rate: float
    state: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class AddaResult:
    """What :func:`adda` returns.

    Attributes
    ----------
    checkpoints : list of Checkpoint
        Every ``checkpoint_every`` steps (the last step included).
    resets : list of int
        Steps after which the optimisers' moments were cleared (empty without momentum reset).
    recalls, false_positive_rates : list of float
        The discriminator's per-step rates.
    seconds : float
        Wall time of the training (checkpoints included).
    settings : dict
    """

    source_model: UNet = field(repr=False)
    checkpoints: list[Checkpoint]
    resets: list[int]
    recalls: list[float]
    false_positive_rates: list[float]
    seconds: float
    settings: dict[str, Any]

    def best_by_confusion(self) -> Checkpoint:
        """The checkpoint with the highest confusion score (label-free selection)."""
        return max(self.checkpoints, key=lambda c: (c.confusion, -c.step))

    def select(self, score: Callable[[UNet], float]) -> tuple[Checkpoint, float]:
        """The checkpoint whose model maximises ``score`` (e.g. IoU against target labels) and that score."""
        scored = [(score(self.model(c)), c) for c in self.checkpoints]
        best = max(scored, key=lambda sc: (sc[0], -sc[1].step))
        return best[1], best[0]

    def model(self, checkpoint: Checkpoint | None = None) -> UNet:
        """The adapted U-Net of a checkpoint (default: the confusion score's choice); a new copy."""
        c = checkpoint if checkpoint is not None else self.best_by_confusion()
        m = with_encoder(self.source_model, c.state)
        m.meta = copy.deepcopy(getattr(self.source_model, "meta", {}))
        m.meta["adda"] = {**self.settings, "step": c.step, "confusion": c.confusion}
        return m


def _bce(logits: list[torch.Tensor], target: float) -> torch.Tensor:
    return torch.stack([F.binary_cross_entropy_with_logits(z, torch.full_like(z, target)) for z in logits]).mean()


def _called_target(logits: list[torch.Tensor]) -> float:
    return float(np.mean([float((z > 0).float().mean()) for z in logits]))


def adda(
    model: UNet,
    source_images: Any,
    target_images: Any,
    *,
    steps: int = 200,
    batch_size: int = 8,
    patch_size: int = 64,
    lr: float = DEFAULT_LR,
    discriminator_lr: float = DEFAULT_LR,
    momentum_reset: int | None = None,
    checkpoint_every: int = 25,
    window: int | None = None,
    hidden: int = DISCRIMINATOR_HIDDEN,
    seed: int = 0,
    device: str = "cpu",
) -> AddaResult:
    """Adapt a copy of ``model``'s encoder to the target adversarially (module docstring).

    Parameters
    ----------
    model : UNet
        The source model (this project's U-Net); never changed.
    source_images : array-like
        Source images (unlabelled use: only their features), (N, H, W) in the model's grey range.
    target_images : array-like
        Unlabelled target images, (N, H, W). No target labels are taken.
    steps : int, default 200
        Adversarial steps (one discriminator and one encoder update each).
    batch_size : int, default 8
        Patches per domain per step.
    patch_size : int, default 64
        Patch side (multiple of 16, at most the image side).
    lr, discriminator_lr : float, default 1e-4
        Adam learning rates of the target encoder and the discriminators.
    momentum_reset : int or None, default None
        Clear both optimisers' moment estimates every this many steps; None: never (plain ADDA).
    checkpoint_every : int, default 25
        Save the target encoder every this many steps (and after the last).
    window : int or None, default None
        Discriminator steps the confusion score averages; None: ``checkpoint_every``.
    hidden : int, default 32
        Hidden channels of each stage's discriminator.
    seed : int, default 0
        Seed of the discriminators' initialisation and of the patch positions.
    device : str, default "cpu"

    Returns
    -------
    AddaResult
        The checkpoints with their confusion scores; ``.model()`` builds the selected U-Net.
    """
    if not isinstance(model, UNet):
        raise BNAdaptError("ADDA needs this project's U-Net (its encoder and decoder are split at the skips)")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if not isinstance(v, int) or v < 1:
            raise BNAdaptError(f"{name} must be a whole number of at least 1, not {v!r}")
    if momentum_reset is not None and (not isinstance(momentum_reset, int) or momentum_reset < 1):
        raise BNAdaptError(f"momentum_reset must be None or a whole number of at least 1, not {momentum_reset!r}")
    window = checkpoint_every if window is None else window
    t0 = time.perf_counter()
    norm = Normalization.from_meta(model.meta["normalization"])
    src = PatchSampler(source_images, patch_size, norm, seed * 2 + 1)
    tgt = PatchSampler(target_images, patch_size, norm, seed * 2 + 2)
    torch.manual_seed(seed)
    dev = torch.device(device)
    source_encoder = UNetEncoder(model).to(dev).eval()
    for p in source_encoder.parameters():
        p.requires_grad_(False)
    target_encoder = UNetEncoder(model).to(dev).train()
    disc = DomainDiscriminator(encoder_channels(model), hidden).to(dev).train()
    opt_e = torch.optim.Adam(target_encoder.parameters(), lr=lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=discriminator_lr)
    recalls: list[float] = []
    fprs: list[float] = []
    checkpoints: list[Checkpoint] = []
    resets: list[int] = []
    with torch.enable_grad():
        for step in range(1, steps + 1):
            xs, xt = src.batch(batch_size, dev), tgt.batch(batch_size, dev)
            with torch.no_grad():
                fs = source_encoder(xs)
            ft = target_encoder(xt)
            # the discriminators: source = 0, target = 1
            ls, lt = disc(fs), disc([f.detach() for f in ft])
            recalls.append(_called_target(lt))
            fprs.append(_called_target(ls))
            loss_d = 0.5 * (_bce(ls, 0.0) + _bce(lt, 1.0))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # the target encoder: make its features pass for source ones
            loss_e = _bce(disc(ft), 0.0)
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
            if momentum_reset is not None and step % momentum_reset == 0 and step < steps:
                reset_moments(opt_e)
                reset_moments(opt_d)
                resets.append(step)
            if step % checkpoint_every == 0 or step == steps:
                r, f = recalls[-window:], fprs[-window:]
                state = {k: v.detach().cpu().clone() for k, v in target_encoder.state_dict().items()}
                checkpoints.append(Checkpoint(step, confusion_score(r, f), float(np.mean(r)), float(np.mean(f)), state))
    settings = {"steps": steps, "batch_size": batch_size, "patch_size": patch_size, "lr": lr,
                "discriminator_lr": discriminator_lr, "momentum_reset": momentum_reset,
                "checkpoint_every": checkpoint_every, "window": window, "hidden": hidden, "seed": seed}
    return AddaResult(model, checkpoints, resets, recalls, fprs, time.perf_counter() - t0, settings)
