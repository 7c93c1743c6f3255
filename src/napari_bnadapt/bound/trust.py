"""The trust calibration: when the witnesses allow a bound, how large it is, and when to abstain.

A trust calibration is fitted on cases with a known adapted IoU (:class:`TrustCase`: a model
adapted to a labelled target, with its :mod:`~napari_bnadapt.bound.witnesses`). It is a plain
dict stored in ``model.meta["trust"]``:

* ``thresholds``: per witness the lowest value of an ACCEPTED calibration case. A target whose
  witnesses all reach them lies in the region the calibration covered; any witness below its
  threshold means "unlike anything the model was checked on": no number, the verdict is
  ``no guarantee`` with one sentence of reason.
* ``foreground_range``: the predicted foreground fractions of the accepted cases, widened by
  :data:`FOREGROUND_SLACK` on each side (a model that predicts almost nothing agrees with itself
  perfectly, so the witnesses alone would accept it).
* ``size_range``: the same for the ``size_ratio`` witness (median predicted object diameter over the
  training labels'), widened by :data:`SIZE_SLACK`, when at least :data:`MIN_ACCEPTED` accepted cases
  measured it: a model that calls a nucleus mitochondria agrees with itself too, but its objects are
  many times too large.
* ``bound``: the ``level`` that no accepted calibration case fell below (the thresholds are chosen so
  that every accepted case reached it). Not the accepted cases' own lowest IoU: with two real
  volumes, one volume's successes (Lucchi++ in-domain, 0.83-0.95) say nothing about how high another
  volume's successes reach (VNC in-domain, 0.80-0.87), and leave-one-volume-out validation caught
  exactly that as false promises. The level itself is chosen by that validation
  (:func:`choose_rule`), and so is which witnesses are thresholded.
* ``validation``: the leave-one-volume-out figures of the same procedure (coverage overall and per
  verdict): what the panel quotes.

Which cases are accepted is chosen by validation, not by taste (:func:`fit_trust`): among all
threshold tuples (every observed value of each witness among the successes), the one that accepts
the most calibration cases while accepting none with an IoU below ``level``;
then each threshold is raised to the lowest value among the accepted cases (the covered region).
The witnesses are the self-consistency ones of :mod:`~napari_bnadapt.bound.witnesses` and
``foreground_match`` (how far the predicted share of mitochondria moved from the training data's).

**The in-domain route.** The witnesses are thresholded on shifted targets, and on a target from the
model's own training domain they can fall just short (``lucchi-pp`` on Lucchi++ test slices: patch
agreement 0.9168 against a threshold of 0.917 set by a VNC case): the panel then abstained exactly
where the model is at its best. A second, unfitted witness answers that case:
:func:`~napari_bnadapt.adabn.need.adaptation_needed` finds the target's BatchNorm statistics within
the noise floor of the image itself (the model's own parameters, nothing fitted on calibration cases).
The image is then like the model's training data, the source statistics are kept (the workflow's
guard), and the model's held-out in-domain IoU (its model card) is what applies: the stated bound is
``min(level, held-out IoU)``. The calibration only checks the route (``in_domain``): it is used when at
least one calibration case took it and none had a true IoU below what it would have stated. Measured
(``benchmarks/bench_trust.py``): the noise floor was met by in-domain targets only, never by a
cross-lab one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .names import RELIABLE_AT, SUCCESS_IOU, UNRELIABLE_BELOW
from .witnesses import TRUST_WITNESSES, WITNESS_NAMES, WITNESS_TEXT, foreground_match

#: The levels (IoU) a trust calibration may promise; :func:`choose_rule` picks one by validation.
TRUST_LEVELS: tuple[float, ...] = (0.6, 0.7, 0.8)

#: The accepted foreground-fraction range is widened by this factor on each side.
FOREGROUND_SLACK = 2.0

#: The accepted range of the object-size ratio is widened by this factor on each side.
SIZE_SLACK = 1.5

#: Fewer accepted calibration cases than this: the calibration states no bound at all.
MIN_ACCEPTED = 5

#: Version of the stored trust calibration.
TRUST_VERSION = 1

#: A stated bound above the true IoU, or "reliable" below this true IoU, is a false promise.
FALSE_RELIABLE_BELOW = 0.6

NO_GUARANTEE = "no guarantee"

#: The sentence of an abstention because a witness is outside the covered region.
UNLIKE_SENTENCE = ("No guarantee: this image is unlike anything the model was checked on ({why}); look at a few "
                   "slices, or run a spot check.")


@dataclass(frozen=True)
class TrustCase:
    """One calibration case: a model adapted to a labelled target.

    Attributes
    ----------
    model, target, volume : str
        Which model, which target, and the real volume the target derives from (the unit left out).
    iou : float
        True IoU of the adapted model.
    witnesses : dict of str to float
        :data:`~napari_bnadapt.bound.witnesses.WITNESS_NAMES` values.
    foreground_fraction : float
    blank : bool
    gated : bool
        A gate signal of the reliability report failed (the verdict is then ``unreliable`` anyway).
    in_domain : bool
        The target's statistics were within the noise floor (:func:`~napari_bnadapt.adabn.need.adaptation_needed`
        said "not needed"): the in-domain route applies.
    heldout_iou : float or None
        The model's held-out in-domain IoU from its model card (:func:`heldout_iou`).
    size_ratio : float
        The ``size_ratio`` witness (NaN: not measured).
    """

    model: str
    target: str
    volume: str
    iou: float
    witnesses: dict[str, float]
    foreground_fraction: float
    blank: bool = False
    gated: bool = False
    in_domain: bool = False
    heldout_iou: float | None = None
    size_ratio: float = math.nan


def heldout_iou(meta: Mapping[str, Any] | None) -> float | None:
    """A model's held-out in-domain IoU from its card: the test IoU, else the validation IoU (None: neither)."""
    metrics = ((meta or {}).get("training") or {}).get("metrics") or {}
    for key in ("test_iou", "val_iou"):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            return float(v)
    return None


def in_domain_bound(level: float, heldout: float | None) -> float | None:
    """What the in-domain route states: the level, or the model's held-out IoU when that is lower."""
    return None if heldout is None else min(float(level), float(heldout))


def case_from_row(row: Mapping[str, Any], heldout: float | None = None) -> TrustCase:
    """A :class:`TrustCase` from a row of ``benchmarks/results/bench_trust.json`` (``heldout``: the
    model's held-out IoU, :func:`heldout_iou`)."""
    w = row["witnesses"]
    values = {k: float(w[k]) if w[k] is not None else math.nan for k in WITNESS_NAMES}
    values["foreground_match"] = foreground_match(row["features"]["fg_logratio"])
    return TrustCase(model=row["model"], target=row["target"], volume=row["volume"], iou=float(row["iou"]),
                     witnesses=values,
                     foreground_fraction=float(w["foreground_fraction"]), blank=bool(w["blank"]),
                     gated=bool(row.get("gate_failures")), in_domain=row.get("needed") is False,
                     heldout_iou=heldout, size_ratio=float(w.get("size_ratio") or math.nan))


@dataclass
class TrustDecision:
    """What :func:`trust_decide` concluded.

    Attributes
    ----------
    verdict : str
        ``reliable``, ``uncertain``, ``unreliable`` or ``no guarantee``.
    bound : float or None
        The stated lower bound on the IoU (None: none stated).
    reason : str
        One sentence, for an abstention (empty otherwise).
    failing : list of (witness, value, threshold)
        The witnesses outside the covered region.
    passing : list of str
        The witnesses inside it.
    route : str
        ``witnesses`` or ``in-domain`` (the noise-floor route of the module docstring).
    outside : str
        ``foreground fraction`` or ``object size`` when that lies outside its calibrated range.
    """

    verdict: str
    bound: float | None = None
    reason: str = ""
    failing: list[tuple[str, float, float]] = field(default_factory=list)
    passing: list[str] = field(default_factory=list)
    route: str = "witnesses"
    outside: str = ""


def _accept(w: np.ndarray, thr: np.ndarray) -> np.ndarray:
    return np.all(np.nan_to_num(w, nan=-np.inf) >= thr[None, :], axis=1)


def fit_trust(cases: Sequence[TrustCase], *, level: float = SUCCESS_IOU, witnesses: Sequence[str] | None = None,
              reliable_at: float = RELIABLE_AT, unreliable_below: float = UNRELIABLE_BELOW) -> dict[str, Any]:
    """Fit a trust calibration (see the module docstring) on cases with a known IoU.

    Parameters
    ----------
    cases : sequence of TrustCase
        Blank cases are left out (a blank stack always abstains).
    level : float, default SUCCESS_IOU (0.7)
        The IoU promised inside the accepted region: no accepted case may have a lower IoU.
    witnesses : sequence of str, optional
        The witnesses to threshold (default: every one of :data:`TRUST_WITNESSES` the cases carry).
    reliable_at, unreliable_below : float
        Verdict thresholds on the bound.

    Returns
    -------
    dict
        ``thresholds``, ``foreground_range``, ``bound`` (None when fewer than :data:`MIN_ACCEPTED`
        cases are accepted), ``n``, ``n_accepted``, ``verdict_thresholds``, ``version``.
    """
    usable = [c for c in cases if not c.blank]
    if len(usable) < MIN_ACCEPTED:
        raise BNAdaptError(f"{len(usable)} calibration cases are too few for a trust calibration "
                           f"(at least {MIN_ACCEPTED})")
    names = tuple(k for k in (witnesses or TRUST_WITNESSES) if any(k in c.witnesses for c in usable))
    if not names:
        raise BNAdaptError(f"none of the witnesses {list(witnesses or TRUST_WITNESSES)} was measured in the cases")
    w = np.array([[c.witnesses.get(k, math.nan) for k in names] for c in usable], dtype=np.float64)
    y = np.array([c.iou for c in usable])
    bad = y < level
    wn = np.nan_to_num(w, nan=-np.inf)
    # the best thresholds lie at values of successful cases (or -inf: that witness unused)
    grids = [np.unique(np.concatenate([[-np.inf], col[~bad & np.isfinite(col)]])) for col in w.T]
    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(names))
    best_count, best_acc = 0, np.zeros(len(usable), bool)
    for a in range(0, len(mesh), 20000):
        chunk = mesh[a:a + 20000]
        acc = np.all(wn[None, :, :] >= chunk[:, None, :], axis=2)  # (candidates, cases)
        counts = np.where(np.any(acc & bad[None, :], axis=1), -1, acc.sum(axis=1))
        i = int(np.argmax(counts))
        if counts[i] > best_count:
            best_count, best_acc = int(counts[i]), acc[i]
    accepted = best_acc
    if accepted.any():
        thr = np.min(wn[accepted], axis=0)  # raised to the covered region
    else:
        thr = np.full(len(names), np.inf)
    fg = np.array([c.foreground_fraction for c in usable])[accepted]
    sizes = np.array([c.size_ratio for c in usable])[accepted]
    sizes = sizes[np.isfinite(sizes)]
    n_acc = int(accepted.sum())
    bound = float(level) if n_acc >= MIN_ACCEPTED else None
    route = [(c.iou, in_domain_bound(level, c.heldout_iou)) for c in usable
             if c.in_domain and c.heldout_iou is not None]
    return {
        "version": TRUST_VERSION,
        "thresholds": {k: float(v) for k, v in zip(names, thr)},
        "foreground_range": ([float(fg.min() / FOREGROUND_SLACK), float(min(1.0, fg.max() * FOREGROUND_SLACK))]
                             if n_acc else [math.nan, math.nan]),
        "size_range": ([float(sizes.min() / SIZE_SLACK), float(sizes.max() * SIZE_SLACK)]
                       if len(sizes) >= MIN_ACCEPTED else [math.nan, math.nan]),
        "bound": None if bound is None else float(bound),
        "level": float(level),
        "accepted_iou_min": float(y[accepted].min()) if n_acc else None,
        "n": len(usable),
        "n_accepted": n_acc,
        "n_rejected_success": int(np.sum(~accepted & ~bad)),
        "in_domain": {"n": len(route), "iou_min": min((r[0] for r in route), default=None),
                      "n_contradicted": sum(r[0] < r[1] for r in route),
                      "enabled": bool(route) and all(r[0] >= r[1] for r in route)},
        "verdict_thresholds": {"reliable": reliable_at, "unreliable": unreliable_below},
        "models": sorted({c.model for c in usable}),
        "volumes": sorted({c.volume for c in usable}),
    }


def trust_decide(trust: Mapping[str, Any] | None, witnesses: Mapping[str, float] | None,
                 foreground_fraction: float | None = None, *, blank: bool = False,
                 gated: bool = False, in_domain: bool = False, heldout: float | None = None,
                 size_ratio: float | None = None) -> TrustDecision:
    """The verdict from the witnesses and a trust calibration.

    Parameters
    ----------
    trust : dict or None
        ``model.meta["trust"]`` (:func:`fit_trust`); None: no number can be stated.
    witnesses : mapping or None
        The measured witnesses (:meth:`~napari_bnadapt.bound.witnesses.Witnesses.values`).
    foreground_fraction : float, optional
        Share of pixels the adapted model calls mitochondria on the witnesses' crops.
    blank : bool
        The stack is blank or nearly constant: always ``no guarantee``.
    gated : bool
        A gate signal of the reliability report failed: ``unreliable``, no number.
    in_domain : bool
        The target's statistics are within the noise floor ("no adaptation needed").
    heldout : float or None
        The model's held-out in-domain IoU (:func:`heldout_iou`); the in-domain route needs it.
    size_ratio : float, optional
        The ``size_ratio`` witness; outside the calibration's ``size_range``: no number.

    Returns
    -------
    TrustDecision
    """
    if blank:
        return TrustDecision(NO_GUARANTEE, None, "No guarantee: the image is blank or nearly constant, so there is "
                             "nothing to segment and no check means anything; look at the data.")
    if gated:
        return TrustDecision("unreliable", None, "")
    if trust is None or witnesses is None:
        return TrustDecision(NO_GUARANTEE, None, "No guarantee: this model was never checked on labelled volumes "
                             "of other labs; look at a few slices, or run a spot check.")
    outside, why_outside = _outside_ranges(trust, foreground_fraction, size_ratio)
    route = in_domain_bound(float(trust.get("level", SUCCESS_IOU)), heldout)
    if in_domain and route is not None and not outside and (trust.get("in_domain") or {}).get("enabled"):
        return TrustDecision(_verdict(trust, route), route, "", [], ["noise floor"], "in-domain")
    failing, passing = [], []
    for k, t in trust["thresholds"].items():
        v = float(witnesses.get(k, math.nan))
        if not (math.isfinite(v) and v >= float(t)):
            failing.append((k, v, float(t)))
        else:
            passing.append(k)
    out = TrustDecision(NO_GUARANTEE, None, "", failing, passing)
    if failing:
        k, v, t = min(failing, key=lambda f: (f[1] - f[2]) if math.isfinite(f[1]) else -math.inf)
        d = 2 if f"{v:.2f}" != f"{t:.2f}" else 3 if f"{v:.3f}" != f"{t:.3f}" else 4
        why = f"the {WITNESS_TEXT[k]} is {v:.{d}f}, below {t:.{d}f}, the lowest of any case the model was checked on"
        if passing:
            why += f"; the witnesses disagree ({', '.join(p.replace('_', ' ') for p in passing)} would have passed)"
        out.reason = UNLIKE_SENTENCE.format(why=why)
        return out
    if outside:
        out.reason, out.outside = UNLIKE_SENTENCE.format(why=why_outside), outside
        return out
    if trust.get("bound") is None:
        out.reason = ("No guarantee: too few of the volumes this model was checked on were like this one to "
                      "state a bound; look at a few slices, or run a spot check.")
        return out
    out.bound = float(trust["bound"])
    out.verdict = _verdict(trust, out.bound)
    return out


def _outside_ranges(trust: Mapping[str, Any], fg: float | None, size: float | None) -> tuple[str, str]:
    """Which of the foreground fraction and the object-size ratio lies outside its calibrated range,
    and why in words (``("", "")`` if neither)."""
    lo, hi = trust.get("foreground_range", [math.nan, math.nan])
    if fg is not None and math.isfinite(lo) and not lo <= fg <= hi:
        return "foreground fraction", (f"the adapted model marks {fg:.1%} of the pixels as mitochondria, outside "
                                       f"the {lo:.1%}-{hi:.1%} of the cases the model was checked on")
    lo, hi = trust.get("size_range", [math.nan, math.nan])
    if size is not None and math.isfinite(size) and math.isfinite(lo) and not lo <= size <= hi:
        return "object size", (f"the objects it finds are {size:.2g} times the size of the mitochondria it was "
                               f"trained on, outside the {lo:.2g}-{hi:.2g} times of the cases the model was checked "
                               "on (another structure, or another scale: is the pixel size right?)")
    return "", ""


def _verdict(trust: Mapping[str, Any], bound: float) -> str:
    thr = trust.get("verdict_thresholds", {})
    return ("reliable" if bound >= float(thr.get("reliable", RELIABLE_AT))
            else "unreliable" if bound < float(thr.get("unreliable", UNRELIABLE_BELOW)) else "uncertain")


def _summary(decisions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    stated = [d for d in decisions if d["bound"] is not None]
    gaps = [d["iou"] - d["bound"] for d in stated]
    verdicts: dict[str, int] = {}
    for d in decisions:
        verdicts[d["verdict"]] = verdicts.get(d["verdict"], 0) + 1
    by_verdict = {}
    for v in sorted({d["verdict"] for d in stated}):
        sel = [d for d in stated if d["verdict"] == v]
        by_verdict[v] = {"n": len(sel), "coverage": float(np.mean([d["iou"] >= d["bound"] for d in sel]))}
    return {
        "n": len(decisions),
        "n_stated": len(stated),
        "coverage": float(np.mean([g >= 0 for g in gaps])) if stated else math.nan,
        "median_gap": float(np.median(gaps)) if stated else math.nan,
        "verdicts": verdicts,
        "by_verdict": by_verdict,
        "false_promises": [d for d in decisions if d["why"]],
    }


def _decision_row(trust: Mapping[str, Any], c: TrustCase) -> dict[str, Any]:
    d = trust_decide(trust, c.witnesses, c.foreground_fraction, blank=c.blank, gated=c.gated,
                     in_domain=c.in_domain, heldout=c.heldout_iou, size_ratio=c.size_ratio)
    why = []
    if d.bound is not None and d.bound > c.iou:
        why.append(f"stated bound {d.bound:.3f} above the true IoU")
    if d.verdict == "reliable" and c.iou < FALSE_RELIABLE_BELOW:
        why.append(f"'reliable' with a true IoU below {FALSE_RELIABLE_BELOW}")
    return {"model": c.model, "target": c.target, "volume": c.volume, "iou": c.iou, "verdict": d.verdict,
            "bound": d.bound, "reason": d.reason, "route": d.route, "why": "; ".join(why)}


def leave_one_volume_out(cases: Sequence[TrustCase], **fit_kw: Any) -> dict[str, Any]:
    """Fit on the cases of all volumes but one, decide on the left-out volume's cases; every volume in turn.

    Returns
    -------
    dict
        ``folds`` (per left-out volume: ``judged_on``, ``fitted_on``, ``calibration`` and the summary:
        ``n``, ``n_stated``, ``coverage``, ``median_gap``, ``verdicts``, ``by_verdict``,
        ``false_promises``), ``pooled`` (the same over all left-out decisions) and ``decisions``
        (one row per case, decided by the fold that left its volume out).
    """
    volumes = sorted({c.volume for c in cases})
    if len(volumes) < 2:
        raise BNAdaptError("leave-one-volume-out validation needs cases from at least two volumes")
    folds, decisions = [], []
    for v in volumes:
        fit = [c for c in cases if c.volume != v]
        test = [c for c in cases if c.volume == v]
        cal = fit_trust(fit, **fit_kw)
        rows = [_decision_row(cal, c) for c in test]
        decisions += rows
        folds.append({"judged_on": v, "fitted_on": ", ".join(sorted({c.volume for c in fit})),
                      "calibration": cal, **_summary(rows)})
    pooled = {"judged_on": "all (pooled)", **_summary(decisions)}
    return {"folds": folds, "pooled": pooled, "decisions": decisions}


def choose_rule(cases: Sequence[TrustCase], levels: Sequence[float] = TRUST_LEVELS,
                witness_sets: Sequence[Sequence[str]] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Which witnesses to threshold and which level to promise, chosen by leave-one-volume-out validation.

    Every (witness set, level) pair is validated leaving one volume out. Chosen: among the pairs with
    at least one bound stated and NO false promise (no stated bound above the true IoU), the highest
    level, then the most bounds stated, then the most witnesses (more witnesses, more ways to abstain).
    When no pair is free of false promises: the highest coverage, then the lowest level. The choice
    is made on the same validation that reports it, so the figures of the chosen pair are optimistic;
    with two volumes no nested validation is possible (docs/reliability.md says so). The in-domain
    route takes no part in the choice (its bounds would make any level look free of false promises);
    it then states at most the chosen level.

    Returns
    -------
    (dict, list of dict)
        ``{"witnesses": [...], "level": float}``, and one row per pair (``witnesses``, ``level``, ``n``,
        ``n_stated``, ``coverage``, ``median_gap``, ``n_false_promises``, ``n_false_reliable``).
    """
    import itertools

    cases = [replace(c, in_domain=False) for c in cases]
    present = [k for k in TRUST_WITNESSES if any(k in c.witnesses for c in cases)]
    if witness_sets is None:
        witness_sets = [list(sub) for r in range(1, len(present) + 1) for sub in itertools.combinations(present, r)]
    table = []
    for ws in witness_sets:
        for lv in sorted(levels):
            p = leave_one_volume_out(cases, level=lv, witnesses=ws)["pooled"]
            table.append({"witnesses": list(ws), "level": lv, "n": p["n"], "n_stated": p["n_stated"],
                          "coverage": p["coverage"], "median_gap": p["median_gap"],
                          "n_false_promises": len(p["false_promises"]),
                          "n_false_reliable": sum("'reliable'" in d["why"] for d in p["false_promises"])})
    clean = [r for r in table if r["n_stated"] > 0 and r["n_false_promises"] == 0]
    if clean:
        best = max(clean, key=lambda r: (r["level"], r["n_stated"], len(r["witnesses"])))
    else:
        stated = [r for r in table if r["n_stated"] > 0] or table
        best = max(stated, key=lambda r: (np.nan_to_num(r["coverage"]), -r["level"], r["n_stated"]))
    return {"witnesses": best["witnesses"], "level": best["level"]}, table


def shipped_trust(cases: Sequence[TrustCase], **fit_kw: Any) -> dict[str, Any]:
    """The calibration to store in a model file: fitted on every case with the witnesses and level
    :func:`choose_rule` picks (unless ``level`` is given), with its leave-one-volume-out figures."""
    if "level" not in fit_kw:
        rule, table = choose_rule(cases)
        fit_kw.update(rule)
    else:
        table = []
    cal = fit_trust(cases, **fit_kw)
    lovo = leave_one_volume_out(cases, **fit_kw)
    p = lovo["pooled"]
    cal["rule_selection"] = table
    cal["validation"] = {
        "method": "leave one volume out",
        "n": p["n"], "n_stated": p["n_stated"], "coverage": p["coverage"], "median_gap": p["median_gap"],
        "by_verdict": p["by_verdict"], "n_false_promises": len(p["false_promises"]),
        "volumes": [f["judged_on"] for f in lovo["folds"]],
    }
    return cal
