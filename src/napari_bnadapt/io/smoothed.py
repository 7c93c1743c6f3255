"""A stack seen through a Gaussian blur of each slice, computed when read (the data is never copied or changed).

Used to give a model a target as smooth as its training data (:mod:`napari_bnadapt.adabn.smoothing`).
The blur is 2D, slice by slice (``scipy.ndimage.gaussian_filter``, edges reflected); integer grey values
are rounded back to the input's data type, so the model's grey-value mapping reads them as it reads the
original stack; floating-point stacks keep their type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .plane_stack import PlaneStack
from .stack_view import StackView, check_stack, layer_data


class SmoothedStack(PlaneStack):
    """``view`` with each slice blurred by a Gaussian of ``sigma_yx`` pixels (y, x) when read."""

    def __init__(self, view: StackView, sigma_yx: tuple[float, float]) -> None:
        self.sigma_yx = (float(sigma_yx[0]), float(sigma_yx[1]))
        super().__init__(view, self._blur, view.shape3d[1:], view.dtype)

    def _blur(self, plane: np.ndarray) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(np.asarray(plane, dtype=np.float32), self.sigma_yx, mode="reflect")
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(self.dtype, copy=False)


def smoothed(images: Any, sigma_yx: Sequence[float]) -> Any:
    """``images`` (array-like or napari Image layer) seen through a Gaussian blur of ``sigma_yx`` pixels.

    Parameters
    ----------
    images : array-like or napari Image layer
        A (Y, X) image or (Z, Y, X) stack; never changed or copied.
    sigma_yx : (float, float)
        The blur's standard deviation along y and x, in the image's pixels; (0, 0) returns the
        image's array itself.

    Returns
    -------
    array-like
        A :class:`SmoothedStack` (each slice blurred when read), or the image's own array.
    """
    sy, sx = (float(s) for s in sigma_yx)
    if not (np.isfinite(sy) and np.isfinite(sx)) or sy < 0 or sx < 0:
        raise BNAdaptError(f"the smoothing sigma must be a finite number of pixels >= 0, not {tuple(sigma_yx)}")
    if sy == 0 and sx == 0:
        return layer_data(images)
    return SmoothedStack(check_stack(images), (sy, sx))
