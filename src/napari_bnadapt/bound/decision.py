"""From label-free signals and a distance to a verdict: the gate, the bound, the decision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .curve import LowerBound
from .names import RELIABLE_AT, UNRELIABLE_BELOW

#: Added to both sides of the signals' log ratios, so that an empty segmentation is far, not infinitely far.
SIGNAL_EPS = 1e-4

#: Gate used when the model has source statistics but no calibration: the
#: predicted foreground fraction within a factor 2 of the source's, the mean
#: confidence at most 0.02 below it. The confidence limit is the bundled toy
#: model's calibrated gate (0.021), rounded; it is NOT validated for other models.
DEFAULT_GATE: dict[str, list[float]] = {
    "fg_logratio": [-math.log(2.0), math.log(2.0)],
    "conf_drop": [-math.inf, 0.02],
}


def signal_log_ratio(target: float, source: float) -> float:
    """``log((target + eps) / (source + eps))`` of one output signal, ``eps`` = :data:`SIGNAL_EPS`."""
    return float(math.log((target + SIGNAL_EPS) / (source + SIGNAL_EPS)))


def signal_features(source_signals: Mapping[str, float], target_signals: Mapping[str, float]) -> dict[str, float]:
    """Label-free output signals of the target, relative to the source's.

    Returns
    -------
    dict
        ``fg_logratio`` = log(foreground fraction target / source) (0: same
        share of mitochondria predicted); ``conf_drop`` = source confidence -
        target confidence (> 0: less confident); ``unc_logratio``,
        ``ent_logratio``: log ratios of the share of uncertain pixels and the
        mean entropy; plus the raw target values ``foreground_fraction``,
        ``confidence``.
    """
    def lr(k: str) -> float:
        return signal_log_ratio(target_signals[k], source_signals[k])

    return {
        "fg_logratio": lr("foreground_fraction"),
        "conf_drop": float(source_signals["confidence"] - target_signals["confidence"]),
        "unc_logratio": lr("uncertain_fraction"),
        "ent_logratio": lr("entropy"),
        "foreground_fraction": float(target_signals["foreground_fraction"]),
        "confidence": float(target_signals["confidence"]),
    }


@dataclass
class Decision:
    """What :func:`decide` concluded for one measurement.

    Attributes
    ----------
    bound : float or None
        The lower bound on the adapted IoU (0 when the gate failed; None when no bound applies).
    verdict : str
        ``"reliable"``, ``"uncertain"`` or ``"unreliable"``.
    x : float or None
        Where the curve was read: ``log(1 + W2^2 + noise added back)``.
    gate_failures : list of (feature, value, (lo, hi))
        The label-free signals outside their calibrated range.
    key : str or None
        The calibrated distance's key (``space|normalisation|form``).
    meaningful : bool
        Whether the calibrated distance could be computed meaningfully.
    reason : str
        Why no bound applies, in words (empty otherwise).
    beyond_calibration : bool
        Whether ``x`` lies beyond the largest calibrated distance (the bound is then 0).
    """

    bound: float | None = None
    verdict: str = "uncertain"
    x: float | None = None
    gate_failures: list[tuple[str, float, tuple[float, float]]] = field(default_factory=list)
    key: str | None = None
    meaningful: bool = False
    reason: str = ""
    beyond_calibration: bool = False


def decide(
    calibration: Mapping[str, Any] | None,
    distances: Mapping[str, Any],
    features: Mapping[str, float],
    *,
    reliable_at: float | None = None,
    unreliable_below: float | None = None,
) -> Decision:
    """The bound and the verdict from the calibrated distance and the gate signals.

    The calibration's validation runs this same function, so the coverage it
    reports is that of this logic.

    1. Gate: every gate signal must lie in its calibrated range, else no bound
       is claimed (bound 0, ``unreliable``).
    2. x = log(1 + W2^2 + max(0, floor_reference - floor)): when this
       measurement has less sampling noise than the calibration's (more
       images), the noise the calibration's distances contained is added back,
       so the curve is read at a comparable distance (the noise only inflates
       W2^2; with less data than the calibration the reading is conservative).
    3. bound = curve(x); beyond the largest calibrated distance it is 0.
    4. ``reliable`` if bound >= reliable_at, ``unreliable`` if < unreliable_below.

    Parameters
    ----------
    calibration : dict or None
        ``model.meta["calibration"]`` (None: no bound, default gate).
    distances : mapping of key to Distance
        From :func:`distance_table` (at least the calibrated key); a plain
        float is accepted as an always-meaningful value with floor 0.
    features : mapping
        From :func:`signal_features`.
    reliable_at, unreliable_below : float, optional
        Verdict thresholds on the bound (default: the calibration's, else 0.8 / 0.5).

    Returns
    -------
    Decision
    """
    thr = (calibration or {}).get("thresholds", {})
    rel = float(reliable_at if reliable_at is not None else thr.get("reliable", RELIABLE_AT))
    unrel = float(unreliable_below if unreliable_below is not None else thr.get("unreliable", UNRELIABLE_BELOW))
    gate = (calibration or {}).get("gate", DEFAULT_GATE)
    failures = []
    for name, (lo, hi) in gate.items():
        v = features.get(name, math.nan)
        lo = -math.inf if lo is None else float(lo)
        hi = math.inf if hi is None else float(hi)
        if not math.isfinite(v) or v < lo or v > hi:
            failures.append((name, float(v), (lo, hi)))
    out = Decision(gate_failures=failures)
    if calibration is None:
        out.reason = "the model has no calibration"
        if failures:
            out.verdict = "unreliable"
        return out
    key = calibration["feature"]["key"]
    out.key = key
    d = distances.get(key)
    if d is None or isinstance(d, (int, float)):
        value = math.nan if d is None else float(d)
        floor, meaningful, reason = 0.0, math.isfinite(value), ""
    else:
        value, floor, meaningful, reason = float(d.value), float(d.floor), bool(d.meaningful), d.reason
    out.meaningful = meaningful and math.isfinite(value)
    if math.isfinite(value) and value >= 0:
        ref = float(calibration.get("floor_reference", 0.0) or 0.0)
        extra = max(0.0, ref - floor) if math.isfinite(floor) else 0.0
        out.x = math.log1p(value + extra)
    if failures:
        out.bound = 0.0
        out.verdict = "unreliable"
        return out
    if not out.meaningful or out.x is None:
        out.reason = reason or "the calibrated distance could not be computed"
        return out
    bound = LowerBound.from_dict(calibration["curve"])
    b = float(bound(out.x))
    out.beyond_calibration = out.x > bound.x_max
    out.bound = b
    if b >= rel:
        out.verdict = "reliable"
    elif b < unrel:
        out.verdict = "unreliable"
    return out
