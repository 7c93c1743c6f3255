"""The Reliability panel: which witness spoke, an abstention without a number, a bound rounded down
with the coverage of its verdict, a rejected W2 calibration said on the plot."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_bnadapt.bound.report import ReliabilityReport
from napari_bnadapt.bound.trust import NO_GUARANTEE

pytest.importorskip("qtpy")


def _report(**kw):
    base = dict(iou_lower_bound=None, verdict=NO_GUARANTEE, sentence="", distances=[], signals={},
                calibration_x=None, calibration_x_source_only=None)
    return ReliabilityReport(**{**base, **kw})


@pytest.fixture
def panel(qtbot):
    from napari_bnadapt.gui.reliability_widget import ReliabilityWidget

    w = ReliabilityWidget(None)
    qtbot.addWidget(w)
    w.resize(480, 900)
    return w


def test_an_abstention_names_the_witness_and_gives_no_number(panel):
    rep = _report(
        sentence="No guarantee: this image is unlike anything the model was checked on (the agreement of the "
                 "segmentation with itself at 0.8x and 1.25x the scale is 0.60, below 0.83); look at a few slices, "
                 "or run a spot check.",
        witnesses={"values": {"patch_agreement": 0.99, "flip_consistency": 0.85, "scale_consistency": 0.60},
                   "thresholds": {"patch_agreement": 0.95, "flip_consistency": 0.90, "scale_consistency": 0.83},
                   "failing": [("scale_consistency", 0.60, 0.83)], "size_ratio": 0.81},
        spoke="scale consistency",
        calibration={"rejected": "its distance (ls0|source|full) won the selection by a tie with 16 other distances"},
    )
    panel.show_report(rep, None)
    assert "NO GUARANTEE" in panel.verdict.text()
    assert "no number" in panel.bound.text() and "at least" not in panel.bound.text()
    assert "scale consistency" in panel.spoke.text()
    text = panel.witnesses.text()
    assert "scale consistency: 0.6" in text and "below" in text and "0.83" in text
    assert text.count("below") == 2  # flip and scale are below their thresholds, patch agreement is not
    assert "object size: 0.81x the training mitochondria" in text
    assert "unlike anything" in panel.sentence.text()
    drawn = " ".join(t.get_text() for ax in panel.figure.axes for t in ax.texts)
    assert "not used" in drawn and "tie" in drawn  # the rejected W2 calibration is said where the curve was
    if os.environ.get("BNADAPT_SCREENSHOTS"):
        panel.grab().save(os.path.join(os.environ["BNADAPT_SCREENSHOTS"], "reliability_no_guarantee.png"))


def test_a_stated_bound_is_rounded_down_with_the_coverage_of_its_verdict(panel):
    from napari_bnadapt.bound.curve import CalibrationCurve

    rep = _report(iou_lower_bound=0.968, verdict="reliable", sentence="Adaptation very likely worked.",
                  coverage=0.87, coverage_basis="of 53 held-out calibration shifts given 'reliable'",
                  spoke="W2 distance", calibration_x=0.05, calibration_x_source_only=1.2,
                  calibration={"validation_coverage": 0.92})
    curve = CalibrationCurve(np.array([0.0, 0.5, 2.0]), np.array([0.97, 0.9, 0.6]), "log(1 + snW2² of dec)")
    panel.show_report(rep, curve)
    text = panel.bound.text()
    assert "0.96" in text and "0.97" not in text
    assert "87%" in text and "given 'reliable'" in text and "92%" not in text  # not the overall coverage
    assert "W2 distance" in panel.spoke.text()
    assert panel.figure.axes and panel.figure.axes[0].get_xlabel().startswith("log(1 + ")  # the W2 curve stays
    if os.environ.get("BNADAPT_SCREENSHOTS"):
        panel.grab().save(os.path.join(os.environ["BNADAPT_SCREENSHOTS"], "reliability_reliable.png"))
