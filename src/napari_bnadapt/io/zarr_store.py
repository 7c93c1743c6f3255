"""zarr and OME-Zarr stores (level 0 of a multiscale image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .attributes import _default_axes, _voxel_from_attrs
from .stack_info import _SPATIAL, AmbiguousDatasetError, StackInfo, _import_optional
from .units import unit_to_nm


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
