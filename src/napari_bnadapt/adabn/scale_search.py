"""Scale search without labels: which zoom makes the target's objects look like the training data's.

AdaBN re-estimates grey-value statistics; it cannot fix scale (:mod:`napari_bnadapt.io.pixel_size`).
When a new lab's mitochondria are 1.5-2x smaller or larger in pixels than in the training data, more
than the stated pixel sizes explain (or the pixel size is unknown), the U-Net fails even after
adaptation. :func:`choose_zoom` tries a few zoom factors on a small sample of the stack: for each it
resamples the sample, adapts a copy of the model to it, segments it and scores the result without
labels, against the object sizes the model saw in training (stored in its card under
:data:`OBJECTS_KEY` by :func:`object_size_summary`).

Object sizes are per slice: 2-D connected components (or the ids of an instance-label image), their
equivalent diameter ``2 * sqrt(area / pi)`` in pixels; objects smaller than :data:`MIN_AREA_PX` are
noise and ignored; objects cut by the image border are left out and the others weighted to make up
for them (Miles-Lantuejoul), so that 64 x 64 training crops and 1024 x 1024 slices give the same sizes
(toy masks: median 20.9 px at 64 x 64, 20.4-20.8 px at 128-512 px; counting every object instead gave
15.3 px at 64 x 64 and 17.3 px at 128 x 128, a bias of half a grid step). A summary keeps the
quantiles of the diameters at :data:`QUANTILE_LEVELS`, so a model card stays small and two summaries
can be compared as distributions (:func:`size_distance`).

torch is imported only when a network runs (inside :func:`choose_zoom`); the sample is put on the
model's grid before adapt/predict are called, so they are told it is at the model's pixel size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.pixel_size import rescale, size_ratio
from ..io.stack_view import check_stack, resolve_normalization
from ..model.foreign import card_of
from ..progress import Progress, Result, forward_as, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: The key of the object-size summary in a model's card (``model.meta[OBJECTS_KEY]``).
OBJECTS_KEY = "objects"
#: Version of the summary's layout.
SUMMARY_VERSION = 1
#: Objects smaller than this (pixels of area, per slice) are ignored: noise, not mitochondria.
MIN_AREA_PX = 16
#: Levels of the stored diameter quantiles (5 %, 10 %, ..., 95 %).
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: Default search grid around the centre factor: 2**(-1 ... 1) in 7 steps (x0.5 ... x2, step 1.26).
DEFAULT_SPAN = 2.0
DEFAULT_STEPS = 7
#: Fewer counted objects than this in the sample at the chosen zoom make the choice a rough guess (said so).
FEW_OBJECTS = 20
#: Largest side (pixels) of the zoomed sample: the crop read from the stack is this over the largest factor.
DEFAULT_MAX_SIDE = 512

_STAGE = "searching the scale"


# ---------------------------------------------------------------------------------------- sizes
def _label_slices(labels: ArrayLike) -> tuple[np.ndarray, int]:
    """One label image for the whole stack, objects confined to their slice; and the number of labels."""
    from scipy import ndimage

    arr = np.asarray(labels)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise BNAdaptError(f"labels must be a (Y, X) or (Z, Y, X) array, not {arr.ndim}-D")
    fg = arr > 0
    ids = np.unique(arr[fg]) if arr.dtype.kind in "iu" and fg.any() else np.empty(0)
    if len(ids) > 1:  # instance labels: each id in each slice is one object (touching ones stay apart)
        flat = np.searchsorted(ids, arr).astype(np.int64) + 1 + np.arange(len(arr))[:, None, None] * len(ids)
        flat[~fg] = 0
        return flat, len(arr) * len(ids)
    # a mask: 4-connected components in each slice, none across slices
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(fg, structure=structure)
    return lab, int(n)


def _diameters(labels: ArrayLike, min_area: int) -> tuple[np.ndarray, np.ndarray, bool, int, int, int]:
    """Equivalent diameters (px) of the 2-D objects, their edge-correction weights, whether corrected,
    and (slices, foreground px, all px)."""
    from scipy import ndimage

    lab, n = _label_slices(labels)
    nz, h, w = lab.shape
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    boxes = ndimage.find_objects(lab, max_label=n)
    keep = np.array([b is not None for b in boxes], bool) & (areas >= max(1, int(min_area)))
    bh = np.array([b[1].stop - b[1].start if b else 0 for b in boxes], np.float64)
    bw = np.array([b[2].stop - b[2].start if b else 0 for b in boxes], np.float64)
    inner = np.array([bool(b) and b[1].start > 0 and b[2].start > 0 and b[1].stop < h and b[2].stop < w
                      for b in boxes], bool)
    n_fg, n_all = int(np.count_nonzero(lab)), int(lab.size)
    if (keep & inner).any():  # Miles-Lantuejoul: inner objects, each weighted by 1 / its inner positions
        sel = keep & inner
        weights = 1.0 / ((h - 1 - bh[sel]) * (w - 1 - bw[sel]))
        return 2.0 * np.sqrt(areas[sel] / math.pi), weights, True, nz, n_fg, n_all
    return 2.0 * np.sqrt(areas[keep] / math.pi), np.ones(int(keep.sum())), False, nz, n_fg, n_all


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of a weighted sample (midpoint rule; the plain quantiles for equal weights)."""
    order = np.argsort(values)
    v, wt = values[order], weights[order]
    cum = (np.cumsum(wt) - 0.5 * wt) / wt.sum()
    return np.interp(levels, cum, v)


def object_size_summary(labels: ArrayLike, *, min_area: int = MIN_AREA_PX) -> dict[str, Any]:
    """The distribution of 2-D object sizes of a label stack (what a model card stores).

    Objects cut by the image border would make the sizes depend on the image size (64 x 64 training
    crops cut far more objects than a 1024 x 1024 slice). So, as in stereology's Miles-Lantuejoul
    correction, only objects that do not touch the border count, each weighted by one over the number
    of positions its bounding box could take inside the slice without touching the border (large
    objects are more often cut, and so count more when they are not): the result estimates the same
    distribution whatever the image size. When every object touches the border, all count equally
    (``edge_corrected`` False).

    Parameters
    ----------
    labels : array-like
        A (Z, Y, X) or (Y, X) mask (non-zero = object) or instance-label image. A mask is split into
        4-connected components per slice; instance ids are taken as they are, per slice.
    min_area : int, default MIN_AREA_PX
        Objects with fewer pixels than this (per slice) are ignored.

    Returns
    -------
    dict
        Plain JSON: ``version``, ``min_area_px``, ``slices``, ``count`` (objects that count),
        ``edge_corrected``, ``foreground_fraction``, ``median_diameter_px``, ``q25_diameter_px``,
        ``q75_diameter_px``, ``quantile_levels`` and ``diameter_quantiles_px`` (the diameters at those
        levels). Diameters are ``2 * sqrt(area / pi)`` in pixels, None when no object was found.
    """
    diam, weights, corrected, nz, n_fg, n_all = _diameters(labels, min_area)
    q = _weighted_quantiles(diam, weights, QUANTILE_LEVELS + (0.25, 0.5, 0.75)) if len(diam) else None
    return {
        "version": SUMMARY_VERSION,
        "min_area_px": int(min_area),
        "slices": int(nz),
        "count": int(len(diam)),
        "edge_corrected": bool(corrected),
        "foreground_fraction": n_fg / n_all if n_all else 0.0,
        "median_diameter_px": None if q is None else float(q[-2]),
        "q25_diameter_px": None if q is None else float(q[-3]),
        "q75_diameter_px": None if q is None else float(q[-1]),
        "quantile_levels": list(QUANTILE_LEVELS),
        "diameter_quantiles_px": None if q is None else [float(v) for v in q[:-3]],
    }


def reference_sizes(model: Any) -> dict[str, Any] | None:
    """The object-size summary stored in a model's card (``model.meta[OBJECTS_KEY]``), or None.

    Parameters
    ----------
    model : UNet, torch.nn.Module or dict
        A model with a card (``meta``), or the card itself.

    Returns
    -------
    dict or None
        The summary of :func:`object_size_summary`, when the card holds a usable one.
    """
    meta = model if isinstance(model, dict) else card_of(model)
    return _usable((meta or {}).get(OBJECTS_KEY))


def _usable(summary: Any) -> dict[str, Any] | None:
    """``summary`` when it is an object-size summary holding at least one object, else None."""
    if not isinstance(summary, dict) or not summary.get("count") or not summary.get("diameter_quantiles_px"):
        return None
    return summary


def size_distance(summary: dict[str, Any], reference: dict[str, Any]) -> float:
    """How far two object-size distributions are apart: the 1-D Wasserstein distance of log-diameters.

    Computed from the stored quantiles as the mean of ``|log q_i - log r_i|`` over the common levels,
    which approximates ``W1 = integral_0^1 |F^-1(p) - G^-1(p)| dp``. A pure change of scale by ``s``
    gives ``|log s|``, whatever the shape of the distribution; unlike the log-ratio of medians it
    also sees a changed shape (objects broken into fragments, or merged). inf when either holds no
    object.

    Parameters
    ----------
    summary, reference : dict
        Results of :func:`object_size_summary`.

    Returns
    -------
    float
    """
    qa, qb = summary.get("diameter_quantiles_px"), reference.get("diameter_quantiles_px")
    if not qa or not qb:
        return math.inf
    la, lb = dict(zip(summary["quantile_levels"], qa)), dict(zip(reference["quantile_levels"], qb))
    common = sorted(set(la) & set(lb))
    if not common:
        return math.inf
    return float(np.mean([abs(math.log(la[p]) - math.log(lb[p])) for p in common]))


# ---------------------------------------------------------------------------------------- search
@dataclass
class ZoomChoice:
    """What :func:`choose_zoom` found.

    Attributes
    ----------
    factor : float
        The chosen zoom (output pixels per input pixel; > 1 enlarges): use it as
        ``rescale(images, (factor, factor))`` before adapting and segmenting.
    factors : list of float
        The factors tried.
    scores : list of float
        Their scores (lower is better; inf: nothing was found at that zoom).
    criterion : str
        ``"size"`` (distance of the predicted object sizes to the card's, :func:`size_distance`) or
        ``"flip"`` (1 - Dice of the predictions with those of the flipped sample; the card holds no sizes).
    reason : str
        One sentence for the user.
    reference : dict or None
        The card's object-size summary (None with ``criterion="flip"``).
    median_diameters_px : list of float or None
        The median diameter of the predicted objects at every factor, in zoomed pixels.
    summaries : list of dict
        The predicted object-size summary at every factor.
    pixel_size_factor : float or None
        ``image_nm / model_nm`` when both pixel sizes were known (the grid's centre).
    model_pixel_size_nm : (float, float) or None
        The model's training pixel size (its card), when known.
    seconds : float
        Wall-clock time.
    """

    factor: float
    factors: list[float]
    scores: list[float]
    criterion: str
    reason: str
    reference: dict[str, Any] | None
    median_diameters_px: list[float | None]
    summaries: list[dict[str, Any]] = field(default_factory=list)
    pixel_size_factor: float | None = None
    model_pixel_size_nm: tuple[float, float] | None = None
    seconds: float = 0.0

    def effective_pixel_size_nm(self) -> tuple[float, float] | None:
        """The ``pixel_size_nm`` to give ``adapt``, ``segment`` or the workflow so that they run at this zoom.

        They resample an image of pixel size ``p`` by ``p / model_nm``; claiming ``factor * model_nm``
        makes that the chosen factor, and their results come back on the image's own grid. None when
        the model's pixel size is unknown: then resample yourself (:func:`napari_bnadapt.io.pixel_size.rescale`).
        """
        if self.model_pixel_size_nm is None:
            return None
        return (self.factor * self.model_pixel_size_nm[0], self.factor * self.model_pixel_size_nm[1])

    def __str__(self) -> str:
        lines = [f"scale search ({self.criterion}) in {self.seconds:.1f} s: {self.reason}"]
        for f, s, d in zip(self.factors, self.scores, self.median_diameters_px):
            mark = " <-" if f == self.factor else ""
            lines.append(f"  zoom {f:5.2f}x  score {s:7.3f}  median diameter "
                         f"{'-' if d is None else f'{d:.1f} px'}{mark}")
        return "\n".join(lines)


def default_factors(pixel_size_nm: Sequence[float] | None = None, model_nm: Sequence[float] | None = None,
                    *, span: float = DEFAULT_SPAN, steps: int = DEFAULT_STEPS) -> list[float]:
    """The default zoom grid: ``steps`` factors spaced geometrically from ``centre / span`` to ``centre * span``.

    Parameters
    ----------
    pixel_size_nm, model_nm : (float, float) or None
        The image's and the model's pixel sizes; the centre is ``image_nm / model_nm`` when both are
        known (:func:`napari_bnadapt.io.pixel_size.size_ratio`), else 1.
    span : float, default DEFAULT_SPAN
        The grid reaches this factor either way of the centre.
    steps : int, default DEFAULT_STEPS
        Number of factors (odd numbers include the centre).

    Returns
    -------
    list of float
    """
    centre = size_ratio(pixel_size_nm, model_nm) or 1.0
    if steps < 1 or span < 1:
        raise BNAdaptError(f"the zoom grid needs steps >= 1 and span >= 1, not {steps} and {span}")
    exps = np.linspace(-1.0, 1.0, steps) if steps > 1 else np.zeros(1)
    return [round(float(centre * span ** e), 4) for e in exps]


def sample_slices(view: Any, n_slices: int, side: int) -> np.ndarray:
    """``n_slices`` evenly spaced slices, the central ``side`` x ``side`` crop of each."""
    nz, h, w = view.shape3d
    zs = np.unique(np.linspace(0, nz - 1, max(1, min(n_slices, nz))).round().astype(int))
    sh, sw = min(h, side), min(w, side)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return np.stack([np.asarray(view.read(int(z), slice(y0, y0 + sh), slice(x0, x0 + sw))) for z in zs])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def choose_zoom(
    model: UNet,
    images: ArrayLike | Image,
    *,
    factors: Sequence[float] | None = None,
    pixel_size_nm: Sequence[float] | None = None,
    reference: dict[str, Any] | None = None,
    adapt_kwargs: dict[str, Any] | None = None,
    n_slices: int = 4,
    max_side: int = DEFAULT_MAX_SIDE,
    threshold: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
) -> ZoomChoice:
    """Choose the zoom at which the model, adapted, sees objects of its training size (no labels needed).

    For every candidate factor, a sample of the stack (``n_slices`` evenly spaced slices, one central
    crop) is resampled (:func:`napari_bnadapt.io.pixel_size.rescale`, linear), a copy of the model
    is adapted to it by AdaBN (:func:`napari_bnadapt.adapt`, 16 patches by default), it is segmented
    (:func:`napari_bnadapt.predict`, thresholded at ``threshold``) and the result is scored:

    ``"size"`` (when the card holds the training data's object sizes, :func:`reference_sizes`)
        :func:`size_distance` between the predicted and the training object sizes: the 1-D
        Wasserstein distance of log-diameters. Log, because a zoom multiplies every diameter (a
        pure scale change is then a shift, the same at every size); Wasserstein of the whole
        distribution rather than the ratio of medians, because at a wrong zoom the network also
        breaks objects into fragments or merges them, which changes the distribution's shape
        while the median can stay put.
    ``"flip"`` (no sizes in the card)
        1 - Dice between the predictions of the sample and of the sample flipped in y and x (flipped
        back): a network off its scale is less sure and so less consistent. Weaker than ``"size"``.

    The lowest score wins. Costs two adaptations and segmentations of a small sample per factor
    (seconds each on a CPU for the bundled models).

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The source model; never changed (each factor adapts its own copy).
    images : array-like or napari Image layer
        The unlabelled target: (Y, X) image or (Z, Y, X) stack; only the sample is read.
    factors : sequence of float or None, default None
        Zoom factors to try (output pixels per input pixel; > 1 enlarges). None: :func:`default_factors`
        around the pixel-size ratio ``pixel_size_nm / model_nm`` when both are known, else around 1
        (0.5 ... 2 in 7 geometric steps).
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm, for the grid's centre.
    reference : dict or None, default None
        The training data's object sizes (:func:`object_size_summary` of its labels); None: those in
        the model's card (:func:`reference_sizes`), and the ``"flip"`` criterion when it holds none.
    adapt_kwargs : dict or None, default None
        More arguments for :func:`napari_bnadapt.adapt` (default ``n_patches=16, patch_size=256``).
    n_slices : int, default 4
        Slices in the sample (evenly spaced over the stack).
    max_side : int, default DEFAULT_MAX_SIDE
        Largest side of the zoomed sample in pixels: the crop read is ``max_side / max(factors)``.
    threshold : float, default 0.5
        Probability threshold of the predicted objects.
    seed : int, default 0
        Seed of the adaptation patches (the same for every factor).
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`napari_bnadapt.predict`; "auto" is resolved once, on the
        unzoomed sample, and the same mapping is used at every factor.

    Returns
    -------
    ZoomChoice
        The chosen factor, every factor's score and predicted median diameter, and a sentence.
    """
    return run_to_end(choose_zoom_iter(
        model, images, factors=factors, pixel_size_nm=pixel_size_nm, reference=reference,
        adapt_kwargs=adapt_kwargs, n_slices=n_slices, max_side=max_side, threshold=threshold, seed=seed, device=device,
        intensity_range=intensity_range,
    ))


@shares_docstring(choose_zoom)
def choose_zoom_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    factors: Sequence[float] | None = None,
    pixel_size_nm: Sequence[float] | None = None,
    reference: dict[str, Any] | None = None,
    adapt_kwargs: dict[str, Any] | None = None,
    n_slices: int = 4,
    max_side: int = DEFAULT_MAX_SIDE,
    threshold: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
) -> Iterator[Progress | Result[ZoomChoice]]:
    from ..io.resample import model_pixel_size
    from ..model.files import default_meta
    from ..segmentation.predict import predict_iter
    from .adaptation import adapt_iter

    t0 = time.perf_counter()
    meta = card_of(model) or default_meta(model)
    model_nm = model_pixel_size(model)
    ratio = size_ratio(pixel_size_nm, model_nm)
    grid = [float(f) for f in (factors if factors is not None else default_factors(pixel_size_nm, model_nm))]
    if not grid or any(not (0.05 <= f <= 20) for f in grid):
        raise BNAdaptError(f"zoom factors must lie between 0.05 and 20, not {grid}")
    if not 0 < threshold < 1:
        raise BNAdaptError(f"threshold must lie between 0 and 1, not {threshold}")
    view = check_stack(images)
    sample = sample_slices(view, n_slices, max(16, int(max_side / max(grid))))
    norm = resolve_normalization(check_stack(sample), meta["normalization"], intensity_range)
    mapping = (norm.in_low, norm.in_high)  # one grey-value mapping for every factor
    given = reference
    reference = _usable(given) if given is not None else reference_sizes(model)
    if given is not None and reference is None:
        raise BNAdaptError("the reference object sizes hold no object: give object_size_summary(labels) of "
                           "the training labels")
    criterion = "size" if reference is not None else "flip"
    kwargs = {"n_patches": 16, "patch_size": 256, **(adapt_kwargs or {})}
    # the zoomed sample IS on the model's grid: adapt and predict must neither resample it nor warn
    on_grid = {"device": device, "intensity_range": mapping, "pixel_size_nm": model_nm}
    scores: list[float] = []
    summaries: list[dict[str, Any]] = []
    dices: list[float] = []
    total = len(grid)
    yield Progress(_STAGE, 0, total)
    for i, f in enumerate(grid):
        zoomed = rescale(sample, (f, f), order=1)
        if min(zoomed.shape[-2:]) < 16:
            scores.append(math.inf)
            summaries.append(object_size_summary(np.zeros((1, 1, 1), np.uint8)))
            dices.append(0.0)
            continue
        adapted, _ = yield from forward_as(adapt_iter(model, zoomed, seed=seed, **on_grid, **kwargs), _STAGE,
                                           i, total)
        prob = yield from forward_as(predict_iter(adapted, zoomed, **on_grid), _STAGE, i, total)
        mask = np.asarray(prob) >= threshold
        summary = object_size_summary(mask)
        summaries.append(summary)
        if criterion == "size":
            scores.append(size_distance(summary, reference))  # type: ignore[arg-type]
        else:
            flipped = np.ascontiguousarray(zoomed[:, ::-1, ::-1])
            prob_f = yield from forward_as(predict_iter(adapted, flipped, **on_grid), _STAGE, i, total)
            agree = dice(mask, np.asarray(prob_f)[:, ::-1, ::-1] >= threshold)
            dices.append(agree)
            scores.append(1.0 - agree if summary["count"] else math.inf)
        yield Progress(_STAGE, i + 1, total)
    best = _best(grid, scores, ratio or 1.0)
    medians = [s["median_diameter_px"] for s in summaries]
    yield Result(ZoomChoice(
        factor=grid[best], factors=grid, scores=scores, criterion=criterion,
        reason=_reason(grid[best], medians[best], reference, dices[best] if dices else None, scores[best],
                       summaries[best]["count"]),
        reference=reference, median_diameters_px=medians, summaries=summaries, pixel_size_factor=ratio,
        model_pixel_size_nm=model_nm, seconds=time.perf_counter() - t0,
    ))


def _best(grid: list[float], scores: list[float], centre: float) -> int:
    """The lowest score; ties (within 1e-9) go to the factor nearest the centre."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        raise BNAdaptError("no object was found in the sample at any zoom: the scale cannot be chosen "
                           "(is the grey-value mapping right? try intensity_range='auto')")
    low = min(finite)
    tied = [i for i, s in enumerate(scores) if s <= low + 1e-9]
    return min(tied, key=lambda i: abs(math.log(grid[i] / centre)))


def _reason(factor: float, median: float | None, reference: dict[str, Any] | None, dice: float | None,
            score: float, count: int) -> str:
    few = (f"; only {count} whole objects in the sample, so a rough guess (use more slices: n_slices)"
           if count < FEW_OBJECTS else "")
    if reference is not None:
        return (f"zoom {factor:.2f}x: the predicted objects then have a median diameter of {median:.0f} px, "
                f"the model's training data {reference['median_diameter_px']:.0f} px "
                f"(size distance {score:.2f}{few})")
    return (f"zoom {factor:.2f}x: the predictions then agree best with those of the flipped image "
            f"(Dice {dice:.2f}); the model card holds no object sizes to compare with, so this is a weak guess{few}")
