"""The TENT baseline: AdaBN + the project's entropy step, on a copy."""

from __future__ import annotations

from napari_bnadapt.baselines.tent import tent
from napari_bnadapt.metrics import iou
from napari_bnadapt.segmentation.predict import segment

from ..conftest import state_bytes


def test_tent_beats_source_only_on_a_brightness_shift_and_leaves_the_source(toy_model, bright_stack, one_torch_thread):
    x, y = bright_stack[0][:16], bright_stack[1][:16]
    before = state_bytes(toy_model)
    res = tent(toy_model, x, steps=5, patch_size=64, seed=0)
    assert state_bytes(toy_model) == before
    source_only = iou(segment(toy_model, x, device="cpu", overlap=0) > 0, y > 0)
    tuned = iou(segment(res.model, x, device="cpu", overlap=0) > 0, y > 0)
    assert tuned > source_only + 0.3
    assert res.report.steps == 5 and res.seconds > 0
