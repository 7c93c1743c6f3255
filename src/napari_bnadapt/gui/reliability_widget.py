"""The Reliability panel: how far to trust the last adapted segmentation.

Shows the verdict in colour with its sentence (``no guarantee`` when the witnesses abstain),
the predicted lower bound on the IoU (rounded down) with how often a bound given this verdict
held on held-out cases, which witness or signal decided, the witnesses against their
calibrated thresholds, per latent space the Wasserstein distances with their noise floors
(adapted and without adaptation), and the model's calibration curve with the current target
as points. It displays what the *Adapt & segment* widget of the same viewer measured on its last run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..bound.validity import format_bound
from .groups import scrolling
from .spot_check import SpotCheckSection
from .viewer_state import reports_of

if TYPE_CHECKING:
    import napari

    from ..bound.curve import CalibrationCurve

VERDICT_COLOURS = {"reliable": "#3fb950", "uncertain": "#d29922", "unreliable": "#f85149",
                   "no guarantee": "#8b949e"}

def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _witness_text(w: dict[str, Any]) -> str:
    """The witnesses as lines: value, the calibrated threshold, and whether it passed."""
    values = w.get("values") or {}
    if not values:
        return ""
    thr = w.get("thresholds") or {}
    lines = []
    for k, v in values.items():
        t = thr.get(k)
        mark = "" if t is None else (" &#10003;" if math.isfinite(v) and v >= t else " <b>&#10007; below</b>")
        lines.append(f"{k.replace('_', ' ')}: {_fmt(v)}" + ("" if t is None else f" (calibrated >= {_fmt(t)}){mark}"))
    size = w.get("size_ratio")
    if size is not None and math.isfinite(size):
        lines.append(f"object size: {size:.2g}x the training mitochondria")
    return "witnesses: " + "; ".join(lines)


class ReliabilityWidget(QWidget):
    """The reliability panel (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer, optional
        The viewer whose *Adapt & segment* runs the panel shows (napari passes it).
    """

    COLUMNS = ["latent space", "adapted", "without adaptation", "noise floor", "samples (eff.)", "dims"]

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.report: Any = None
        self.verdict = QLabel("no adaptation assessed yet: run 'Adapt & segment'")
        self.verdict.setWordWrap(True)
        self.sentence = QLabel("")
        self.sentence.setWordWrap(True)
        self.bound = QLabel("")
        self.bound.setWordWrap(True)
        self.spoke = QLabel("")  # which witness or signal decided the verdict
        self.spoke.setWordWrap(True)
        self.witnesses = QLabel("")  # the witnesses against their calibrated thresholds
        self.witnesses.setWordWrap(True)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(180)
        self.figure = Figure(figsize=(4.2, 3.2), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(290)
        body = QWidget()
        layout = QVBoxLayout(body)
        for w in (self.verdict, self.sentence, self.bound, self.spoke, self.witnesses, self.table, self.canvas):
            layout.addWidget(w)
        layout.addWidget(SpotCheckSection(napari_viewer))
        scrolling(self, body)  # the table, the curve and the spot check: taller than a laptop screen
        reports_of(napari_viewer).subscribe(self.show_report)

    def show_report(self, report: Any, curve: CalibrationCurve | None = None) -> None:
        """Display ``report`` (a :class:`~napari_bnadapt.bound.report.ReliabilityReport`).

        ``curve`` is the source model's calibration curve
        (:func:`napari_bnadapt.bound.curve.calibration_curve`), or None.
        """
        self.report = report
        colour = VERDICT_COLOURS.get(report.verdict, "#cccccc")
        self.verdict.setText(f"<b style='font-size:15pt; color:{colour}'>{report.verdict.upper()}</b>")
        self.sentence.setText(report.sentence)
        if getattr(report, "gate_failures", None):
            self.bound.setText("predicted IoU: <b>no lower bound</b> can be given for this image "
                               "(a label-free signal is outside the range the bound was calibrated on)")
        elif report.iou_lower_bound is None:
            self.bound.setText("predicted IoU: <b>no number</b> is given for this image"
                               if report.verdict == "no guarantee" else
                               "predicted IoU: no calibrated bound for this model")
        else:
            cov = getattr(report, "coverage", None)
            basis = getattr(report, "coverage_basis", "")
            self.bound.setText(
                f"predicted IoU of the adapted segmentation: at least <b>{format_bound(report.iou_lower_bound)}</b>"
                + (f" (a bound given this verdict held for {cov:.0%} {basis})" if cov is not None else "")
            )
        spoke = getattr(report, "spoke", "")
        self.spoke.setText(f"decided by: <b>{spoke}</b>" if spoke else "")
        self.witnesses.setText(_witness_text(getattr(report, "witnesses", {}) or {}))
        self.table.setRowCount(len(report.distances))
        for i, d in enumerate(report.distances):
            name = f"{d.name}{' *' if d.calibrated else ''}"
            cells = [name, _fmt(d.value), _fmt(d.value_source_only), _fmt(d.floor), _fmt(d.m_eff), str(d.dim)]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if not d.meaningful:
                    item.setToolTip(f"not meaningful: {d.reason}")
                self.table.setItem(i, j, item)
        self._plot(report, curve)

    def _plot(self, report: Any, curve: CalibrationCurve | None) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        rejected = (getattr(report, "calibration", None) or {}).get("rejected")
        if curve is None or rejected:
            import textwrap

            text = ("this model's W2 calibration is not used:\n" + textwrap.fill(rejected, 48) if rejected
                    else "this model has no calibration curve")
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_axis_off()
        else:
            ax.step(curve.x, curve.y, where="post", color="#888888", label="calibrated lower bound")
            if report.calibration_x_source_only is not None:
                ax.axvline(report.calibration_x_source_only, color="#f85149", ls="--", lw=1, label="without adaptation")
            if report.calibration_x is not None:
                yb = report.iou_lower_bound if report.iou_lower_bound is not None else 0.0
                ax.plot([report.calibration_x], [yb], "o", color=VERDICT_COLOURS.get(report.verdict, "k"),
                        ms=8, label="this image, adapted")
            ax.set_xlabel(curve.label)
            ax.set_ylabel("IoU lower bound")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7, loc="lower left")
        self.canvas.draw_idle()
