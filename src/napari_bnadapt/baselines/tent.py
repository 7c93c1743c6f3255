"""TENT as a baseline: AdaBN, then the project's entropy step on the BatchNorm affine parameters.

The step is :func:`napari_bnadapt.adabn.entropy.entropy_step` (its module docstring has the choices:
only gamma/beta learn, BatchNorm in eval mode with the AdaBN statistics, a class-balance term and
a guard against collapse). Nothing is reimplemented here; :func:`tent` only chains the two calls
with the settings the comparison uses and times them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..adabn.adaptation import adapt
from ..adabn.entropy import DEFAULT_BALANCE, DEFAULT_LR, DEFAULT_STEPS, EntropyReport, entropy_step

if TYPE_CHECKING:
    from ..model.unet import UNet


@dataclass
class TentResult:
    """What :func:`tent` returns: the tuned copy, the entropy step's report and the wall time (s)."""

    model: Any
    report: EntropyReport
    seconds: float


def tent(
    model: UNet,
    images: Any,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    balance: float = DEFAULT_BALANCE,
    patch_size: int = 256,
    batch_size: int = 4,
    seed: int = 0,
    pixel_size_nm: tuple[float, float] | None = None,
    device: str = "cpu",
) -> TentResult:
    """AdaBN on ``images``, then ``steps`` entropy-minimisation steps of the BatchNorm affine parameters.

    Parameters
    ----------
    model : UNet
        The source model (not changed).
    images : array-like
        The unlabelled target, (Y, X) or (Z, Y, X).
    steps, lr, balance, batch_size : see :func:`~napari_bnadapt.adabn.entropy.entropy_step`.
    patch_size : int, default 256
        Patch side of both the AdaBN statistics and the entropy step (clipped to the image).
    seed : int, default 0
        Seed of the patch positions of both calls.
    pixel_size_nm : (float, float) or None
        The target's pixel size (patches are drawn at the model's).
    device : str, default "cpu"

    Returns
    -------
    TentResult
        The tuned copy, the entropy step's report, and the wall time of both calls.
    """
    t0 = time.perf_counter()
    adapted, _ = adapt(model, images, device=device, seed=seed, patch_size=patch_size, pixel_size_nm=pixel_size_nm)
    tuned, report = entropy_step(adapted, images, steps=steps, lr=lr, balance=balance, patch_size=patch_size,
                                 batch_size=batch_size, seed=seed, device=device, pixel_size_nm=pixel_size_nm)
    return TentResult(tuned, report, time.perf_counter() - t0)
