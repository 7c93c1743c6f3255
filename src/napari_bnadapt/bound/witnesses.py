"""Label-free witnesses of an adaptation: does the adapted model agree with itself?

Measured AFTER adaptation, on a few central crops of a few slices, on the model's pixel grid:

* ``patch_agreement``: two more AdaBN runs of the SOURCE model on two different random draws of
  :data:`WITNESS_PATCHES` patches of :data:`WITNESS_PATCH_SIZE` pixels; the IoU between their segmentations of the crops. Where the
  target is far from anything the model learnt, the BatchNorm statistics of a few patches decide the
  result, and two draws disagree.
* ``flip_consistency``: the adapted model on the crops turned by the dihedral views (a quarter turn,
  a left-right and an up-down flip), turned back; the mean IoU with the segmentation of the crops
  as they are. Mitochondria have no preferred orientation, so a model that has learnt them agrees.
* ``scale_consistency``: the same with the crops rescaled by 0.8x and 1.25x and the result
  resampled back. A model that recognises mitochondria by their shape agrees at nearby scales;
  one that is guessing from texture at the wrong scale does not.
* ``contrast``: the standard deviation of the network input over the crops (normalised grey
  values); a blank or nearly constant stack has none, and no witness means anything there.
* ``size_ratio``: the median diameter of the objects the adapted model finds on larger central crops
  (:data:`SIZE_CROP`) of the same slices over the median diameter of the mitochondria in the model's
  training labels (its card,
  :func:`~napari_bnadapt.adabn.scale_search.object_size_summary`, same pixel grid). Not thresholded
  like the others: the trust calibration keeps the range of the cases it accepted (widened), and a
  target outside it gets no number. It catches what the self-consistency witnesses cannot: a model
  that consistently calls a much larger structure (a nucleus, a cell body) mitochondria, or sees
  them at the wrong scale (pixel size not stated). NaN with fewer than :data:`SIZE_MIN_OBJECTS`
  objects on those crops, or without sizes in the card.

On the bundled EM models these witnesses separate in-domain held-out slices from volumes of other
labs (benchmarks/bench_trust.py, docs/reliability.md); how their thresholds were chosen is in
:mod:`napari_bnadapt.bound.trust`. Mean confidence is NOT a witness: adapted models are confidently
wrong on other labs' volumes (0.98-0.998 everywhere).

torch is imported inside the functions (this module is imported when napari starts).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: The self-consistency witnesses this module measures (higher = the model agrees more with itself).
WITNESS_NAMES: tuple[str, ...] = ("patch_agreement", "flip_consistency", "scale_consistency")

#: Every witness a trust calibration thresholds (higher = better): the three above and
#: ``foreground_match`` = -|log(predicted foreground fraction on the target / on the training data)|,
#: from the reliability report's output signals (:func:`foreground_match`).
TRUST_WITNESSES: tuple[str, ...] = (*WITNESS_NAMES, "foreground_match")

#: What each witness is called in a sentence.
WITNESS_TEXT: dict[str, str] = {
    "patch_agreement": "agreement between two adaptations on different random patches",
    "flip_consistency": "agreement of the segmentation with itself under flips and rotations",
    "scale_consistency": "agreement of the segmentation with itself at 0.8x and 1.25x the scale",
    "foreground_match": "match between the share of pixels called mitochondria here and on the training data "
                        "(minus the absolute log ratio)",
    "contrast": "grey-value contrast of the image",
}

#: Patches per AdaBN run of the patch-draw witness (the issue's prototype: 16), and their side in pixels
#: (smaller than the library's 256 to keep the witness at seconds on a CPU).
WITNESS_PATCHES = 16
WITNESS_PATCH_SIZE = 128

#: Rescaling factors of the scale witness.
WITNESS_SCALES: tuple[float, ...] = (0.8, 1.25)

#: Slices and crop side (pixels, model grid) the witnesses look at by default.
WITNESS_SLICES = 2
WITNESS_CROP = 256

#: Below this standard deviation of the network input (normalised grey values) a stack counts as blank.
BLANK_STD = 0.02

#: Fewer objects than this on the size crops: the size ratio is not measured (NaN).
SIZE_MIN_OBJECTS = 3

#: Side of the central crops (model grid) the object sizes are measured on: larger than
#: :data:`WITNESS_CROP`, which holds too few whole mitochondria (about 60 px across) to count.
SIZE_CROP = 512


@dataclass(frozen=True)
class Witnesses:
    """The label-free witnesses of one adaptation (see the module docstring).

    Attributes
    ----------
    patch_agreement, flip_consistency, scale_consistency : float
        IoUs in [0, 1] (1.0 when both segmentations are empty); nan when not measured.
    contrast : float
        Standard deviation of the network input over the crops.
    foreground_fraction : float
        Share of crop pixels the adapted model calls mitochondria.
    size_ratio : float
        Median object diameter on the crops over the training labels' (NaN: not measured).
    blank : bool
        ``contrast < BLANK_STD``: the stack is blank or nearly constant.
    n_slices, crop : int
        What was looked at.
    seconds : float
    """

    patch_agreement: float
    flip_consistency: float
    scale_consistency: float
    contrast: float
    foreground_fraction: float
    blank: bool
    n_slices: int
    crop: int
    seconds: float
    size_ratio: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def values(self) -> dict[str, float]:
        """The thresholded witnesses by name (:data:`WITNESS_NAMES`)."""
        return {k: float(getattr(self, k)) for k in WITNESS_NAMES}


def foreground_match(fg_logratio: float) -> float:
    """The ``foreground_match`` witness: ``-|fg_logratio|`` (0: the adapted model calls as many pixels
    mitochondria on the target as the source model did on its training data; more negative: fewer or more).

    ``fg_logratio`` is :func:`~napari_bnadapt.bound.decision.signal_features`' log ratio of the
    predicted foreground fractions (measured on the reliability report's patch sample).
    """
    return -abs(float(fg_logratio))


def size_ratio(model: Any, probabilities: np.ndarray) -> float:
    """The ``size_ratio`` witness: median diameter of the predicted objects over that of the model's
    training labels (``model.meta["objects"]``); NaN when either is unknown or too few objects were found."""
    from ..adabn.scale_search import OBJECTS_KEY, object_size_summary

    ref = ((getattr(model, "meta", None) or {}).get(OBJECTS_KEY) or {}).get("median_diameter_px")
    if not ref:
        return math.nan
    found = object_size_summary(np.asarray(probabilities) > 0.5)
    if found["count"] < SIZE_MIN_OBJECTS or not found["median_diameter_px"]:
        return math.nan
    return float(found["median_diameter_px"]) / float(ref)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def witness_crops(images: Any, model: UNet, pixel_size_nm: Sequence[float] | None, intensity_range: Any,
                  n_slices: int, crop: int) -> np.ndarray:
    """Central crops (side ``crop``, or the slice's) of ``n_slices`` evenly spaced slices, on the model's grid, as
    network input (float32, (n, s, s)): what the witnesses look at."""
    from ..io.resample import model_grid
    from ..io.stack_view import check_stack, resolve_normalization
    from ..stats.source_statistics import model_normalization

    view = check_stack(images)
    norm = resolve_normalization(view, model_normalization(model), intensity_range)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller's adapt/reliability already said it about the pixel size
        grid = model_grid(model, images, pixel_size_nm)
    work = grid.view(view)
    nz, h, w = work.shape3d
    side = max(16, (min(crop, h, w) // 16) * 16)
    if min(h, w) < 16:
        raise BNAdaptError(f"the image is only {h} x {w} pixels on the model's grid; the witnesses need 16 x 16")
    zs = np.unique(np.linspace(0, nz - 1, min(n_slices, nz) + 2).round().astype(int)[1:-1]) if nz > 2 else \
        np.arange(min(n_slices, nz))
    y0, x0 = (h - side) // 2, (w - side) // 2
    out = [norm.apply(np.asarray(work.read(int(z), slice(y0, y0 + side), slice(x0, x0 + side)))) for z in zs]
    return np.stack(out).astype(np.float32)


def crop_probabilities(model: Any, x: np.ndarray, device: torch.device) -> np.ndarray:
    """Foreground probability of (n, h, w) network input, one batch (h, w multiples of 16)."""
    import torch

    from ..model.foreign import output_to_foreground

    model.eval()
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x[:, None])).to(device)
        return output_to_foreground(model(t), tuple(t.shape)).float().cpu().numpy()


#: The dihedral views of the flip witness, each with its inverse: a quarter turn, a left-right and an up-down flip.
_VIEWS = ((lambda a: np.rot90(a, 1, (1, 2)), lambda a: np.rot90(a, -1, (1, 2))),
          (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1]),
          (lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, :]))


def flip_overlaps(model: Any, x: np.ndarray, device: torch.device, p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union (pixel counts) between the segmentation ``p0`` (probabilities) of (n, h, w) network
    input ``x`` and that of each view in :data:`_VIEWS`, turned back: two arrays with one entry per view."""
    a = p0 > 0.5
    inter, union = np.zeros(len(_VIEWS)), np.zeros(len(_VIEWS))
    for k, (turn, back) in enumerate(_VIEWS):
        b = back(crop_probabilities(model, np.ascontiguousarray(turn(x)), device)) > 0.5
        inter[k], union[k] = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return inter, union


def overlap_iou(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean over views of intersection / union (1 for a view where both segmentations are empty)."""
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def flip_consistency(model: Any, x: np.ndarray, device: torch.device, p0: np.ndarray | None = None) -> float:
    """The ``flip_consistency`` witness of ``model`` on (n, h, w) network input ``x``: the mean IoU between its
    segmentation ``p0`` (probabilities; computed when not given) and those of the views in :data:`_VIEWS`, turned back."""
    if p0 is None:
        p0 = crop_probabilities(model, x, device)
    return overlap_iou(*flip_overlaps(model, x, device, p0))


def _rescaled(x: np.ndarray, f: float) -> np.ndarray:
    from scipy.ndimage import zoom

    n, h, w = x.shape
    hh, ww = max(16, int(round(h * f / 16)) * 16), max(16, int(round(w * f / 16)) * 16)
    return zoom(x, (1, hh / h, ww / w), order=1, grid_mode=True, mode="reflect").astype(np.float32)


def _back(p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    return zoom(p, (1, shape[0] / p.shape[1], shape[1] / p.shape[2]), order=1, grid_mode=True, mode="nearest")


def measure_witnesses(
    source_model: UNet,
    adapted_model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "cpu",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    n_slices: int = WITNESS_SLICES,
    crop: int = WITNESS_CROP,
    seed: int = 1,
) -> Witnesses:
    """Measure the label-free witnesses of an adaptation (see the module docstring).

    Parameters
    ----------
    source_model : UNet
        The model before adaptation (for the two extra AdaBN runs; never changed).
    adapted_model : UNet
        The result of :func:`~napari_bnadapt.adapt` on ``images``.
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only ``n_slices`` central crops are read.
    device : str or torch.device, default "cpu"
        Where the networks run.
    intensity_range, pixel_size_nm
        As given to :func:`~napari_bnadapt.adapt`.
    n_slices : int, default 2
        Evenly spaced slices to look at.
    crop : int, default 256
        Side of the central crop of each slice on the model's grid (multiple of 16; smaller slices whole).
    seed : int, default 1
        The two extra AdaBN runs draw their patches with seeds ``seed`` and ``seed + 1``.

    Returns
    -------
    Witnesses
    """
    from ..adabn.adaptation import adapt
    from ..model.device import get_device

    if n_slices < 1 or crop < 16:
        raise BNAdaptError(f"the witnesses need at least one slice and a crop of 16 pixels, not {n_slices}, {crop}")
    t0 = time.perf_counter()
    dev = get_device(device)
    x = witness_crops(images, source_model, pixel_size_nm, intensity_range, n_slices, crop)
    contrast = crop_contrast(source_model, x)
    blank = not contrast >= BLANK_STD
    adapted = _on(adapted_model, dev)
    p0 = crop_probabilities(adapted, x, dev)
    fg = float((p0 > 0.5).mean())
    if blank:
        nan = math.nan
        return Witnesses(nan, nan, nan, contrast, fg, True, len(x), x.shape[-1], time.perf_counter() - t0, nan)
    flips = flip_consistency(adapted, x, dev, p0)
    scales = [_iou(_back(crop_probabilities(adapted, _rescaled(x, f), dev), x.shape[1:]), p0) for f in WITNESS_SCALES]
    runs = []
    for s in (seed, seed + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pixel-size warning was given by the caller's adapt
            m, _ = adapt(source_model, images, device=dev, n_patches=WITNESS_PATCHES,
                         patch_size=WITNESS_PATCH_SIZE, seed=s, intensity_range=intensity_range,
                         pixel_size_nm=pixel_size_nm)
        runs.append(crop_probabilities(m, x, dev))
    return Witnesses(
        patch_agreement=_iou(runs[0], runs[1]),
        flip_consistency=flips,
        scale_consistency=float(np.mean(scales)),
        contrast=contrast,
        foreground_fraction=fg,
        blank=False,
        n_slices=len(x),
        crop=int(x.shape[-1]),
        size_ratio=size_ratio(source_model, crop_probabilities(
            adapted, witness_crops(images, source_model, pixel_size_nm, intensity_range, n_slices, SIZE_CROP), dev)),
        seconds=time.perf_counter() - t0,
    )


def _on(model: Any, device: torch.device) -> Any:
    """``model`` on ``device``: itself when it is there already, else a copy (the caller's model never moves)."""
    try:
        here = next(model.parameters()).device
    except StopIteration:
        return model
    return model if here == device else copy.deepcopy(model).to(device)


def stack_is_blank(model: UNet, images: ArrayLike | Image, *, pixel_size_nm: tuple[float, float] | None = None,
                   intensity_range: tuple[float, float] | str | None = None, n_slices: int = WITNESS_SLICES,
                   crop: int = WITNESS_CROP) -> bool:
    """Whether the stack is blank or nearly constant where the witnesses look (cheap: no network runs).

    The standard deviation of the grey values of the crops, in the model's [0, 1] input range, is
    below :data:`BLANK_STD`.
    """
    x = witness_crops(images, model, pixel_size_nm, intensity_range, n_slices, crop)
    return not crop_contrast(model, x) >= BLANK_STD


def crop_contrast(model: Any, x: np.ndarray) -> float:
    """The ``contrast`` witness: the standard deviation of network input ``x`` in [0, 1]-scaled grey values."""
    return float(x.std()) * _input_scale(model)


def _input_scale(model: Any) -> float:
    """Grey values per unit of network input, in [0, 1] units (the normalisation's std), so that
    ``contrast`` is the standard deviation of the image in [0, 1]-scaled grey values."""
    from ..stats.source_statistics import model_normalization

    std = model_normalization(model).get("std", 1.0)
    try:
        return float(std)
    except (TypeError, ValueError):
        return 1.0
