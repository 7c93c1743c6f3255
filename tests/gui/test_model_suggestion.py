"""The Adapt & segment widget: the model suited to the chosen image (until the user picks one), its options."""

import napari  # noqa: F401
import numpy as np
import pytest
import pytestqt  # noqa: F401

PLUGIN = "napari-bnadapt"


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_toy_samples_get_the_toy_model_other_images_the_em_model(viewer):
    from napari_bnadapt.model.files import DEFAULT_EM_MODEL, DEMO_MODEL

    em = viewer.add_image(np.full((2, 64, 64), 120, np.uint8), name="my EM stack", scale=(40.0, 5.0, 5.0))
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    w.image.value = em
    assert w.model.value == DEFAULT_EM_MODEL
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    w.image.value = viewer.layers["toy target (brighter)"]
    assert w.model.value == DEMO_MODEL  # the toy sample names the model it was made for
    w.image.value = em
    assert w.model.value == DEFAULT_EM_MODEL


def test_a_model_the_user_picked_is_kept_when_the_image_changes(viewer):
    from napari_bnadapt.model.files import DEMO_MODEL

    viewer.open_sample(PLUGIN, "toy_brightness_target")
    em = viewer.add_image(np.full((2, 64, 64), 120, np.uint8), name="my EM stack")
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    w.image.value = viewer.layers["toy target (brighter)"]
    w.model.value = "lucchi-pp"  # the user's choice
    w.image.value = em
    assert w.model.value == "lucchi-pp"
    w.image.value = viewer.layers["toy target (brighter)"]
    assert w.model.value == "lucchi-pp" != DEMO_MODEL


def test_self_training_option_reaches_the_workflow(viewer, qtbot, monkeypatch):
    from napari_bnadapt.gui import adapt_widget

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        yield from ()
        raise RuntimeError("stop here")

    monkeypatch.setattr(adapt_widget, "run_iter", record)
    viewer.open_sample(PLUGIN, "toy_source")
    _dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    assert w.self_train.value is False and w.self_train in w._advanced_widgets  # off, folded away
    w.self_train.value = True
    w.image.value = viewer.layers["toy source"]
    w.start(adapt=True)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert seen["self_train"] is True
