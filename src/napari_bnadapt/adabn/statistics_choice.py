"""Source or adapted statistics for this stack? A choice between the two without labels.

The guard (:mod:`~napari_bnadapt.adabn.need`) keeps the source statistics when the target's differ
from them by no more than their sampling noise. Between that and a clear shift lies a zone where AdaBN
can cost a little (small crops of the training volumes with a mild grey-value change: up to 0.03-0.09
IoU for ``em-generalist-2``, docs/real-data.md), and the guard cannot tell, because on a small crop the
statistics move with what the crop holds as much as with its grey values.

:func:`choose_statistics` looks at the outputs instead. It segments a sample of the stack (up to
:data:`DEFAULT_SLICES` evenly spaced slices, their central crop of up to :data:`DEFAULT_SIDE` pixels on
the model's grid) with both models and measures, for each, two of the reliability check's witnesses
(:mod:`~napari_bnadapt.bound.witnesses`):

* **flip consistency**: the mean IoU between the segmentation and those of the sample turned a quarter
  turn, flipped left-right and up-down (turned back);
* **foreground match**: ``-|log(foreground share / the training data's)|``, the training share being the
  source model's on its own training data (the card's source statistics).

It keeps the source statistics only when the source model is MORE flip-consistent AND its foreground
share is no farther from the training data's than the adapted model's; otherwise (ties too) the adapted
statistics. Neither witness alone will do: an empty segmentation is perfectly flip-consistent (a
Lucchi++ model on a low-dose Lucchi++ stack: source IoU 0, flip consistency 1), and the foreground share
alone lost up to 0.30 (``benchmarks/bench_choose_statistics.py``). The rule has no fitted threshold; it
was written after seeing the benchmark's rows, and checked afterwards on 100 crops it had not seen: no
case lost more than 0.02 against plain AdaBN (worst -0.019), mean +0.005, but it won back only 0.008 of
the 0.09 that AdaBN cost ``em-generalist-2`` there, because AdaBN moves the foreground share towards the
training data's whatever the crop holds, so the foreground match leans towards the adapted model
(docs/real-data.md, small crops). It is an option (``workflow.run(choose_statistics=True)``,
``bnadapt segment --adapt --choose-statistics``), not the default.

Cost: 8 segmentations of the sample (4 views x 2 models), slice by slice; 31-51 s on a 2-core CPU for 6
slices of 768-1024 px, 6-10 times one segmentation of them. Neither model is modified; the chosen one is
returned as it is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: Slices and crop side (pixels on the model's grid) of the sample the two witnesses are measured on
#: (the benchmark's "large" witness crops; the reliability check's are 2 x 256, too small to choose by:
#: docs/real-data.md).
DEFAULT_SLICES = 6
DEFAULT_SIDE = 1024
_STAGE = "choosing source or adapted statistics"


@dataclass
class StatisticsChoice:
    """What :func:`choose_statistics` chose, and why.

    Attributes
    ----------
    adapted : bool
        True: the adapted statistics were kept; False: the source model's.
    flip_source, flip_adapted : float
        Flip consistency of each model on the sample (mean IoU over 3 views; 1 = fully consistent).
    foreground_source, foreground_adapted : float
        Share of the sample's pixels each model calls mitochondria.
    foreground_training : float or None
        The source model's share on its training data (None: not in the model card; then nothing is chosen).
    n_slices, side : int
        The sample: slices and crop side (model grid).
    reason : str
        One sentence for the user.
    seconds : float
    """

    adapted: bool
    flip_source: float
    flip_adapted: float
    foreground_source: float
    foreground_adapted: float
    foreground_training: float | None
    n_slices: int
    side: int
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def __str__(self) -> str:
        return self.reason


def keep_source(flip_source: float, flip_adapted: float, fg_source: float, fg_adapted: float,
                fg_training: float) -> bool:
    """The rule: the source statistics only when the source model is more flip-consistent AND its foreground
    share is no farther from the training data's than the adapted model's (the reliability check's
    ``foreground_match`` witness, :func:`~napari_bnadapt.bound.witnesses.foreground_match`)."""
    from ..bound.decision import signal_log_ratio
    from ..bound.witnesses import foreground_match

    return flip_source > flip_adapted and (foreground_match(signal_log_ratio(fg_source, fg_training))
                                           >= foreground_match(signal_log_ratio(fg_adapted, fg_training)))


def choose_statistics(
    source: UNet,
    adapted: UNet,
    images: ArrayLike | Image,
    *,
    n_slices: int = DEFAULT_SLICES,
    side: int = DEFAULT_SIDE,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> tuple[UNet, StatisticsChoice]:
    """Choose between the source model and its AdaBN-adapted copy for this stack, without labels.

    Parameters
    ----------
    source : UNet or torch.nn.Module
        The source model, with source statistics in its card (``foreground_fraction``); never changed.
    adapted : UNet or torch.nn.Module
        Its adapted copy (:func:`napari_bnadapt.adapt`); never changed.
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only the sample is read.
    n_slices, side : int, default 6 and 1024
        The sample: ``n_slices`` evenly spaced slices, their central crop of at most ``side`` pixels on
        the model's grid (a multiple of 16).
    device, intensity_range, pixel_size_nm
        As in :func:`napari_bnadapt.predict`.

    Returns
    -------
    (UNet or torch.nn.Module, StatisticsChoice)
        ``source`` or ``adapted`` (the object given, not a copy), and the choice. Without the training
        share in the card, or on a blank sample, ``adapted`` and a reason that says why nothing was chosen.

    Raises
    ------
    BNAdaptError
        ``n_slices`` below 1 or ``side`` below 16, or an image smaller than 16 x 16 on the model's grid.
    """
    return run_to_end(choose_statistics_iter(source, adapted, images, n_slices=n_slices, side=side, device=device,
                                             intensity_range=intensity_range, pixel_size_nm=pixel_size_nm))


@shares_docstring(choose_statistics)
def choose_statistics_iter(
    source: UNet,
    adapted: UNet,
    images: ArrayLike | Image,
    *,
    n_slices: int = DEFAULT_SLICES,
    side: int = DEFAULT_SIDE,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, StatisticsChoice]]]:
    from ..bound.witnesses import (BLANK_STD, crop_contrast, crop_probabilities, flip_overlaps, overlap_iou,
                                   witness_crops)
    from ..model.device import get_device, model_on
    from ..stats.source_statistics import training_foreground

    if n_slices < 1 or side < 16:
        raise BNAdaptError(f"the choice needs at least one slice and a crop of 16 pixels, not {n_slices}, {side}")
    t0 = time.perf_counter()
    fg_training = training_foreground(source)
    x = witness_crops(images, source, pixel_size_nm, intensity_range, n_slices, side)
    nan = math.nan

    def unchosen(reason: str) -> Result[tuple[UNet, StatisticsChoice]]:
        return Result((adapted, StatisticsChoice(True, nan, nan, nan, nan, fg_training, len(x), int(x.shape[-1]),
                                                 reason, time.perf_counter() - t0)))

    if fg_training is None:
        yield unchosen("adapted statistics kept, nothing chosen: the model file does not say how much of its "
                       "training data it called mitochondria (no source statistics)")
        return
    if not crop_contrast(source, x) >= BLANK_STD:
        yield unchosen("adapted statistics kept, nothing chosen: the sample is blank or nearly constant")
        return
    dev = get_device(device)
    flips: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fg: dict[str, float] = {}
    steps = 2 * len(x)
    yield Progress(_STAGE, 0, steps)
    for m, (name, model) in enumerate((("source", source), ("adapted", adapted))):
        inter = union = 0.0
        found = 0
        with model_on(model, dev) as net:  # eval mode, flags restored; a copy when on another device
            for i in range(len(x)):
                xi = x[i:i + 1]
                p0 = crop_probabilities(net, xi, dev)
                a, b = flip_overlaps(net, xi, dev, p0)
                inter, union, found = inter + a, union + b, found + int((p0 > 0.5).sum())
                yield Progress(_STAGE, m * len(x) + i + 1, steps)
        flips[name], fg[name] = (inter, union), found / x.size
    flip_s, flip_a = overlap_iou(*flips["source"]), overlap_iou(*flips["adapted"])
    source_wins = keep_source(flip_s, flip_a, fg["source"], fg["adapted"], fg_training)
    numbers = (f"flip consistency {flip_s:.3f} without adaptation, {flip_a:.3f} adapted; mitochondria "
               f"{fg['source']:.1%} and {fg['adapted']:.1%} of the sample, {fg_training:.1%} on the training data")
    reason = (("source statistics kept: without adaptation the segmentation agrees more with itself under flips and "
               "its share of mitochondria is no farther from the training data's (")
              if source_wins else "adapted statistics kept (") + numbers + ")"
    yield Result((source if source_wins else adapted, StatisticsChoice(
        adapted=not source_wins, flip_source=flip_s, flip_adapted=flip_a, foreground_source=fg["source"],
        foreground_adapted=fg["adapted"], foreground_training=fg_training, n_slices=len(x), side=int(x.shape[-1]),
        reason=reason, seconds=time.perf_counter() - t0)))
