"""MRC / REC / MAP files (cryo-EM and tomography), memory-mapped."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .lazy_stack import _native_or_lazy, _truncated
from .stack_info import StackInfo, _import_optional, _voxel_tuple

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
