"""Smoothing the target to the sharpness the model was trained on, chosen without labels.

AdaBN re-centres and rescales every BatchNorm channel, but it cannot make a sharp image look like a
smooth one: the first convolution's filters see edges and texture, and a target whose membranes are
sharper (ssTEM sections) than the training volume's (FIB-SEM) gives every edge filter more response
than the weights downstream expect, in a pattern no per-channel rescaling undoes. A Gaussian blur of
the target can. Measured (``benchmarks/bench_target_blur.py``, docs/real-data.md): ``lucchi-pp`` on the
real VNC slices gains 0.07 IoU after AdaBN at a blur of 2 pixels; the same blur costs ``vnc`` on
Lucchi++ 0.12. The amount has to be chosen per image and model.

:func:`choose_smoothing` chooses it without labels, by the statistics the source model stored in its
first BatchNorm layer (the response of its first convolution to the training data). For each
candidate blur (in the model's pixels) it estimates the target's statistics in that layer (pooled over
a small sample of patches, only the layers before it run) and measures how far they are from the
source's: the mean over the channels of ``|mu_t - mu_s| / sigma_s + |log(sigma_t / sigma_s)|``. The
blur whose target looks most like the training data in that layer wins; ties go to the lighter blur.
Blurring only takes sharpness away, so a target smoother than the training data keeps its sharpness.

Measured (``benchmarks/bench_smoothing.py``, docs/real-data.md, 70 model-and-target pairs): Lucchi++-
trained models on VNC gain (``lucchi-pp`` on the real slices 0.472 -> 0.555, +0.15 on average over the
VNC targets), VNC-trained models and in-domain targets are left nearly as they were (mean change
-0.002 to +0.001), worst single target -0.06. The distance was chosen among four first-layer scores on
the same targets, so its figures are observations, not a held-out test; it is an option
(``workflow.run(smooth="auto")``), not the default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.resample import model_grid
from ..io.smoothed import smoothed
from ..progress import Progress, Result, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..io.resample import ModelGrid
    from ..model.unet import UNet

#: Candidate blurs, standard deviations in the MODEL's pixels.
DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
#: Patches per candidate (256 px): the first layer's statistics settle on far fewer pixels than the deep ones.
CHOICE_PATCHES = 16
_STAGE = "choosing the smoothing"


@dataclass
class SmoothingChoice:
    """What :func:`choose_smoothing` chose, and why.

    Attributes
    ----------
    sigma : float
        The chosen blur, standard deviation in the model's pixels (0: none).
    sigma_image_px : (float, float)
        The same blur in the image's (y, x) pixels (what :func:`~napari_bnadapt.io.smoothed.smoothed` takes).
    sigmas : list of float
        The candidates tried (model pixels).
    distances : list of float
        Per candidate, the first BatchNorm layer's distance between the target's statistics and the
        source's (mean over the channels of ``|dmu| / sigma_s + |log(sigma_t / sigma_s)|``).
    layer : str
        The layer measured.
    reason : str
        One sentence for the user.
    seconds : float
    """

    sigma: float
    sigma_image_px: tuple[float, float]
    sigmas: list[float]
    distances: list[float]
    layer: str
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def __str__(self) -> str:
        return self.reason


def image_sigma(sigma: float, grid: ModelGrid) -> tuple[float, float]:
    """A blur of ``sigma`` model pixels in the image's (y, x) pixels (the same when the image runs as it is)."""
    if grid.zoom is None:
        return (float(sigma), float(sigma))
    return (sigma / grid.zoom[0], sigma / grid.zoom[1])


def given_smoothing(sigma: float, grid: ModelGrid) -> SmoothingChoice:
    """A blur of ``sigma`` model pixels asked for by the user (nothing chosen), as a :class:`SmoothingChoice`."""
    if not math.isfinite(sigma) or sigma < 0:
        raise BNAdaptError(f"the smoothing must be a blur >= 0 in the model's pixels, not {sigma}")
    what = "no smoothing" if sigma == 0 else f"a Gaussian blur of {sigma:g} pixels (at the model's pixel size)"
    return SmoothingChoice(sigma=float(sigma), sigma_image_px=image_sigma(sigma, grid), sigmas=[float(sigma)],
                           distances=[], layer="", reason=f"{what}, as asked", seconds=0.0)


class _Stop(Exception):
    """Raised by the hook once the first BatchNorm layer's input is seen: the rest of the network never runs."""


def first_batchnorm(model: Any) -> str:
    """The name of the model's first BatchNorm layer; a clear error for a model without one or without hooks."""
    import torch

    from ..model.foreign import batchnorm_layers

    layers = batchnorm_layers(model)
    if not layers:
        raise BNAdaptError("this model has no BatchNorm layers: there are no statistics to compare")
    if isinstance(model, torch.jit.ScriptModule):
        raise BNAdaptError("choosing the smoothing needs a PyTorch module (TorchScript takes no hooks); "
                           "give the blur instead")
    return layers[0][0]


def first_layer_moments(model: Any, name: str, batches: Iterator[np.ndarray], device: Any) -> tuple[Any, Any]:
    """The pooled float64 mean and variance of the input of BatchNorm layer ``name`` over ``batches``.

    Only the layers before it run (a forward pre-hook stops the pass there); ``model`` is left as it was.
    """
    import torch

    from ..model.device import model_on
    from ..model.foreign import batchnorm_layers

    seen: list[Any] = []

    def stop(_module: Any, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    total = total_sq = None
    count = 0
    with model_on(model, device) as m, torch.no_grad():  # eval mode; a copy when on another device
        bn = dict(batchnorm_layers(m))[name]
        handle = bn.register_forward_pre_hook(stop)
        try:
            for batch in batches:
                try:
                    m(torch.from_numpy(batch).to(device))
                except _Stop:
                    pass
                x = seen.pop().double().transpose(0, 1).reshape(bn.num_features, -1)
                total = x.sum(1) if total is None else total + x.sum(1)
                total_sq = (x * x).sum(1) if total_sq is None else total_sq + (x * x).sum(1)
                count += x.shape[1]
        finally:
            handle.remove()
    mean = total / count
    return mean.cpu(), (total_sq / count - mean * mean).clamp_min(0.0).cpu()


def moment_distance(bn: Any, mean: Any, var: Any) -> float:
    """Mean over the channels of ``|mean - mu_s| / sigma_s + |log(sqrt(var) / sigma_s)|`` against ``bn``'s running
    statistics (float64; variances floored at the layer's ``eps``)."""
    eps = float(getattr(bn, "eps", 1e-5))
    mu_s, var_s = bn.running_mean.double().cpu(), bn.running_var.double().cpu().clamp_min(eps)
    d = (mean - mu_s).abs() / var_s.sqrt() + 0.5 * (var.clamp_min(eps) / var_s).log().abs()
    return float(d.mean())


def choose_smoothing(
    model: UNet,
    images: ArrayLike | Image,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    n_patches: int = CHOICE_PATCHES,
    patch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> SmoothingChoice:
    """Choose the blur that makes the target look most like the training data to the first BatchNorm layer.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The source model (its first BatchNorm layer holds the training data's statistics); never changed.
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only the sampled patches are read, never changed.
    sigmas : sequence of float, default (0, 0.5, 1, 1.5, 2)
        Candidate blurs, Gaussian standard deviations in the model's pixels (0: none).
    n_patches, patch_size, seed : int, default 16, 256 and 0
        The sample each candidate's statistics are estimated on (as in :func:`napari_bnadapt.adapt`).
    device, intensity_range, pixel_size_nm
        As in :func:`napari_bnadapt.adapt`.

    Returns
    -------
    SmoothingChoice
        Apply it with ``smoothed(images, choice.sigma_image_px)``
        (:func:`~napari_bnadapt.io.smoothed.smoothed`: lazy, the data is not copied).
    """
    return run_to_end(choose_smoothing_iter(model, images, sigmas=sigmas, n_patches=n_patches, patch_size=patch_size,
                                            seed=seed, device=device, intensity_range=intensity_range,
                                            pixel_size_nm=pixel_size_nm))


@shares_docstring(choose_smoothing)
def choose_smoothing_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    n_patches: int = CHOICE_PATCHES,
    patch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[SmoothingChoice]]:
    from ..io.stack_view import check_stack, resolve_normalization
    from ..model.device import get_device
    from ..model.files import default_meta
    from ..model.foreign import batchnorm_layers, card_of
    from .patches import iter_patch_batches, plan_patches

    t0 = time.perf_counter()
    candidates = sorted({float(s) for s in sigmas})
    if not candidates or candidates[0] < 0 or not all(math.isfinite(s) for s in candidates):
        raise BNAdaptError(f"sigmas must be finite blurs >= 0 (model pixels), not {list(sigmas)}")
    layer = first_batchnorm(model)  # refuses a model without BatchNorm (or hooks) before reading any data
    bn = dict(batchnorm_layers(model))[layer]
    grid = model_grid(model, images, pixel_size_nm)
    meta = card_of(model) or default_meta(model)
    dev = get_device(device)
    distances: list[float] = []
    yield Progress(_STAGE, 0, len(candidates))
    for i, sigma in enumerate(candidates):
        view = check_stack(smoothed(images, image_sigma(sigma, grid)))
        norm = resolve_normalization(view, meta["normalization"], intensity_range)
        work = grid.view(view)  # at the model's pixel size, as adaptation sees it
        plan = plan_patches(work.shape3d, n_patches, patch_size, seed)
        mean, var = first_layer_moments(model, layer, iter_patch_batches(work, plan, norm.apply, 8), dev)
        distances.append(moment_distance(bn, mean, var))
        yield Progress(_STAGE, i + 1, len(candidates))
    best = min(range(len(candidates)), key=lambda i: (distances[i], candidates[i]))
    sigma = candidates[best]
    what = "no smoothing" if sigma == 0 else f"a Gaussian blur of {sigma:g} pixels (at the model's pixel size)"
    reason = (f"{what}: the image then looks most like the training data to the model's first layer "
              f"({layer}: distance {distances[best]:.3f}; " + ", ".join(
                  f"sigma {s:g}: {d:.3f}" for s, d in zip(candidates, distances)) + ")")
    yield Result(SmoothingChoice(sigma=sigma, sigma_image_px=image_sigma(sigma, grid), sigmas=candidates,
                                 distances=distances, layer=layer, reason=reason, seconds=time.perf_counter() - t0))
