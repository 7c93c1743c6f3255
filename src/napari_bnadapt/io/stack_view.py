"""Checking the user's image stacks and mapping their intensities to the model's input range.

Everything here reads only what it needs: lazy inputs (``tifffile.memmap``,
zarr, dask, napari layers) are sampled a few slices at a time, never loaded whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..model.layout import MIN_SIDE
from .memmap_pages import read_released

#: Smallest side length (pixels) the U-Net can process (four 2x poolings).
#: In-memory arrays smaller than this are checked whole; larger ones are sampled.
_FULL_CHECK_BYTES = 256 * 2**20
_SAMPLE_SLICES = 8


def layer_data(obj: Any, kind: str | None = "image") -> Any:
    """Return the array behind a napari layer (level 0 of a multiscale one), or ``obj`` itself.

    Parameters
    ----------
    obj : napari layer or array-like
    kind : str or None, default "image"
        The layer type expected ("image", "labels"); None accepts any layer.
        Duck-typed, so this core module never imports napari.
    """
    if hasattr(obj, "data") and hasattr(obj, "_type_string"):
        if kind is not None and obj._type_string != kind:
            raise BNAdaptError(
                f"the layer {getattr(obj, 'name', '')!r} is a {obj._type_string} layer; choose "
                + ("an image layer (the greyscale EM stack)" if kind == "image" else f"a {kind} layer")
            )
        if getattr(obj, "rgb", False):
            raise BNAdaptError(
                f"the layer {obj.name!r} is a colour (RGB) image; the model needs a greyscale EM image. "
                "Convert it to greyscale first (e.g. Image > Type > 8-bit in Fiji)."
            )
        data = obj.data
        if getattr(obj, "multiscale", False):
            data = data[0]
        return data
    return obj


@dataclass(frozen=True)
class StackView:
    """A checked image stack: always seen as (Z, Y, X), without copying.

    Attributes
    ----------
    data : array-like
        The user's array, untouched (numpy, memmap, zarr, dask ...).
    is_2d : bool
        True when the user gave a single (Y, X) image.
    """

    data: Any
    is_2d: bool

    @property
    def shape3d(self) -> tuple[int, int, int]:
        """Shape as (Z, Y, X)."""
        return (1, *self.data.shape) if self.is_2d else tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def read(self, z: int | slice, y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
        """Read slice(s) ``z`` (crop ``y``, ``x``) as a numpy array of the original dtype."""
        if isinstance(self.data, np.memmap):  # a copy; the mapped pages read leave the resident set

            part = read_released(self.data, (y, x) if self.is_2d else (z, y, x))
            return part[None] if self.is_2d and isinstance(z, slice) else part
        if self.is_2d:
            if isinstance(z, slice):
                return np.asarray(self.data[y, x])[None]
            return np.asarray(self.data[y, x])
        return np.asarray(self.data[z, y, x])

    def sample(self) -> np.ndarray:
        """A representative sample of the values: all of a small stack, else a few whole slices."""
        nz = self.shape3d[0]
        nbytes = int(np.prod(self.shape3d)) * self.dtype.itemsize
        if isinstance(self.data, np.ndarray) and not isinstance(self.data, np.memmap) and nbytes <= _FULL_CHECK_BYTES:
            return self.data
        idx = np.unique(np.linspace(0, nz - 1, min(nz, _SAMPLE_SLICES)).round().astype(int))
        return np.stack([self.read(int(i)) for i in idx])


def check_stack(images: Any, *, what: str = "image") -> StackView:
    """Check that ``images`` is a greyscale 2D image or 3D stack the U-Net can process.

    Parameters
    ----------
    images : array-like or napari Image layer
        (Y, X) image or (Z, Y, X) stack; numpy, memmap, zarr, dask or a napari layer.
    what : str
        How to call the input in messages ("image", "training labels", ...).

    Returns
    -------
    StackView
        The same data, seen as (Z, Y, X).

    Raises
    ------
    BNAdaptError
        Empty, colour, 4-D or higher, too small, boolean/complex, or non-finite input.
    """
    data = layer_data(images)
    if isinstance(data, (list, tuple)):
        data = np.asarray(data)
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        raise BNAdaptError(f"the {what} must be an array (numpy, tifffile memmap, zarr, dask) or a napari image layer, not {type(data).__name__}")
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    if len(shape) == 0 or 0 in shape:
        raise BNAdaptError(f"the {what} is empty (shape {shape}): there is nothing to process")
    if dtype.kind not in "uif":
        raise BNAdaptError(f"the {what} has data type {dtype}; expected integer (8/16-bit) or floating-point grey values")
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[-2] >= MIN_SIDE:
        raise BNAdaptError(
            f"the {what} of shape {shape} looks like a colour (RGB{'A' if shape[-1] == 4 else ''}) image: "
            "the model needs greyscale. Convert it to greyscale first."
        )
    if len(shape) not in (2, 3):
        raise BNAdaptError(
            f"the {what} has {len(shape)} dimensions {shape}; expected a 2D image (Y, X) or a 3D stack (Z, Y, X). "
            "For time series or multi-channel data, pick one channel / time point first."
        )
    if min(shape[-2:]) < MIN_SIDE:
        raise BNAdaptError(
            f"the {what} is {shape[-2]} x {shape[-1]} pixels; the network needs at least {MIN_SIDE} x {MIN_SIDE} "
            "pixels per slice"
        )
    view = StackView(data, len(shape) == 2)
    if dtype.kind == "f":
        _check_finite(view.sample(), what)
    return view


def _check_finite(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise BNAdaptError(
            f"the {what} contains {int(bad.sum())} NaN or infinite value(s); replace them "
            "(e.g. with the background value) before segmenting"
        )


@dataclass(frozen=True)
class Normalization:
    """How raw grey values become network input.

    ``x01 = (x - in_low) / (in_high - in_low)``, then ``x_model = (x01 - mean) / std``.
    In words: the user's range ``[in_low, in_high]`` is mapped onto the model's
    training range ``[low, high]`` (identity for data already in the model's
    range, where ``in_low, in_high = low, high``), scaled to [0, 1], then
    standardised with the training constants ``mean`` and ``std``.
    """

    low: float = 0.0
    high: float = 255.0
    mean: float = 0.5
    std: float = 0.25
    in_low: float = 0.0
    in_high: float = 255.0

    def to_meta(self) -> dict[str, Any]:
        """The model-side part, as stored in a model file."""
        return {"mode": "fixed", "low": self.low, "high": self.high, "mean": self.mean, "std": self.std}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Normalization:
        """Read the model-side part from model-file metadata."""
        if meta.get("mode", "fixed") != "fixed":
            raise BNAdaptError(f"unknown input normalisation {meta.get('mode')!r} in the model file")
        low, high = float(meta.get("low", 0.0)), float(meta.get("high", 255.0))
        return cls(low, high, float(meta.get("mean", 0.5)), float(meta.get("std", 0.25)), low, high)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map raw grey values to float32 network input."""
        x = x.astype(np.float32, copy=False)
        x01 = (x - np.float32(self.in_low)) / np.float32(self.in_high - self.in_low)
        return (x01 - np.float32(self.mean)) / np.float32(self.std)


def resolve_normalization(
    view: StackView,
    model_meta: dict[str, Any],
    intensity_range: tuple[float, float] | str | None = None,
    *,
    what: str = "image",
) -> Normalization:
    """Decide how to map the user's grey values to the model's input.

    Parameters
    ----------
    view : StackView
        The checked stack.
    model_meta : dict
        The model file's ``normalization`` entry (training range ``low``..``high``).
    intensity_range : (float, float), "auto" or None, default None
        None: the data must already lie in the model's range (8-bit data for an
        8-bit model; 16-bit or float data only if its values stay in that range),
        otherwise a clear error asks for one of the other choices.
        ``(lo, hi)``: the user's grey value ``lo`` maps to the model's ``low``,
        ``hi`` to its ``high``. ``"auto"``: the 0.5 and 99.5 percentiles of a
        sample of the stack are used as ``(lo, hi)``.
    what : str
        How to call the input in messages.

    Returns
    -------
    Normalization
    """
    norm = Normalization.from_meta(model_meta)
    if isinstance(intensity_range, str):
        if intensity_range != "auto":
            raise BNAdaptError(f"intensity_range must be None, 'auto' or (low, high), not {intensity_range!r}")
        sample = view.sample()
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        if hi <= lo:
            raise BNAdaptError(f"the {what} is constant (all values {lo:g}); there is nothing to segment")
        return Normalization(norm.low, norm.high, norm.mean, norm.std, lo, hi)
    if intensity_range is not None:
        lo, hi = (float(v) for v in intensity_range)
        if not hi > lo:
            raise BNAdaptError(f"intensity_range ({lo:g}, {hi:g}): the upper value must be above the lower one")
        return Normalization(norm.low, norm.high, norm.mean, norm.std, lo, hi)

    if view.dtype == np.uint8 and norm.low <= 0 and norm.high >= 255:
        return norm
    sample = view.sample()
    vmin, vmax = float(sample.min()), float(sample.max())
    hint = (
        "Give the grey-value range of your data (intensity_range=(low, high); --intensity-range LOW HIGH "
        "on the command line) or let the percentiles decide (intensity_range='auto'; --intensity-range auto)."
    )
    if view.dtype.kind == "f" and vmax <= 1.0 and norm.high > 1.0:
        raise BNAdaptError(
            f"the {what} holds floating-point values between {vmin:g} and {vmax:g} (probably scaled to 0..1), "
            f"but the model was trained on grey values {norm.low:g}..{norm.high:g}. {hint}"
        )
    if vmin < norm.low or vmax > norm.high:
        bits = f"{view.dtype.itemsize * 8}-bit " if view.dtype.kind in "ui" else "floating-point "
        raise BNAdaptError(
            f"the {what} is {bits}data with values from {vmin:g} to {vmax:g}, outside the model's training range "
            f"{norm.low:g}..{norm.high:g}. {hint}"
        )
    return norm
