"""Pixel size: does the image match the model's training pixel size, and rescaling it when not.

AdaBN re-estimates grey-value statistics; it cannot fix scale. A network trained at
5 nm sees mitochondria of a given size in pixels; on a 10 nm image they are half
as large and the network fails whatever the BatchNorm statistics. So when the
image's pixel size (from its layer scale or file) differs from the model's by
more than :data:`TOLERANCE`, the user is told, and offered a resampled copy.

The entry points (``adapt``, ``predict``, ``segment``, ``reliability``, the workflow)
go further: given the image's pixel size they resample internally to the model's
whenever the two differ by more than :data:`RESAMPLE_TOLERANCE`, and return their
results on the image's own grid (:mod:`napari_bnadapt.io.resample`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result, run_to_end
from .stack_view import check_stack
from .units import unit_to_nm

#: Relative pixel-size difference (either way) above which the user is warned.
TOLERANCE = 0.25

#: Relative pixel-size difference (either way, the axis that differs most) above which the entry
#: points resample the image to the model's pixel size internally (:mod:`napari_bnadapt.io.resample`).
#: 2 %: a network sees objects 2 % larger or smaller than in training as it would on another
#: specimen of the same tissue (object sizes vary far more than that), whereas resampling always
#: costs a little sharpness (linear interpolation, twice: there and back). Below this, pixel sizes
#: that differ only by calibration rounding (5.0 vs 4.96 nm) run untouched.
RESAMPLE_TOLERANCE = 0.02


def pixel_size_nm(scale: Sequence[float], units: Sequence[Any] | None = None) -> tuple[float, float] | None:
    """The (y, x) pixel size in nm of a layer with this ``scale`` and ``units``, or None when unknown.

    ``units`` are napari's (pint units or strings): length units are converted to nm.
    Without units (or napari's default unit "pixel"), a scale of all ones is napari's
    "no scale given" and counts as unknown; other values are taken as nm (the unit
    of this plugin's reader and voxel-size field, which set the scale only).
    """
    yx = [float(v) for v in tuple(scale)[-2:]]
    if len(yx) != 2:
        return None
    names = [str(u).strip().lower() for u in tuple(units)[-2:]] if units is not None else ["pixel", "pixel"]
    nm = [unit_to_nm(n) for n in names]
    if all(f is not None for f in nm):
        return (yx[0] * nm[0], yx[1] * nm[1])
    if any(n not in ("pixel", "px", "") for n in names):  # a unit we cannot convert (e.g. "second")
        return None
    if yx == [1.0, 1.0]:
        return None
    return (yx[0], yx[1])


def size_ratio(image_nm: Sequence[float] | None, model_nm: Sequence[float] | None) -> float | None:
    """The image's pixel size over the model's (the axis that differs most), or None if either is unknown."""
    if not image_nm or not model_nm:
        return None
    ratios = [float(i) / float(m) for i, m in zip(image_nm, model_nm) if float(m) > 0 and float(i) > 0]
    if len(ratios) != 2:
        return None
    return max(ratios, key=lambda r: abs(np.log(r)))


def mismatch_message(image_nm: Sequence[float] | None, model_nm: Sequence[float] | None,
                     tolerance: float = TOLERANCE) -> str | None:
    """A sentence for the user when the pixel sizes differ by more than ``tolerance``, else None."""
    r = size_ratio(image_nm, model_nm)
    if r is None or max(r, 1.0 / r) <= 1.0 + tolerance:
        return None
    img = " x ".join(f"{v:g}" for v in image_nm)  # type: ignore[union-attr]
    mod = " x ".join(f"{v:g}" for v in model_nm)  # type: ignore[union-attr]
    return (f"pixel size mismatch: the image has {img} nm pixels, the model was trained at {mod} nm "
            f"({r:.2f}x). Objects look {'larger' if r < 1 else 'smaller'} to the network than in training, "
            "and adaptation cannot fix scale: rescale the image to the model's pixel size first.")


def zoom_slice(image: np.ndarray, shape_yx: tuple[int, int], order: int = 1) -> np.ndarray:
    """One 2D slice resampled to ``shape_yx`` pixels (float32; pixel edges kept, ``grid_mode``)."""
    from scipy.ndimage import zoom

    h, w = image.shape
    oh, ow = shape_yx
    if (oh, ow) == (h, w):
        return np.asarray(image, dtype=np.float32)
    return zoom(np.asarray(image, dtype=np.float32), (oh / h, ow / w), order=order, mode="nearest", grid_mode=True)


def rescale_iter(images: Any, factor_yx: tuple[float, float], order: int = 1) -> Iterator[Progress | Result[np.ndarray]]:
    """Generator form of :func:`rescale`: yields Progress per slice, finally ``Result(array)``."""
    view = check_stack(images, what="image to rescale")
    fy, fx = (float(f) for f in factor_yx)
    if not (0.01 <= fy <= 100 and 0.01 <= fx <= 100):
        raise BNAdaptError(f"rescale factors must be between 0.01 and 100, not {factor_yx}")
    nz, h, w = view.shape3d
    oh, ow = max(1, round(h * fy)), max(1, round(w * fx))
    out = np.empty((nz, oh, ow), dtype=view.dtype)
    yield Progress("rescaling", 0, nz)
    for z in range(nz):
        res = zoom_slice(view.read(z), (oh, ow), order)
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            res = np.clip(np.rint(res), info.min, info.max)
        out[z] = res
        yield Progress("rescaling", z + 1, nz)
    yield Result(out[0] if view.is_2d else out)


def rescale(images: Any, factor_yx: tuple[float, float], order: int = 1) -> np.ndarray:
    """Resample every slice in y and x by ``factor_yx`` (new size = old size x factor), keeping the dtype.

    Parameters
    ----------
    images : array-like (Z, Y, X) or (Y, X)
        Read slice by slice; never changed.
    factor_yx : (float, float)
        Output pixels per input pixel along y and x: ``image_nm / model_nm`` brings an
        image to the model's pixel size.
    order : int, default 1
        Spline order (1: linear; 0 for label images).

    Returns
    -------
    numpy.ndarray
        A new array (same dtype; integers rounded and clipped).
    """
    return run_to_end(rescale_iter(images, factor_yx, order))
