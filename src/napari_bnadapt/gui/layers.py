"""Layer helpers for the widgets: choosing layers, keeping the voxel size, never overwriting."""

from __future__ import annotations

from typing import Any

import napari.layers
import numpy as np


def transform_kwargs(layer: Any) -> dict[str, Any]:
    """The spatial transform of ``layer`` (scale, translate, rotate, shear, affine, units).

    Result layers built with these sit exactly on the input image, voxel size included.
    """
    kw: dict[str, Any] = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }
    units = getattr(layer, "units", None)
    if units is not None:
        kw["units"] = tuple(str(u) for u in units)
    axis_labels = getattr(layer, "axis_labels", None)
    if axis_labels is not None:
        kw["axis_labels"] = tuple(axis_labels)
    return kw


def unique_name(viewer: Any, name: str) -> str:
    """``name``, or ``name (2)``, ``name (3)``... so an existing layer is never replaced."""
    existing = {layer.name for layer in viewer.layers}
    if name not in existing:
        return name
    k = 2
    while f"{name} ({k})" in existing:
        k += 1
    return f"{name} ({k})"


def layers_of(viewer: Any, kind: str) -> list[Any]:
    """The viewer's layers of one type ("image", "labels")."""
    cls = {"image": napari.layers.Image, "labels": napari.layers.Labels}[kind]
    return [layer for layer in viewer.layers if isinstance(layer, cls)]


def add_result(viewer: Any, data: Any, like: Any, name: str | None = None, kind: str = "labels", **kwargs: Any) -> Any:
    """Add ``data`` to ``viewer`` as a new layer lying exactly on the image layer ``like``.

    For the napari console: ``add_result(viewer, nb.segment(adapted, image), like=image)``.

    Parameters
    ----------
    viewer : napari.Viewer
    data : array
        The result (labels or probabilities), same shape as ``like``.
    like : napari layer
        The image it was computed from: its scale, translate and other transforms are copied.
    name : str, optional
        Layer name (default: "<image name> result"); made unique, so no layer is replaced.
    kind : {"labels", "image"}
    **kwargs
        Passed to ``viewer.add_labels`` / ``viewer.add_image``.

    Returns
    -------
    napari layer
    """
    name = unique_name(viewer, name or f"{like.name} result")
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, name=name, **transform_kwargs(like), **kwargs)
