"""Widget state is per viewer, and a closed widget does not keep its models alive."""

import gc
import weakref

import pytest

from napari_bnadapt.gui.viewer_state import MODEL_LIST, models_changed, reports_of

PLUGIN = "napari-bnadapt"
TIMEOUT_MS = 120_000


def _run_adaptation(viewer, qtbot):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    widget.image.value = viewer.layers["toy target (brighter)"]
    widget.model.value = "toy-perlin"
    assert widget.start(adapt=True) is not None
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)
    assert widget.last_result is not None and widget.last_result.reliability is not None, widget.status.value
    return dock, widget


def test_two_viewers_do_not_see_each_others_reports(make_napari_viewer, qtbot):
    first, second = make_napari_viewer(), make_napari_viewer()
    _d1, panel1 = first.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    _d2, panel2 = second.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    _dock, widget = _run_adaptation(first, qtbot)
    report = widget.last_result.reliability
    assert panel1.report is report
    assert panel2.report is None and "no adaptation assessed yet" in panel2.verdict.text()
    # a panel opened later shows its own viewer's last report, and only that
    _d3, late1 = first.window.add_plugin_dock_widget(PLUGIN, "Reliability", tabify=True)
    assert late1.report is report
    assert reports_of(second).last is None


def test_closed_widget_releases_its_models(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock, widget = _run_adaptation(viewer, qtbot)
    adapted = weakref.ref(widget.adapted_model)
    source = weakref.ref(widget.last_result.source_model)
    assert adapted() is not None and source() is not None
    viewer.window.remove_dock_widget(dock)
    del dock, widget
    for _ in range(3):
        qtbot.wait(10)
        gc.collect()
    assert adapted() is None, gc.get_referrers(adapted())
    assert source() is None
    # the viewer's last report is kept for panels opened later, without any model
    last = reports_of(viewer).last
    assert last is not None and not any(hasattr(x, "state_dict") for x in last)


def test_model_list_listeners_are_weak():
    calls = []

    class Holder:
        def refresh(self):
            calls.append(1)

    h = Holder()
    MODEL_LIST.add(h.refresh)
    models_changed()
    assert calls == [1]
    del h
    gc.collect()
    models_changed()
    assert calls == [1]


@pytest.mark.parametrize("viewer_none", [True])
def test_reports_without_a_viewer_are_kept_apart(viewer_none):
    assert reports_of(None) is reports_of(None)
