"""What bioimage.io export and import share: the package's output, the normalisation mapping, names.

The package's network (:class:`MitochondrionProbability`) is this project's U-Net followed by a
softmax over its two classes, of which it returns channel 1: the probability that a pixel belongs to a
mitochondrion, a float32 map in [0, 1] with the image's shape. deepImageJ, ilastik, BiaPy and QuPath
users get that probability map directly (threshold it at 0.5 for the labels napari-bnadapt produces).

The model's input normalisation (:class:`~napari_bnadapt.io.stack_view.Normalization`,
``x_model = ((x - low) / (high - low) - mean) / std``) is written as ONE bioimage.io
``fixed_zero_mean_unit_variance`` step, ``x_model = (x - M) / S`` with
``M = low + mean * (high - low)`` and ``S = std * (high - low)``: the same affine map, in grey values.
The model's full card (``low``, ``high``, ``mean``, ``std``) travels in ``config.napari_bnadapt`` as
well, so napari-bnadapt reads it back exactly; for packages from elsewhere the grey-value range
(``low``, ``high``) comes from the input's data description (its ``range``, else its data type).

bioimage.io is optional: :func:`require_bioimageio` imports it (inside the export/import functions
only) and says how to install it when it is missing.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from ..errors import BNAdaptError, ModelFileError
from .unet import UNet

#: The key of this project's block in a package's ``config`` (also how import recognises our packages).
CONFIG_KEY = "napari_bnadapt"
#: The architecture callable of our packages' ``pytorch_state_dict`` weights (recognised on import).
ARCHITECTURE_CALLABLE = "MitochondrionProbability"
#: The keyword arguments that callable takes (those of :class:`~napari_bnadapt.model.unet.UNet`).
ARCHITECTURE_KWARGS = ("in_channels", "n_classes", "width", "bilinear")
#: The state-dict prefix of the U-Net inside :class:`MitochondrionProbability`.
STATE_PREFIX = "unet."
#: What the package's output is, in words (README, docs, output description).
OUTPUT_DESCRIPTION = "mitochondrion probability (softmax of the U-Net's 2 classes, channel 1), 0..1"

INSTALL_HINT = (
    "bioimage.io support needs the bioimageio libraries: pip install 'napari-bnadapt[bioimageio]' "
    "(or: pip install bioimageio.core)"
)


class MitochondrionProbability(nn.Module):
    """The packaged network: the U-Net, then the mitochondrion probability (softmax channel 1).

    Parameters
    ----------
    in_channels, n_classes, width, bilinear
        The U-Net's configuration (:meth:`UNet.config`).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 16, bilinear: bool = False) -> None:
        super().__init__()
        self.unet = UNet(in_channels=in_channels, n_classes=n_classes, width=width, bilinear=bilinear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) float32 probabilities for a normalised (B, C, H, W) input; H, W multiples of 16."""
        return torch.softmax(self.unet(x), dim=1)[:, 1:2]


def require_bioimageio() -> None:
    """Import bioimageio.spec (and fail with an installation hint when it is missing)."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise BNAdaptError(INSTALL_HINT) from exc


# ------------------------------------------------------------------ normalisation <-> preprocessing
def normalization_to_preprocessing(norm: dict[str, Any]) -> list[dict[str, Any]]:
    """The bioimage.io preprocessing (spec 0.5) of a model card's ``normalization`` entry.

    ``ensure_dtype`` float32, ``fixed_zero_mean_unit_variance`` with the grey-value mean and std, and
    ``ensure_dtype`` float32 again (without it the spec would cast the result back to the input's type).
    """
    low, high = float(norm.get("low", 0.0)), float(norm.get("high", 255.0))
    mean, std = float(norm.get("mean", 0.5)), float(norm.get("std", 0.25))
    scale = high - low
    return [
        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
        {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": low + mean * scale, "std": std * scale}},
        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
    ]


def _single(value: Any, what: str) -> float:
    """A scalar from a scalar or a one-element (one channel) list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ModelFileError(f"the package's {what} has one value per channel ({len(value)}); "
                                 "napari-bnadapt models take one grey-value channel")
        value = value[0]
    return float(value)


def preprocessing_to_affine(steps: list[dict[str, Any]]) -> tuple[float, float, list[str]]:
    """``(gain, offset, notes)`` such that the preprocessing is ``x -> gain * x + offset``.

    Fixed steps (``ensure_dtype``, ``scale_linear``, ``fixed_zero_mean_unit_variance``) compose exactly.
    Data-dependent steps (``scale_range``, ``zero_mean_unit_variance``: per image, by percentiles or by
    the image's own mean) have no fixed equivalent: they are approximated by an affine map on the
    0.5..99.5 percentile range, and ``notes`` says so (use ``intensity_range="auto"`` with such models).
    Anything else (``custom`` code, ``clip``, ``binarize``, ...) is refused.
    """
    gain, offset, notes = 1.0, 0.0, []
    for step in steps:
        op, kw = step.get("id"), step.get("kwargs") or {}
        if op == "ensure_dtype":
            continue
        if op == "scale_linear":
            g, o = _single(kw.get("gain", 1.0), "scale_linear gain"), _single(kw.get("offset", 0.0), "scale_linear offset")
        elif op == "fixed_zero_mean_unit_variance":
            m, s = _single(kw["mean"], "normalisation mean"), _single(kw["std"], "normalisation std")
            g, o = 1.0 / s, -m / s
        elif op == "scale_range":
            # per-image percentiles -> [0, 1]; on import the range is [0, 1] and intensity_range="auto" maps
            # the user's 0.5..99.5 percentiles onto it
            lo, hi = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
            notes.append(f"the package scales each image by its {lo:g}..{hi:g} percentiles (scale_range): "
                         "use intensity_range='auto'")
            g, o = 1.0, 0.0
        elif op == "zero_mean_unit_variance":
            # per-image standardisation: the 0.5..99.5 percentiles of a normal variable are +-2.576 std
            notes.append("the package standardises each image by its own mean and std (zero_mean_unit_variance): "
                         "approximated on the 0.5..99.5 percentile range; use intensity_range='auto'")
            g, o = 2 * 2.5758, -2.5758
        else:
            raise ModelFileError(
                f"the package's preprocessing {op!r} has no equivalent in napari-bnadapt (supported: ensure_dtype, "
                "scale_linear, fixed_zero_mean_unit_variance, scale_range, zero_mean_unit_variance)"
            )
        if op in ("scale_range", "zero_mean_unit_variance"):
            gain, offset = g, o  # per-image normalisation undoes any fixed map before it
        else:
            gain, offset = g * gain, g * offset + o
    if not (math.isfinite(gain) and math.isfinite(offset)) or gain <= 0:
        raise ModelFileError(f"the package's preprocessing is not an increasing grey-value map (gain {gain:g})")
    return gain, offset, notes


def affine_to_normalization(gain: float, offset: float, low: float, high: float) -> dict[str, Any]:
    """The model card's ``normalization`` entry whose map is ``x -> gain * x + offset`` on ``[low, high]``."""
    scale = high - low
    return {"mode": "fixed", "low": low, "high": high, "mean": -(offset + gain * low) / (gain * scale) + 0.0,
            "std": 1.0 / (gain * scale)}


def same_normalization(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-6) -> bool:
    """Whether two ``normalization`` entries are the same grey-value map (within ``rtol``)."""
    pa = normalization_to_preprocessing(a)[1]["kwargs"]
    pb = normalization_to_preprocessing(b)[1]["kwargs"]
    return all(math.isclose(pa[k], pb[k], rel_tol=rtol, abs_tol=rtol * pa["std"]) for k in ("mean", "std"))


def data_range(data: dict[str, Any]) -> tuple[float, float]:
    """The grey-value range of a package input's data description: its ``range``, else its type's."""
    rng = data.get("range") or (None, None)
    dtype = str(data.get("type", "float32"))
    limits = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "int8": (-128.0, 127.0),
              "int16": (-32768.0, 32767.0)}.get(dtype, (0.0, 255.0))  # float data without a range: 8-bit assumed
    low = float(rng[0]) if rng[0] is not None else limits[0]
    high = float(rng[1]) if rng[1] is not None else limits[1]
    if not high > low:
        raise ModelFileError(f"the package's input range ({low:g}, {high:g}) is empty")
    return low, high


def input_dtype(norm: dict[str, Any]) -> str:
    """The data type that a model card's grey-value range describes (uint8/uint16, else float32)."""
    low, high = float(norm.get("low", 0.0)), float(norm.get("high", 255.0))
    return {(0.0, 255.0): "uint8", (0.0, 65535.0): "uint16"}.get((low, high), "float32")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of some bytes, hex (as bioimage.io descriptions write it)."""
    return hashlib.sha256(data).hexdigest()
