"""Whether a stored W2 calibration may be used, and what it may claim next to a verdict.

* :func:`calibration_problem`: a calibration whose bound is about 0 at every distance, whose
  distances collapsed to one value, or whose distance won the selection by a tie is DEGENERATE:
  "at this distance the IoU was at least b" then describes nothing the distance measured. Such a
  calibration is rejected and the model treated as uncalibrated, with the reason in the report.
* :func:`verdict_coverage`: the share of held-out calibration cases given THIS verdict whose true
  IoU reached their bound (the overall coverage is inflated by gated cases whose bound 0 always
  "holds").
* :func:`floor_bound`: a lower bound is rounded down, never up (0.968 is "0.96").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .curve import LowerBound
from .names import RELIABLE_AT, UNRELIABLE_BELOW

#: A calibration whose largest bound is below this is "about 0 everywhere".
MIN_USEFUL_BOUND = 0.05

#: A calibration whose distances span less than this (in x = log(1 + W2^2)) has collapsed.
MIN_X_SPAN = 0.01

#: Two candidates whose mean cross-validated bounds differ by less than this are tied.
TIE_TOLERANCE = 1e-6


def calibration_problem(calibration: Mapping[str, Any] | None) -> str:
    """Why a stored calibration is degenerate, in words ("" when it may be used).

    Parameters
    ----------
    calibration : dict or None
        ``model.meta["calibration"]``.

    Returns
    -------
    str
        "" for a usable calibration (and for None: nothing to reject).
    """
    if not calibration:
        return ""
    curve = LowerBound.from_dict(calibration["curve"])
    y = [float(v) for v in curve.y_knots]
    if not y or max(y) < MIN_USEFUL_BOUND:
        return (f"its bound is about 0 at every distance (at most {max(y, default=0.0):.3f}): it found no distance "
                "that separates the model's failures from its successes")
    span = float(curve.x_max) - float(curve.x_min)
    if span < MIN_X_SPAN:
        return (f"its calibration distances collapsed to one value (x from {curve.x_min:.4f} to {curve.x_max:.4f}): "
                "the bound does not depend on anything the distance measured")
    sel = calibration.get("selection") or {}
    chosen = sel.get("chosen") or {}
    best = chosen.get("mean_bound")
    if best is not None and math.isfinite(best):
        cov = float(chosen.get("coverage") or 0.0)
        tied = sorted({r["key"] for r in sel.get("candidates", [])
                       if r.get("key") != chosen.get("key") and r.get("mean_bound") is not None
                       and math.isfinite(r["mean_bound"]) and abs(r["mean_bound"] - best) < TIE_TOLERANCE
                       and (r.get("coverage") or 0.0) >= cov - TIE_TOLERANCE})
        if tied:
            return (f"its distance ({chosen.get('key')}) won the selection by a tie with {len(tied)} other distances "
                    f"({', '.join(tied[:3])}{', ...' if len(tied) > 3 else ''}): the bound does not depend on which "
                    "distance was measured")
    return ""


def verdict_coverage(calibration: Mapping[str, Any] | None, verdict: str) -> tuple[float | None, int]:
    """Share of the held-out (validation) cases given ``verdict`` whose true IoU reached their bound.

    Recomputed from the cases the calibration stores (their curve reading, 0 when gated), with the
    calibration's verdict thresholds.

    Returns
    -------
    (float or None, int)
        The coverage (None without such cases) and how many cases it rests on.
    """
    if not calibration:
        return None, 0
    curve = LowerBound.from_dict(calibration["curve"])
    thr = calibration.get("thresholds", {})
    rel = float(thr.get("reliable", RELIABLE_AT))
    unrel = float(thr.get("unreliable", UNRELIABLE_BELOW))
    hits = []
    for c in calibration.get("cases", []):
        if c.get("split") != "validation":
            continue
        x = c.get("x")
        if not c.get("in_gate", True):
            b, v = 0.0, "unreliable"
        elif x is None or not math.isfinite(x):
            continue
        else:
            b = float(curve(x))
            v = "reliable" if b >= rel else "unreliable" if b < unrel else "uncertain"
        if v == verdict:
            hits.append(float(c["iou"]) >= b - 1e-12)
    if not hits:
        return None, 0
    return sum(hits) / len(hits), len(hits)


def floor_bound(b: float, digits: int = 2) -> float:
    """``b`` rounded DOWN to ``digits`` decimals (a lower bound is never rounded up): 0.968 -> 0.96."""
    f = 10.0 ** digits
    return math.floor(b * f + 1e-9) / f


def format_bound(b: float, digits: int = 2) -> str:
    """A lower bound as text, rounded down: ``format_bound(0.968) == "0.96"``."""
    return f"{floor_bound(b, digits):.{digits}f}"
