"""npe2 reader: drag-and-drop and File > Open for EM stacks.

``get_reader(path)`` is the npe2 reader command (``napari-bnadapt.read_stack``).
It looks only at the name and the first bytes of the file, and returns
:func:`read_layers` when :func:`napari_bnadapt.io.read.read_stack` can read the
path, or ``None`` (decline, so napari tries other readers) otherwise. It never
raises.

``read_layers(path)`` returns napari layer data tuples
``[(data, {"name", "scale", "units", "axis_labels", "metadata"}, "image")]``:
the data stay lazy (memory map, on-demand slices, zarr, dask), ``scale`` is the
voxel size in nm (1 where unknown), and ``metadata`` carries the voxel size,
source format and the full :class:`~napari_bnadapt.io.stack_info.StackInfo`
(key ``"stack_info"``). Notes about the file (gaps in slice numbers, unknown
voxel size, ...) are issued as warnings, which napari shows as notifications.

This module does not import napari (napari imports it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io.detect import detect_format
from ..io.read import read_stack
from ..io.stack_info import AmbiguousDatasetError, StackInfo

__all__ = ["get_reader", "layer_data", "read_layers"]

#: file name endings this reader accepts (folders are accepted by content)
READER_SUFFIXES = (
    ".tif", ".tiff", ".btf",
    ".mrc", ".rec", ".map", ".mrcs", ".st", ".ali",
    ".h5", ".hdf5", ".hdf",
    ".zarr",
    ".png",
)

LayerData = tuple[Any, dict[str, Any], str]


def _paths(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def _accepts(path: str) -> bool:
    p = Path(path)
    if p.is_dir():
        return detect_format(p) in ("zarr", "folder")
    if not p.name.lower().endswith(READER_SUFFIXES):
        return False
    return detect_format(p) is not None


def get_reader(path: Any) -> Callable[[Any], list[LayerData]] | None:
    """npe2 ``get_reader`` hook: a reader function for ``path``, or None to decline."""
    try:
        paths = _paths(path)
        if not paths or not all(_accepts(p) for p in paths):
            return None
        return read_layers
    except Exception:  # noqa: BLE001 - a reader never raises on a file it can't read
        return None


def _unique_labels(axes: str) -> list[str]:
    labels: list[str] = []
    for a in axes.lower():
        label, k = a, 1
        while label in labels:
            label, k = f"{a}{k}", k + 1
        labels.append(label)
    return labels


def layer_data(data: Any, info: StackInfo, name: str | None = None) -> LayerData:
    """napari image layer data for an array and its StackInfo (scale in nm)."""
    axes = info.axes
    scale = list(info.scale)
    voxel = list(info.voxel_size_nm) if info.voxel_size_nm is not None else [None] * info.ndim
    rgb = axes.endswith("S") and info.shape[-1] in (3, 4)
    if rgb:
        axes, scale, voxel = axes[:-1], scale[:-1], voxel[:-1]
    if name is None:
        src = Path(info.path)
        name = src.stem if src.suffix.lower() in READER_SUFFIXES + (".png",) else src.name
        if name.lower().endswith(".ome"):
            name = name[: -len(".ome")]
        if info.dataset:
            name = f"{name} [{info.dataset}]"
    # units: nm where the voxel size is known, pixel elsewhere (scale 1)
    known_spatial = [v is not None for a, v in zip(axes, voxel) if a in "ZYX"]
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(scale),
        "axis_labels": tuple(_unique_labels(axes)),
        "metadata": {
            "voxel_size_nm": None if info.voxel_size_nm is None else tuple(info.voxel_size_nm),
            "source_format": info.source_format,
            "path": info.path,
            "axes": info.axes,
            "dataset": info.dataset,
            "notes": list(info.notes),
            "stack_info": info,
        },
    }
    if any(known_spatial):
        kwargs["units"] = tuple("nm" if a in "ZYX" and v is not None else "pixel" for a, v in zip(axes, voxel))
    if rgb:
        kwargs["rgb"] = True
    return (data, kwargs, "image")


def read_layers(path: Any) -> list[LayerData]:
    """Read one or more paths into napari layer data (see module docstring).

    An HDF5 file or zarr group with several image volumes gives one layer per
    volume (all lazy), so the user can keep the one they want.
    """
    layers: list[LayerData] = []
    for p in _paths(path):
        try:
            items = [read_stack(p)]
        except AmbiguousDatasetError as exc:
            warnings.warn(
                f"{Path(p).name} holds {len(exc.choices)} image volumes; each was opened as a layer. "
                "Delete the ones you do not need.",
                stacklevel=2,
            )
            items = [read_stack(p, dataset=name) for name, _, _ in exc.choices]
        for data, info in items:
            layers.append(layer_data(data, info))
            label = Path(info.path).name + (f" [{info.dataset}]" if info.dataset else "")
            for note in info.notes:
                warnings.warn(f"{label}: {note}", stacklevel=2)
    return layers
