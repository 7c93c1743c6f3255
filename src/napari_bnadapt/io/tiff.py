"""TIFF files (ImageJ, OME, BigTIFF, SEM metadata): pixel size from tags, memory-mapped or lazy."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .lazy_stack import LazyStack, _native_or_lazy, _truncated, _undecodable
from .stack_info import StackInfo, _normalise_axes, _voxel_tuple
from .units import _RESUNIT_NM, _plausible_pixel_nm, unit_to_nm


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


_TIFF_DAMAGE = ("invalid page offset", "corrupted", "failed to reshape", "truncated", "invalid offset")


class _LogCollector:
    """Collects tifffile's log records: it logs damage (and recovers silently) instead of raising.

    A handler is attached to the ``tifffile`` logger for one read and removed afterwards;
    the logger's level is never changed. Where the application has silenced tifffile
    (``silenced``: WARNING records dropped), fewer records arrive: tifffile reports a cut-off
    file at ERROR level, but with ERROR dropped too, damage is caught only by the size check
    against the file and when the data are decoded, so the read says so in its notes.
    """

    def __enter__(self) -> _LogCollector:
        import logging

        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("tifffile")
        self._handler = logging.Handler(level=logging.WARNING)
        self._handler.emit = self.records.append  # type: ignore[method-assign]
        self._logger.addHandler(self._handler)
        self.silenced = not self._logger.isEnabledFor(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)

    def damage(self) -> list[str]:
        msgs = [r.getMessage() for r in self.records]
        return [m for m in msgs if any(w in m.lower() for w in _TIFF_DAMAGE)]

    def others(self) -> list[str]:
        damage = set(self.damage())
        return [m for m in (r.getMessage() for r in self.records) if m not in damage]


def _read_tiff(p: Path, lazy: bool, notes: list[str]) -> tuple[Any, StackInfo]:
    with _LogCollector() as log:
        if log.silenced:
            notes.append("tifffile's warnings are switched off in this process (logging level of 'tifffile'), "
                         "so damage that tifffile only logs may go unnoticed.")
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
