"""Did adaptation work? A label-free reliability check with a calibrated lower bound on the IoU.

Source side: the SOURCE model on the SOURCE images (the statistics stored in
the model file, :mod:`napari_bnadapt.source_statistics`). Target side: the
ADAPTED model on the TARGET images. For every latent space (ls0..ls4, the
decoder's last BatchNorm ``dec``, the output logits ``out``) the report gives
the W2^2 distance between the two Gaussians with its sampling-noise floor and
effective sample size, and the same distance for the source model WITHOUT
adaptation (source model on the target images), so the gain of adapting shows.

With a calibration in the model file (:func:`napari_bnadapt.calibration.calibrate`)
the distance in the calibrated space is turned into a lower bound on the IoU of
the adapted model, and a verdict:

* ``unreliable``: a label-free output signal lies outside the range seen on
  successful calibration shifts (the predicted foreground fraction or the
  confidence moved too far: e.g. inverted contrast), so no bound is claimed; or
  the bound is below ``UNRELIABLE_BELOW`` (0.5);
* ``reliable``: the bound is at least ``RELIABLE_AT`` (0.8);
* ``uncertain``: anything in between, or no calibration, or too few samples.

The paper's supervised variant (adapted model vs a model trained on target
labels) is :func:`supervised_distances` (research mode).
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import BNAdaptError
from .progress import Progress, Result, run_to_end

__all__ = [
    "LatentDistance",
    "ReliabilityReport",
    "reliability",
    "reliability_iter",
    "calibration_curve",
    "distance_table",
    "signal_features",
    "decide",
    "supervised_distances",
    "supervised_distances_iter",
    "DEFAULT_GATE",
]

SPACES = ("ls0", "ls1", "ls2", "ls3", "ls4", "dec", "out")
_NORM_ARG = {"source": "source", "target": "target", "plain": None}
_NORM_LABEL = {"source": "snW2²", "target": "tnW2²", "plain": "W2²"}
RELIABLE_AT = 0.8
UNRELIABLE_BELOW = 0.5

#: Gate used when the model has source statistics but no calibration: the
#: predicted foreground fraction within a factor 2 of the source's, the mean
#: confidence at most 0.02 below it. The confidence limit is the bundled toy
#: model's calibrated gate (0.021), rounded; it is NOT validated for other models.
DEFAULT_GATE: dict[str, list[float]] = {
    "fg_logratio": [-math.log(2.0), math.log(2.0)],
    "conf_drop": [-math.inf, 0.02],
}

_FEATURE_TEXT = {
    "fg_logratio": "predicted foreground fraction",
    "conf_drop": "prediction confidence",
    "unc_logratio": "share of uncertain pixels",
    "ent_logratio": "prediction entropy",
}


def candidate_key(space: str, normalize: str, form: str) -> str:
    """``"ls0|source|full"``: the key of one distance candidate."""
    return f"{space}|{normalize}|{form}"


def parse_key(key: str) -> tuple[str, str, str]:
    space, norm, form = key.split("|")
    return space, norm, form


def distance_label(space: str, normalize: str, form: str) -> str:
    """Readable name of a distance, e.g. ``snW2² of dec (full)``."""
    return f"{_NORM_LABEL[normalize]} of {space}" + (" (diagonal)" if form == "diagonal" else "")


# ================================================================ numbers
def distance_table(
    source_moments: Mapping[str, Any],
    target_moments: Mapping[str, Any],
    *,
    spaces: Any = None,
    normalizations: Any = ("source", "target", "plain"),
    forms: Any = ("full", "diagonal"),
    keys: Any = None,
    min_samples_per_dim: float = 10.0,
) -> dict[str, Any]:
    """W2^2 distances (with floors) for every space x normalisation x form.

    Parameters
    ----------
    source_moments, target_moments : mapping of str to GaussianMoments
        The source Gaussians (reference, first) and the target ones (second).
    spaces, normalizations, forms : sequences
        What to compute; normalisations ``"source"``, ``"target"``, ``"plain"``.

    keys : sequence of str, optional
        Compute only these ``"space|normalize|form"`` keys.
    min_samples_per_dim : float, default 10
        A full form needs an effective sample size of at least this times the
        dimension in both Gaussians; otherwise it is not computed at all (value
        nan, ``meaningful`` False: under-sampled covariances are expensive to
        handle and their value is noise).

    Returns
    -------
    dict of str to wasserstein.Distance
        Keyed ``"space|normalize|form"``; no fallback from the full to the
        diagonal form (a full form that is not meaningful stays flagged).
    """
    from .wasserstein import Distance, distance, noise_floor

    wanted = None if keys is None else set(keys)
    out = {}
    for space in spaces or [s for s in source_moments if s in target_moments]:
        if space not in source_moments or space not in target_moments:
            continue
        a, b = source_moments[space], target_moments[space]
        for norm in normalizations:
            for form in forms:
                key = candidate_key(space, norm, form)
                if wanted is not None and key not in wanted:
                    continue
                ea, eb, n = float(a.effective_count), float(b.effective_count), int(a.dim)
                full_stored = a.full_covariance and b.full_covariance
                if form == "full" and full_stored and min(ea, eb) < min_samples_per_dim * n:
                    cov = 0.5 * (a.cov + b.cov) if norm == "plain" else None
                    floor = noise_floor(n, ea, eb, _NORM_ARG[norm], form="full", cov=cov)
                    out[key] = Distance(
                        math.nan, floor, ea, eb, n, "full", _NORM_ARG[norm], False,
                        f"too few effective samples for a {n}-dimensional covariance "
                        f"(m_eff {min(ea, eb):,.0f} < {min_samples_per_dim:g} n = {min_samples_per_dim * n:,.0f})",
                    )
                    continue
                out[key] = distance(a, b, _NORM_ARG[norm], form=form, fallback=False,
                                    min_samples_per_dim=min_samples_per_dim)
    return out


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
    eps = 1e-4

    def lr(k: str) -> float:
        return float(math.log((target_signals[k] + eps) / (source_signals[k] + eps)))

    return {
        "fg_logratio": lr("foreground_fraction"),
        "conf_drop": float(source_signals["confidence"] - target_signals["confidence"]),
        "unc_logratio": lr("uncertain_fraction"),
        "ent_logratio": lr("entropy"),
        "foreground_fraction": float(target_signals["foreground_fraction"]),
        "confidence": float(target_signals["confidence"]),
    }


def decide(
    calibration: Mapping[str, Any] | None,
    distances: Mapping[str, Any],
    features: Mapping[str, float],
    *,
    reliable_at: float | None = None,
    unreliable_below: float | None = None,
) -> dict[str, Any]:
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
    dict
        ``bound`` (float or None), ``verdict``, ``x`` (calibration x or None),
        ``gate_failures`` (list of (feature, value, (lo, hi))), ``key``,
        ``meaningful`` (bool), ``reason`` (str), ``beyond_calibration`` (bool).
    """
    from .calibration import LowerBound

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
    out: dict[str, Any] = {
        "bound": None, "verdict": "uncertain", "x": None, "gate_failures": failures,
        "key": None, "meaningful": False, "reason": "", "beyond_calibration": False,
    }
    if calibration is None:
        out["reason"] = "the model has no calibration"
        if failures:
            out["verdict"] = "unreliable"
        return out
    key = calibration["feature"]["key"]
    out["key"] = key
    d = distances.get(key)
    if d is None or isinstance(d, (int, float)):
        value = math.nan if d is None else float(d)
        floor, meaningful, reason = 0.0, math.isfinite(value), ""
    else:
        value, floor, meaningful, reason = float(d.value), float(d.floor), bool(d.meaningful), d.reason
    out["meaningful"] = meaningful and math.isfinite(value)
    if math.isfinite(value) and value >= 0:
        ref = float(calibration.get("floor_reference", 0.0) or 0.0)
        extra = max(0.0, ref - floor) if math.isfinite(floor) else 0.0
        out["x"] = math.log1p(value + extra)
    if failures:
        out["bound"] = 0.0
        out["verdict"] = "unreliable"
        return out
    if not out["meaningful"] or out["x"] is None:
        out["reason"] = reason or "the calibrated distance could not be computed"
        return out
    bound = LowerBound.from_dict(calibration["curve"])
    b = float(bound(out["x"]))
    out["beyond_calibration"] = out["x"] > bound.x_max
    out["bound"] = b
    if b >= rel:
        out["verdict"] = "reliable"
    elif b < unrel:
        out["verdict"] = "unreliable"
    return out


# ================================================================ report
@dataclass
class LatentDistance:
    """One latent space of the report.

    Attributes
    ----------
    name : str
        ``ls0``..``ls4``, ``dec`` or ``out``.
    value : float
        W2^2 between the source Gaussian and the ADAPTED model on the target (nan if not computable).
    value_source_only : float
        The same for the SOURCE model on the target (no adaptation).
    floor : float
        Sampling-noise floor of ``value`` (values near it are indistinguishable from 0).
    m_eff : float
        Effective sample size of the target statistics (adapted model).
    dim : int
        Channels.
    form : str
        "full" or "diagonal".
    normalize : str
        "source", "target" or "plain".
    meaningful : bool
        False when the value must not be used; ``reason`` says why.
    reason : str
    calibrated : bool
        True for the space/normalisation the calibration uses.
    """

    name: str
    value: float
    value_source_only: float
    floor: float
    m_eff: float
    dim: int
    form: str
    normalize: str
    meaningful: bool
    reason: str = ""
    calibrated: bool = False

    @property
    def label(self) -> str:
        return distance_label(self.name, self.normalize, self.form)


@dataclass
class ReliabilityReport:
    """What :func:`reliability` found.

    Attributes
    ----------
    iou_lower_bound : float or None
        Calibrated lower bound on the IoU of the adapted model (about 95 % of
        calibration shifts at this distance reached it); 0.0 when a gate signal
        says the bound does not apply; None without calibration or when the
        calibrated distance is not meaningful.
    verdict : str
        "reliable", "uncertain" or "unreliable".
    sentence : str
        One sentence for a biologist.
    distances : list of LatentDistance
        Per latent space, in the calibrated normalisation and form (snW2²,
        full covariance where stored, without calibration).
    signals : dict of str to float
        The label-free output signals (see :func:`signal_features`), for the
        adapted model; ``*_source_only`` for the source model on the target;
        ``source_foreground_fraction`` and ``source_confidence`` from the model file.
    calibration_x : float or None
        The target's position on the calibration curve's x axis (adapted model).
    calibration_x_source_only : float or None
        The same for the source model without adaptation.
    x_label : str or None
        The x axis of the calibration curve.
    bound_source_only : float or None
        The curve read at ``calibration_x_source_only`` (for comparison only:
        the curve was fitted on adapted models).
    gate_failures : list
        (signal, value, (low, high)) of the signals outside their calibrated range.
    calibration : dict
        Summary of the calibration (validated coverage and median gap, quantile).
    n_patches, n_voxels, device, seconds
        What was measured, where, how long.
    notes : list of str
        Caveats (beyond the calibrated range, too few samples, ...).
    """

    iou_lower_bound: float | None
    verdict: str
    sentence: str
    distances: list[LatentDistance]
    signals: dict[str, float]
    calibration_x: float | None
    calibration_x_source_only: float | None
    x_label: str | None = None
    bound_source_only: float | None = None
    gate_failures: list[Any] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    n_patches: int = 0
    n_voxels: int = 0
    device: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = asdict(self)
        return d

    def __str__(self) -> str:
        head = {"reliable": "RELIABLE", "uncertain": "UNCERTAIN", "unreliable": "UNRELIABLE"}[self.verdict]
        lines = [f"Reliability of the adaptation: {head}",
                 textwrap.fill(self.sentence, width=110, initial_indent="  ", subsequent_indent="  ")]
        if self.gate_failures:
            lines.append("  predicted IoU of the adapted model: no lower bound can be given (bound 0)")
        elif self.iou_lower_bound is not None:
            cal = self.calibration
            extra = ""
            if cal.get("validation_coverage") is not None:
                extra = (f" (calibrated bound: {cal['validation_coverage']:.0%} of held-out test shifts reached it, "
                         f"median gap {cal['validation_median_gap']:.2f})")
            lines.append(f"  predicted IoU of the adapted model >= {self.iou_lower_bound:.2f}{extra}")
        if self.calibration_x is not None and self.x_label:
            so = (f"; without adaptation {self.calibration_x_source_only:.2f}"
                  if self.calibration_x_source_only is not None else "")
            lines.append(f"  {self.x_label}: {self.calibration_x:.2f}{so}")
        s = self.signals
        if "foreground_fraction" in s and "source_foreground_fraction" in s:
            lines.append(
                f"  predicted mitochondria: {s['foreground_fraction']:.1%} of the pixels "
                f"(training data {s['source_foreground_fraction']:.1%}; without adaptation "
                f"{s.get('foreground_fraction_source_only', math.nan):.1%})"
            )
            lines.append(
                f"  confidence: {s['confidence']:.3f} (training data {s['source_confidence']:.3f}; "
                f"without adaptation {s.get('confidence_source_only', math.nan):.3f})"
            )
        lines.append("  latent distances, source model on source data vs (adapted | unadapted) model on this data:")
        for d in self.distances:
            mark = "*" if d.calibrated else " "
            val = _fmt(d.value)
            lines.append(
                f"   {mark}{d.name:<4} {_NORM_LABEL[d.normalize]}{' diag' if d.form == 'diagonal' else ''}: "
                f"{val:>9} | {_fmt(d.value_source_only):>9}   floor {_fmt(d.floor)}, m_eff {d.m_eff:,.0f}, n {d.dim}"
                + ("" if d.meaningful else f"  [not meaningful: {d.reason}]")
            )
        if any(d.calibrated for d in self.distances):
            lines.append("   (* the space the calibration uses)")
        for n in self.notes:
            lines.append(f"  note: {n}")
        lines.append(f"  measured on {self.n_patches} patches ({self.n_voxels:,} voxels) on {self.device} "
                     f"in {self.seconds:.1f} s")
        return "\n".join(lines)


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def calibration_curve(model: Any) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The calibrated lower-bound curve of a model, for plotting.

    Returns
    -------
    (x, y, label) or None
        Step-function points (x: ``log(1 + distance)``, y: lower bound on the
        adapted IoU) and the x-axis label; None when the model has no calibration.
    """
    from .calibration import LowerBound

    cal = (getattr(model, "meta", None) or {}).get("calibration")
    if not cal:
        return None
    x, y = LowerBound.from_dict(cal["curve"]).curve()
    return x, y, cal["feature"]["x_label"]


def _sentence(dec: dict[str, Any], features: Mapping[str, float], source_signals: Mapping[str, float],
              calibrated: bool, coverage: float | None = None) -> str:
    if dec["gate_failures"]:
        name, v, _ = dec["gate_failures"][0]
        if name == "fg_logratio":
            return (
                f"Do not trust this result: the adapted model marks {features['foreground_fraction']:.0%} of the "
                f"image as mitochondria against {source_signals['foreground_fraction']:.0%} on its training data, "
                "so it sees this data very differently (for example with inverted contrast); check by eye or "
                "annotate a few slices."
            )
        if name == "conf_drop":
            return (
                f"Do not trust this result: the adapted model is far less sure of itself than on its training data "
                f"(confidence {features['confidence']:.3f} against {source_signals['confidence']:.3f}), a sign of "
                "failed segmentation (for example too faint or inverted contrast); check by eye."
            )
        return (
            f"Do not trust this result: the {_FEATURE_TEXT.get(name, name)} is outside the range seen when the "
            "model was calibrated; check by eye."
        )
    b = dec["bound"]
    if not calibrated:
        return (
            "No verdict possible: this model file has no calibration, so the distances cannot be turned into "
            "an expected quality; inspect the segmentation by eye (or calibrate the model)."
        )
    if b is None:
        return (
            "No verdict possible: too little data to measure the distance reliably; use more slices or "
            "patches, and inspect the segmentation by eye."
        )
    if dec["verdict"] == "reliable":
        held = (f"; this calibrated bound held for {coverage:.0%} of held-out test shifts"
                if coverage is not None and math.isfinite(coverage) else "")
        return (
            f"Adaptation very likely worked: expect an overlap with the true mitochondria (IoU) of at least "
            f"{b:.2f}{held}."
        )
    if dec["beyond_calibration"]:
        return (
            "Do not trust this result without checking: this data is further from the training data than any "
            "of the test shifts the model was calibrated on, so no quality can be promised."
        )
    if dec["verdict"] == "unreliable":
        return (
            f"Adaptation may well have failed: for data this different from the training data the overlap "
            f"(IoU) can drop to {b:.2f}; check the segmentation carefully before using it."
        )
    return (
        f"Adaptation probably helped, but expect mistakes: at this distance from the training data the "
        f"overlap (IoU) was at least {b:.2f}; check a few slices by eye."
    )


# ================================================================ running
def measure_pair_iter(
    source_model: Any,
    adapted_model: Any,
    view: Any,
    norm: Any,
    plan: Any,
    *,
    batch_size: int,
    device: Any,
    full_cov_max_dim: int,
) -> Iterator[Progress | Result[tuple[Any, Any, Any, Any]]]:
    """Moments and output signals of the adapted and of the source model on the same target patches.

    Yields Progress, then Result((moments_adapted, signals_adapted, moments_source_only, signals_source_only)).
    """
    from .patches import iter_patch_batches
    from .source_statistics import measure_iter

    n_batches = -(-len(plan.corners) // batch_size)
    results = []
    for model, stage in ((adapted_model, "measuring the adapted model"), (source_model, "measuring the source model")):
        batches = iter_patch_batches(view, plan, norm.apply, batch_size)
        for item in measure_iter(model, batches, n_batches, device=device, full_cov_max_dim=full_cov_max_dim,
                                 stage=stage):
            if isinstance(item, Result):
                results.append(item.value)
            else:
                yield item
    (mt, st), (ms, ss) = results
    yield Result((mt, st, ms, ss))


def reliability_iter(
    source_model: Any,
    adapted_model: Any,
    images: Any,
    *,
    device: Any = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    reliable_at: float | None = None,
    unreliable_below: float | None = None,
) -> Iterator[Progress | Result[ReliabilityReport]]:
    """Generator form of :func:`reliability`: yields Progress, finally ``Result(ReliabilityReport)``."""
    from .device import get_device
    from .images import check_stack, resolve_normalization
    from .patches import plan_patches
    from .source_statistics import model_normalization, read_source_statistics

    t0 = time.perf_counter()
    stats = read_source_statistics(source_model)
    if stats is None:
        raise BNAdaptError(
            "this model file carries no source statistics, so its latent spaces cannot be compared with the "
            "training data; add them with compute_source_statistics(model, training_images) and save the model"
        )
    cal = (getattr(source_model, "meta", None) or {}).get("calibration")
    if cal is None:
        cal = (getattr(adapted_model, "meta", None) or {}).get("calibration")
    view = check_stack(images)
    norm = resolve_normalization(view, model_normalization(source_model), intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    dev = get_device(device)
    full_max = int(stats.provenance.get("full_cov_max_dim", 256))
    out = None
    for item in measure_pair_iter(source_model, adapted_model, view, norm, plan, batch_size=batch_size,
                                  device=dev, full_cov_max_dim=full_max):
        if isinstance(item, Result):
            out = item.value
        else:
            yield item
    assert out is not None
    mt, st, ms, ss = out
    if cal is not None:
        _, norm_c, form_c = parse_key(cal["feature"]["key"])
    else:
        norm_c, form_c = "source", None
    forms = (form_c,) if form_c else ("full", "diagonal")
    tab = distance_table(stats.moments, mt, normalizations=(norm_c,), forms=forms)
    tab_so = distance_table(stats.moments, ms, normalizations=(norm_c,), forms=forms)
    feats = signal_features(stats.signals, st)
    feats_so = signal_features(stats.signals, ss)
    dec = decide(cal, tab, feats, reliable_at=reliable_at, unreliable_below=unreliable_below)
    dec_so = decide(cal, tab_so, feats_so)
    rows = []
    for space in stats.moments:
        if space not in mt:
            continue
        if form_c:
            key = candidate_key(space, norm_c, form_c)
        else:  # no calibration: full where stored and meaningful, else diagonal
            kf = candidate_key(space, norm_c, "full")
            key = kf if tab[kf].meaningful else candidate_key(space, norm_c, "diagonal")
        d, dso = tab[key], tab_so[key]
        rows.append(LatentDistance(space, float(d.value), float(dso.value), float(d.floor), float(d.m_eff_other),
                                   int(d.dim), d.form, norm_c, bool(d.meaningful), d.reason,
                                   calibrated=cal is not None and key == cal["feature"]["key"]))
    signals = dict(feats)
    for k, v in feats_so.items():
        signals[f"{k}_source_only"] = v
    signals["source_foreground_fraction"] = float(stats.signals["foreground_fraction"])
    signals["source_confidence"] = float(stats.signals["confidence"])
    notes = []
    if dec["beyond_calibration"]:
        notes.append("the distance is beyond the largest one seen in the calibration: no bound is claimed")
    if cal is not None and not dec["meaningful"] and not dec["gate_failures"]:
        notes.append(f"the calibrated distance is not meaningful here: {dec['reason']}")
    cal_summary = {}
    x_label = None
    bound_so = None
    if cal is not None:
        x_label = cal["feature"]["x_label"]
        val = cal.get("validation", {})
        cal_summary = {
            "key": cal["feature"]["key"],
            "quantile": cal["curve"]["quantile"],
            "validation_coverage": val.get("coverage"),
            "validation_median_gap": val.get("median_gap"),
            "validation_n": val.get("n"),
        }
        from .calibration import LowerBound

        if dec_so["x"] is not None and math.isfinite(dec_so["x"]):
            bound_so = float(LowerBound.from_dict(cal["curve"])(dec_so["x"]))
    report = ReliabilityReport(
        iou_lower_bound=dec["bound"],
        verdict=dec["verdict"],
        sentence=_sentence(dec, feats, stats.signals, cal is not None, cal_summary.get("validation_coverage")),
        distances=rows,
        signals=signals,
        calibration_x=dec["x"] if cal is not None else None,
        calibration_x_source_only=dec_so["x"] if cal is not None else None,
        x_label=x_label,
        bound_source_only=bound_so,
        gate_failures=dec["gate_failures"],
        calibration=cal_summary,
        n_patches=len(plan.corners),
        n_voxels=plan.n_voxels,
        device=str(dev),
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
    yield Result(report)


def reliability(source_model: Any, adapted_model: Any, images: Any, **kwargs: Any) -> ReliabilityReport:
    """Check, without labels, whether adapting ``source_model`` to ``images`` worked.

    Parameters
    ----------
    source_model : UNet
        The model before adaptation, with source statistics (and ideally a
        calibration) in its model file.
    adapted_model : UNet
        The result of :func:`adapt` on these (or similar) images.
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only sampled patches are read.
    device : str, default "auto"
    intensity_range : (float, float), "auto" or None
        Grey-value mapping, as given to :func:`adapt`.
    n_patches : int or None, default None
        Random patches to measure (None: the whole stack when small, else
        64 x 256 x 256 voxels in random patches).
    patch_size : int, default 256
    batch_size : int, default 8
    seed : int, default 0
        Seed of the patch positions.
    reliable_at, unreliable_below : float, optional
        Override the calibration's verdict thresholds on the bound (0.8, 0.5).

    Returns
    -------
    ReliabilityReport
        ``iou_lower_bound``, ``verdict``, ``sentence``, per-space distances
        (adapted and unadapted) with floors and sample sizes, the output
        signals; ``print(report)`` gives a readable summary.

    Raises
    ------
    BNAdaptError
        The source model has no source statistics (see
        :func:`~napari_bnadapt.source_statistics.compute_source_statistics`).
    """
    return run_to_end(reliability_iter(source_model, adapted_model, images, **kwargs))


# ========================================================== research mode
def supervised_distances_iter(
    adapted_model: Any,
    target_model: Any,
    images: Any,
    *,
    device: Any = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    normalize: str = "source",
) -> Iterator[Progress | Result[list[LatentDistance]]]:
    """Generator form of :func:`supervised_distances`."""
    from .device import get_device
    from .images import check_stack, resolve_normalization
    from .patches import plan_patches

    view = check_stack(images)
    from .source_statistics import model_normalization

    norm = resolve_normalization(view, model_normalization(target_model), intensity_range)
    norm_a = resolve_normalization(view, model_normalization(adapted_model), intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    dev = get_device(device)
    from .patches import iter_patch_batches
    from .source_statistics import measure_iter

    n_batches = -(-len(plan.corners) // batch_size)
    res = []
    for model, nz, stage in ((target_model, norm, "measuring the target-trained model"),
                             (adapted_model, norm_a, "measuring the adapted model")):
        for item in measure_iter(model, iter_patch_batches(view, plan, nz.apply, batch_size), n_batches,
                                 device=dev, stage=stage):
            if isinstance(item, Result):
                res.append(item.value)
            else:
                yield item
    (m_ref, _), (m_ad, _) = res
    tab = distance_table(m_ref, m_ad, normalizations=(normalize,), forms=("full", "diagonal"))
    rows = []
    for space in m_ref:
        kf = candidate_key(space, normalize, "full")
        key = kf if tab[kf].meaningful else candidate_key(space, normalize, "diagonal")
        d = tab[key]
        rows.append(LatentDistance(space, float(d.value), math.nan, float(d.floor), float(d.m_eff_other), int(d.dim),
                                   d.form, normalize, bool(d.meaningful), d.reason))
    yield Result(rows)


def supervised_distances(adapted_model: Any, target_model: Any, images: Any, **kwargs: Any) -> list[LatentDistance]:
    """Research mode (the paper's variant): distances between the adapted model and a target-trained model.

    Both models run on the same (target) images; the reference Gaussian is the
    target-trained model's. Needs a model trained on TARGET labels, so it is a
    validation tool, not something a user without labels can run. Note that
    the two models have different weights, so their latent coordinates only
    correspond if they were trained alike (the paper's setting).

    Parameters
    ----------
    adapted_model, target_model : UNet
    images : array-like
        Target images.
    normalize : {"source", "target", "plain"}, default "source"
        "source" here means whitened by the target-trained model's Gaussian.
    device, intensity_range, n_patches, patch_size, batch_size, seed
        As in :func:`reliability`.

    Returns
    -------
    list of LatentDistance
        ``value_source_only`` is nan.
    """
    return run_to_end(supervised_distances_iter(adapted_model, target_model, images, **kwargs))
