"""HDF5 files (one dataset, chosen by name or unambiguous), read lazily through dask."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .attributes import _axes_from_axistags, _default_axes, _voxel_from_attrs
from .stack_info import AmbiguousDatasetError, StackInfo, _import_optional


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
