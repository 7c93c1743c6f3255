"""Choosing a calibration: cross-validated candidates (space, normalisation, form) and the gate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .cases import CalibrationCase
from .curve import BoundEvaluation, LowerBound, evaluate_bound, fit_lower_bound
from .decision import decide
from .names import SUCCESS_IOU

# ============================================================ selection
#: Output signals that may gate the bound, and which side of them is checked.
GATE_FEATURES: dict[str, str] = {"fg_logratio": "both", "conf_drop": "upper"}


#: The gate range spans the successful fit cases, widened by this share of its width on each side.
GATE_MARGIN = 0.25


def _gate_from(cases: Sequence[CalibrationCase], features: Sequence[str],
               success_iou: float) -> dict[str, list[float]]:
    """Ranges of the gate features over the successful cases (IoU >= success_iou), widened by GATE_MARGIN."""
    ok = [c for c in cases if c.iou >= success_iou]
    gate: dict[str, list[float]] = {}
    for f in features:
        v = np.array([c.features[f] for c in ok], dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 2:
            continue
        lo, hi = float(v.min()), float(v.max())
        w = max(hi - lo, 1e-6)
        lo, hi = lo - GATE_MARGIN * w, hi + GATE_MARGIN * w
        side = GATE_FEATURES.get(f, "both")
        gate[f] = [None if side == "upper" else lo, None if side == "lower" else hi]
    return gate


def _in_gate(case: CalibrationCase, gate: dict[str, list[float]], source_only: bool = False) -> bool:
    feats = case.features_source_only if source_only else case.features
    for f, (lo, hi) in gate.items():
        v = feats.get(f, math.nan)
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            return False
    return True


def _xs(cases: Sequence[CalibrationCase], key: str, source_only: bool = False) -> np.ndarray:
    vals = np.array([(c.distances_source_only if source_only else c.distances).get(key, math.nan) for c in cases])
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(vals) & (vals >= 0), np.log1p(np.clip(vals, 0, None)), np.nan)


def _predict(cases: Sequence[CalibrationCase], key: str, gate: dict[str, list[float]],
             bound: LowerBound | None) -> np.ndarray:
    """Bound per case as the product computes it: 0 when gated out or not computable."""
    x = _xs(cases, key)
    out = np.zeros(len(cases))
    for i, c in enumerate(cases):
        if _in_gate(c, gate) and bound is not None and math.isfinite(x[i]):
            out[i] = float(bound(x[i]))
    return out


def _fit(cases: Sequence[CalibrationCase], key: str, gate_features: Sequence[str], quantile: float,
         success_iou: float) -> tuple[dict[str, list[float]], LowerBound | None]:
    gate = _gate_from(cases, gate_features, success_iou)
    inside = [c for c in cases if _in_gate(c, gate)]
    x = _xs(inside, key)
    y = np.array([c.iou for c in inside])
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return gate, None
    return gate, fit_lower_bound(x[ok], y[ok], quantile)


def _folds(cases: Sequence[CalibrationCase], k: int, seed: int) -> np.ndarray:
    """Fold index per case, stratified by family."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(cases), dtype=int)
    fams: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        fams.setdefault(c.shift.family, []).append(i)
    offset = 0
    for fam in sorted(fams):
        idx = np.array(fams[fam])[rng.permutation(len(fams[fam]))]
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


@dataclass(frozen=True)
class CrossValidation(BoundEvaluation):
    """:class:`~napari_bnadapt.bound.curve.BoundEvaluation` of the cross-validated bounds of one candidate.

    Attributes
    ----------
    computable : float
        Share of the cases in which the candidate's distance could be computed.
    """

    computable: float


@dataclass(frozen=True)
class CandidateSelection:
    """What :func:`select_candidate` found.

    Attributes
    ----------
    table : list of dict
        One row per (distance, gate) candidate: ``key``, ``gate``, the
        :class:`CrossValidation` fields, ``median_above_floor`` and ``excluded``
        (why it was not considered; "" when it was). Rows are the plain-JSON form
        stored in a model's calibration.
    best : dict
        The chosen row of ``table``.
    """

    table: list[dict[str, Any]]
    best: dict[str, Any]


def cross_validate(cases: Sequence[CalibrationCase], key: str, gate_features: Sequence[str], *, quantile: float = 0.05,
                   folds: int = 5, seed: int = 0, success_iou: float = SUCCESS_IOU) -> CrossValidation:
    """K-fold cross-validated coverage and tightness of one (distance, gate) choice on the fit cases."""
    fold = _folds(cases, folds, seed)
    pred = np.zeros(len(cases))
    y = np.array([c.iou for c in cases])
    for f in range(folds):
        tr = [c for c, g in zip(cases, fold) if g != f]
        te_idx = np.flatnonzero(fold == f)
        if len(te_idx) == 0:
            continue
        gate, bound = _fit(tr, key, gate_features, quantile, success_iou)
        pred[te_idx] = _predict([cases[i] for i in te_idx], key, gate, bound)
    res = evaluate_bound(pred, None, y)
    return CrossValidation(**res.to_dict(), computable=float(np.mean(np.isfinite(_xs(cases, key)))))


def select_candidate(
    cases: Sequence[CalibrationCase],
    *,
    keys: Sequence[str] | None = None,
    gate_sets: Sequence[Sequence[str]] | None = None,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    success_iou: float = SUCCESS_IOU,
) -> CandidateSelection:
    """Cross-validate every (distance, gate) pair on the fit cases and choose the tightest valid one.

    The score is the mean cross-validated bound (higher = tighter) among the
    pairs whose cross-validated coverage is at least ``min_coverage`` and whose
    distance is computable in every case; ties go to the simpler gate.

    Returns
    -------
    CandidateSelection
        ``table``: one row per pair (key, gate, coverage, mean_bound, median_gap, ...);
        ``best``: the chosen row.
    """
    if keys is None:
        keys = sorted({k for c in cases for k in c.distances})
    if gate_sets is None:
        feats = list(GATE_FEATURES)
        gate_sets = [()] + [(f,) for f in feats] + ([tuple(feats)] if len(feats) > 1 else [])
    table = []
    for key in keys:
        ratio = np.array([c.distances.get(key, math.nan) / c.floors.get(key, math.nan) for c in cases])
        above = float(np.nanmedian(ratio)) if np.any(np.isfinite(ratio)) else math.nan
        if not above >= 1.0:
            # at or below its noise floor in most cases: it measures sampling noise, not the shift (this is
            # what the diagonal forms of BatchNorm outputs do after AdaBN, which matches them by construction)
            table.append({"key": key, "gate": [], "coverage": math.nan, "mean_bound": math.nan,
                          "median_gap": math.nan, "computable": float(np.mean(np.isfinite(_xs(cases, key)))),
                          "median_above_floor": above, "excluded": "below its noise floor"})
            continue
        if not np.all(np.isfinite(_xs(cases, key))):
            table.append({"key": key, "gate": [], "coverage": math.nan, "mean_bound": math.nan,
                          "median_gap": math.nan, "computable": float(np.mean(np.isfinite(_xs(cases, key)))),
                          "median_above_floor": above, "excluded": "not computable in every case"})
            continue
        for gs in gate_sets:
            cv = cross_validate(cases, key, gs, quantile=quantile, folds=folds, seed=seed, success_iou=success_iou)
            table.append({**cv.to_dict(), "key": key, "gate": list(gs), "median_above_floor": above, "excluded": ""})
    valid = [r for r in table if not r["excluded"] and r["coverage"] >= min_coverage]
    if not valid:
        valid = [r for r in table if not r["excluded"]]
        if not valid:
            raise BNAdaptError("no latent distance could be computed for every calibration shift; use more images")
        best = max(valid, key=lambda r: (r["coverage"], r["mean_bound"]))
    else:
        best = max(valid, key=lambda r: (round(r["mean_bound"], 4), -len(r["gate"])))
    return CandidateSelection(table=table, best=best)


@dataclass(frozen=True)
class _Dist:
    value: float
    floor: float
    meaningful: bool
    reason: str = ""


def _case_distance(c: CalibrationCase, key: str, source_only: bool = False) -> dict[str, _Dist]:
    v = (c.distances_source_only if source_only else c.distances).get(key, math.nan)
    return {key: _Dist(v, c.floors.get(key, 0.0), math.isfinite(v), "" if math.isfinite(v) else "not meaningful")}


def _verdict_table(cases: Sequence[CalibrationCase], calibration: dict[str, Any]) -> dict[str, Any]:
    key = calibration["feature"]["key"]
    out: dict[str, Any] = {}
    for c in cases:
        d = decide(calibration, _case_distance(c, key), c.features)
        v = out.setdefault(d.verdict, {"n": 0, "iou_min": 1.0, "iou_max": 0.0, "families": {}})
        v["n"] += 1
        v["iou_min"] = min(v["iou_min"], c.iou)
        v["iou_max"] = max(v["iou_max"], c.iou)
        v["families"][c.shift.family] = v["families"].get(c.shift.family, 0) + 1
    return out
