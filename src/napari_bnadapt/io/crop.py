"""``crop_and_downsample``: a sub-volume of a (lazy) stack, reading only what it keeps."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, overload

import numpy as np

from ..errors import BNAdaptError
from .lazy_stack import LazyStack
from .stack_info import StackInfo, _subvolume_key


def _lazy_getitem(array: Any, key: tuple[slice, ...]) -> Any:
    if isinstance(array, np.ndarray):  # includes memmap: a view, nothing read
        return array[key]
    if isinstance(array, LazyStack):
        return array.lazy_slice(key)
    mod = type(array).__module__
    if mod.startswith("dask."):
        return array[key]
    try:
        da = importlib.import_module("dask.array")
    except ImportError:
        return array[key]  # e.g. zarr/h5py without dask: reads exactly the crop
    chunks = getattr(array, "chunks", None)
    if not (isinstance(chunks, tuple) and len(chunks) == len(array.shape) and all(isinstance(c, int) for c in chunks)):
        chunks = "auto"
    return da.from_array(array, chunks=chunks)[key]


@overload
def crop_and_downsample(array: Any, z: Any = ..., y: Any = ..., x: Any = ..., factor: int | Sequence[int] = ..., *, info: None = ..., axes: str | None = ...) -> Any: ...


@overload
def crop_and_downsample(array: Any, z: Any = ..., y: Any = ..., x: Any = ..., factor: int | Sequence[int] = ..., *, info: StackInfo, axes: str | None = ...) -> tuple[Any, StackInfo]: ...


def crop_and_downsample(
    array: Any,
    z: Any = None,
    y: Any = None,
    x: Any = None,
    factor: int | Sequence[int] = 1,
    *,
    info: StackInfo | None = None,
    axes: str | None = None,
) -> Any:
    """Crop and subsample a (huge) stack lazily: nothing is read.

    Args:
        array: an array from :func:`read_stack` (memmap, LazyStack, dask, zarr,
            h5py) or any NumPy array.
        z, y, x: ``None`` (whole axis), ``(start, stop)``, ``(start, stop, step)``
            or a ``slice``, in voxels.
        factor: keep every ``factor``-th voxel along every spatial axis (one
            int), or per spatial axis ``(fz, fy, fx)``. This is subsampling (no
            averaging): a factor 2 turns a 5 nm stack into a 10 nm one.
        info: the StackInfo from read_stack; when given, the result is
            ``(array, info.with_subvolume(...))`` with voxel size and region updated.
        axes: axis letters when no ``info`` is given and the array is not 2-D
            ('YX') or 3-D ('ZYX').

    Returns:
        The lazily cropped array (a view / LazyStack / dask array), or
        ``(array, new_info)`` when ``info`` is given.
    """
    shape = tuple(array.shape)
    if info is not None:
        axes = info.axes
        if tuple(info.shape) != shape:
            raise BNAdaptError(f"The info describes a {info.shape} stack but the array is {shape}.")
    if axes is None:
        if len(shape) == 3:
            axes = "ZYX"
        elif len(shape) == 2:
            axes = "YX"
        else:
            raise BNAdaptError(f"Say which axes the {len(shape)}-D array has (axes='CZYX', …) or pass info=.")
    if len(axes) != len(shape):
        raise BNAdaptError(f"axes={axes!r} does not match the array's {len(shape)} dimensions.")
    key = _subvolume_key(shape, axes, z=z, y=y, x=x, factor=factor)
    out = _lazy_getitem(array, key)
    if info is None:
        return out
    return out, info.with_subvolume(z=z, y=y, x=x, factor=factor)
