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

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BNAdaptError
from .detect import (
    _FORMAT_WORDS,
    ZARR_SUFFIXES,
    _is_zarr_dir,
    _not_found_message,
    _sniff,
    _suffix_kind,
    _unknown_type_message,
)
from .hdf5 import _read_hdf5
from .mrc import _read_mrc
from .slices import _read_folder, _read_single_png
from .stack_info import StackInfo
from .tiff import _read_tiff
from .zarr_store import _read_zarr


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
