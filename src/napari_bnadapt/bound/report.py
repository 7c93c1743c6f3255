"""The reliability report a user reads: per-space distances, the verdict and its sentence."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .decision import Decision
from .names import _NORM_LABEL, distance_label
from .validity import format_bound

_FEATURE_TEXT = {
    "fg_logratio": "predicted foreground fraction",
    "conf_drop": "prediction confidence",
    "unc_logratio": "share of uncertain pixels",
    "ent_logratio": "prediction entropy",
}


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
        "reliable", "uncertain", "unreliable" or "no guarantee" (the witnesses abstain, or the stack is blank: no number).
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
        Caveats (beyond the calibrated range, too few samples, a rejected calibration, default gate, ...).
    witnesses : dict
        The label-free witnesses (:mod:`~napari_bnadapt.bound.witnesses`) when measured: ``values``,
        ``thresholds`` of the trust calibration, ``failing`` (witness, value, threshold), ``passing``.
    spoke : str
        What decided the verdict: a witness, a gate signal, the W2 distance, or "blank stack".
    coverage : float or None
        How often a bound given THIS verdict held on held-out cases (None: no such figure).
    coverage_basis : str
        What ``coverage`` was measured on, in words.
    w2_bound : float or None
        The W2 calibration's bound on its own (None without a usable calibration).
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
    witnesses: dict[str, Any] = field(default_factory=dict)
    spoke: str = ""
    coverage: float | None = None
    coverage_basis: str = ""
    w2_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = asdict(self)
        return d

    def __str__(self) -> str:
        head = self.verdict.upper()
        lines = [f"Reliability of the adaptation: {head}",
                 textwrap.fill(self.sentence, width=110, initial_indent="  ", subsequent_indent="  ")]
        if self.gate_failures:
            lines.append("  predicted IoU of the adapted model: no lower bound can be given (bound 0)")
        elif self.iou_lower_bound is not None:
            lines.append(f"  predicted IoU of the adapted model >= {format_bound(self.iou_lower_bound)} (rounded down)")
        else:
            lines.append("  predicted IoU of the adapted model: no number is given")
        if self.spoke:
            lines.append(f"  decided by: {self.spoke}")
        w = self.witnesses
        if w.get("values"):
            thr = w.get("thresholds", {})
            lines.append("  witnesses: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.2f}" + (f" (needs >= {thr[k]:.2f})" if k in thr else "")
                for k, v in w["values"].items()))
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


def _bound_sentence(verdict: str, b: float, coverage: float | None, basis: str) -> str:
    """The sentence of a stated bound (rounded down), with the coverage measured for this verdict."""
    held = (f"; a bound given this verdict held for {coverage:.0%} {basis}"
            if coverage is not None and math.isfinite(coverage) else "")
    if verdict == "reliable":
        return (f"Adaptation very likely worked: expect an overlap with the true mitochondria (IoU) of at least "
                f"{format_bound(b)}{held}.")
    if verdict == "unreliable":
        return (f"Adaptation may well have failed: the overlap (IoU) can drop to {format_bound(b)}{held}; check the "
                "segmentation carefully before using it.")
    return (f"Adaptation probably helped, but expect mistakes: the overlap (IoU) was at least {format_bound(b)} on "
            f"data like this{held}; check a few slices by eye.")


def _sentence(dec: Decision, features: Mapping[str, float], source_signals: Mapping[str, float],
              calibrated: bool, coverage: float | None = None, *, basis: str = "", rejected: str = "") -> str:
    default = "" if calibrated else " (default limits, not measured for this model)"
    if dec.gate_failures:
        name, v, _ = dec.gate_failures[0]
        if name == "fg_logratio":
            return (
                f"Do not trust this result: the adapted model marks {features['foreground_fraction']:.0%} of the "
                f"image as mitochondria against {source_signals['foreground_fraction']:.0%} on its training data"
                f"{default}, so it sees this data very differently (for example with inverted contrast); check by "
                "eye or annotate a few slices."
            )
        if name == "conf_drop":
            return (
                f"Do not trust this result: the adapted model is far less sure of itself than on its training data "
                f"(confidence {features['confidence']:.3f} against {source_signals['confidence']:.3f}){default}, a "
                "sign of failed segmentation (for example too faint or inverted contrast); check by eye."
            )
        return (
            f"Do not trust this result: the {_FEATURE_TEXT.get(name, name)} is outside the range seen when the "
            f"model was calibrated{default}; check by eye."
        )
    b = dec.bound
    if rejected:
        return (
            f"No verdict possible: this model's calibration was rejected ({rejected}), so no quality can be "
            "promised; inspect the segmentation by eye, or run a spot check."
        )
    if not calibrated:
        return (
            "No verdict possible: this model file has no calibration, so the distances cannot be turned into "
            "an expected quality (the only checks made, on the predicted foreground and the confidence, use "
            "default limits not measured for this model); inspect the segmentation by eye (or calibrate the model)."
        )
    if b is None:
        return (
            "No verdict possible: too little data to measure the distance reliably; use more slices or "
            "patches, and inspect the segmentation by eye."
        )
    if dec.beyond_calibration:
        return (
            "Do not trust this result without checking: this data is further from the training data than any "
            "of the test shifts the model was calibrated on, so no quality can be promised."
        )
    return _bound_sentence(dec.verdict, b, coverage, basis)
