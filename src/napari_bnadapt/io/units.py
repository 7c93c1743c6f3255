"""The one unit table: physical length units to nanometres."""

from __future__ import annotations

import math

_UNIT_NM: dict[str, float] = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "nanometres": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "micrometre": 1e3,
    "micrometres": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimeters": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "centimeters": 1e7,
    "centimetre": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "meters": 1e9,
    "metre": 1e9,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ångström": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "in": 2.54e7,
    "inch": 2.54e7,
    "inches": 2.54e7,
}


def unit_to_nm(unit: object) -> float | None:
    """Nanometres per one ``unit`` ('µm' -> 1000.0, 'Å' -> 0.1), or None.

    Accepts the spellings found in the wild: ImageJ ('micron', '\\u00B5m'), OME
    ('µm', 'nm', 'Å'), OME-Zarr/UDUNITS ('micrometer', 'angstrom'), 'um'.
    'pixel', '' and anything unknown give None (not a physical unit).
    """
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1", "replace")
    text = str(unit).strip().lower()
    text = text.replace("\\u00b5", "µ").replace("\\u03bc", "µ").replace("μ", "µ")
    text = text.replace("\u00c5", "å").replace("\u212b", "å")  # Å (two code points)
    if text.startswith("µ") and len(text) > 1 and text[1:] in ("", "m"):
        text = "µm"
    return _UNIT_NM.get(text)


def _plausible_pixel_nm(value_nm: float | None, max_nm: float = 1e4) -> bool:
    """A pixel size that a microscope could have produced (0 < s <= 10 µm)."""
    return value_nm is not None and math.isfinite(value_nm) and 0 < value_nm <= max_nm


def _fmt_nm(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:.4g}"


_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}  # inch, cm, mm, µm (tifffile extension)
