"""The one adapt -> segment -> assess -> report workflow (workflow.py) and the CLI that runs it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_bnadapt as nb
from napari_bnadapt import workflow
from napari_bnadapt.cli import main
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.segmentation import predict as predict_module

from .conftest import SOURCE, state_bytes


@pytest.fixture(scope="module")
def target():
    return nb.sample_data.toy_brightness_target()


def test_run_adapts_segments_assesses_and_scores(toy_model, target):
    images, truth = target
    keep_model, keep_images = state_bytes(toy_model), images.copy()
    res = workflow.run(toy_model, images, truth=truth, keep_probabilities=True, device="cpu")
    assert isinstance(res, workflow.WorkflowResult)
    assert res.adapted and res.adapt_report is not None and res.model is not toy_model
    # the demo (docs): about 0.21 without adaptation, 0.98 with it
    assert res.iou_source_only < 0.25 and res.iou > 0.97, (res.iou_source_only, res.iou)
    assert res.labels.dtype == np.uint8 and res.labels.shape == images.shape
    np.testing.assert_array_equal(res.labels, (res.probabilities > 0.5).astype(np.uint8))
    assert res.oversized is None  # the toy model's card holds no object sizes: nothing to remove by
    assert res.reliability is not None and res.reliability.verdict == "reliable"
    assert res.iou == pytest.approx(nb.iou(nb.segment(res.model, images, device="cpu"), truth))
    assert state_bytes(toy_model) == keep_model  # the source model is untouched
    np.testing.assert_array_equal(images, keep_images)  # so are the images
    text = "; ".join(res.summary())
    assert "adapted on cpu" in text and "reliability: reliable" in text and "IoU without adaptation" in text


def test_run_removes_objects_far_larger_than_the_training_mitochondria(target):
    """The default removes a nucleus-sized object (here: a bright block with the mitochondria's grey values),
    says so, and leaves the rest; ``remove_oversized=False`` keeps it."""
    from napari_bnadapt.adabn.scale_search import object_size_summary

    model = nb.load_model("toy-perlin", device="cpu")
    model.meta["objects"] = object_size_summary(nb.sample_data.toy_source()[1])  # its card: no sizes yet
    images, truth = target
    x = images[:2].copy()
    rng = np.random.default_rng(0)
    x[:, 40:220, 40:220] = np.clip(rng.normal(np.median(images[truth > 0]), 10, (2, 180, 180)), 0, 255)
    kept = workflow.run(model, x, assess=False, device="cpu", remove_oversized=False)
    assert kept.oversized is None and kept.labels[:, 60:200, 60:200].mean() > 0.5  # segmented, as mitochondria
    res = workflow.run(model, x, assess=False, device="cpu")
    assert res.oversized.removed_objects >= 2, res.oversized  # at least one per slice
    assert res.labels[:, 60:200, 60:200].mean() < 0.02, res.oversized
    assert f"removed {res.oversized.removed_objects} object(s)" in "; ".join(res.summary())
    assert (res.labels <= kept.labels).all()  # only removed, nothing added
    from scipy import ndimage

    for z in range(2):  # every object not touching the block is kept whole
        lab, _ = ndimage.label(kept.labels[z])
        away = ~np.isin(lab, np.unique(lab[40:220, 40:220])) & (lab > 0)
        assert away.any() and (res.labels[z][away] == 1).all()


def test_run_without_adaptation_segments_with_the_model_itself(toy_model, target):
    images, truth = target
    res = workflow.run(toy_model, images, adapt=False, truth=truth, device="cpu")
    assert res.model is toy_model and res.adapt_report is None and res.reliability is None
    assert res.iou_source_only is None and res.iou < 0.25
    assert res.summary()[0] == "segmented on cpu"


def test_instances_and_a_model_without_source_statistics(toy_model, target):
    images, _ = target
    bare = nb.load_model("toy-perlin", device="cpu")
    bare.meta.pop("source_statistics", None)
    for key in [k for k in bare.meta.get("arrays", {}) if k.startswith("source_statistics.")]:
        del bare.meta["arrays"][key]
    res = workflow.run(bare, images[:2], instances=True, device="cpu")
    assert res.reliability is None and "no source statistics" in res.reliability_note
    assert res.labels.dtype == np.uint32 and res.labels.max() > 1


def test_a_truth_of_another_shape_is_refused(toy_model, target):
    images, truth = target
    with pytest.raises(BNAdaptError, match="does not match"):
        workflow.run(toy_model, images, truth=truth[:2], device="cpu")


def test_cli_probabilities_run_the_network_once(tmp_path, monkeypatch, capsys, target):
    images, truth = target
    img, lab = tmp_path / "t.tif", tmp_path / "truth.tif"
    tifffile.imwrite(img, images[:3])
    tifffile.imwrite(lab, truth[:3])
    calls = []
    real = predict_module.predict_iter

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(workflow, "predict_iter", counting)
    out, prob = tmp_path / "labels.tif", tmp_path / "prob.tif"
    assert main(["segment", "--model", "toy-perlin", "--input", str(img), "--output", str(out),
                 "--probabilities", str(prob), "--device", "cpu", "--quiet"]) == 0
    assert len(calls) == 1  # labels and probabilities from one pass of the network
    labels, p = tifffile.imread(out), tifffile.imread(prob)
    np.testing.assert_array_equal(labels, (p > 0.5).astype(np.uint8))
    calls.clear()
    assert main(["segment", "--model", "toy-perlin", "--adapt", "--input", str(img), "--output", str(tmp_path / "a.tif"),
                 "--truth", str(lab), "--device", "cpu", "--quiet"]) == 0
    assert len(calls) == 2  # the source model's IoU needs its own pass; the adapted one, one more
    text = capsys.readouterr().out
    assert "Reliability of the adaptation: RELIABLE" in text and "IoU after adaptation" in text


def test_demo_runs_the_workflow(monkeypatch):
    from napari_bnadapt import demo

    seen = {}
    real = demo.run

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "run", spy)
    res = demo.run_demo(device="cpu")
    assert seen["adapt"] is True and isinstance(res, workflow.WorkflowResult)
    assert res.iou_source_only < 0.25 and res.iou > 0.97


@pytest.fixture(scope="module")
def coarse_target():
    """A brighter toy target of 2 slices at 10 nm pixels (for a model trained at 5 nm), and its truth."""
    from napari_bnadapt import synthetic

    from .conftest import BRIGHT

    return synthetic.generate(2, (48, 48), seed=44, **BRIGHT)


def test_run_resamples_to_the_model_pixel_size_and_returns_the_input_grid(toy_model_5nm, coarse_target):
    import warnings

    from napari_bnadapt.io.resample import PixelSizeWarning

    images, truth = coarse_target
    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelSizeWarning)
        res = workflow.run(toy_model_5nm, images, truth=truth, keep_probabilities=True, device="cpu",
                           pixel_size_nm=(10.0, 10.0))
    assert res.labels.shape == res.probabilities.shape == truth.shape == (2, 48, 48)
    assert res.zoom == (2.0, 2.0) and res.adapt_report.zoom == (2.0, 2.0)
    assert res.adapt_report.patch_size == (96, 96)  # adapted on the resampled stack
    assert any("resampled" in n for n in res.reliability.notes)
    np.testing.assert_array_equal(res.labels, (res.probabilities > 0.5).astype(np.uint8))
    lines = [line for line in res.summary() if line.startswith("pixel size:")]
    assert len(lines) == 1 and "zoom 2 x 2" in lines[0] and "image's own grid" in lines[0]
    plain = workflow.run(toy_model_5nm, images, device="cpu", pixel_size_nm=(5.0, 5.0))
    assert plain.zoom is None and not any(line.startswith("pixel size:") for line in plain.summary())
    assert not np.array_equal(plain.labels, res.labels)


def test_run_with_an_unknown_pixel_size_warns_once_and_runs_as_is(toy_model, toy_model_5nm, coarse_target):
    import warnings

    from napari_bnadapt.io.resample import PixelSizeWarning

    images, truth = coarse_target
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning, not once per place: the run itself must say it once
        res = workflow.run(toy_model_5nm, images, truth=truth, device="cpu")  # adapt, assess, two predictions
    said = [w for w in seen if issubclass(w.category, PixelSizeWarning)]
    assert len(said) == 1 and "pixel size is unknown" in str(said[0].message)
    assert res.zoom is None and "pixel size is unknown" in res.pixel_size_note
    assert any("pixel size is unknown" in line for line in res.summary())
    as_is = workflow.run(toy_model, images, truth=truth, device="cpu")  # neither known
    np.testing.assert_array_equal(res.labels, as_is.labels)
    assert as_is.pixel_size_note is None


def test_guard_keeps_the_source_statistics_in_domain_and_adapts_a_shifted_stack(toy_model, target):
    from napari_bnadapt import synthetic

    same = synthetic.generate(48, (64, 64), seed=21, **SOURCE)[0]  # drawn like the toy model's training data
    res = workflow.run(toy_model, same, assess=False, device="cpu")
    assert res.need is not None and not res.need.needed
    assert res.need.message in res.summary() and "already matches" in res.need.message
    src = dict(toy_model.state_dict())
    for k, v in res.model.state_dict().items():  # the source statistics segmented
        if k.endswith(("running_mean", "running_var")):
            assert np.array_equal(v.cpu().numpy(), src[k].cpu().numpy()), k
    images, _ = target
    shifted = workflow.run(toy_model, images, assess=False, device="cpu")
    assert shifted.need.needed and shifted.model is not toy_model
    unguarded = workflow.run(toy_model, same, assess=False, device="cpu", guard=False)
    assert unguarded.need is None


def test_test_time_augmentation_and_the_research_options_run(toy_model, target):
    images, truth = target
    keep = state_bytes(toy_model)
    res = workflow.run(toy_model, images[:2], truth=truth[:2], assess=False, device="cpu", tta=4, entropy=True,
                       choose_depth=True, choose_statistics=True, adapt_options={"n_patches": 8, "patch_size": 128})
    assert res.labels.shape == images[:2].shape and res.iou > 0.9
    assert res.statistics_choice is not None and "statistics: " in "; ".join(res.summary())
    assert res.statistics_choice.adapted == (res.model is not toy_model) == (not res.source_statistics_kept)
    assert res.entropy_report is not None and "entropy step" in "; ".join(res.summary())
    assert res.depth_choice is not None and "adaptation depth" in "; ".join(res.summary())
    assert state_bytes(toy_model) == keep
    before = images[:2].copy()
    for smooth, said in (("auto", "the image then looks most like the training data"), (1.0, "1 pixels")):
        res = workflow.run(toy_model, images[:2], truth=truth[:2], assess=False, device="cpu", smooth=smooth,
                           adapt_options={"n_patches": 8, "patch_size": 128})
        assert res.labels.shape == images[:2].shape and res.iou > 0.8
        assert res.smoothing is not None and said in res.smoothing.reason
        assert f"smoothing: {res.smoothing.reason}" in res.summary()
        if res.smoothing.sigma > 0:  # the adapted copy's card says which blur its statistics were estimated through
            assert res.model.meta["adaptation"]["smoothing"]["sigma_model_px"] == res.smoothing.sigma
    assert state_bytes(toy_model) == keep
    np.testing.assert_array_equal(images[:2], before)
    with pytest.raises(BNAdaptError, match="smooth must be"):
        workflow.run(toy_model, images[:2], smooth="yes")
    res = workflow.run(toy_model, images[:2], truth=truth[:2], assess=False, device="cpu", self_train=True,
                       adapt_options={"n_patches": 8, "patch_size": 128})
    assert res.self_train_report is not None and "self-training" in "; ".join(res.summary())
    assert res.iou > 0.9 and state_bytes(toy_model) == keep
    with pytest.raises(BNAdaptError, match="tta must be one of"):
        workflow.run(toy_model, images, tta=3)
