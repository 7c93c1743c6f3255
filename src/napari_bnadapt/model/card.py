"""The model card: what a model file says about the model, as a typed object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import BNAdaptError


@dataclass(frozen=True)
class ModelCard:
    """The card of a model file, read without loading the weights (see :func:`napari_bnadapt.model_card`).

    Attributes
    ----------
    name : str
        The model's name (the file name without suffix when the card has none).
    path : str or None
        The file it was read from.
    imported : bool
        True for plain PyTorch weights without a card (8-bit input is then assumed).
    description : str or None
        What the model was trained on, in words.
    pixel_size_nm : (float, float) or None
        The (y, x) pixel size of the training data in nanometres, when known.
    created : str or None
        ISO time the file was written.
    architecture, normalization, training : dict
        The U-Net's configuration, the input normalisation, and the training record
        (data, recipe, ``metrics`` such as ``val_iou``, the command that made it).
    adaptation : dict or None
        For an adapted model: its provenance (``source_model``, mode, patches, ...).
    calibration : dict or None
        The reliability bound's calibration, when the model has one.
    has_source_statistics : bool
        Whether the file holds the source statistics the reliability check needs.
    meta : dict
        The whole card as stored (JSON), for anything not named above.
    """

    name: str
    path: str | None = None
    imported: bool = False
    description: str | None = None
    pixel_size_nm: tuple[float, float] | None = None
    created: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    adaptation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    has_source_statistics: bool = False
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], name: str, path: str | None = None) -> ModelCard:
        """The card of a stored metadata dictionary (``model.meta`` or a file's header)."""
        px = meta.get("pixel_size_nm")
        return cls(
            name=meta.get("name") or name,
            path=path,
            imported=bool(meta.get("imported", False)),
            description=meta.get("description") or (meta.get("training") or {}).get("data", {}).get("description"),
            pixel_size_nm=tuple(float(v) for v in px) if px else None,
            created=meta.get("created"),
            architecture=dict(meta.get("architecture") or {}),
            normalization=dict(meta.get("normalization") or {}),
            training=dict(meta.get("training") or {}),
            adaptation=meta.get("adaptation"),
            calibration=meta.get("calibration"),
            has_source_statistics=bool(meta.get("source_statistics")),
            meta=dict(meta),
        )

    @property
    def val_iou(self) -> float:
        """Validation IoU recorded at training (NaN when unknown)."""
        return float((self.training.get("metrics") or {}).get("val_iou", math.nan))

    def describe(self) -> str:
        """A short, readable card: trained on what, at what pixel size, when, how good."""
        if self.imported:
            return "imported PyTorch weights: no model card (8-bit input assumed)"
        px = self.pixel_size_nm
        lines = [self.description or "no description",
                 f"pixel size: {' x '.join(f'{v:g}' for v in px) + ' nm' if px else 'unknown'}"]
        when = (self.created or "")[:10]
        if math.isfinite(self.val_iou):
            lines.append(f"validation IoU {self.val_iou:.3f}" + (f"; trained {when}" if when else ""))
        if self.adaptation:
            lines.append(f"adapted from {self.adaptation.get('source_model')}")
        return "\n".join(lines)


def card_section(model: Any, key: str, entries: str, version: int, what: str) -> dict[str, Any] | None:
    """``model.meta[key]`` when it holds a non-empty list under ``entries``, else None.

    Raises
    ------
    BNAdaptError
        The section was written in a format newer than ``version`` (``what`` names it in the message).
    """
    meta = getattr(model, "meta", None)
    card = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(card, dict) or not card.get(entries):
        return None
    if int(card.get("version", 0)) > version:
        raise BNAdaptError(f"{what} of this model {'were' if what.endswith('statistics') else 'was'} written by a "
                           f"newer napari-bnadapt (format {card['version']}); update the plugin")
    return card
