"""Read electron-microscopy volumes from the formats biologists actually get.

``read_stack(path)`` returns ``(array, info)``: the voxels, untouched (8-, 16-,
32-bit integers and floats keep their values; intensity normalisation happens
later, in the model code), and a :class:`StackInfo` that says what the file says
about itself: the voxel size in nanometres per axis (or ``None`` where the file
does not say), the axes, the source format, the dtype, and human-readable notes
(missing slice numbers, ignored files, guesses that were made).

Nothing is read into memory just to open a file (unless ``lazy=False``):

====================  ======================================================
what                  array returned (``lazy=True``)
====================  ======================================================
uncompressed TIFF     ``numpy.memmap`` (ImageJ, OME, BigTIFF, plain multi-page)
compressed TIFF       :class:`LazyStack` (one page decoded per plane on
                      demand) or a zarr view of tifffile's store (tiled / odd
                      layouts; needs ``zarr``)
folder of slices      :class:`LazyStack` (one file decoded per plane on demand)
MRC / REC / MAP       ``numpy.memmap``
HDF5                  ``dask.array`` over the ``h5py`` dataset (the raw
                      ``h5py.Dataset`` if dask is missing)
zarr / OME-Zarr       ``zarr.Array`` (level 0 of a multiscale image)
====================  ======================================================

All of them support NumPy-style indexing (``arr[10]``, ``arr[:, 100:200]``) and
``numpy.asarray(arr)``; indexing reads only what it returns.

Lifetimes: memory maps keep no file handle (the OS mapping is released with
the array). Compressed TIFFs read lazily, HDF5 and zarr keep their file open
as long as the returned array (or any view of it) is alive; drop the array to
close the file.

This module imports only numpy and tifffile at import time; ``mrcfile``,
``h5py``, ``zarr``, ``dask`` and ``PIL`` (Pillow) are imported when a file needs
them (``pip install 'napari-bnadapt[io]'``). It never imports napari, Qt or
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import operator
import os
import re
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from .errors import BNAdaptError

__all__ = [
    "AmbiguousDatasetError",
    "LazyStack",
    "StackInfo",
    "crop_and_downsample",
    "detect_format",
    "natural_sort_key",
    "read_stack",
    "unit_to_nm",
]

# --------------------------------------------------------------------------
# file kinds
# --------------------------------------------------------------------------

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
MRC_SUFFIXES = (".mrc", ".rec", ".map", ".mrcs", ".st", ".ali")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ZARR_SUFFIXES = (".zarr",)
PNG_SUFFIXES = (".png",)
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
#: every single-file extension read_stack understands (directories aside)
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + MRC_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES + PNG_SUFFIXES

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ZARR_MARKERS = (".zarray", ".zgroup", "zarr.json")
# files that operating systems and tools leave in folders; never slices
_JUNK_FILES = {"thumbs.db", "desktop.ini", ".ds_store"}

_FORMAT_WORDS = {
    "tiff": "TIFF",
    "png": "PNG",
    "mrc": "MRC",
    "hdf5": "HDF5",
    "zarr": "zarr",
}

_SPATIAL = "ZYX"

#: a range along one axis: None (all), (start, stop), (start, stop, step) or a slice
_RangeLike = Any


# --------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------

_UNIT_NM: dict[str, float] = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "nanometres": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "micrometres": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimeters": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "centimeters": 1e7,
    "centimetre": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ångström": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "in": 2.54e7,
    "inch": 2.54e7,
    "inches": 2.54e7,
}


def unit_to_nm(unit: object) -> float | None:
    """Nanometres per one ``unit`` ('µm' -> 1000.0, 'Å' -> 0.1), or None.

    Accepts the spellings found in the wild: ImageJ ('micron', '\\u00B5m'), OME
    ('µm', 'nm', 'Å'), OME-Zarr/UDUNITS ('micrometer', 'angstrom'), 'um'.
    'pixel', '' and anything unknown give None (not a physical unit).
    """
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1", "replace")
    text = str(unit).strip().lower()
    text = text.replace("\\u00b5", "µ").replace("\\u03bc", "µ").replace("μ", "µ")
    text = text.replace("\u00c5", "å").replace("\u212b", "å")  # Å (two code points)
    if text.startswith("µ") and len(text) > 1 and text[1:] in ("", "m"):
        text = "µm"
    return _UNIT_NM.get(text)


def _plausible_pixel_nm(value_nm: float | None, max_nm: float = 1e4) -> bool:
    """A pixel size that a microscope could have produced (0 < s <= 10 µm)."""
    return value_nm is not None and math.isfinite(value_nm) and 0 < value_nm <= max_nm


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


class AmbiguousDatasetError(BNAdaptError):
    """The container (HDF5 file, zarr group) holds several image volumes.

    ``choices`` lists ``(name, shape, dtype)`` for each; call
    ``read_stack(path, dataset=name)`` with the one you want (the GUI asks).
    """

    def __init__(self, message: str, path: str, choices: list[tuple[str, tuple[int, ...], np.dtype]]):
        super().__init__(message)
        self.path = path
        self.choices = choices


def _import_optional(module: str, what: str, package: str = "napari-bnadapt[io]") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist = {"PIL.Image": "Pillow", "dask.array": "dask"}.get(module, module)
        raise BNAdaptError(
            f"Reading {what} needs the Python package '{dist}', which is not installed. "
            f"Install napari-bnadapt's file readers with:  pip install '{package}'"
        ) from exc


# --------------------------------------------------------------------------
# StackInfo
# --------------------------------------------------------------------------


def _fmt_nm(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:.4g}"


@dataclass
class StackInfo:
    """What a file says about the volume in it.

    Attributes:
        path: the file or folder that was read.
        source_format: 'tiff', 'bigtiff', 'imagej-tiff', 'ome-tiff', 'tiff-slices',
            'png-slices', 'png', 'mrc', 'hdf5', 'zarr' or 'ome-zarr'.
        shape: the array's shape.
        dtype: the array's dtype (the file's own; never converted).
        axes: one letter per axis: Z, Y, X (space), C (channel), S (colour
            samples, RGB), T (time), I (any other index). 3-D stacks are 'ZYX'.
        voxel_size_nm: size of one voxel along each axis in nanometres, in the
            order of ``axes``; None for an axis the file says nothing about (and
            for non-spatial axes). The whole field is None when nothing is known.
        notes: things the user should know (gaps in slice numbering, guesses
            made, ignored files, what was cropped), in plain words.
        dataset: the HDF5 dataset / zarr array path inside a container.
        files: for a folder of slices, the slice files in stack order.
        region: after :func:`crop_and_downsample`, the slices (in the file's
            coordinates) this sub-volume was taken from.
        storage: how the array is held: 'memmap', 'lazy-pages', 'lazy-slices',
            'zarr', 'hdf5' or 'in-memory'.
    """

    path: str
    source_format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    voxel_size_nm: tuple[float | None, ...] | None = None
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None
    files: tuple[str, ...] = ()
    region: tuple[slice, ...] | None = None
    storage: str = ""

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.dtype = np.dtype(self.dtype)
        self.path = os.fspath(self.path)
        if len(self.axes) != len(self.shape):
            raise ValueError(f"axes {self.axes!r} do not match shape {self.shape}")
        if self.voxel_size_nm is not None:
            vs = tuple(None if v is None else float(v) for v in self.voxel_size_nm)
            if len(vs) != len(self.shape):
                raise ValueError(f"voxel_size_nm {vs} does not match shape {self.shape}")
            self.voxel_size_nm = None if all(v is None for v in vs) else vs

    # ---- convenience -----------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def scale(self) -> tuple[float, ...]:
        """Per-axis scale for napari: the voxel size in nm, 1.0 where unknown."""
        if self.voxel_size_nm is None:
            return (1.0,) * self.ndim
        return tuple(1.0 if v is None else v for v in self.voxel_size_nm)

    @property
    def spatial_voxel_size_nm(self) -> dict[str, float | None]:
        """{'z': ..., 'y': ..., 'x': ...} for the spatial axes present."""
        vs = self.voxel_size_nm or (None,) * self.ndim
        return {a.lower(): v for a, v in zip(self.axes, vs) if a in _SPATIAL}

    @property
    def voxel_size_known(self) -> bool:
        """True when every spatial axis has a voxel size."""
        sv = self.spatial_voxel_size_nm
        return bool(sv) and all(v is not None for v in sv.values())

    def describe(self) -> str:
        """One line for a status bar: '512 × 2048 × 2048 (ZYX) uint8, voxel 10 × 5 × 5 nm, imagej-tiff'."""
        dims = " × ".join(str(s) for s in self.shape)
        if self.voxel_size_nm is None:
            vox = "voxel size unknown"
        else:
            spatial = [_fmt_nm(v) for a, v in zip(self.axes, self.voxel_size_nm) if a in _SPATIAL]
            vox = "voxel " + " × ".join(spatial) + " nm"
        return f"{dims} ({self.axes}) {self.dtype}, {vox}, {self.source_format}"

    def as_metadata(self) -> dict[str, Any]:
        """Plain-python dict (JSON-friendly) for napari layer metadata or logs."""
        return {
            "path": self.path,
            "source_format": self.source_format,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "axes": self.axes,
            "voxel_size_nm": None if self.voxel_size_nm is None else list(self.voxel_size_nm),
            "dataset": self.dataset,
            "notes": list(self.notes),
            "region": None
            if self.region is None
            else [[s.start, s.stop, s.step] for s in self.region],
            "storage": self.storage,
        }

    def with_voxel_size(self, voxel_size_nm: float | Sequence[float | None] | None) -> StackInfo:
        """A copy whose voxel size is set by hand.

        ``voxel_size_nm`` is one number (same size along every spatial axis),
        one value per spatial axis (z, y, x order) or one value per axis.
        """
        vs = _expand_voxel_override(voxel_size_nm, self.axes)
        new = dataclasses.replace(self, voxel_size_nm=vs, notes=list(self.notes))
        return new

    def with_subvolume(
        self,
        z: _RangeLike = None,
        y: _RangeLike = None,
        x: _RangeLike = None,
        factor: int | Sequence[int] = 1,
    ) -> StackInfo:
        """The info of ``crop_and_downsample(array, z, y, x, factor)``.

        Shape, voxel size (multiplied by the step) and ``region`` (in the
        original file's coordinates) are updated; a note records the crop.
        """
        key = _subvolume_key(self.shape, self.axes, z=z, y=y, x=x, factor=factor)
        shape = tuple(len(range(*k.indices(n))) for k, n in zip(key, self.shape))
        vs = None
        if self.voxel_size_nm is not None:
            vs = tuple(None if v is None else v * k.step for v, k in zip(self.voxel_size_nm, key))
        old = self.region or tuple(slice(0, n, 1) for n in self.shape)
        region = []
        for o, k, n in zip(old, key, self.shape):
            r = range(o.start, o.stop, o.step)[k]  # compose in file coordinates
            region.append(slice(r.start, r[-1] + 1, r.step))  # canonical: stop = last + 1
        desc = ", ".join(
            f"{a.lower()} {k.start}:{k.stop}" + (f":{k.step}" if k.step != 1 else "")
            for a, k, n in zip(self.axes, key, self.shape)
            if (k.start, k.stop, k.step) != (0, n, 1)
        )
        notes = list(self.notes)
        if desc:
            notes.append(f"Sub-volume {desc} (steps >1 keep every n-th voxel: a {self.shape} "
                         f"stack became {shape}).")
        return dataclasses.replace(self, shape=shape, voxel_size_nm=vs, region=tuple(region), notes=notes)


def _expand_voxel_override(
    voxel_size_nm: float | Sequence[float | None] | None, axes: str
) -> tuple[float | None, ...] | None:
    if voxel_size_nm is None:
        return None
    spatial = [i for i, a in enumerate(axes) if a in _SPATIAL]
    if isinstance(voxel_size_nm, (int, float, np.integer, np.floating)):
        values: list[float | None] = [float(voxel_size_nm)] * len(spatial)
    else:
        values = [None if v is None else float(v) for v in voxel_size_nm]
    if len(values) == len(axes):
        out = values
    elif len(values) == len(spatial):
        out = [None] * len(axes)
        for i, v in zip(spatial, values):
            out[i] = v
    else:
        names = ", ".join(axes[i].lower() for i in spatial)
        raise BNAdaptError(
            f"Give the voxel size as one number or as {len(spatial)} numbers ({names}) in "
            f"nanometres; got {voxel_size_nm!r}."
        )
    for v in out:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise BNAdaptError(f"A voxel size must be a positive number of nanometres; got {voxel_size_nm!r}.")
    return tuple(out)


# --------------------------------------------------------------------------
# natural order of slice files
# --------------------------------------------------------------------------

_DIGITS = re.compile(r"([0-9]+)")


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders '2.tif' before '10.tif' (text order puts '10' first).

    Numbers are compared by value, the rest case-insensitively; the name itself
    breaks ties so the order is always the same.
    """
    parts = _DIGITS.split(name.lower())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _ranges(numbers: Sequence[int]) -> str:
    """[4, 7, 8, 9] -> '4, 7-9'."""
    out: list[str] = []
    nums = sorted(numbers)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}–{nums[j]}")
        i = j + 1
    if len(out) > 12:
        out = out[:12] + [f"… ({len(nums)} in all)"]
    return ", ".join(out)


def _numbering_notes(names: Sequence[str]) -> list[str]:
    """Notes on how slice files were ordered; raises on duplicate numbers.

    ``names`` is already in natural order.
    """
    notes: list[str] = []
    stems = [os.path.splitext(n)[0] for n in names]
    split = [_DIGITS.split(s) for s in stems]
    templates = {tuple(p[0::2]) for p in split}
    if len(templates) > 1:
        examples = ", ".join(names[:3])
        notes.append(
            f"The slice file names do not follow one pattern (e.g. {examples}); they were put in "
            "natural order (numbers by value). Check that the slice order is right."
        )
        return notes
    numbers = [[int(x) for x in p[1::2]] for p in split]
    if not numbers or not numbers[0]:
        notes.append("The slice file names contain no numbers; they were put in alphabetical order.")
        return notes
    columns = list(zip(*numbers))
    varying = [i for i, c in enumerate(columns) if len(set(c)) > 1]
    if not varying:
        return notes
    if len(varying) > 1:
        notes.append(
            "The slice file names differ in more than one number; they were ordered by each number "
            f"in turn (first: {names[0]}, last: {names[-1]})."
        )
        return notes
    col = [c[varying[0]] for c in numbers]
    seen: dict[int, str] = {}
    for n, name in zip(col, names):
        if n in seen:
            raise BNAdaptError(
                f"Two slice files have the same number {n}: '{seen[n]}' and '{name}'. "
                "The slice order is ambiguous; remove or rename one of them."
            )
        seen[n] = name
    raw = [p[2 * varying[0] + 1] for p in split]
    if len({len(r) for r in raw}) > 1:
        notes.append(
            f"Slice numbers are not (consistently) zero-padded ({names[0]} … {names[-1]}); the slices "
            "were put in numeric order (2 before 10), not text order."
        )
    lo, hi = min(col), max(col)
    missing = sorted(set(range(lo, hi + 1)) - set(col))
    if missing:
        word = "number" if len(missing) == 1 else "numbers"
        notes.append(
            f"Slice {word} {_ranges(missing)} {'is' if len(missing) == 1 else 'are'} missing from the "
            f"files (numbered {lo} to {hi}): the stack has {len(col)} slices, and slices on either side "
            "of a gap are now adjacent. Check that no files were lost when copying."
        )
    return notes


# --------------------------------------------------------------------------
# LazyStack: planes read on demand
# --------------------------------------------------------------------------


def _is_int(k: object) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


class LazyStack:
    """A read-only, array-like stack of planes decoded on demand.

    ``LazyStack`` looks like a NumPy array (``shape``, ``dtype``, ``ndim``,
    ``arr[i]``, ``arr[a:b, y0:y1]``, ``numpy.asarray(arr)``): indexing decodes
    only the planes (files or TIFF pages) it returns and gives a NumPy array.
    :meth:`lazy_slice` (used by :func:`crop_and_downsample`) returns another
    ``LazyStack`` without reading anything. ``to_dask()`` wraps it for dask.

    Args:
        read_plane: ``read_plane(i) -> ndarray`` decodes source plane ``i``.
        n_planes: number of planes (first axis).
        plane_shape: shape of one decoded plane.
        dtype: dtype of a decoded plane.
        label: shown in repr and in error messages.
    """

    def __init__(
        self,
        read_plane: Callable[[int], np.ndarray],
        n_planes: int,
        plane_shape: tuple[int, ...],
        dtype: np.dtype | str | type,
        *,
        label: str = "",
        _index: np.ndarray | None = None,
        _plane_key: tuple[slice, ...] | None = None,
    ) -> None:
        self._read_plane = read_plane
        self._full_plane_shape = tuple(int(s) for s in plane_shape)
        self._index = np.arange(n_planes, dtype=np.intp) if _index is None else np.asarray(_index, np.intp)
        self._plane_key = _plane_key or tuple(slice(0, n, 1) for n in self._full_plane_shape)
        self.dtype = np.dtype(dtype)
        self.label = label
        plane = tuple(len(range(*k.indices(n))) for k, n in zip(self._plane_key, self._full_plane_shape))
        self.shape: tuple[int, ...] = (len(self._index), *plane)

    # numpy-ish attributes
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self.dtype}, source={self.label!r})"

    # reading
    def _plane(self, i: int) -> np.ndarray:
        src = int(self._index[i])
        plane = np.asarray(self._read_plane(src))
        if plane.shape != self._full_plane_shape:
            raise BNAdaptError(
                f"Plane {src} of {self.label or 'the stack'} has shape {plane.shape}, but "
                f"{self._full_plane_shape} was expected. Was the file changed after it was opened?"
            )
        if plane.dtype != self.dtype:
            if plane.dtype.kind == self.dtype.kind and plane.dtype.itemsize == self.dtype.itemsize:
                plane = plane.astype(self.dtype)  # byte order only
            else:
                raise BNAdaptError(
                    f"Plane {src} of {self.label or 'the stack'} is {plane.dtype}, but {self.dtype} "
                    "was expected. Was the file changed after it was opened?"
                )
        return plane[self._plane_key]

    def _normalise_key(self, key: Any) -> tuple:
        if not isinstance(key, tuple):
            key = (key,)
        n_ell = sum(1 for k in key if k is Ellipsis)
        if n_ell > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ell:
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:i] + (slice(None),) * fill + key[i + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices: stack is {self.ndim}-dimensional, {len(key)} were given")
        return key

    def __getitem__(self, key: Any) -> np.ndarray:
        if key is None or (isinstance(key, tuple) and any(k is None for k in key)):
            return np.asarray(self)[key]  # newaxis: rare, not worth optimising
        key = self._normalise_key(key)
        if not key:
            key = (slice(None),)
        k0, rest = key[0], key[1:]
        n = self.shape[0]
        basic_rest = all(isinstance(k, slice) or _is_int(k) for k in rest)
        if _is_int(k0):
            i = operator.index(k0)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for a stack of {n} planes")
            plane = self._plane(i % n)
            return plane[rest] if rest else plane
        if isinstance(k0, slice):
            positions: Sequence[int] = range(*k0.indices(n))
            inverse = None
        else:
            wanted = np.arange(n)[np.asarray(k0)]  # validates bounds, bools, ...
            uniq, inverse = np.unique(wanted, return_inverse=True)
            positions = [int(u) for u in uniq]
            inverse = inverse.reshape(wanted.shape)
        if not positions:
            empty = np.empty((0, *self.shape[1:]), self.dtype)
            return empty[(slice(None) if inverse is None else inverse, *rest)]
        if inverse is None and basic_rest:
            return np.stack([self._plane(p)[rest] for p in positions])
        sub = np.stack([self._plane(p) for p in positions])
        return sub[(slice(None) if inverse is None else inverse, *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def astype(self, dtype: Any) -> np.ndarray:
        """Read everything and convert (like ``numpy.asarray(stack).astype(dtype)``)."""
        return np.asarray(self).astype(dtype)

    def lazy_slice(self, key: Sequence[slice]) -> LazyStack:
        """A view for ``key`` (slices with positive steps only); reads nothing."""
        key = tuple(key) + (slice(None),) * (self.ndim - len(tuple(key)))
        if len(key) != self.ndim or not all(isinstance(k, slice) for k in key):
            raise TypeError("lazy_slice takes one slice per axis")
        for k in key:
            if k.step is not None and k.step <= 0:
                raise ValueError("lazy_slice needs positive steps")
        index = self._index[key[0]]
        plane_key = []
        for old, new, full in zip(self._plane_key, key[1:], self._full_plane_shape):
            sub = range(*old.indices(full))[new]
            plane_key.append(slice(sub.start, sub.stop, sub.step))
        return LazyStack(
            self._read_plane,
            len(self._index),
            self._full_plane_shape,
            self.dtype,
            label=self.label,
            _index=index,
            _plane_key=tuple(plane_key),
        )

    def to_dask(self) -> Any:
        """A dask array with one chunk per plane (needs dask)."""
        da = _import_optional("dask.array", "stacks as dask arrays")
        return da.from_array(self, chunks=(1, *self.shape[1:]), asarray=True, name=False, meta=np.empty((0,) * self.ndim, self.dtype))


# --------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------


def _suffix_kind(p: Path) -> str | None:
    name = p.name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(MRC_SUFFIXES):
        return "mrc"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(PNG_SUFFIXES):
        return "png"
    return None


def _sniff(p: Path) -> str | None:
    """Format from the first bytes of a file, or None."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(2056)
    except OSError:
        return None
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if any(head[o : o + 8] == _HDF5_MAGIC for o in (0, 512, 1024, 2048)):  # after a user block
        return "hdf5"
    if head[:8] == _PNG_MAGIC:
        return "png"
    if len(head) >= 1024 and head[208:212] in (b"MAP ", b"MAP\x00"):
        return "mrc"
    return None


def _is_zarr_dir(p: Path) -> bool:
    return any((p / m).exists() for m in _ZARR_MARKERS)


def _slice_files(p: Path) -> tuple[list[str], list[str], list[str]]:
    """(image slice names, other file names, sub-folder names) in folder p."""
    images, others, subdirs = [], [], []
    with os.scandir(p) as it:
        for e in it:
            if e.name.startswith(".") or e.name.lower() in _JUNK_FILES:
                continue
            if e.is_dir():
                subdirs.append(e.name)
            elif e.name.lower().endswith(SLICE_SUFFIXES):
                images.append(e.name)
            else:
                others.append(e.name)
    return images, others, subdirs


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Cheap guess of what ``read_stack(path)`` would read, or None.

    Looks at the name and the first bytes only; never raises. Returns 'tiff',
    'png', 'mrc', 'hdf5', 'zarr' or 'folder' (of slices). A file whose content
    contradicts its extension (e.g. garbage named .tif) gives None.
    """
    try:
        p = Path(os.fspath(path)).expanduser()
        if p.is_dir():
            if _is_zarr_dir(p):
                return "zarr"
            images, _, _ = _slice_files(p)
            return "folder" if images else None
        if not p.is_file():
            return None
        kind = _suffix_kind(p)
        if kind == "zarr":  # a zipped zarr store: not supported
            return None
        sniffed = _sniff(p)
        if kind is None:
            return sniffed
        if kind == "mrc" and sniffed is None:  # old MRC files lack the 'MAP ' stamp
            return "mrc" if p.stat().st_size > 1024 else None
        return sniffed
    except Exception:  # noqa: BLE001 - detection never raises
        return None


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------


def read_stack(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    lazy: bool = True,
    voxel_size_nm: float | Sequence[float | None] | None = None,
) -> tuple[Any, StackInfo]:
    """Open an EM volume and say what is known about it.

    Args:
        path: a TIFF / OME-TIFF / BigTIFF (.tif, .tiff, .btf), an MRC file
            (.mrc, .rec, .map, .mrcs, .st, .ali), an HDF5 file (.h5, .hdf5,
            .hdf), a zarr or OME-Zarr store (folder), a single PNG, or a folder
            of 2-D TIFF or PNG slices (one file per slice; natural order).
        dataset: the dataset inside an HDF5 file / zarr group. Needed only when
            the container holds several image volumes (otherwise
            :class:`AmbiguousDatasetError` lists them).
        lazy: True (default): return an array that reads from disk on demand
            (see the module docstring); False: read everything into a NumPy array.
        voxel_size_nm: set the voxel size by hand (nm), overriding the file:
            one number, or one per spatial axis (z, y, x).

    Returns:
        ``(array, info)``; the array has the file's dtype and values.

    Raises:
        BNAdaptError: the path does not exist, is empty, damaged, of an unknown
            type, or (folders) has slices of different sizes or bit depths. The
            message says what to do. Nothing is left open when it is raised.
        AmbiguousDatasetError: several volumes in an HDF5 file / zarr group and
            ``dataset`` was not given.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise BNAdaptError(_not_found_message(p))
    notes: list[str] = []
    try:
        if p.is_dir():
            if _is_zarr_dir(p) or p.name.lower().endswith(ZARR_SUFFIXES):
                arr, info = _read_zarr(p, dataset, lazy, notes)
            else:
                _no_dataset(dataset, "a folder of slices")
                arr, info = _read_folder(p, lazy, notes)
        else:
            kind = _suffix_kind(p)
            try:
                size = p.stat().st_size
            except OSError as exc:
                raise BNAdaptError(f"Cannot read '{p}': {exc.strerror or exc}.") from exc
            if size == 0:
                raise BNAdaptError(
                    f"'{p.name}' is empty (0 bytes). It was probably not copied completely; "
                    "copy it again from the microscope or server."
                )
            sniffed = _sniff(p)
            if kind is None:
                if sniffed is None:
                    raise BNAdaptError(_unknown_type_message(p))
                notes.append(f"The file name ends in '{p.suffix}', but the content is {_FORMAT_WORDS[sniffed]}; it was read as such.")
                kind = sniffed
            elif kind == "zarr":
                raise BNAdaptError(
                    f"'{p.name}' is a file, but a zarr store is a folder. If it is a zipped zarr "
                    "store, unzip it and open the folder."
                )
            elif sniffed is not None and sniffed != kind:
                notes.append(
                    f"The file name ends in '{p.suffix}', but the content is {_FORMAT_WORDS[sniffed]}; "
                    "it was read as such."
                )
                kind = sniffed
            if kind == "tiff":
                _no_dataset(dataset, "a TIFF file")
                arr, info = _read_tiff(p, lazy, notes)
            elif kind == "png":
                _no_dataset(dataset, "a PNG file")
                arr, info = _read_single_png(p, notes)
            elif kind == "mrc":
                _no_dataset(dataset, "an MRC file")
                arr, info = _read_mrc(p, lazy, notes)
            elif kind == "hdf5":
                arr, info = _read_hdf5(p, dataset, lazy, notes)
            else:  # pragma: no cover - all kinds handled above
                raise BNAdaptError(_unknown_type_message(p))
    except BNAdaptError:
        raise
    except PermissionError as exc:
        raise BNAdaptError(f"You do not have permission to read '{p}'. Ask the owner of the file or copy it somewhere you can read.") from exc
    except MemoryError as exc:
        raise BNAdaptError(
            f"'{p.name}' is too big to load into memory. Open it with lazy=True (the default) or "
            "crop it with crop_and_downsample first."
        ) from exc
    except (OSError, ValueError, KeyError, IndexError, EOFError, struct.error, TypeError, RuntimeError) as exc:
        raise BNAdaptError(
            f"Could not read '{p.name}': {exc}. The file may be damaged or incompletely copied; "
            "try opening it in Fiji, and copy it again if Fiji fails too."
        ) from exc
    if voxel_size_nm is not None:
        info = info.with_voxel_size(voxel_size_nm)
        info.notes.append("The voxel size was set by hand, not read from the file.")
    return arr, info


def _no_dataset(dataset: str | None, what: str) -> None:
    if dataset is not None:
        raise BNAdaptError(
            f"dataset={dataset!r} was given, but {what} has no datasets; dataset= is only for "
            "HDF5 files and zarr groups."
        )


def _not_found_message(p: Path) -> str:
    msg = f"'{p}' does not exist. Check the spelling, and that the drive or network share is connected."
    parent = p.parent
    try:
        if parent.is_dir():
            names = os.listdir(parent)
            close = difflib.get_close_matches(p.name, names, n=3, cutoff=0.6)
            if close:
                msg += " Did you mean: " + ", ".join(repr(str(parent / c)) for c in close) + "?"
        else:
            msg = f"'{p}' does not exist: the folder '{parent}' is not there either. " + msg.split(". ", 1)[1]
    except OSError:
        pass
    return msg


def _unknown_type_message(p: Path) -> str:
    return (
        f"'{p.name}' is not a file type napari-bnadapt can read (extension '{p.suffix or '(none)'}'). "
        "Supported: TIFF/OME-TIFF/BigTIFF (.tif, .tiff, .btf), MRC (.mrc, .rec, .map, .mrcs, .st, .ali), "
        "HDF5 (.h5, .hdf5, .hdf), zarr/OME-Zarr folders, PNG, and folders of 2-D TIFF or PNG slices. "
        "Export your volume as a TIFF stack (e.g. in Fiji: File > Save As > Tiff) and open that."
    )


# --------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------

_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}  # inch, cm, mm, µm (tifffile extension)


def _rational(value: Any) -> float | None:
    try:
        if isinstance(value, (tuple, list)):
            num, den = value[0], value[1]
            return float(num) / float(den) if den else None
        return float(value)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def _tag(page: Any, name: str) -> Any:
    try:
        tag = page.tags.get(name)
    except Exception:  # noqa: BLE001
        return None
    return None if tag is None else tag.value


def _tiff_tag_pixel_size(page: Any, notes: list[str]) -> dict[str, float]:
    """In-plane pixel size from XResolution/YResolution + ResolutionUnit."""
    xres, yres = _rational(_tag(page, "XResolution")), _rational(_tag(page, "YResolution"))
    unit = _tag(page, "ResolutionUnit")
    unit = 2 if unit is None else int(unit)  # TIFF default: inch
    if not xres or unit not in _RESUNIT_NM:
        return {}
    out: dict[str, float] = {}
    for ax, res in (("x", xres), ("y", yres or xres)):
        size = _RESUNIT_NM[unit] / res
        if not _plausible_pixel_nm(size):
            if unit == 2:
                notes.append(
                    f"The TIFF resolution tags say {res:g} dpi (a screen or print default, not a "
                    "microscope pixel size); the pixel size is treated as unknown."
                )
            else:
                notes.append(
                    f"The TIFF resolution tags give an implausible pixel size ({size / 1e3:g} µm); "
                    "it is treated as unknown."
                )
            return {}
        out[ax] = size
    return out


def _ome_pixel_size(xml: str, notes: list[str]) -> dict[str, float]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        notes.append("The OME-XML metadata could not be parsed; the voxel size is unknown.")
        return {}
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out: dict[str, float] = {}
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        if value is None:
            continue
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")  # OME default unit
        factor = unit_to_nm(unit)
        try:
            v = float(value)
        except ValueError:
            continue
        if factor is None or not v > 0:
            notes.append(f"OME PhysicalSize{ax}={value} {unit} is not a usable length; ignored.")
            continue
        out[ax.lower()] = v * factor
    return out


def _imagej_pixel_size(meta: dict[str, Any], page: Any, notes: list[str]) -> dict[str, float]:
    unit = meta.get("unit")
    factor = unit_to_nm(unit)
    if factor is None:
        return {}
    out: dict[str, float] = {}
    xres, yres = _rational(_tag(page, "XResolution")), _rational(_tag(page, "YResolution"))
    yfactor = unit_to_nm(meta.get("yunit")) or factor
    if xres:
        out["x"] = factor / xres
        out["y"] = yfactor / (yres or xres)
    spacing = meta.get("spacing")
    zfactor = unit_to_nm(meta.get("zunit")) or factor
    try:
        if spacing is not None and float(spacing) > 0:
            out["z"] = float(spacing) * zfactor
    except (TypeError, ValueError):
        pass
    return out


def _sem_pixel_size(tif: Any) -> dict[str, float]:
    """Pixel size from Zeiss (CZ_SEM) or FEI/Thermo (Helios, SFEG) SEM metadata."""
    try:
        fei = tif.fei_metadata
        if fei:
            for section in ("Scan", "EScan", "Image"):
                sec = fei.get(section) or {}
                w, h = sec.get("PixelWidth"), sec.get("PixelHeight")
                if w:
                    return {"x": float(w) * 1e9, "y": float(h or w) * 1e9}  # metres
        sem = tif.sem_metadata
        if sem:
            for key in ("ap_image_pixel_size", "ap_pixel_size"):
                entry = sem.get(key)
                if isinstance(entry, tuple) and len(entry) >= 3:
                    factor = unit_to_nm(entry[2])
                    if factor is not None and float(entry[1]) > 0:
                        v = float(entry[1]) * factor
                        return {"x": v, "y": v}
    except Exception:  # noqa: BLE001 - vendor metadata is best effort
        return {}
    return {}


def _tiff_pixel_size(tif: Any, page: Any, notes: list[str]) -> dict[str, float]:
    """Voxel size (nm) keyed 'x', 'y', 'z' from the richest metadata present."""
    if tif.is_ome and tif.ome_metadata:
        sizes = _ome_pixel_size(tif.ome_metadata, notes)
        if sizes:
            return sizes
    if tif.is_imagej and tif.imagej_metadata:
        sizes = _imagej_pixel_size(tif.imagej_metadata, page, notes)
        if sizes:
            return sizes
    sizes = _sem_pixel_size(tif)
    if sizes:
        return sizes
    return _tiff_tag_pixel_size(page, notes)


def _normalise_axes(axes: str, notes: list[str]) -> str:
    """tifffile axes -> our alphabet (Z Y X C S T I); one unlabeled stack axis -> Z."""
    axes = axes.upper()
    out = [a if a in "ZYXCST" else "I" for a in axes]
    if "Z" not in out:
        generic = [i for i, a in enumerate(out) if a == "I"]
        if len(generic) == 1:
            out[generic[0]] = "Z"
        elif not generic and out.count("T") == 1 and "C" not in out:
            out[out.index("T")] = "Z"
            notes.append("The file labels its slices as time points (frames); they were read as Z slices.")
    return "".join(out)


def _voxel_tuple(axes: str, sizes: dict[str, float]) -> tuple[float | None, ...] | None:
    if not sizes:
        return None
    vs = tuple(sizes.get(a.lower()) if a in _SPATIAL else None for a in axes)
    return None if all(v is None for v in vs) else vs


def _native_or_lazy(mm: np.memmap, lazy: bool, label: str) -> tuple[Any, str]:
    """The memmap itself, or (big-endian files) planes converted to native byte order on read."""
    native = mm.dtype.newbyteorder("=")
    if not lazy:
        return np.array(mm, dtype=native), "in-memory"
    if mm.dtype.isnative or mm.dtype.itemsize == 1:
        return mm, "memmap"
    if mm.ndim < 3:
        return np.array(mm, dtype=native), "in-memory"

    def read_plane(i: int, _mm: np.memmap = mm) -> np.ndarray:
        return np.asarray(_mm[i], dtype=native)

    return LazyStack(read_plane, mm.shape[0], mm.shape[1:], native, label=label), "lazy-pages"


def _undecodable(p: Path, exc: BaseException, page: int | None = None) -> BNAdaptError:
    where = f"page {page + 1} of '{p.name}'" if page is not None else f"'{p.name}'"
    return BNAdaptError(
        f"The image data of {where} cannot be decoded ({exc}). The file is damaged; copy it "
        "again, or open it in Fiji and save it as a new TIFF."
    )


def _truncated(p: Path, needed: int, size: int) -> BNAdaptError:
    return BNAdaptError(
        f"'{p.name}' is truncated: it should hold {needed:,} bytes of image data but the file has "
        f"only {size:,} bytes. It was probably not copied completely; copy it again."
    )


_TIFF_DAMAGE = ("invalid page offset", "corrupted", "failed to reshape", "truncated", "invalid offset")


class _LogCollector:
    """Collects tifffile's log records: it logs damage (and recovers silently) instead of raising."""

    def __enter__(self) -> _LogCollector:
        import logging

        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("tifffile")
        self._handler = logging.Handler(level=logging.WARNING)
        self._handler.emit = self.records.append  # type: ignore[method-assign]
        self._logger.addHandler(self._handler)
        self._level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.WARNING:  # someone silenced tifffile
            self._logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)

    def damage(self) -> list[str]:
        msgs = [r.getMessage() for r in self.records]
        return [m for m in msgs if any(w in m.lower() for w in _TIFF_DAMAGE)]

    def others(self) -> list[str]:
        damage = set(self.damage())
        return [m for m in (r.getMessage() for r in self.records) if m not in damage]


def _read_tiff(p: Path, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    with _LogCollector() as log:
        data, info = _read_tiff_inner(p, lazy, notes, log)
    return data, info


def _read_tiff_inner(p: Path, lazy: bool, notes: list[str], log: _LogCollector) -> tuple[Any, StackInfo]:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on garbage
        raise BNAdaptError(
            f"'{p.name}' is not a readable TIFF file ({exc}). It may be damaged or incompletely "
            "copied, or not really a TIFF. Try opening it in Fiji; if Fiji fails too, copy it again."
        ) from exc
    keep_open = False
    try:
        if not tif.series:
            raise BNAdaptError(f"'{p.name}' contains no images.")
        series = tif.series[0]

        def check_damage() -> None:
            if log.damage():
                detail = log.damage()[0].split("> ", 1)[-1]
                raise BNAdaptError(
                    f"'{p.name}' is damaged or truncated ({detail}). It was probably not copied "
                    "completely; copy it again. If the copy is complete, try opening it in Fiji."
                )

        check_damage()
        for msg in log.others()[:3]:
            notes.append("tifffile: " + msg.split("> ", 1)[-1])
        if len(tif.series) > 1:
            notes.append(
                f"The file holds {len(tif.series)} image series; the first one ({series.shape}) was read."
            )
        shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        axes = _normalise_axes(series.axes, notes)
        if tif.is_ome:
            fmt = "ome-tiff"
        elif tif.is_imagej:
            fmt = "imagej-tiff"
        elif tif.is_bigtiff:
            fmt = "bigtiff"
        else:
            fmt = "tiff"
        if tif.is_bigtiff and fmt != "bigtiff":
            notes.append("The file is a BigTIFF.")
        page0 = tif.pages.first
        voxel = _voxel_tuple(axes, _tiff_pixel_size(tif, page0, notes))
        if voxel is None:
            notes.append("The file does not record the voxel size.")
        elif "Z" in axes and voxel[axes.index("Z")] is None:
            notes.append("The file does not record the slice thickness (Z voxel size).")
        filesize = p.stat().st_size
        offset = series.dataoffset
        if offset is not None:  # uncompressed and contiguous: memory-map
            needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if needed > filesize:
                raise _truncated(p, needed - offset, filesize - offset)
            file_dtype = np.dtype(tif.byteorder + dtype.char) if dtype.itemsize > 1 else dtype
            mm = np.memmap(p, dtype=file_dtype, mode="r", offset=offset, shape=shape, order="C")
            data, storage = _native_or_lazy(mm, lazy, p.name)
        else:
            pages = list(series.pages)  # parses every page header (not the pixels)
            check_damage()
            if any(pg is None for pg in pages):
                raise BNAdaptError(
                    f"'{p.name}' is damaged: some of its pages are missing. It was probably not "
                    "copied completely; copy it again."
                )
            for pg in pages:
                offs, counts = getattr(pg, "dataoffsets", ()), getattr(pg, "databytecounts", ())
                if offs and counts and max(o + c for o, c in zip(offs, counts)) > filesize:
                    raise BNAdaptError(
                        f"'{p.name}' is truncated: its image data run past the end of the file. It "
                        "was probably not copied completely; copy it again."
                    )
            keyshape = tuple(series.keyframe.shape)
            if not lazy:
                try:
                    data, storage = series.asarray(), "in-memory"
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - codec errors come in many types
                    raise _undecodable(p, exc) from exc
            elif len(shape) >= 3 and len(pages) == shape[0] and keyshape == shape[1:]:
                lock = threading.Lock()

                def read_page(i: int, _pages: list = pages, _lock: threading.Lock = lock) -> np.ndarray:
                    try:
                        with _lock:
                            return _pages[i].asarray()
                    except Exception as exc:  # noqa: BLE001
                        raise _undecodable(p, exc, page=i) from exc

                data = LazyStack(read_page, len(pages), keyshape, dtype, label=p.name)
                data[0]  # decode one plane now: damaged compressed data fails here, not in napari
                data._tif = tif  # type: ignore[attr-defined]  # keeps the file open with the array
                storage, keep_open = "lazy-pages", True
            else:
                try:
                    zarr = importlib.import_module("zarr")
                except ImportError:
                    zarr = None
                if zarr is not None:
                    data = zarr.open(series.aszarr(level=0), mode="r")
                    storage, keep_open = "zarr", True
                elif series.nbytes <= 512 * 2**20:
                    data, storage = series.asarray(), "in-memory"
                    notes.append("The file is compressed and was read into memory (install zarr to read it lazily).")
                else:
                    raise BNAdaptError(
                        f"'{p.name}' is a large compressed/tiled TIFF; reading it without loading it all "
                        "into memory needs zarr:  pip install 'napari-bnadapt[io]'"
                    )
    except BaseException:
        tif.close()
        raise
    if not keep_open:
        tif.close()
    info = StackInfo(
        path=str(p), source_format=fmt, shape=shape, dtype=np.dtype(data.dtype), axes=axes,
        voxel_size_nm=voxel, notes=notes, storage=storage,
    )
    return data, info


# --------------------------------------------------------------------------
# PNG + folders of slices
# --------------------------------------------------------------------------

_PNG_CHANNELS = {0: 0, 2: 3, 3: 0, 4: 2, 6: 4}


def _png_header(path: Path) -> tuple[tuple[int, ...], np.dtype, dict[str, float]]:
    """(shape, dtype, pixel size nm) from the PNG header, without decoding pixels."""
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_MAGIC:
            raise BNAdaptError(f"'{path.name}' is not a PNG file (its header is wrong); it may be damaged.")
        length, ctype = struct.unpack(">I4s", fh.read(8))
        if ctype != b"IHDR" or length != 13:
            raise BNAdaptError(f"'{path.name}' is a damaged PNG file (no image header).")
        w, h, depth, color = struct.unpack(">IIBB", fh.read(10))
        fh.read(3 + 4)  # compression, filter, interlace, crc
        if color not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
            raise BNAdaptError(f"'{path.name}' is a damaged PNG file (colour type {color}, bit depth {depth}).")
        if depth == 16 and color in (2, 4, 6):
            raise BNAdaptError(
                f"'{path.name}' is a 16-bit colour PNG, which cannot be read without losing bits. "
                "Save the slices as 16-bit grayscale (PNG or TIFF) instead."
            )
        sizes: dict[str, float] = {}
        for _ in range(64):  # look for pHYs before the pixel data
            raw = fh.read(8)
            if len(raw) < 8:
                break
            length, ctype = struct.unpack(">I4s", raw)
            if ctype == b"IDAT" or ctype == b"IEND":
                break
            chunk = fh.read(length)
            fh.read(4)
            if ctype == b"pHYs" and length == 9:
                ppx, ppy, unit = struct.unpack(">IIB", chunk)
                if unit == 1 and ppx and ppy:  # pixels per metre
                    sx, sy = 1e9 / ppx, 1e9 / ppy
                    if _plausible_pixel_nm(sx) and _plausible_pixel_nm(sy):
                        sizes = {"x": sx, "y": sy}
        fh.seek(-12, os.SEEK_END)
        if fh.read(12)[4:8] != b"IEND":
            raise BNAdaptError(
                f"'{path.name}' is a truncated PNG file (it does not end properly). It was probably "
                "not copied completely; copy it again."
            )
    shape: tuple[int, ...] = (h, w) if _PNG_CHANNELS[color] == 0 else (h, w, _PNG_CHANNELS[color])
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    return shape, dtype, sizes


def _read_png(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    Image = _import_optional("PIL.Image", "PNG files", "napari-bnadapt[io]")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise BNAdaptError(f"'{path.name}' is a damaged PNG file and cannot be decoded ({exc}).") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype != dtype and arr.dtype.kind in "iu" and dtype == np.uint16:
        arr = arr.astype(np.uint16)  # Pillow may decode 16-bit gray as int32
    if arr.shape != shape or arr.dtype != dtype:
        raise BNAdaptError(
            f"'{path.name}' decodes to {arr.shape} {arr.dtype}, not the {shape} {dtype} its header "
            "announces; the file may be damaged or in an unusual PNG flavour. Convert it to TIFF."
        )
    return arr


def _tiff_slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
            page = tif.pages.first
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
            if ends and max(ends) > path.stat().st_size:
                raise BNAdaptError(
                    f"Slice file '{path.name}' is truncated. It was probably not copied completely; "
                    "copy it again."
                )
    except BNAdaptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BNAdaptError(
            f"Slice file '{path.name}' is not a readable TIFF ({exc}); it may be damaged. "
            "Remove it or copy it again."
        ) from exc
    plane_ndim = 3 if axes.endswith("S") else 2
    if len(shape) != plane_ndim:
        raise BNAdaptError(
            f"Slice file '{path.name}' holds a {len(shape)}-D image {shape}, not one 2-D slice. A folder "
            "should hold one 2-D image per file; to open a multi-page TIFF, open the file itself."
        )
    return shape, dtype


def _read_tiff_slice(path: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path, series=0)
    except Exception as exc:  # noqa: BLE001
        raise BNAdaptError(f"Slice file '{path.name}' cannot be decoded ({exc}); it may be damaged.") from exc


def _read_single_png(p: Path, notes: list[str]) -> tuple[np.ndarray, StackInfo]:
    shape, dtype, sizes = _png_header(p)
    arr = _read_png(p, shape, dtype)
    axes = "YX" if arr.ndim == 2 else "YXS"
    voxel = _voxel_tuple(axes, sizes)
    if voxel is None:
        notes.append("The file does not record the pixel size.")
    info = StackInfo(str(p), "png", arr.shape, arr.dtype, axes, voxel, notes, storage="in-memory")
    return arr, info


def _kind_word(dtype: np.dtype) -> str:
    if dtype.kind == "f":
        return f"{dtype.itemsize * 8}-bit float ({dtype})"
    return f"{dtype.itemsize * 8}-bit ({dtype})"


def _mixed_message(folder: Path, groups: dict[Any, list[str]], what: str) -> str:
    parts = []
    for value, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if what == "size":
            desc = " × ".join(str(s) for s in value) + " pixels"
        else:
            desc = _kind_word(value)
        ex = ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
        verb = "files are" if len(names) > 1 else "file is"
        parts.append(f"{len(names)} {verb} {desc} (e.g. {ex})")
    if what == "size":
        advice = ("All slices of a stack must have the same width and height. Remove the odd ones "
                  "(thumbnails? another acquisition?) or crop/pad them to one size, e.g. in Fiji.")
    else:
        advice = ("All slices of a stack must have the same bit depth. Convert them to one type "
                  "(in Fiji: Image > Type) or remove the odd ones.")
    return f"The slices in '{folder.name}' do not all have the same {what}: " + "; ".join(parts) + ". " + advice


def _read_folder(p: Path, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    images, others, subdirs = _slice_files(p)
    if not images:
        msg = f"The folder '{p}' contains no image slices (.tif, .tiff or .png files)."
        if others:
            ex = ", ".join(sorted(others)[:5])
            msg += f" It contains {len(others)} other file(s): {ex}."
            singles = [o for o in others if o.lower().endswith(SUPPORTED_SUFFIXES)]
            if singles:
                msg += f" To open a single-file volume such as '{singles[0]}', choose that file instead of the folder."
        if subdirs:
            msg += " It has sub-folders (" + ", ".join(sorted(subdirs)[:5]) + "): did you mean one of those?"
        if not others and not subdirs:
            msg += " It is empty."
        raise BNAdaptError(msg)
    kinds: dict[str, list[str]] = {}
    for name in images:
        kinds.setdefault("png" if name.lower().endswith(".png") else "tiff", []).append(name)
    if len(kinds) > 1:
        raise BNAdaptError(
            f"The folder '{p.name}' contains both TIFF ({len(kinds['tiff'])}) and PNG ({len(kinds['png'])}) "
            "slices, so it is not clear which make up the stack. Move one kind to another folder."
        )
    kind = next(iter(kinds))
    order = sorted(images, key=natural_sort_key)
    notes.extend(_numbering_notes(order))
    if others:
        ex = ", ".join(sorted(others)[:3])
        notes.append(f"{len(others)} file(s) that are not {kind.upper()} slices were ignored (e.g. {ex}).")
    paths = [p / n for n in order]

    def header(fp: Path) -> tuple[tuple[int, ...], np.dtype]:
        if kind == "png":
            shape, dtype, _ = _png_header(fp)
            return shape, dtype
        return _tiff_slice_header(fp)

    if len(paths) > 64:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            headers = list(pool.map(header, paths))
    else:
        headers = [header(fp) for fp in paths]
    by_shape: dict[tuple[int, ...], list[str]] = {}
    by_dtype: dict[np.dtype, list[str]] = {}
    for name, (shape, dtype) in zip(order, headers):
        by_shape.setdefault(shape, []).append(name)
        by_dtype.setdefault(dtype, []).append(name)
    if len(by_shape) > 1:
        raise BNAdaptError(_mixed_message(p, by_shape, "size"))
    if len(by_dtype) > 1:
        raise BNAdaptError(_mixed_message(p, by_dtype, "bit depth"))
    plane_shape, dtype = headers[0]

    # pixel size from the first slice's metadata; slice files never say the Z spacing
    sizes: dict[str, float] = {}
    if kind == "png":
        sizes = _png_header(paths[0])[2]
    else:
        import tifffile

        with tifffile.TiffFile(paths[0]) as tif:
            sizes = {k: v for k, v in _tiff_pixel_size(tif, tif.pages.first, notes).items() if k in "xy"}
    axes = "ZYX" if len(plane_shape) == 2 else "ZYXS"
    voxel = _voxel_tuple(axes, sizes)
    notes.append(
        "Slice files do not record the slice thickness (Z voxel size)"
        + ("" if sizes else " nor the pixel size")
        + "; set it by hand if you know it."
    )

    if kind == "png":
        def read_plane(i: int) -> np.ndarray:
            return _read_png(paths[i], plane_shape, dtype)
    else:
        def read_plane(i: int) -> np.ndarray:
            return _read_tiff_slice(paths[i])

    stack = LazyStack(read_plane, len(paths), plane_shape, dtype, label=p.name)
    if lazy:
        data: Any = stack
        storage = "lazy-slices"
    else:
        data = np.asarray(stack)
        storage = "in-memory"
    info = StackInfo(
        path=str(p), source_format=f"{kind}-slices", shape=(len(paths), *plane_shape), dtype=dtype,
        axes=axes, voxel_size_nm=voxel, notes=notes, files=tuple(order), storage=storage,
    )
    return data, info


# --------------------------------------------------------------------------
# MRC
# --------------------------------------------------------------------------

_IMOD_STAMP = 1146047817


def _read_mrc(p: Path, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    mrcfile = _import_optional("mrcfile", "MRC files")
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(p, mode="r", header_only=True, permissive=False) as mrc:
                header = mrc.header.copy()
                vs = mrc.voxel_size
                voxel_xyz = (float(vs.x), float(vs.y), float(vs.z))
    except BNAdaptError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BNAdaptError(
            f"'{p.name}' is not a readable MRC file ({exc}). It may be damaged or not really an MRC "
            "file; try opening it with IMOD (3dmod) or Fiji."
        ) from exc
    for w in caught:
        notes.append(f"MRC header: {w.message}")
    dtype = np.dtype(mrcfile.utils.data_dtype_from_header(header))
    shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(header))
    offset = int(header.nbytes) + int(header.nsymbt)
    # IMOD writes mode 0 as unsigned bytes unless its 'signed' flag is set
    if int(header.mode) == 0:
        raw = header.tobytes()  # the 1024-byte header as stored; IMOD puts stamp+flags at 152
        bo = "<" if dtype.byteorder in "<=|" else ">"
        stamp, flags = struct.unpack(bo + "ii", raw[152:160])
        if stamp == _IMOD_STAMP and not flags & 1:
            dtype = np.dtype(np.uint8)
            notes.append("8-bit MRC written by IMOD with unsigned bytes: read as uint8.")
        else:
            notes.append("8-bit MRC (mode 0) read as signed bytes (int8), as the MRC2014 standard says.")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    filesize = p.stat().st_size
    if offset + nbytes > filesize:
        raise _truncated(p, nbytes, max(filesize - offset, 0))
    mm = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")
    data, storage = _native_or_lazy(mm, lazy, p.name)
    dtype = np.dtype(data.dtype)
    if len(shape) == 2:
        axes = "YX"
        sizes = {"x": voxel_xyz[0], "y": voxel_xyz[1]}
    elif len(shape) == 3:
        axes = "ZYX"
        sizes = {"x": voxel_xyz[0], "y": voxel_xyz[1], "z": voxel_xyz[2]}
    else:
        axes = "IZYX"
        sizes = {"x": voxel_xyz[0], "y": voxel_xyz[1], "z": voxel_xyz[2]}
    sizes = {k: v / 10.0 for k, v in sizes.items() if v > 0}  # Å -> nm; 0 means "not set"
    voxel = _voxel_tuple(axes, sizes)
    if voxel is None:
        notes.append("The MRC header does not give a voxel size (it is 0).")
    info = StackInfo(str(p), "mrc", shape, dtype, axes, voxel, notes, storage=storage)
    return data, info


# --------------------------------------------------------------------------
# voxel size from HDF5 / zarr attributes
# --------------------------------------------------------------------------

_UNIT_ATTRS = ("unit", "units", "resolution_unit", "voxel_size_unit", "pixel_size_unit", "spacing_unit")


def _attr_str(v: Any) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.size == 1:
        return _attr_str(v.reshape(()).item())
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (str, bytes)) for x in v):
        return _attr_str(v[0])
    return None


def _attr_values(v: Any) -> list[float] | None:
    try:
        arr = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    return [float(x) for x in arr] if arr.size else None


def _voxel_from_attrs(
    attr_sets: Sequence[dict[str, Any]], axes: str, notes: list[str], where: str
) -> tuple[float | None, ...] | None:
    """Voxel size from container attributes (first attribute set that has one).

    Conventions read: ``element_size_um`` (µm; ilastik, Fiji HDF5), ``resolution``
    (nm; CREMI), ``voxel_size_nm`` / ``pixel_size_nm`` / ``resolution_nm`` (nm),
    ``voxel_size`` / ``pixel_size`` / ``spacing`` / ``resolution`` with a ``unit``
    or ``units`` attribute. Values are one number or one per spatial axis in
    the array's axis order (z, y, x).
    """
    spatial = [i for i, a in enumerate(axes) if a in _SPATIAL]

    def expand(values: list[float], factor: float) -> tuple[float | None, ...] | None:
        if len(values) == 1:
            values = values * len(spatial)
        if len(values) == len(axes) and len(axes) != len(spatial):
            values = [values[i] for i in spatial]
        if len(values) != len(spatial):
            return None
        out: list[float | None] = [None] * len(axes)
        for i, v in zip(spatial, values):
            out[i] = v * factor if v > 0 else None
        return tuple(out)

    for attrs in attr_sets:
        unit_value = next((_attr_str(attrs[k]) for k in _UNIT_ATTRS if k in attrs), None)
        unit_factor = unit_to_nm(unit_value) if unit_value else None
        for key, default_factor in (
            ("element_size_um", 1e3),
            ("voxel_size_nm", 1.0),
            ("pixel_size_nm", 1.0),
            ("resolution_nm", 1.0),
            ("voxel_size_um", 1e3),
            ("pixel_size_um", 1e3),
            ("resolution", 1.0),
            ("voxel_size", None),
            ("pixel_size", None),
            ("spacing", None),
        ):
            if key not in attrs:
                continue
            values = _attr_values(attrs[key])
            if not values:
                continue
            factor = unit_factor if unit_factor is not None and not key.endswith(("_nm", "_um")) else default_factor
            if factor is None:
                notes.append(
                    f"{where} has {key} = {values} but no unit; the voxel size is treated as unknown. "
                    "Set it by hand (in nm) if you know it."
                )
                continue
            vs = expand(values, factor)
            if vs is None:
                notes.append(f"{where} has {key} = {values}, which does not match its {len(spatial)} spatial axes; ignored.")
                continue
            if key == "resolution" and unit_factor is None:
                notes.append(f"{where}: 'resolution' read as nanometres (CREMI convention).")
            return vs
    return None


def _default_axes(shape: tuple[int, ...]) -> str:
    nd = len(shape)
    if nd == 2:
        return "YX"
    if nd >= 3 and shape[-1] in (1, 3, 4) and shape[-2] > 4:  # channels last (e.g. ilastik zyxc)
        return "I" * (nd - 4) + ("ZYXC" if nd >= 4 else "YXC")
    return "I" * (nd - 3) + "ZYX"


def _axes_from_axistags(attrs: dict[str, Any], ndim: int) -> str | None:
    """ilastik/vigra 'axistags' JSON -> axes string."""
    raw = attrs.get("axistags")
    if raw is None:
        return None
    try:
        import json

        tags = json.loads(_attr_str(raw) or "")
        keys = [str(t["key"]).upper() for t in tags["axes"]]
    except Exception:  # noqa: BLE001
        return None
    if len(keys) != ndim:
        return None
    return "".join(k if k in "ZYXCT" else "I" for k in keys)


# --------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------


def _read_hdf5(p: Path, dataset: str | None, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    h5py = _import_optional("h5py", "HDF5 files")
    try:
        f = h5py.File(p, "r")
    except Exception as exc:  # noqa: BLE001
        raise BNAdaptError(
            f"'{p.name}' is not a readable HDF5 file ({exc}). It may be damaged or incompletely copied."
        ) from exc
    keep_open = False
    try:
        candidates: list[tuple[str, tuple[int, ...], np.dtype]] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "uifb" and min(obj.shape) > 0:
                candidates.append((name, tuple(obj.shape), np.dtype(obj.dtype)))

        f.visititems(visit)
        listing = "; ".join(f"'{n}' {' × '.join(map(str, s))} {d}" for n, s, d in candidates[:20])
        if dataset is not None:
            name = dataset.strip("/")
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset):
                raise BNAdaptError(
                    f"'{p.name}' has no dataset '{dataset}'. Image datasets in it: {listing or 'none'}."
                )
        else:
            if not candidates:
                raise BNAdaptError(
                    f"'{p.name}' contains no image dataset (no array with 2 or more dimensions)."
                )
            if len(candidates) > 1:
                raise AmbiguousDatasetError(
                    f"'{p.name}' contains {len(candidates)} image datasets: {listing}. Choose one "
                    "(read_stack(path, dataset='name'), or pick it in the dialog).",
                    str(p),
                    candidates,
                )
            name = candidates[0][0]
        dset = f[name]
        shape, dtype = tuple(dset.shape), np.dtype(dset.dtype)
        attrs = dict(dset.attrs)
        axes = _axes_from_axistags(attrs, len(shape)) or _default_axes(shape)
        parent_attrs = dict(dset.parent.attrs) if dset.parent.name != "/" else {}
        voxel = _voxel_from_attrs([attrs, parent_attrs, dict(f.attrs)], axes, notes, f"Dataset '{name}'")
        if voxel is None:
            notes.append(f"Dataset '{name}' does not record the voxel size.")
        if lazy:
            try:
                da = importlib.import_module("dask.array")
            except ImportError:
                da = None
            if da is not None:
                plane_chunks = list(dset.chunks) if dset.chunks else [1] * len(shape)
                chunks = tuple([plane_chunks[0]] + list(shape[1:])) if len(shape) >= 3 else shape
                # name=False: a fresh dask key per open, so no cache (napari's) serves stale chunks
                data = da.from_array(dset, chunks=chunks, lock=True, name=False)
            else:
                data = dset
            storage, keep_open = "hdf5", True
        else:
            data, storage = dset[()], "in-memory"
    except BaseException:
        f.close()
        raise
    if not keep_open:
        f.close()
    info = StackInfo(str(p), "hdf5", shape, dtype, axes, voxel, notes, dataset=name, storage=storage)
    return data, info


# --------------------------------------------------------------------------
# zarr / OME-Zarr
# --------------------------------------------------------------------------


def _zarr_attrs(node: Any) -> dict[str, Any]:
    try:
        return dict(node.attrs)
    except Exception:  # noqa: BLE001
        return {}


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _is_zarr_array(node: Any) -> bool:
    return hasattr(node, "dtype") and hasattr(node, "shape") and not hasattr(node, "array_keys")


def _zarr_candidates(group: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """(path, node) of every image inside a group: arrays, and OME multiscale groups."""
    out: list[tuple[str, Any]] = []
    if depth > 6:
        return out
    for key in sorted(group.array_keys()):
        arr = group[key]
        if len(arr.shape) >= 2:
            out.append((prefix + key, arr))
    for key in sorted(group.group_keys()):
        sub = group[key]
        if _multiscales(_zarr_attrs(sub)):
            out.append((prefix + key, sub))
        else:
            out.extend(_zarr_candidates(sub, prefix + key + "/", depth + 1))
    return out


def _ome_zarr_level0(group: Any, notes: list[str], where: str) -> tuple[Any, str, tuple[float | None, ...] | None, str]:
    ms = _multiscales(_zarr_attrs(group))
    assert ms is not None
    m0 = ms[0]
    datasets = m0.get("datasets") or []
    if not datasets:
        raise BNAdaptError(f"{where} is an OME-Zarr image without any resolution levels.")
    level_path = str(datasets[0]["path"])
    arr = group[level_path]
    ndim = len(arr.shape)
    if len(datasets) > 1:
        notes.append(f"OME-Zarr image with {len(datasets)} resolution levels; the full-resolution level ('{level_path}') was read.")
    # axes
    raw_axes = m0.get("axes")
    names: list[str] = []
    units: list[str | None] = []
    if raw_axes:
        for a in raw_axes:
            if isinstance(a, dict):
                names.append(str(a.get("name", "")).lower())
                units.append(a.get("unit"))
            else:
                names.append(str(a).lower())
                units.append(None)
    if len(names) != ndim:
        names = [c.lower() for c in "tczyx"[-ndim:]] if ndim <= 5 else []
        units = [None] * ndim
    axes = "".join(n.upper() if n in ("x", "y", "z", "c", "t") else "I" for n in names) or _default_axes(tuple(arr.shape))

    def scale_of(transforms: Any) -> list[float] | None:
        for t in transforms or []:
            if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
                return [float(v) for v in t["scale"]]
        return None

    scale = scale_of(datasets[0].get("coordinateTransformations"))
    outer = scale_of(m0.get("coordinateTransformations"))
    if scale is not None and outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer)]
    elif scale is None:
        scale = outer
    voxel: tuple[float | None, ...] | None = None
    if scale is not None and len(scale) == ndim:
        vs: list[float | None] = []
        missing_unit = False
        for a, s, u in zip(axes, scale, units):
            if a not in _SPATIAL:
                vs.append(None)
                continue
            factor = unit_to_nm(u) if u else None
            if factor is None:
                missing_unit = True
                vs.append(None)
            else:
                vs.append(s * factor)
        if missing_unit:
            notes.append(
                f"{where}: the OME-Zarr axes give no length unit for some spatial axes; their voxel "
                "size is treated as unknown."
            )
        voxel = tuple(vs)
    return arr, level_path, voxel, axes


def _read_zarr(p: Path, dataset: str | None, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    zarr = _import_optional("zarr", "zarr / OME-Zarr stores")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise BNAdaptError(
            f"'{p.name}' is not a readable zarr store ({exc}). It may be incomplete or damaged."
        ) from exc
    where = f"'{p.name}'"
    name: str | None = None
    if dataset is not None:
        if _is_zarr_array(node):
            raise BNAdaptError(f"{where} is a single zarr array; it has no dataset '{dataset}'. Leave dataset= out.")
        root = node
        try:
            node = root[dataset.strip("/")]
        except KeyError:
            listing = ", ".join(f"'{n}'" for n, _ in _zarr_candidates(root)[:20])
            raise BNAdaptError(f"{where} has no array or image '{dataset}'. Images in it: {listing or 'none'}.") from None
        name = dataset.strip("/")
    if not _is_zarr_array(node) and not _multiscales(_zarr_attrs(node)):
        cands = _zarr_candidates(node)
        if not cands:
            raise BNAdaptError(f"{where} contains no image array (no array with 2 or more dimensions).")
        if len(cands) > 1:
            choices = []
            for n, c in cands:
                a = c if _is_zarr_array(c) else c[str(_multiscales(_zarr_attrs(c))[0]["datasets"][0]["path"])]
                choices.append((n, tuple(a.shape), np.dtype(a.dtype)))
            listing = "; ".join(f"'{n}' {' × '.join(map(str, s))} {d}" for n, s, d in choices[:20])
            raise AmbiguousDatasetError(
                f"{where} contains {len(cands)} images: {listing}. Choose one "
                "(read_stack(path, dataset='name'), or pick it in the dialog).",
                str(p),
                choices,
            )
        sub, node = cands[0]
        name = sub if name is None else f"{name}/{sub}"
        if sub != "0":
            notes.append(f"Read the only image in the store, '{name}'.")
    if _is_zarr_array(node):
        arr = node
        shape = tuple(arr.shape)
        attrs = _zarr_attrs(arr)
        axes = _default_axes(shape)
        dims = attrs.get("_ARRAY_DIMENSIONS") or getattr(getattr(arr, "metadata", None), "dimension_names", None)
        if dims and len(dims) == len(shape) and all(isinstance(d, str) for d in dims):
            axes = "".join(d.upper() if d.lower() in ("x", "y", "z", "c", "t") else "I" for d in dims)
        voxel = _voxel_from_attrs([attrs], axes, notes, where if name is None else f"Array '{name}'")
        fmt = "zarr"
    else:
        arr, level, voxel, axes = _ome_zarr_level0(node, notes, where)
        name = level if name is None else f"{name}/{level}"
        shape = tuple(arr.shape)
        fmt = "ome-zarr"
    if voxel is None:
        notes.append("The store does not record the voxel size.")
    dtype = np.dtype(arr.dtype)
    if lazy:
        data, storage = arr, "zarr"
    else:
        data, storage = arr[...], "in-memory"
    info = StackInfo(str(p), fmt, shape, dtype, axes, voxel, notes, dataset=name, storage=storage)
    return data, info


# --------------------------------------------------------------------------
# crop and downsample
# --------------------------------------------------------------------------

def _as_slice(r: Any, n: int, axis: str) -> slice:
    if r is None:
        return slice(0, n, 1)
    if isinstance(r, slice):
        s = r
    elif isinstance(r, (tuple, list)) and 2 <= len(r) <= 3:
        s = slice(*r)
    else:
        raise BNAdaptError(
            f"Give the {axis} range as (start, stop) or a slice, e.g. {axis}=(0, 100); got {r!r}."
        )
    if s.step is not None and s.step <= 0:
        raise BNAdaptError(f"The {axis} step must be positive; got {s.step}.")
    start, stop, step = s.indices(n)
    if len(range(start, stop, step)) == 0:
        raise BNAdaptError(
            f"The {axis} range {r!r} selects nothing: the stack has {n} pixels along {axis} (0 to {n - 1})."
        )
    return slice(start, stop, step)


def _subvolume_key(
    shape: tuple[int, ...], axes: str, *, z: Any, y: Any, x: Any, factor: int | Sequence[int]
) -> tuple[slice, ...]:
    spatial = [a for a in axes if a in _SPATIAL]
    if isinstance(factor, (int, np.integer)):
        factors = {a: int(factor) for a in spatial}
    else:
        fl = [int(f) for f in factor]
        if len(fl) != len(spatial):
            raise BNAdaptError(
                f"factor needs one value per spatial axis ({', '.join(a.lower() for a in spatial)}); got {factor!r}."
            )
        factors = dict(zip(spatial, fl))
    if any(f < 1 for f in factors.values()):
        raise BNAdaptError(f"The downsampling factor must be 1 or more; got {factor!r}.")
    ranges = {"Z": z, "Y": y, "X": x}
    for a, r in ranges.items():
        if r is not None and a not in axes:
            raise BNAdaptError(f"The stack has no {a.lower()} axis (its axes are {axes}); remove {a.lower()}=.")
    key = []
    for a, n in zip(axes, shape):
        if a in _SPATIAL:
            s = _as_slice(ranges[a], n, a.lower())
            s = slice(s.start, s.stop, s.step * factors[a])
            key.append(slice(*s.indices(n)))
        else:
            key.append(slice(0, n, 1))
    return tuple(key)


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
