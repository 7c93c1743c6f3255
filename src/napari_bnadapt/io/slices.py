"""Folders of 2D slices (TIFF or PNG) and single PNG files."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .detect import _PNG_MAGIC, SUPPORTED_SUFFIXES, _slice_files
from .lazy_stack import LazyStack, _numbering_notes, natural_sort_key
from .stack_info import StackInfo, _import_optional, _voxel_tuple
from .tiff import _tiff_pixel_size
from .units import _plausible_pixel_nm

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
