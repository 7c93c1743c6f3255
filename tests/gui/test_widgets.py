"""GUI tests through the plugin manifest (run under xvfb-run in CI)."""

import napari  # noqa: F401  (a declared dependency: a missing napari fails here, it is not skipped)
import numpy as np
import pytest
import pytestqt  # noqa: F401
from magicgui.widgets import Container

from ..conftest import state_bytes

PLUGIN = "napari-bnadapt"
TIMEOUT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _adapt_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    return widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=TIMEOUT_MS)


def test_samples_open_with_names(viewer):
    for key in ["toy_source", "toy_brightness_target", "toy_contrast_target", "toy_stack_3d"]:
        viewer.open_sample(PLUGIN, key)
    kinds = [layer._type_string for layer in viewer.layers]
    assert kinds.count("image") == 4 and kinds.count("labels") == 4
    assert viewer.layers["toy source"].contrast_limits == [0, 255]


def test_one_click_adaptation_adds_scaled_labels_and_raises_iou(viewer, qtbot):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    image = viewer.layers["toy target (brighter)"]
    image.scale = (40.0, 5.0, 5.0)
    image.translate = (0.0, 100.0, 50.0)
    keep = image.data.copy()
    w = _adapt_widget(viewer)
    _dock, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    w.image.value = image
    w.truth.value = viewer.layers["toy target (brighter) truth"]
    w.add_probabilities.value = True
    assert w.start(adapt=True) is not None
    assert not w.run_adapt.enabled and w.cancel.enabled  # no double start while running
    _wait(qtbot, w)
    out = viewer.layers[-2]
    assert out._type_string == "labels" and out.name == "toy target (brighter) [toy-perlin adapted]"
    assert out.data.shape == image.data.shape
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    assert viewer.layers[-1].name.endswith("probability]")
    res = w.last_result
    # measured with the library on this sample: 0.208 without adaptation (all white), 0.984 after
    assert res.iou_source_only < 0.3 and res.iou >= 0.97, res
    assert "IoU without adaptation" in w.status.value
    # the reliability panel shows the label-free assessment of this run
    rep = panel.report
    # docs/reliability.md: a +40 brightness shift is RELIABLE with a bound of 0.968, shown rounded down (0.96)
    assert rep is not None and rep.verdict == "reliable" and "reliability" in w.status.value
    assert 0.95 <= rep.iou_lower_bound <= res.iou
    assert panel.table.rowCount() >= 5 and rep.verdict.upper() in panel.verdict.text()
    from napari_bnadapt.bound.validity import format_bound

    assert format_bound(rep.iou_lower_bound) in panel.bound.text() and "given this verdict" in panel.bound.text()
    np.testing.assert_array_equal(image.data, keep)  # the user's image is untouched
    assert w.save.enabled and w.run_adapt.enabled
    # a second run never replaces the first result: the same run again (same layer names wanted)
    # ADDS two layers under new names and leaves the first two as they were
    first = list(viewer.layers)
    first_data = [np.array(layer.data, copy=True) for layer in first]
    w.start(adapt=True)
    _wait(qtbot, w)
    assert list(viewer.layers)[:len(first)] == first  # the same layer objects, in place
    for layer, data in zip(first, first_data):
        np.testing.assert_array_equal(layer.data, data)
    added = list(viewer.layers)[len(first):]
    assert [layer._type_string for layer in added] == ["labels", "image"]
    names = [layer.name for layer in viewer.layers]
    assert len(names) == len(set(names))
    assert added[0].name.startswith(out.name) and added[0].name != out.name
    np.testing.assert_array_equal(added[0].data, out.data)  # the same (seeded) result, as a new layer


def test_an_image_is_offered_and_a_chosen_one_kept(viewer):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    w = _adapt_widget(viewer)  # docked after the data was opened: its image is offered, with its model
    assert w.image.value is viewer.layers["toy target (brighter)"] and w.model.value == "toy-perlin"
    assert w.status.value.startswith("ready") and "toy target (brighter)" in w.status.value
    viewer.layers.clear()
    assert w.image.value is None
    assert w.status.value.startswith("open a stack")  # the next step, not "ready"
    first = viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="first")
    assert w.image.value is first  # opened while nothing was chosen
    viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="second")
    assert w.image.value is first  # a chosen image is kept when another layer arrives
    w.runner.say("a message from a run")
    viewer.layers.remove(first)
    assert w.image.value is None  # not moved to another layer unasked
    assert w.status.value == "a message from a run"  # a run's message is not replaced by the hint


def test_cancel_stops_and_changes_nothing(viewer, qtbot):
    viewer.open_sample(PLUGIN, "toy_stack_3d")
    w = _adapt_widget(viewer)
    w.image.value = viewer.layers["toy 3D stack"]
    model = w._load_model()
    before = state_bytes(model)
    n_layers = len(viewer.layers)
    worker = w.start(adapt=True)
    qtbot.waitUntil(lambda: w.progress.value > 0 or not w.runner.running, timeout=TIMEOUT_MS)
    # the worker stops at its next patch; 30 s leaves room for a loaded 2-core machine (5 s was flaky there)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        w.cancel.clicked.emit()
    assert not w.runner.running
    assert len(viewer.layers) == n_layers
    assert "cancelled" in w.status.value
    assert state_bytes(model) == before
    assert w.adapted_model is None and not w.save.enabled


def test_bad_input_is_a_message_not_a_traceback(viewer):
    w = _adapt_widget(viewer)
    assert w.start() is None  # no layer at all
    assert "no image" in w.status.value
    viewer.add_points(np.zeros((3, 2)))
    w.reset_choices()
    assert w.start() is None  # only a Points layer: not offered, same message
    assert "no image" in w.status.value
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="colour photo")
    w.image.value = rgb
    assert w.start() is None
    assert "colour" in w.status.value
    viewer.add_image(np.full((64, 64), 1000, np.uint16), name="sixteen")
    w.image.value = viewer.layers["sixteen"]
    assert w.start() is None
    assert "16-bit" in w.status.value


def test_save_adapted_model_never_overwrites(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    w = _adapt_widget(viewer)
    w.image.value = viewer.layers["toy target (brighter)"]
    w.start(adapt=True)
    _wait(qtbot, w)
    existing = tmp_path / "a.safetensors"
    existing.write_bytes(b"mine")
    assert w.save_adapted_model(existing) is None and existing.read_bytes() == b"mine"
    saved = w.save_adapted_model(tmp_path / "b.safetensors")
    import napari_bnadapt as nb

    assert nb.model_card(saved).adaptation["source_model"] == "toy-perlin"


def test_train_widget_saves_a_listed_model(viewer, qtbot, tmp_path, monkeypatch):
    import napari_bnadapt as nb

    monkeypatch.setenv("BNADAPT_MODEL_DIR", str(tmp_path))
    viewer.open_sample(PLUGIN, "toy_source")
    _dock, t = viewer.window.add_plugin_dock_widget(PLUGIN, "Train a source model")
    a = _adapt_widget(viewer)
    t.image.value = viewer.layers["toy source"]
    t.labels_layer.value = viewer.layers["toy source truth"]
    t.model_name.value = "tiny"
    t.net_width.value, t.steps.value, t.patch_size.value = 4, 20, 64
    assert t.augment.value == "em"  # the default of new models
    assert list(t.groups) == ["1  Data", "2  Model", "Advanced settings", "3  Train", "4  Result"]
    assert t.net_width.native.isHidden() and t.seed.native.isHidden()  # network details folded away
    assert t.groups["Advanced settings"].isHidden()
    t.advanced.value = True
    assert not t.net_width.native.isHidden() and not t.seed.native.isHidden()
    t.augment.value = "geometric"
    assert t.start() is not None
    qtbot.waitUntil(lambda: not t.runner.running, timeout=TIMEOUT_MS)
    assert (tmp_path / "tiny.safetensors").exists(), t.status.value
    recipe = nb.load_model(tmp_path / "tiny.safetensors", device="cpu").meta["training"]["recipe"]
    assert recipe["augmentation"] == nb.Augmentation.geometric().to_meta()
    assert "tiny" in a.model.choices
    saved = (tmp_path / "tiny.safetensors").read_bytes()
    assert t.start() is None  # same name again: refused before any training, file kept
    assert "exists" in t.status.value and not t.runner.running
    assert (tmp_path / "tiny.safetensors").read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]  # nothing written beside it


def test_load_stack_with_voxel_size_crop_and_downsample(viewer, tmp_path):
    import tifffile

    vol = (np.arange(10 * 64 * 80) % 251).astype(np.uint8).reshape(10, 64, 80)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / 5.0, 1 / 5.0), metadata={"unit": "nm", "spacing": 40.0, "axes": "ZYX"})
    w = _adapt_widget(viewer)
    w.loader.crop.value = "2:8, :, 16:"
    w.loader.downsample.value = 2
    layer = w.loader.load(path)
    assert layer is not None and w.image.value.name == layer.name  # (plugin widgets see layers through proxies)
    np.testing.assert_array_equal(np.asarray(layer.data), vol[2:8:2, ::2, 16::2])
    np.testing.assert_allclose(layer.scale, (80.0, 10.0, 10.0))
    assert w.loader.voxel.value == "80 10 10"
    w.loader.voxel.value = "50 6 6"
    w.loader.apply_voxel_size(layer)
    np.testing.assert_allclose(layer.scale, (50.0, 6.0, 6.0))
    # bad input: a message, nothing added
    n = len(viewer.layers)
    w.loader.crop.value = "nonsense"
    assert w.loader.load(path) is None and "crop" in w.status.value
    w.loader.crop.value = ""
    (tmp_path / "empty").mkdir()
    assert w.loader.load(tmp_path / "empty") is None
    assert len(viewer.layers) == n


def test_labels_name_says_adapted_only_when_the_adapted_statistics_segmented(viewer, qtbot):
    """When the guard keeps the source statistics, the new layer is not called adapted."""
    import dataclasses

    viewer.open_sample(PLUGIN, "toy_brightness_target")
    image = viewer.layers["toy target (brighter)"]
    w = _adapt_widget(viewer)
    w.image.value, w.assess.value = image, False
    assert w.start(adapt=True) is not None
    _wait(qtbot, w)
    res = w.last_result
    assert res.need is not None and res.need.needed, w.status.value  # a brightness shift: adapted
    assert viewer.layers[-1].name == "toy target (brighter) [toy-perlin adapted]"
    res.need = dataclasses.replace(res.need, needed=False)  # as the guard says on the model's own data
    w._on_done(res, image)
    assert viewer.layers[-1].name == "toy target (brighter) [toy-perlin]"


def test_console_helpers_accept_layers(viewer):
    import napari_bnadapt as nb

    viewer.open_sample(PLUGIN, "toy_source")
    image, truth = viewer.layers["toy source"], viewer.layers["toy source truth"]
    image.scale = (30.0, 4.0, 4.0)
    model = nb.load_model("toy-perlin", device="cpu")
    labels = nb.segment(model, image, device="cpu")
    assert nb.iou(labels, truth) >= 0.97  # in domain: measured 0.984 (docs/models.md: 0.983)
    layer = nb.add_result(viewer, labels, like=image, name="toy source")  # name taken: made unique
    assert layer.name == "toy source (2)"
    np.testing.assert_allclose(layer.scale, image.scale)


def test_errors_inside_a_run_end_it_with_a_message(viewer, qtbot, monkeypatch):
    """A RuntimeError in the worker (as torch raises them) must not leave the widget 'running'."""
    import napari_bnadapt.workflow as inference  # the workflow the widget runs

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("simulated failure in torch")

    monkeypatch.setattr(inference, "predict_iter", broken)
    viewer.open_sample(PLUGIN, "toy_source")
    w = _adapt_widget(viewer)
    w.image.value = viewer.layers["toy source"]
    n = len(viewer.layers)
    w.start(adapt=False)
    _wait(qtbot, w)
    assert "simulated failure" in w.status.value and w.run_adapt.enabled
    assert len(viewer.layers) == n


def test_pixel_size_mismatch_is_said_and_rescaling_adds_a_new_layer(viewer, qtbot, tmp_path, toy_model):
    import napari_bnadapt as nb

    model = nb.load_model("toy-perlin", device="cpu")
    model.meta["pixel_size_nm"] = [5.0, 5.0]
    path = nb.save_model(model, tmp_path / "five-nm.safetensors")
    image = viewer.add_image(np.full((2, 64, 96), 120, np.uint8), name="em", scale=(40.0, 10.0, 10.0),
                             translate=(0.0, 3.0, 7.0))
    keep = image.data.copy()
    w = _adapt_widget(viewer)
    w.image.value = image
    w.add_model_file(path)
    assert "differs from the model" in w.scale_note.value and "2.00x" in w.scale_note.value
    assert not w.rescale.native.isHidden()  # offered (the dock itself may be off-screen)
    assert w.rescale_to_model() is not None
    _wait(qtbot, w)
    new = viewer.layers["em [5 nm]"]
    assert new.data.shape == (2, 128, 192) and new.data.dtype == np.uint8
    np.testing.assert_allclose(new.scale, (40.0, 5.0, 5.0))
    # same physical extent: first pixel edge stays where it was
    np.testing.assert_allclose(np.asarray(new.translate) - np.asarray(new.scale) / 2,
                               np.asarray(image.translate) - np.asarray(image.scale) / 2)
    np.testing.assert_array_equal(image.data, keep)  # the user's layer is untouched
    assert w.image.value.name == "em [5 nm]"
    assert "matches" in w.scale_note.value and w.rescale.native.isHidden()
    w.image.value = image
    image.scale = (1.0, 1.0, 1.0)  # unknown pixel size: no warning, a hint instead
    w.check_pixel_size()
    assert "unknown" in w.scale_note.value and w.rescale.native.isHidden()


def test_a_layer_at_another_pixel_size_is_resampled_internally_and_labelled_on_its_grid(viewer, qtbot, tmp_path,
                                                                                        toy_model_5nm):
    import napari_bnadapt as nb
    from napari_bnadapt import synthetic, workflow

    from ..conftest import BRIGHT

    path = nb.save_model(toy_model_5nm, tmp_path / "five-nm.safetensors")
    images, _ = synthetic.generate(2, (48, 64), seed=45, **BRIGHT)
    image = viewer.add_image(images, name="em", scale=(1.0, 10.0, 10.0), translate=(0.0, 3.0, 7.0))
    w = _adapt_widget(viewer)
    w.image.value = image
    w.add_model_file(path)
    assert "resampled internally to the model's 5 x 5 nm" in w.scale_note.value
    assert "results on your layer's grid" in w.scale_note.value
    w.add_probabilities.value = True
    assert w.start(adapt=True) is not None
    _wait(qtbot, w)
    labels, prob = viewer.layers[-2], viewer.layers[-1]
    assert labels._type_string == "labels" and labels.name == "em [toy-perlin adapted]"
    for layer in (labels, prob):
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    res = w.last_result
    assert res.zoom == (2.0, 2.0) and res.adapt_report.zoom == (2.0, 2.0)
    assert "zoom 2 x 2" in w.status.value
    # the core workflow reads the same pixel size from the layer itself
    direct = workflow.run(toy_model_5nm, image, adapt=False, device="cpu")
    assert direct.zoom == (2.0, 2.0) and direct.labels.shape == image.data.shape


@pytest.mark.parametrize("shown, passed", [(0, None), (256, 256)])
def test_tile_size_auto_passes_none_and_a_set_size_passes_it(viewer, qtbot, monkeypatch, shown, passed):
    import napari_bnadapt.workflow as inference  # the workflow the widget runs

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        yield from ()
        raise RuntimeError("stop here")

    monkeypatch.setattr(inference, "predict_iter", record)
    viewer.open_sample(PLUGIN, "toy_source")
    w = _adapt_widget(viewer)
    assert w.tile_size.value == 0 and "0 = auto" in w.tile_size.label  # the default
    w.tile_size.value = shown
    w.image.value = viewer.layers["toy source"]
    w.start(adapt=False)
    _wait(qtbot, w)
    assert seen["tile_size"] == passed


def test_a_package_is_exported_in_the_background(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    w = _adapt_widget(viewer)
    w.image.value = viewer.layers["toy target (brighter)"]
    w.start(adapt=True)
    _wait(qtbot, w)
    target = tmp_path / "adapted.zip"
    assert w.save_adapted_model(target, wait=False) is None  # returns at once: a worker exports
    assert w.runner.running
    _wait(qtbot, w)
    assert target.is_file() and f"saved the adapted model to {target}" in w.status.value
    target.write_bytes(b"mine")
    w.save_adapted_model(target, wait=False)  # never over an existing file
    _wait(qtbot, w)
    assert target.read_bytes() == b"mine" and "already exists" in w.status.value


def test_advanced_extras_reach_the_workflow(viewer, qtbot, monkeypatch):
    """Flip averaging, the scale search and the 'already matches' guard are passed to the one workflow."""
    import napari_bnadapt.gui.adapt_widget as adapt_widget

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        yield from ()
        raise RuntimeError("stop here")

    monkeypatch.setattr(adapt_widget, "run_iter", record)
    viewer.open_sample(PLUGIN, "toy_source")
    w = _adapt_widget(viewer)
    assert (w.tta.value, w.search_scale.value, w.guard.value, w.choose_depth.value, w.smooth.value,
            w.remove_oversized.value, w.choose_statistics.value) == (1, False, True, False, False, True, False)
    w.tta.value, w.search_scale.value, w.guard.value, w.choose_depth.value, w.smooth.value = 4, True, False, True, True
    w.remove_oversized.value, w.choose_statistics.value = False, True
    assert w.content_floor.value is False and not w.content_floor.enabled  # the guard was switched off above
    w.content_floor.value = True  # with the guard off it means nothing: not passed on
    assert list(w.mode.choices) == ["cumulative", "ema", "prior", "balanced"]
    assert not w.alpha.enabled and not w.prior.enabled  # cumulative reads neither
    w.mode.value = "ema"
    assert w.alpha.enabled and not w.prior.enabled
    w.mode.value = "prior"
    assert w.prior.enabled and not w.alpha.enabled
    w.mode.value = "balanced"
    assert not w.alpha.enabled and not w.prior.enabled
    w.image.value = viewer.layers["toy source"]
    w.start(adapt=True)
    _wait(qtbot, w)
    assert (seen["tta"], seen["search_scale"], seen["guard"], seen["choose_depth"], seen["smooth"],
            seen["remove_oversized"], seen["choose_statistics"]) == (4, True, False, True, "auto", False, True)
    assert seen["adapt_options"]["mode"] == "balanced" and seen["content_floor"] is False
    w.guard.value = True
    assert w.content_floor.enabled
    w.start(adapt=True)
    _wait(qtbot, w)
    assert seen["guard"] is True and seen["content_floor"] is True


def test_docked_panels_scroll_instead_of_growing_the_window(viewer, qtbot):
    """Every step unfolded, the reliability panel beside it: the window still fits a laptop screen."""
    w = _adapt_widget(viewer)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    w.advanced.value = True
    qtbot.wait(50)
    body = w.groups["1  Image"].parentWidget()
    assert body.minimumSizeHint().height() > 900  # all of it would not fit 768 px...
    assert viewer.window._qt_window.minimumSizeHint().height() < 700  # ...it scrolls
    area = body.parentWidget().parentWidget()  # body -> viewport -> the scroll area
    area.setFixedHeight(300)
    area.verticalScrollBar().setValue(0)
    qtbot.wait(50)
    w.runner.say("a message")  # written below the fold: the area scrolls to it
    assert area.verticalScrollBar().value() > 0


def test_every_row_name_fits_one_label_column(viewer, qtbot):
    """The widget reads as titled steps; every group's rows share one label column as wide as the widest
    label as napari draws it (larger than magicgui measures), nested rows (the stack loader's) included."""
    from napari_bnadapt.gui.groups import ADVANCED, _rows

    w = _adapt_widget(viewer)
    assert list(w.groups) == ["1  Image", "2  Model", "3  Run", ADVANCED, "4  Segment", "5  Result"]
    assert w.groups[ADVANCED].isHidden() and w.mode.native.isHidden()  # folded away until asked for
    w.advanced.value = True
    assert not w.groups[ADVANCED].isHidden() and not w.mode.native.isHidden()
    rows = [r for r, x in _rows(w) if not isinstance(x, Container)]
    assert {"crop z, y, x", "image", "model", "mode", "progress", "status"} <= {r._label_widget.value for r in rows}
    qtbot.waitUntil(lambda: len({r.label_width for r in rows}) == 1, timeout=5000)
    assert rows[0].label_width >= max(r._label_widget.native.sizeHint().width() for r in rows)
