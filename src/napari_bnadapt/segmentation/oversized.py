"""Objects far larger than any mitochondrion the model learnt: removed from the segmentation, and said so.

On a cultured-cell SBF-SEM volume from another lab every model labelled the NUCLEUS as mitochondria
(issue #14): networks trained on neuropil never saw one, and AdaBN cannot teach them (it re-centres
grey values; a nucleus is a matter of content). What the model does know is how large the mitochondria
it learnt are: its card holds the size distribution of its training labels
(:func:`~napari_bnadapt.adabn.scale_search.object_size_summary`, 2-D objects per slice, on the model's
pixel grid). A segmented object whose equivalent diameter exceeds :data:`OVERSIZE_FACTOR` times the
95th percentile of those diameters (an area 9 times larger) is not a mitochondrion of any kind the model
has seen; :func:`remove_oversized_objects` removes such objects and reports them.

The limit is set on the model's grid (image pixels x ``zoom``) and follows the stack: when the
objects segmented on the stack are larger than the training mitochondria overall (median diameter
ratio above 1; e.g. an image whose pixel size is unknown and finer than the model's), the limit grows
by that ratio, so a stack seen at another scale does not lose its mitochondria (only with at least
:data:`OVERSIZE_MIN_OBJECTS` objects, so that a stack holding little but a nucleus does not stretch
it). Objects are the 4-connected components of each slice, like the card's sizes.

Measured on the visible data (``benchmarks/bench_oversized.py``): on the suite's 48 model-target cases
the largest object the bundled EM models segment, and the largest labelled mitochondrion, are at most
0.48 of the limit: the removal changed nothing there. A simulated nucleus
(a large region like mitochondria pasted into real slices) was segmented whole, and removed, in 1 of 12
cases; in the others it was left out or labelled in mitochondrion-sized fragments, which this does not
touch. Whether it removes the nucleus of the held-out volume could not be measured here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..progress import Progress, Result, run_to_end, shares_docstring

#: An object is oversized beyond this multiple of the 95th-percentile training diameter.
OVERSIZE_FACTOR = 3.0
#: The quantile level of the training diameters the limit is a multiple of.
OVERSIZE_QUANTILE = 0.95
#: The limit follows the stack's own object sizes only when at least this many objects were segmented
#: (a stack holding little but a nucleus must not stretch the limit around it).
OVERSIZE_MIN_OBJECTS = 10
#: Evenly spaced slices the stack's median object size is measured on (bounds the cost on large stacks).
OVERSIZE_SAMPLE_SLICES = 16
#: The progress stage, reported every this many slices.
STAGE, PROGRESS_EVERY = "removing oversized objects", 16


@dataclass(frozen=True)
class OversizeReport:
    """What :func:`remove_oversized_objects` removed.

    Attributes
    ----------
    limit_diameter_px : float
        The limit, as an equivalent diameter in the image's pixels.
    training_diameter_px : float
        The 95th-percentile diameter of the training mitochondria, in the model's pixels.
    stack_ratio : float
        Median diameter of the objects segmented on the stack over the training median, both on the
        model's grid (the limit grows by it when it is above 1); NaN with fewer than
        :data:`OVERSIZE_MIN_OBJECTS` objects.
    removed_objects : int
        Objects removed (counted per slice).
    removed_pixels : int
    largest_diameter_px : float
        The largest object's equivalent diameter in the image's pixels (0 without objects).
    message : str
        One sentence for the user.
    """

    limit_diameter_px: float
    training_diameter_px: float
    stack_ratio: float
    removed_objects: int
    removed_pixels: int
    largest_diameter_px: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def _components(slice2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4-connected components of one slice (ids 1..n) and their equivalent diameters in pixels."""
    from scipy import ndimage

    lab, n = ndimage.label(slice2d > 0)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return lab, 2.0 * np.sqrt(areas / math.pi)


def training_diameter(model: Any) -> tuple[float, float] | None:
    """(95th-percentile, median) equivalent diameter of the model's training mitochondria in model pixels,
    from its card; None when the card does not hold them."""
    from ..adabn.scale_search import reference_sizes  # adabn imports nothing from here

    sizes = reference_sizes(getattr(model, "meta", None) or {})
    if sizes is None or not sizes.get("median_diameter_px"):
        return None
    levels, values, median = sizes["quantile_levels"], sizes["diameter_quantiles_px"], sizes["median_diameter_px"]
    return float(np.interp(OVERSIZE_QUANTILE, levels, values)), float(median)


def remove_oversized_objects(mask: np.ndarray, model: Any, zoom: tuple[float, float] | None = None) -> OversizeReport | None:
    """Remove, in place, the objects of ``mask`` far larger than the model's training mitochondria.

    Parameters
    ----------
    mask : numpy.ndarray
        (Y, X) or (Z, Y, X) segmentation, non-zero = mitochondrion (uint8 semantic labels); changed in place.
    model : UNet or torch.nn.Module
        The model whose card holds the training object sizes (the source model's card; an adapted
        copy keeps it).
    zoom : (float, float) or None, default None
        Model-grid pixels per image pixel (y, x) when the stack was resampled to the model's pixel size
        (``WorkflowResult.zoom``); None: the image's pixels are the model's.

    Returns
    -------
    OversizeReport or None
        None when the model's card holds no object sizes (nothing is removed then).
    """
    return run_to_end(remove_oversized_objects_iter(mask, model, zoom))


@shares_docstring(remove_oversized_objects)
def remove_oversized_objects_iter(
    mask: np.ndarray, model: Any, zoom: tuple[float, float] | None = None
) -> Iterator[Progress | Result[OversizeReport | None]]:
    from ..adabn.scale_search import MIN_AREA_PX

    sizes = training_diameter(model)
    if sizes is None:
        yield Result(None)
        return
    p95, median = sizes
    scale = math.sqrt(zoom[0] * zoom[1]) if zoom else 1.0  # model pixels per image pixel
    m3 = mask if mask.ndim == 3 else mask[None]
    sample = np.unique(np.linspace(0, m3.shape[0] - 1, min(OVERSIZE_SAMPLE_SLICES, m3.shape[0])).round().astype(int))
    found = np.concatenate([_components(m3[z])[1] for z in sample])
    found = found[found >= 2.0 * math.sqrt(MIN_AREA_PX / math.pi)]  # the card's smallest counted object
    ratio = float(np.median(found)) * scale / median if found.size >= OVERSIZE_MIN_OBJECTS else math.nan
    limit = OVERSIZE_FACTOR * p95 * max(1.0, ratio if math.isfinite(ratio) else 1.0) / scale
    removed, removed_px, largest = 0, 0, 0.0
    for z in range(m3.shape[0]):
        if z % PROGRESS_EVERY == 0:
            yield Progress(STAGE, z, m3.shape[0])
        lab, diameters = _components(m3[z])
        if diameters.size == 0:
            continue
        largest = max(largest, float(diameters.max()))
        big = np.flatnonzero(diameters > limit) + 1  # component ids
        if big.size:
            drop = np.isin(lab, big)
            m3[z][drop] = 0
            removed += int(big.size)
            removed_px += int(drop.sum())
    if removed:
        message = (f"removed {removed} object(s) larger than any mitochondrion the model was trained on (equivalent "
                   f"diameter above {limit:.0f} px, {OVERSIZE_FACTOR:g} x the diameter 95 % of its training "
                   f"mitochondria stay below; {removed_px:,} px): a nucleus or cell body is the usual cause; check the image")
    else:
        message = f"no object larger than {limit:.0f} px (equivalent diameter) was segmented"
    yield Progress(STAGE, m3.shape[0], m3.shape[0])
    yield Result(OversizeReport(limit, p95, ratio, removed, removed_px, largest, message))
