"""A stack whose slices are computed from another stack's when read: one slice at a time, never a copy.

:class:`PlaneStack` is the array-like behind the lazy views of the pipeline: the stack resampled to
the model's pixel size (:class:`~napari_bnadapt.io.resample.ResampledStack`) and the stack smoothed
to the sharpness of the training data (:class:`~napari_bnadapt.io.smoothed.SmoothedStack`). It has
``shape``, ``dtype``, ``ndim``, ``len`` and ``[z, y, x]`` indexing (``[y, x]`` for a 2D image), so a
:class:`~napari_bnadapt.io.stack_view.StackView` and every entry point accept it. The last slice
computed is kept, so the patches and tiles read in z order compute each slice once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .stack_view import StackView


class PlaneStack:
    """``view`` with each whole slice passed through ``plane_fn`` when read.

    Parameters
    ----------
    view : StackView
        The stack read from (never changed).
    plane_fn : callable
        ``plane_fn(slice) -> slice``: one (Y, X) slice of ``view`` to one (``shape_yx``) slice of ``dtype``.
    shape_yx : (int, int)
        The size of a computed slice.
    dtype : numpy dtype
        The data type of a computed slice.
    """

    def __init__(self, view: StackView, plane_fn: Callable[[np.ndarray], np.ndarray], shape_yx: tuple[int, int],
                 dtype: Any) -> None:
        self._view = view
        self._fn = plane_fn
        self.shape = tuple(shape_yx) if view.is_2d else (view.shape3d[0], *shape_yx)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(dtype)
        self._last: tuple[int, np.ndarray] | None = None

    def plane(self, z: int) -> np.ndarray:
        """Slice ``z``, computed (or the one computed last)."""
        if self._last is None or self._last[0] != z:
            self._last = (z, self._fn(self._view.read(z)))
        return self._last[1]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self.ndim == 2:
            return self.plane(0)[key]
        z, rest = key[0], key[1:]
        if isinstance(z, slice):
            return np.stack([self.plane(i)[rest] for i in range(*z.indices(self.shape[0]))])
        return self.plane(int(z))[rest]

    def __len__(self) -> int:
        return self.shape[0]
