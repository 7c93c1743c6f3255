"""Running a network at its training pixel size, with the results on the image's own grid.

A network trained at 5 nm fails on a 10 nm image whatever its BatchNorm statistics
(:mod:`napari_bnadapt.io.pixel_size`). Given the image's pixel size, every entry point
(``adapt``, ``predict``, ``segment``, ``reliability``, the workflow, the CLI, the widget)
decides here, once, where the network runs (:func:`model_grid` -> :class:`ModelGrid`):

* both pixel sizes known and differing by more than
  :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE`: the stack is seen at the
  model's pixel size (:class:`ResampledStack`: linear interpolation, one slice at a
  time, never a resampled copy of the whole stack), and each probability slice is
  resampled back to the image's grid (linear; labels come from thresholding it);
* both known and (nearly) equal: the stack runs as it is;
* one of them unknown: the stack runs as it is, and a :class:`PixelSizeWarning` says
  so once per call (the calls a run makes next are passed :meth:`ModelGrid.pass_on`,
  so they decide the same and stay silent);
* neither known (a toy model on a plain array): there is nothing to compare and
  nothing is said.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..model.layout import MIN_SIDE
from .pixel_size import RESAMPLE_TOLERANCE, size_ratio, zoom_slice
from .pixel_size import pixel_size_nm as layer_pixel_size_nm
from .plane_stack import PlaneStack
from .stack_view import StackView


class PixelSizeWarning(UserWarning):
    """The image's or the model's pixel size is unknown, so the image runs as it is."""


def _nm(v: Any) -> str:
    return " x ".join(f"{float(x):g}" for x in v)


@dataclass(frozen=True)
class ModelGrid:
    """Where the network runs: the image's and the model's pixel sizes, and the zoom between them.

    Attributes
    ----------
    image_nm, model_nm : (float, float) or None
        The (y, x) pixel sizes in nm; None when unknown.
    zoom : (float, float) or None
        Model-grid pixels per image pixel along y and x (``image_nm / model_nm``) when the
        image is resampled; None when it runs as it is.
    """

    image_nm: tuple[float, float] | None
    model_nm: tuple[float, float] | None
    zoom: tuple[float, float] | None

    @property
    def resamples(self) -> bool:
        """True when the network runs on a resampled copy of each slice."""
        return self.zoom is not None

    def sentence(self) -> str | None:
        """What happens, in one sentence: the resampling, or which pixel size is unknown; None when they match."""
        if self.zoom is not None:
            r = size_ratio(self.image_nm, self.model_nm)
            return (f"the image's {_nm(self.image_nm)} nm pixels differ from the model's {_nm(self.model_nm)} nm "
                    f"({r:.2f}x): it is resampled to the model's pixel size for the network (zoom "
                    f"{self.zoom[0]:.3g} x {self.zoom[1]:.3g}), and the results come back on the image's own grid")
        if self.image_nm is None and self.model_nm is not None:
            return (f"the image's pixel size is unknown, so it runs as it is, as if its pixels were the model's "
                    f"{_nm(self.model_nm)} nm")
        if self.model_nm is None and self.image_nm is not None:
            return (f"the model's training pixel size is unknown (its card does not say), so the image runs as it "
                    f"is, at its own {_nm(self.image_nm)} nm pixels")
        return None

    def zoom_phrase(self) -> str:
        """"resampled to the model's 5 x 5 nm pixels (zoom 2 x 2 from the image's 10 x 10 nm)", or "" without zoom."""
        if self.zoom is None:
            return ""
        return (f"resampled to the model's {_nm(self.model_nm)} nm pixels (zoom {self.zoom[0]:.3g} x "
                f"{self.zoom[1]:.3g} from the image's {_nm(self.image_nm)} nm)")

    def pass_on(self) -> tuple[float, float] | None:
        """The ``pixel_size_nm`` to give the functions a run calls next: they decide the same, and say nothing.

        An unknown image pixel size becomes the model's (runs as it is); with the model's unknown,
        None (nothing to compare). Either way no second warning.
        """
        if self.image_nm is None:
            return self.model_nm
        return self.image_nm if self.model_nm is not None else None

    def shape_yx(self, h: int, w: int) -> tuple[int, int]:
        """The size of an ``h`` x ``w`` slice on the model's grid."""
        if self.zoom is None:
            return h, w
        oh, ow = max(1, round(h * self.zoom[0])), max(1, round(w * self.zoom[1]))
        if min(oh, ow) < MIN_SIDE:
            raise BNAdaptError(
                f"at the model's {_nm(self.model_nm)} nm pixel size the image is only {oh} x {ow} pixels; the network "
                f"needs at least {MIN_SIDE} x {MIN_SIDE} pixels per slice")
        return oh, ow

    def view(self, view: StackView) -> StackView:
        """``view`` as the network sees it: resampled to the model's pixel size (lazily), or unchanged."""
        if self.zoom is None:
            return view
        return StackView(ResampledStack(view, self.shape_yx(*view.shape3d[1:])), view.is_2d)

    def to_input(self, plane: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
        """A slice computed on the model's grid (probabilities), linearly resampled back to ``shape_yx``."""
        if self.zoom is None:
            return plane
        return np.clip(zoom_slice(plane, shape_yx, order=1), 0.0, 1.0)


class ResampledStack(PlaneStack):
    """A stack seen at another pixel size: each slice resampled (linear, float32) when read.

    A :class:`~napari_bnadapt.io.plane_stack.PlaneStack`: an array-like for
    :class:`~napari_bnadapt.io.stack_view.StackView`, each slice resampled once when the patches and
    tiles read it in z order.
    """

    def __init__(self, view: StackView, shape_yx: tuple[int, int]) -> None:
        super().__init__(view, lambda plane: zoom_slice(plane, shape_yx, order=1), shape_yx, np.float32)


def _checked_nm(value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        yx = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise BNAdaptError(f"{what} must be two numbers (y, x) in nm, not {value!r}") from None
    if len(yx) != 2 or not all(math.isfinite(v) and v > 0 for v in yx):
        raise BNAdaptError(f"{what} must be two positive numbers (y, x) in nm, not {value!r}")
    return yx  # type: ignore[return-value]


def model_pixel_size(model: Any) -> tuple[float, float] | None:
    """The model's training pixel size in nm from its card (``model.meta["pixel_size_nm"]``), or None."""
    value = (getattr(model, "meta", None) or {}).get("pixel_size_nm")
    try:
        return _checked_nm(value, "the model's pixel_size_nm") if value else None
    except BNAdaptError:
        return None  # a card that says something unreadable says nothing


def image_pixel_size(images: Any, given: Sequence[float] | None = None) -> tuple[float, float] | None:
    """The image's pixel size in nm: ``given`` when set, else a napari layer's scale and units, else None."""
    if given is not None:
        return _checked_nm(given, "pixel_size_nm")
    if hasattr(images, "scale") and hasattr(images, "_type_string"):  # a napari layer (duck-typed: no napari here)
        return layer_pixel_size_nm(images.scale, getattr(images, "units", None))
    return None


def resolve_grid(image_nm: Sequence[float] | None, model_nm: Sequence[float] | None,
                 tolerance: float = RESAMPLE_TOLERANCE) -> ModelGrid:
    """The :class:`ModelGrid` for these pixel sizes (no warning; see :func:`model_grid`)."""
    img = _checked_nm(image_nm, "pixel_size_nm")
    mod = _checked_nm(model_nm, "the model's pixel size")
    r = size_ratio(img, mod)
    zoom = None
    if r is not None and max(r, 1.0 / r) > 1.0 + tolerance:
        zoom = (img[0] / mod[0], img[1] / mod[1])  # type: ignore[index]
    return ModelGrid(img, mod, zoom)


def model_grid(model: Any, images: Any, pixel_size_nm: Sequence[float] | None) -> ModelGrid:
    """Decide where ``model`` runs on ``images``; warn (:class:`PixelSizeWarning`) when one pixel size is unknown.

    Parameters
    ----------
    model : torch.nn.Module
        Its training pixel size is read from its card (``model.meta["pixel_size_nm"]``).
    images : array-like or napari Image layer
        A layer gives its pixel size by its scale and units when ``pixel_size_nm`` is None.
    pixel_size_nm : (float, float) or None
        The image's (y, x) pixel size in nm.

    Returns
    -------
    ModelGrid
    """
    grid = resolve_grid(image_pixel_size(images, pixel_size_nm), model_pixel_size(model))
    if grid.zoom is None and (grid.image_nm is None) != (grid.model_nm is None):
        hint = " (pass pixel_size_nm=(y, x) in nm to compare them)" if grid.image_nm is None else ""
        warnings.warn(f"{grid.sentence()}{hint}", PixelSizeWarning, stacklevel=2)
    return grid
