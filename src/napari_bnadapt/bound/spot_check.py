"""Spot check: the IoU on one annotated slice, and an honest interval for the IoU of the whole stack.

The user paints (or corrects) the mitochondria of one slice, or of a rectangle of one slice, in a
Labels layer. :func:`spot_check` segments those slices with the model it is given, reports the IoU
there and an interval for the IoU of the whole stack, and, with ``compare=True``, which adaptation
variant does best on the annotated slices.

**Which pixels count.** ``region="slice"`` (default): every pixel of an annotated slice; unpainted
pixels are background, so every mitochondrion of the slice must be painted. ``region="bbox"``:
only the bounding box of the painting on each slice (paint every mitochondrion inside a rectangle;
the rest of the slice is ignored). ``mask``: an explicit boolean array of the annotated pixels
(e.g. a rectangle drawn elsewhere); it overrides ``region``.

**The interval.** The region's IoU, widened by what a bootstrap over its tiles and a measured
between-slice spread say about the rest of the stack (:mod:`napari_bnadapt.bound.spot_interval`).
With fewer than :data:`MIN_OBJECTS` painted mitochondria in the region the IoU there says nothing
about the stack (one missed object gives 0): the interval is then (0, 1) and a note asks for more.
Its coverage on held-out volumes (leave one volume out) is in ``docs/spot-check.md``.

**The model.** The model is used as it is given (an adapted model from :func:`~napari_bnadapt.adapt`
or the widget's last run, or a source model to check it without adaptation) and never changed.
``compare=True`` adapts COPIES of ``source`` (the model the adaptation started from) with each
estimator, and runs test-time augmentation and the entropy step on copies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, layer_data, resolve_normalization
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from .spot_interval import (
    BETWEEN_SLICE_SD,
    LEVEL,
    PART_SLICE_SD,
    TILE,
    WHOLE_SLICE_SHARE,
    bootstrap_sd,
    stack_interval,
    tile_counts,
)

if TYPE_CHECKING:
    import torch
    from napari.layers import Image, Labels
    from numpy.typing import ArrayLike

#: Fewer painted mitochondria than this in the region: the interval is (0, 1).
MIN_OBJECTS = 3
#: The ways an annotation is read (module docstring).
REGIONS = ("slice", "bbox")
#: The adaptation variants ``compare=True`` tries, in this order.
VARIANTS = ("as given", "source only", "AdaBN cumulative", "AdaBN EMA", "AdaBN prior", "AdaBN, smoothed",
            "+ TTA (4 flips)", "+ entropy step")


@dataclass(frozen=True)
class VariantScore:
    """One adaptation variant on the annotated region.

    Attributes
    ----------
    name : str
        One of :data:`VARIANTS`.
    iou : float
        IoU on the annotated region.
    interval : (float, float)
        Interval for the whole-stack IoU of this variant (as :attr:`SpotCheck.interval`).
    seconds : float
        Time to build and run it.
    """

    name: str
    iou: float
    interval: tuple[float, float]
    seconds: float


@dataclass(frozen=True)
class SpotCheck:
    """What :func:`spot_check` found.

    Attributes
    ----------
    iou : float
        Foreground IoU of the model's segmentation (probability > 0.5) on the annotated region.
    interval : (float, float)
        Interval for the IoU of the WHOLE stack, at nominal coverage :attr:`level`.
    level : float
        Nominal coverage (:data:`LEVEL`); the measured one is in ``docs/spot-check.md``.
    slices : tuple of int
        The annotated slices used.
    region : str
        "slice", "bbox" or "mask": which pixels counted (module docstring).
    per_slice : tuple of float
        IoU on each annotated slice's region.
    n_pixels : int
        Annotated pixels that counted.
    n_tiles : int
        Tiles the bootstrap resampled.
    within_sd : float
        Bootstrap standard deviation of the region's IoU (arcsine-square-root scale).
    between_sd : float
        Between-slice standard deviation used, already divided by sqrt(number of slices).
    n_objects : int
        Painted mitochondria (connected, per slice) in the region.
    share : float
        The region's share of its slices' area.
    counts : (int, int, int)
        (intersection, predicted, annotated) foreground pixels in the region.
    variants : tuple of VariantScore
        With ``compare=True``: every variant tried, best first; else empty.
    notes : tuple of str
        Things the user should know (small region, annotation identical to the segmentation, ...).
    """

    iou: float
    interval: tuple[float, float]
    level: float
    slices: tuple[int, ...]
    region: str
    per_slice: tuple[float, ...]
    n_pixels: int
    n_tiles: int
    within_sd: float
    between_sd: float
    counts: tuple[int, int, int]
    n_objects: int = 0
    share: float = 1.0
    variants: tuple[VariantScore, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def best(self) -> str | None:
        """The variant with the highest IoU on the annotated region (None without ``compare``)."""
        return self.variants[0].name if self.variants else None

    def sentence(self) -> str:
        """The result in one or two sentences (what the widget shows)."""
        where = f"slice {self.slices[0]}" if len(self.slices) == 1 else f"{len(self.slices)} slices"
        lo, hi = self.interval
        text = (f"IoU {self.iou:.2f} on {where}; whole stack: {math.floor(lo * 100) / 100:.2f} to "
                f"{math.ceil(hi * 100) / 100:.2f} ({self.level:.0%} interval)")
        if self.variants:
            first = self.variants[0]
            given = next((v for v in self.variants if v.name == "as given"), None)
            gain = f", {first.iou - given.iou:+.2f} over the model as given" if given is not None else ""
            text += f". Best on the annotated region: {first.name} (IoU {first.iou:.2f}{gain})"
        return text


# ------------------------------------------------------------------ the statistics (no network)


# ------------------------------------------------------------------ the annotation

def _as_stack(a: Any) -> Any:
    return a[None] if getattr(a, "ndim", 0) == 2 else a


def annotated_slices(labels: Any, slices: Sequence[int] | None) -> tuple[int, ...]:
    """The slices to score: ``slices`` checked, or (None) every slice with a label > 0."""
    lab = _as_stack(labels)
    nz = lab.shape[0]
    if slices is None:
        found = tuple(int(z) for z in range(nz) if np.any(np.asarray(lab[z]) > 0))
        if not found:
            raise BNAdaptError("the annotation has no painted mitochondria: paint the mitochondria of one slice "
                               "(label 1) in a Labels layer of the image's shape, then run the spot check")
        return found
    out = []
    for z in slices:
        if isinstance(z, (bool, np.bool_)) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < nz:
            raise BNAdaptError(f"slice {z!r} is not a slice of this stack (0 to {nz - 1})")
        out.append(int(z))
    if not out:
        raise BNAdaptError("slices is empty: give the annotated slices, or None for every slice with a label")
    return tuple(dict.fromkeys(out))


def _regions(labels: Any, slices: tuple[int, ...], region: str, mask: Any) -> dict[int, np.ndarray]:
    lab = _as_stack(labels)
    out = {}
    for z in slices:
        t = np.asarray(lab[z]) > 0
        if mask is not None:
            r = np.asarray(_as_stack(mask)[z]).astype(bool)
        elif region == "slice":
            r = np.ones_like(t)
        else:
            r = np.zeros_like(t)
            if t.any():
                ys, xs = np.nonzero(t)
                r[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        if r.any():
            out[z] = r
    if not any((np.asarray(lab[z]) > 0)[r].any() for z, r in out.items()):
        raise BNAdaptError("no painted mitochondria inside the annotated region: the IoU there would say nothing "
                           "about the stack; paint the mitochondria of at least one slice")
    return out


def _check_inputs(images: Any, labels: Any, mask: Any, region: str) -> tuple[Any, Any, Any]:
    if region not in REGIONS:
        raise BNAdaptError(f"region must be one of {', '.join(REGIONS)}, not {region!r}")
    lab = layer_data(labels, kind="labels")
    shape = tuple(images.shape) if images is not None else None
    if shape is not None and tuple(lab.shape) != shape:
        raise BNAdaptError(f"the annotation {tuple(lab.shape)} does not have the image's shape {shape}: paint in a "
                           "Labels layer made for this image (Layers > New Labels layer with the image selected)")
    if len(lab.shape) not in (2, 3):
        raise BNAdaptError(f"the annotation must be a (Y, X) slice or a (Z, Y, X) stack, not {len(lab.shape)}-D")
    m = None
    if mask is not None:
        m = layer_data(mask, kind=None)
        if tuple(m.shape) != tuple(lab.shape):
            raise BNAdaptError(f"the mask {tuple(m.shape)} does not have the annotation's shape {tuple(lab.shape)}")
    return lab, m, shape


def score_segmentation(segmentation: Any, labels: Any, slices: Sequence[int] | None = None, *,
                       region: str = "slice", mask: Any = None, between_sd: float | None = None,
                       level: float = LEVEL, seed: int = 0) -> SpotCheck:
    """The spot check of a segmentation already made (no network): IoU on the annotation, stack interval.

    Parameters
    ----------
    segmentation : array-like or napari Labels layer
        The segmentation of the whole stack (any value > 0 is a mitochondrion), or of the annotated
        slices only when ``labels`` has the same shape.
    labels : array-like or napari Labels layer
        The user's annotation, same shape (value > 0: mitochondrion).
    slices : sequence of int or None, default None
        Annotated slices; None: every slice with a label.
    region : {"slice", "bbox"}, default "slice"
        Which pixels of an annotated slice count (module docstring).
    mask : array-like or None, default None
        Boolean array of the annotated pixels; overrides ``region``.
    between_sd : float or None, default None
        Between-slice standard deviation per slice (arcsine scale); None: :data:`BETWEEN_SLICE_SD`
        for a region of at least :data:`WHOLE_SLICE_SHARE` of its slice, else :data:`PART_SLICE_SD`.
    level : float, default LEVEL
        Nominal coverage of the interval.
    seed : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    SpotCheck
    """
    seg = layer_data(segmentation, kind=None)
    lab, m, _ = _check_inputs(seg, labels, mask, region)
    zs = annotated_slices(lab, slices)
    regions = _regions(lab, zs, region, m)
    return _score(lambda z: np.asarray(_as_stack(seg)[z]) > 0, lab, regions,
                  "mask" if m is not None else region, between_sd, level, seed)


def _score(pred_of: Any, lab: Any, regions: dict[int, np.ndarray], region: str, between_sd: float | None,
           level: float, seed: int) -> SpotCheck:
    from scipy.ndimage import label

    tiles, per_slice, notes, identical = [], [], [], []
    inter = npred = ntruth = npix = objects = 0
    for z, r in regions.items():
        p, t = pred_of(z), np.asarray(_as_stack(lab)[z]) > 0
        pz, tz = p & r, t & r
        i, u = int(np.count_nonzero(pz & tz)), int(np.count_nonzero(pz | tz))
        inter, npred, ntruth, npix = inter + i, npred + int(pz.sum()), ntruth + int(tz.sum()), npix + int(r.sum())
        per_slice.append(1.0 if u == 0 else i / u)
        if u and i == u:
            identical.append(z)
        tiles.append(tile_counts(p, t, r))
        objects += int(label(tz)[1])
    counts = np.concatenate(tiles)
    share = npix / sum(r.size for r in regions.values())
    if between_sd is None:
        between_sd = BETWEEN_SLICE_SD if share >= WHOLE_SLICE_SHARE else PART_SLICE_SD
    union = npred + ntruth - inter
    iou = 1.0 if union == 0 else inter / union
    within = bootstrap_sd(counts, seed=seed)
    n = len(regions)
    if identical:
        notes.append(f"the annotation equals the segmentation exactly on slice(s) {', '.join(map(str, identical))}: "
                     "if it is a corrected copy of the segmentation, give only the slices you corrected")
    if len(counts) < 4:
        notes.append(f"the annotated area is small ({len(counts)} tiles of {TILE} px): the interval is wide")
    interval = stack_interval(iou, within, n, between_sd=between_sd, level=level)
    if objects < MIN_OBJECTS:
        interval = (0.0, 1.0)
        notes.append(f"only {objects} painted mitochondri{'on' if objects == 1 else 'a'} in the annotated region: "
                     f"too few to say anything about the stack; paint at least {MIN_OBJECTS}")
    return SpotCheck(iou=float(iou), interval=interval,
                     level=level, slices=tuple(regions), region=region, per_slice=tuple(per_slice), n_pixels=npix,
                     n_tiles=len(counts), within_sd=within, between_sd=between_sd / math.sqrt(n),
                     counts=(inter, npred, ntruth), n_objects=objects, share=float(share), notes=tuple(notes))


# ------------------------------------------------------------------ with the network

def spot_check(
    model: Any,
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    slices: Sequence[int] | None = None,
    *,
    region: str = "slice",
    mask: ArrayLike | None = None,
    compare: bool = False,
    source: Any = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    seed: int = 0,
) -> SpotCheck:
    """Check a segmentation against one annotated slice: the IoU there, an interval for the whole stack.

    Only the annotated slices are segmented (seconds). The interval combines a bootstrap over tiles of
    the annotated region with a between-slice spread measured on labelled real volumes (module
    docstring); with ``compare=True`` the adaptation variants are scored on the same region.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        The model whose segmentation is checked, used as it is and never changed: an adapted model
        (:func:`~napari_bnadapt.adapt`, the widget's last run) or a source model.
    images : array-like or napari Image layer
        The (Z, Y, X) stack (or one (Y, X) slice) the model segments.
    labels : array-like or napari Labels layer
        The user's annotation, of the image's shape: value > 0 is a mitochondrion.
    slices : sequence of int or None, default None
        The annotated slices; None: every slice that holds a label. Give them when the annotation
        is a corrected copy of a whole segmentation (every slice holds labels then).
    region : {"slice", "bbox"}, default "slice"
        "slice": every pixel of an annotated slice counts, unpainted pixels are background (paint
        every mitochondrion of the slice); "bbox": only the bounding box of the painting on each
        slice counts (paint every mitochondrion inside a rectangle).
    mask : array-like or None, default None
        Boolean array of the image's shape marking the annotated pixels; overrides ``region``.
    compare : bool, default False
        Also score, on the same region: the source model alone, AdaBN with each estimator
        (cumulative, EMA, prior; on copies of ``source``), test-time augmentation (4 flips) and the
        entropy step (on copies of the adapted model). Each adaptation reads the whole stack
        (unlabelled), each segmentation the annotated slices only.
    source : UNet or torch.nn.Module or None, default None
        The source model the adaptation started from, for ``compare``; None: ``model`` itself
        when it is not adapted (its card has no ``adaptation`` entry), else the estimators are skipped.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`~napari_bnadapt.predict`; "auto" is decided once on the
        whole stack, so the annotated slices are mapped as the whole stack is.
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm, as in :func:`~napari_bnadapt.predict` (None: a napari
        layer's scale and units, else unknown).
    seed : int, default 0
        Seed of the bootstrap and of the adaptations' patch draws.

    Returns
    -------
    SpotCheck
        ``iou`` on the annotated region, ``interval`` (low, high) for the whole stack, what the
        interval is built from, and with ``compare`` the ``variants`` (best first) and ``best``.
    """
    return run_to_end(spot_check_iter(
        model, images, labels, slices, region=region, mask=mask, compare=compare, source=source, device=device,
        intensity_range=intensity_range, pixel_size_nm=pixel_size_nm, seed=seed))


@shares_docstring(spot_check)
def spot_check_iter(
    model: Any,
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    slices: Sequence[int] | None = None,
    *,
    region: str = "slice",
    mask: ArrayLike | None = None,
    compare: bool = False,
    source: Any = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    seed: int = 0,
) -> Iterator[Progress | Result[SpotCheck]]:
    from ..adabn.adaptation import adapt_iter
    from ..adabn.entropy import entropy_step_iter
    from ..adabn.smoothing import choose_smoothing_iter
    from ..io.resample import image_pixel_size
    from ..io.smoothed import smoothed
    from ..model.files import default_meta
    from ..model.foreign import card_of
    from ..segmentation.predict import predict_iter
    from ..segmentation.tta import predict_tta_iter

    data = layer_data(images)
    view = check_stack(data)
    lab, m, _ = _check_inputs(data, labels, mask, region)
    regions = _regions(lab, annotated_slices(lab, slices), region, m)
    px = image_pixel_size(images, pixel_size_nm)
    if isinstance(intensity_range, str):  # decided on the whole stack, not on the annotated slices
        norm = resolve_normalization(view, (card_of(model) or default_meta(model))["normalization"], intensity_range)
        intensity_range = (norm.in_low, norm.in_high)
    zs = list(regions)

    def annotated(stack: Any) -> np.ndarray:  # the annotated slices of a stack (the image, or it smoothed)
        return np.stack([np.asarray(_as_stack(stack)[z]) for z in zs])

    sub = annotated(data)
    where = {z: i for i, z in enumerate(zs)}
    run = dict(device=device, intensity_range=intensity_range, pixel_size_nm=px)
    kind = "mask" if m is not None else region

    def score(prob: np.ndarray) -> SpotCheck:
        return _score(lambda z: prob[where[z]] > 0.5, lab, regions, kind, None, LEVEL, seed)

    t0 = time.perf_counter()
    yield Progress("spot check: segmenting the annotated slices", 0, 1)
    prob = yield from forward(predict_iter(model, sub, **run))
    result = score(prob)
    if not compare:
        yield Result(result)
        return

    adapted_given = "adaptation" in (getattr(model, "meta", None) or {})
    if source is None and not adapted_given:
        source = model
    notes = list(result.notes)
    scores = [VariantScore("as given", result.iou, result.interval, time.perf_counter() - t0)]
    base = model
    plan = [v for v in VARIANTS[1:] if source is not None or v.startswith("+")]
    if source is None:
        notes.append("the estimators were not compared: pass the source model (source=) to compare them")
    elif source is model:
        plan.remove("source only")  # the model as given is the source model
    for i, name in enumerate(plan):
        yield Progress(f"spot check: {name}", i, len(plan))
        t = time.perf_counter()
        if name == "source only":
            p = yield from forward(predict_iter(source, sub, **run))
        elif name == "AdaBN, smoothed":  # the blur chosen without labels (adabn/smoothing.py), then AdaBN
            choice = yield from forward(choose_smoothing_iter(source, data, seed=seed, **run))
            notes.append(f"'AdaBN, smoothed': a blur of {choice.sigma:g} px at the model's pixel size (chosen without "
                         "labels)")
            seen = smoothed(data, choice.sigma_image_px)
            adapted, _ = yield from forward(adapt_iter(source, seen, seed=seed, **run))
            p = yield from forward(predict_iter(adapted, annotated(seen), **run))
        elif name.startswith("AdaBN"):
            mode = name.split()[-1].lower()
            adapted, _ = yield from forward(adapt_iter(source, data, mode=mode, seed=seed, **run))
            if mode == "cumulative" and not adapted_given:
                base = adapted  # TTA and the entropy step start from an adapted model
            p = yield from forward(predict_iter(adapted, sub, **run))
        elif name.startswith("+ TTA"):
            p = yield from forward(predict_tta_iter(base, sub, transforms=4, **run))
        else:
            tuned, _ = yield from forward(entropy_step_iter(base, data, seed=seed, **run))
            p = yield from forward(predict_iter(tuned, sub, **run))
        s = score(p)
        scores.append(VariantScore(name, s.iou, s.interval, time.perf_counter() - t))
    scores.sort(key=lambda v: -v.iou)  # stable: "as given" stays first on a tie
    yield Result(SpotCheck(**{**result.__dict__, "variants": tuple(scores), "notes": tuple(notes)}))
