"""Which format a path holds: suffixes, magic bytes, folders of slices, zarr directories."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

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
