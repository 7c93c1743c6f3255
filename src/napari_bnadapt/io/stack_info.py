"""What a file says about itself (``StackInfo``), voxel-size overrides, and the ambiguous-dataset error."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .units import _fmt_nm

_SPATIAL = "ZYX"


#: a range along one axis: None (all), (start, stop), (start, stop, step) or a slice
_RangeLike = Any


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
