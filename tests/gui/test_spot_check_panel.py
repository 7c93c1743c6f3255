"""The Spot check section of the Reliability panel, through the plugin manifest (xvfb in CI)."""

import napari  # noqa: F401  (a declared dependency: a missing napari fails here, it is not skipped)
import numpy as np
import pytest
import pytestqt  # noqa: F401

import napari_bnadapt as nb
from napari_bnadapt.gui.spot_check import SHOWN, SpotCheckSection

from ..conftest import state_bytes

PLUGIN = "napari-bnadapt"
TIMEOUT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _section(viewer):
    _dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    section = panel.findChild(SpotCheckSection)
    assert section is not None, "the Reliability panel has no Spot check section"
    return section


def _wait(qtbot, runner):
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)


def test_spot_check_before_any_run_says_what_to_do(viewer):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    section = _section(viewer)
    assert "Adapt & segment" in section.model.value
    assert section.start() is None
    assert "run 'Adapt & segment'" in section.status.value


def test_spot_check_on_one_painted_slice_after_adapt_and_segment(viewer, qtbot):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    image = viewer.layers["toy target (brighter)"]
    truth = viewer.layers["toy target (brighter) truth"].data
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    section = _section(viewer)
    w.image.value = image
    w.model.value = "toy-perlin"
    w.start(adapt=True)
    _wait(qtbot, w.runner)
    seg = viewer.layers[-1].data
    qtbot.waitUntil(lambda: "adapted" in section.model.value, timeout=5000)  # it knows the run's model

    painted = np.zeros_like(truth)
    painted[1] = truth[1]
    keep = (image.data.copy(), painted.copy(), state_bytes(w.last_result.model))
    viewer.add_labels(painted, name="my annotation")
    section.image.value = image
    section.annotation.value = viewer.layers["my annotation"]
    assert section.start() is not None
    _wait(qtbot, section.runner)
    check = section.last_check
    assert check is not None and check.slices == (1,)
    assert check.iou == pytest.approx(nb.iou(seg[1], truth[1]), abs=1e-9)
    assert f"IoU {check.iou:.2f} on slice 1" in section.status.value and "whole stack" in section.status.value
    np.testing.assert_array_equal(image.data, keep[0])
    np.testing.assert_array_equal(viewer.layers["my annotation"].data, keep[1])
    assert state_bytes(w.last_result.model) == keep[2]

    # a corrected copy of the whole segmentation: only the slice shown counts, and the variants compete
    corrected = np.array(seg, copy=True)
    corrected[2] = truth[2]
    viewer.add_labels(corrected, name="corrected segmentation")
    section.annotation.value = viewer.layers["corrected segmentation"]
    section.slices.value = SHOWN
    viewer.dims.set_current_step(0, 2)
    section.compare.value = True
    section.start()
    _wait(qtbot, section.runner)
    check = section.last_check
    assert check.slices == (2,) and check.iou == pytest.approx(nb.iou(seg[2], truth[2]), abs=1e-9)
    assert check.best is not None and "Best on the annotated region" in section.status.value
    assert "source only" in section.status.value


def test_a_run_on_another_image_is_refused_in_words(viewer, qtbot):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    section = _section(viewer)
    w.image.value = viewer.layers["toy target (brighter)"]
    w.model.value = "toy-perlin"
    w.start(adapt=True)
    _wait(qtbot, w.runner)
    other = viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="another stack")
    viewer.add_labels(np.ones((2, 64, 64), np.uint8), name="painted on it")
    section.image.value = other
    section.annotation.value = viewer.layers["painted on it"]
    assert section.start() is None
    assert "run it on this image first" in section.status.value
