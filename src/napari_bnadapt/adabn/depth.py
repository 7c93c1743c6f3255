"""Partial AdaBN: adapt the BatchNorm statistics of the first blocks only, the depth chosen without labels.

AdaBN replaces the statistics of every BatchNorm layer. Across labs, the deep layers' statistics also
carry content (how much of the image is mitochondria, membranes, nuclei), and re-centring them can
remove signal instead of style. How many blocks (counted from the input) should take the target's
statistics differs by model and target: measured on the real EM pair and the simulated other labs
(``benchmarks/bench_adabn_depth.py``, docs/real-data.md), Lucchi++-trained models across labs did best
adapting the encoder (4-5 of 9 blocks), VNC-trained ones 1-3 blocks, in-domain targets 5-9; no fixed
depth won in both directions.

:func:`choose_depth` picks the depth per image, without labels: for each candidate depth it segments
a small sample of the stack (a few evenly spaced slices, their central crop) and the same sample
turned 180 degrees (flipped in y and x), turns the second back and keeps the depth at which the two
segmentations agree best (Dice). A network whose statistics fit the image gives the same answer for a
turned image; one whose deep statistics were re-centred away from what its weights expect disagrees
with itself first. Ties go to the deeper candidate (closer to plain AdaBN). The agreement is a proxy,
chosen among three label-free scores (flip agreement, soft flip agreement, prediction entropy) on the
same targets that measured it. Measured: mean IoU at least plain AdaBN's for every model and domain
(+0.001 to +0.048), but losses of up to 0.12 on single targets and no gain on the real cross-lab
slices, so it is an option (``workflow.run(choose_depth=True)``), not the default (docs/real-data.md).

A block is the group of BatchNorm layers that share a name prefix (``inc``, ``down1.conv``, ...,
``up4.conv`` in this project's U-Net), in module order; any model with BatchNorm has blocks in this
sense. Only statistics change (:func:`~napari_bnadapt.adabn.need.mix_statistics` with weights 1 and 0):
weights stay those of the source model, which is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, resolve_normalization
from ..model.foreign import card_of
from ..progress import Progress, Result, forward_as, run_to_end, shares_docstring
from .scale_search import dice, sample_slices

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: Candidate depths, in blocks from the input; None stands for every block (plain AdaBN).
DEFAULT_DEPTHS: tuple[int | None, ...] = (1, 3, 5, 7, None)
#: Slices and crop side (pixels) of the sample the agreement is measured on.
DEFAULT_SLICES = 3
DEFAULT_SIDE = 512
_STAGE = "choosing the adaptation depth"


def network_blocks(model: Any) -> list[str]:
    """The model's BatchNorm blocks: the distinct name prefixes of its BatchNorm layers, in module order."""
    from ..model.foreign import batchnorm_layers

    names = [name for name, _ in batchnorm_layers(model)]
    if not names:
        raise BNAdaptError("this model has no BatchNorm layers: there is no depth to choose")
    return list(dict.fromkeys(map(_block_of, names)))


def _block_of(layer: str) -> str:
    """The block a BatchNorm layer belongs to: its name without the last part (``down1.conv.bn2`` -> ``down1.conv``)."""
    return layer.rsplit(".", 1)[0]


def block_weights(model: Any, depth: int) -> dict[str, float]:
    """Per-layer weights for :func:`~napari_bnadapt.adabn.need.mix_statistics`: 1 in the first ``depth`` blocks."""
    from ..model.foreign import batchnorm_layers

    blocks = network_blocks(model)
    if not 0 <= depth <= len(blocks):
        raise BNAdaptError(f"depth must lie between 0 and {len(blocks)} (the model's blocks), not {depth}")
    kept = set(blocks[:depth])
    return {name: float(_block_of(name) in kept) for name, _ in batchnorm_layers(model)}


@dataclass
class DepthChoice:
    """What :func:`choose_depth` chose, and why.

    Attributes
    ----------
    depth : int
        Blocks (from the input) that use the adapted statistics; the rest keep the source's.
    n_blocks : int
        The model's BatchNorm blocks (``depth == n_blocks``: plain AdaBN).
    depths : list of int
        The candidates tried.
    agreement : list of float
        Dice between the segmentation of the sample and of the turned sample, per candidate.
    reason : str
        One sentence for the user.
    seconds : float
    """

    depth: int
    n_blocks: int
    depths: list[int]
    agreement: list[float]
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def __str__(self) -> str:
        return self.reason


def choose_depth(
    source: UNet,
    adapted: UNet,
    images: ArrayLike | Image,
    *,
    depths: Sequence[int | None] = DEFAULT_DEPTHS,
    n_slices: int = DEFAULT_SLICES,
    max_side: int = DEFAULT_SIDE,
    threshold: float = 0.5,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> tuple[UNet, DepthChoice]:
    """Choose how many blocks keep the adapted statistics, by the segmentation's agreement with itself.

    Parameters
    ----------
    source : UNet or torch.nn.Module
        The source model; never changed.
    adapted : UNet or torch.nn.Module
        Its AdaBN-adapted copy (:func:`napari_bnadapt.adapt`; no other change: not after the entropy
        step or self-training).
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only the sample is read.
    depths : sequence of int or None, default (1, 3, 5, 7, None)
        Candidate depths in blocks from the input; None: every block. Depths beyond the model's
        blocks count as every block.
    n_slices, max_side : int, default 3 and 512
        The sample: ``n_slices`` evenly spaced slices, their central crop of at most ``max_side`` pixels.
    threshold : float, default 0.5
        Probability above which a pixel counts as foreground.
    device, intensity_range, pixel_size_nm
        As in :func:`napari_bnadapt.predict`.

    Returns
    -------
    (UNet or torch.nn.Module, DepthChoice)
        A copy of ``adapted`` with the source statistics beyond the chosen depth (``adapted`` itself
        when every block won), and the choice.
    """
    return run_to_end(choose_depth_iter(source, adapted, images, depths=depths, n_slices=n_slices,
                                        max_side=max_side, threshold=threshold, device=device,
                                        intensity_range=intensity_range, pixel_size_nm=pixel_size_nm))


@shares_docstring(choose_depth)
def choose_depth_iter(
    source: UNet,
    adapted: UNet,
    images: ArrayLike | Image,
    *,
    depths: Sequence[int | None] = DEFAULT_DEPTHS,
    n_slices: int = DEFAULT_SLICES,
    max_side: int = DEFAULT_SIDE,
    threshold: float = 0.5,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, DepthChoice]]]:
    from ..model.files import default_meta
    from ..segmentation.predict import predict_iter
    from .need import mix_statistics

    t0 = time.perf_counter()
    if not 0 < threshold < 1:
        raise BNAdaptError(f"threshold must lie between 0 and 1, not {threshold}")
    n_blocks = len(network_blocks(source))
    candidates = sorted({n_blocks if d is None else min(int(d), n_blocks) for d in depths})
    if not candidates or candidates[0] < 0:
        raise BNAdaptError(f"depths must be block counts >= 0 (or None: every block), not {list(depths)}")
    view = check_stack(images)
    sample = sample_slices(view, n_slices, max_side)
    meta = card_of(source) or default_meta(source)
    norm = resolve_normalization(check_stack(sample), meta["normalization"], intensity_range)
    opts = {"device": device, "intensity_range": (norm.in_low, norm.in_high), "pixel_size_nm": pixel_size_nm}
    turned = np.ascontiguousarray(sample[:, ::-1, ::-1])
    def partial(depth: int) -> Any:
        return adapted if depth == n_blocks else mix_statistics(source, adapted, block_weights(source, depth))

    agreement: list[float] = []
    yield Progress(_STAGE, 0, len(candidates))
    for i, depth in enumerate(candidates):
        model = partial(depth)
        prob = yield from forward_as(predict_iter(model, sample, **opts), _STAGE, i, len(candidates))
        prob_t = yield from forward_as(predict_iter(model, turned, **opts), _STAGE, i, len(candidates))
        agreement.append(dice(np.asarray(prob) > threshold, np.asarray(prob_t)[:, ::-1, ::-1] > threshold))
        yield Progress(_STAGE, i + 1, len(candidates))
    best = max(range(len(candidates)), key=lambda i: (agreement[i], candidates[i]))
    depth = candidates[best]
    what = "every block (plain AdaBN)" if depth == n_blocks else f"the first {depth} of {n_blocks} blocks"
    reason = (f"adapted statistics in {what}: the segmentation then agrees best with that of the image turned "
              f"180 degrees (Dice {agreement[best]:.3f}; " + ", ".join(
                  f"{d}: {a:.3f}" for d, a in zip(candidates, agreement)) + ")")
    yield Result((partial(depth), DepthChoice(depth=depth, n_blocks=n_blocks, depths=candidates, agreement=agreement,
                                            reason=reason, seconds=time.perf_counter() - t0)))
