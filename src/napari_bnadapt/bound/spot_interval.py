"""The spot check's interval: from the IoU of an annotated region to an interval for the whole stack.

The whole-stack IoU differs from the IoU of an annotated region for two reasons:

1. *within the region*: the region is a sample of objects and tiles. A bootstrap over square tiles
   of :data:`TILE` pixels (resampling tiles with replacement and pooling their intersections and
   unions, :data:`N_BOOT` draws) gives its standard deviation ``within_sd`` (:func:`bootstrap_sd`);
2. *between slices*: other slices (and other parts of a slice) are imaged and cut differently, and
   one annotated region cannot see that. A between-region standard deviation was MEASURED on
   labelled real volumes and simulated other-lab versions of them (``benchmarks/bench_spot_check.py``:
   for every slice and quarter-slice of held-out stacks, the gap between its IoU and the stack's,
   less what the bootstrap explains, chosen so that the nominal share of those cases is covered,
   :func:`fit_between_sd`): :data:`BETWEEN_SLICE_SD` when the region covers at least
   :data:`WHOLE_SLICE_SHARE` of its slice, :data:`PART_SLICE_SD` for a smaller rectangle. With ``n``
   annotated slices it shrinks as ``1 / sqrt(n)``.

Both are combined on the arcsine-square-root scale (``phi = asin(sqrt(IoU))``, which keeps an IoU
near 0 or 1 inside [0, 1]): ``phi +- z * sqrt(within_sd^2 + between^2 / n)`` with ``z`` the normal
quantile of :data:`LEVEL`, mapped back to the IoU scale (:func:`stack_interval`). The annotation,
the model and the variants are in :mod:`napari_bnadapt.bound.spot_check`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ..errors import BNAdaptError

#: Side in pixels of the square tiles the within-region bootstrap resamples.
TILE = 128
#: Bootstrap draws.
N_BOOT = 2000
#: Nominal coverage of the interval.
LEVEL = 0.9
#: Between-slice standard deviation of the IoU on the arcsine-square-root scale, per annotated
#: (nearly) whole slice: fitted by ``python benchmarks/bench_spot_check.py`` on every case of its
#: held-out stacks (line "fitted on all cases" of benchmarks/results/bench_spot_check.txt).
BETWEEN_SLICE_SD = 0.09
#: The same for a region under :data:`WHOLE_SLICE_SHARE` of its slice (a rectangle), fitted alike.
PART_SLICE_SD = 0.21
#: A region covering at least this share of its slice counts as a whole slice.
WHOLE_SLICE_SHARE = 0.5


def arcsine(iou: np.ndarray | float) -> np.ndarray | float:
    """The variance-stabilising scale of the interval: ``asin(sqrt(IoU))`` in [0, pi/2]."""
    return np.arcsin(np.sqrt(np.clip(iou, 0.0, 1.0)))


def from_arcsine(phi: np.ndarray | float) -> np.ndarray | float:
    """The inverse of :func:`arcsine`, clipped to [0, 1]."""
    return np.sin(np.clip(phi, 0.0, np.pi / 2)) ** 2


def tile_counts(pred: np.ndarray, truth: np.ndarray, region: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(intersection, union) of the foreground per square tile of one slice's annotated region.

    Tiles are laid from the corner of the region's bounding box; only region pixels count, and
    tiles without a region pixel are dropped. Returns an (n_tiles, 2) int64 array.
    """
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return np.zeros((0, 2), np.int64)
    y0, x0 = ys.min(), xs.min()
    y1, x1 = ys.max() + 1, xs.max() + 1
    p, t, r = (a[y0:y1, x0:x1] for a in (pred, truth, region))
    out = []
    for ty in range(0, y1 - y0, tile):
        for tx in range(0, x1 - x0, tile):
            rr = r[ty:ty + tile, tx:tx + tile]
            if not rr.any():
                continue
            pp, tt = p[ty:ty + tile, tx:tx + tile] & rr, t[ty:ty + tile, tx:tx + tile] & rr
            out.append((np.count_nonzero(pp & tt), np.count_nonzero(pp | tt)))
    return np.asarray(out, np.int64).reshape(-1, 2)


def bootstrap_sd(counts: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Standard deviation, on the arcsine scale, of the pooled IoU of tiles drawn with replacement."""
    n = len(counts)
    if n < 2:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    inter, union = counts[idx, 0].sum(1), counts[idx, 1].sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(np.std(arcsine(iou)))


def stack_interval(iou: float, within_sd: float, n_slices: int, *, between_sd: float = BETWEEN_SLICE_SD,
                   level: float = LEVEL) -> tuple[float, float]:
    """Interval for the whole-stack IoU from a region's IoU (module docstring).

    Parameters
    ----------
    iou : float
        IoU on the annotated region.
    within_sd : float
        Its bootstrap standard deviation on the arcsine scale (:func:`bootstrap_sd`).
    n_slices : int
        Annotated slices (the between-slice part shrinks as 1 / sqrt(n_slices)).
    between_sd : float, default BETWEEN_SLICE_SD
        Between-slice standard deviation per slice, arcsine scale.
    level : float, default LEVEL
        Nominal coverage in (0, 1).

    Returns
    -------
    (float, float)
        Low and high end, in [0, 1].
    """
    if not 0 < level < 1:
        raise BNAdaptError(f"level must lie between 0 and 1, not {level}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * math.sqrt(within_sd ** 2 + between_sd ** 2 / max(n_slices, 1))
    phi = float(arcsine(iou))
    return float(from_arcsine(phi - half)), float(from_arcsine(phi + half))


def fit_between_sd(gaps: np.ndarray, within_sds: np.ndarray, weights: np.ndarray | None = None,
                   level: float = LEVEL) -> float:
    """The smallest between-slice SD whose intervals cover a weighted share ``level`` of known cases.

    Parameters
    ----------
    gaps : array of float
        Per case: arcsine(whole-stack IoU) - arcsine(region IoU), one annotated slice each.
    within_sds : array of float
        Per case: the region's bootstrap SD (arcsine scale).
    weights : array of float or None
        Per case weight (e.g. 1 / cases of its stack, so every stack counts once); None: equal.
    level : float, default LEVEL
        The share to cover.

    Returns
    -------
    float
        The SD: per case, the SD it needs to be covered is ``sqrt(max(0, (gap / z)^2 - within^2))``;
        this is their weighted ``level`` quantile.
    """
    gaps, within_sds = np.asarray(gaps, float), np.asarray(within_sds, float)
    if gaps.size == 0:
        raise BNAdaptError("no cases to fit the between-slice spread on")
    w = np.ones_like(gaps) if weights is None else np.asarray(weights, float)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    need = np.sqrt(np.maximum(0.0, (gaps / z) ** 2 - within_sds ** 2))
    order = np.argsort(need)
    cum = np.cumsum(w[order]) / w.sum()
    return float(need[order][min(np.searchsorted(cum, level - 1e-12), len(need) - 1)])
