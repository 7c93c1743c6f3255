"""Voxel size, units and axes from HDF5 / zarr attributes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .stack_info import _SPATIAL
from .units import unit_to_nm

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
