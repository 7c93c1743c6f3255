"""The guard's content floor (adabn/content_floor.py): how far crops of the training data lie from the model."""

import copy

import numpy as np

import pytest

import napari_bnadapt as nb
from napari_bnadapt.adabn.content_floor import (
    ContentFloor,
    grey_values_randomised,
    measure_content_floor,
    read_content_floor,
)
from napari_bnadapt.adabn.need import adaptation_needed
from napari_bnadapt.adabn.references import SOURCE_REFERENCE
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.augment import Augmentation
from napari_bnadapt.model.unet import batchnorm_layers

from ..conftest import SOURCE, state_bytes

CROPS = ((1, 32), (2, 64))
PX = (5.0, 5.0)


@pytest.fixture(scope="module")
def robust_toy(toy_model):
    """The toy model with a card that says it was trained with random grey-value curves."""
    model = copy.deepcopy(toy_model)
    model.meta.setdefault("training", {}).setdefault("recipe", {})["augmentation"] = Augmentation().to_meta()
    model.meta["pixel_size_nm"] = list(PX)
    return model


@pytest.fixture(scope="module")
def training_volume():
    from napari_bnadapt import synthetic

    return synthetic.generate(6, (96, 96), seed=31, **SOURCE)[0]


@pytest.fixture(scope="module")
def measured(robust_toy, training_volume, one_torch_thread):
    return measure_content_floor(robust_toy, {"toy": training_volume}, pixel_sizes_nm={"toy": PX}, crops=CROPS,
                                 n_crops=3, device="cpu")


def _floor(model, value):
    """A copy of ``model`` whose content floor is ``value`` in every layer at two sizes."""
    out = copy.deepcopy(model)
    layers = {name: [value, value] for name, _ in batchnorm_layers(out)}
    out.meta["content_floor"] = {"version": 1, "references": [
        {"reference": SOURCE_REFERENCE, "volume": "toy", "n_voxels": [1000, 100000], "shift": layers,
         "std_change": copy.deepcopy(layers)}]}
    return out


def test_the_floor_is_interpolated_in_log_size_and_decays_beyond_the_largest_crop():
    floor = ContentFloor("r", [100, 10000], {"a": [0.4, 0.2]}, {"a": [0.2, 0.1]})
    assert floor.at(10)[0]["a"] == pytest.approx(0.4)  # below the smallest: the smallest's
    assert floor.at(1000)[0]["a"] == pytest.approx(0.3)  # halfway in log size
    assert floor.at(1000)[1]["a"] == pytest.approx(0.15)
    assert floor.at(40000)[0]["a"] == pytest.approx(0.2 * 0.5)  # sqrt(10000 / 40000)
    with pytest.raises(BNAdaptError, match="positive"):
        floor.at(0)


def test_a_model_trained_without_grey_value_curves_gets_none(toy_model, robust_toy, training_volume):
    assert not grey_values_randomised(toy_model) and grey_values_randomised(robust_toy)
    before = state_bytes(toy_model)
    with pytest.raises(BNAdaptError, match="without random grey-value curves"):
        measure_content_floor(toy_model, {"toy": training_volume}, crops=CROPS, n_crops=2, device="cpu")
    assert "content_floor" not in toy_model.meta and state_bytes(toy_model) == before
    geometric = copy.deepcopy(robust_toy)
    geometric.meta["training"]["recipe"]["augmentation"] = Augmentation.geometric().to_meta()
    assert not grey_values_randomised(geometric)


def test_it_is_measured_per_layer_stored_and_read_back(robust_toy, measured, training_volume, tmp_path):
    assert "content_floor" not in robust_toy.meta  # the given model is not changed
    assert state_bytes(measured) == state_bytes(robust_toy)
    floors = read_content_floor(measured)
    assert list(floors) == [SOURCE_REFERENCE]
    floor = floors[SOURCE_REFERENCE]
    assert floor.n_voxels == [32 * 32, 2 * 64 * 64]
    layers = {name for name, _ in batchnorm_layers(measured)}
    assert set(floor.shift) == layers and set(floor.std_change) == layers
    assert all(v > 0 for values in floor.shift.values() for v in values)
    path = tmp_path / "m.safetensors"
    nb.save_model(measured, path)
    again = read_content_floor(nb.load_model(path, device="cpu"))[SOURCE_REFERENCE]
    assert again.n_voxels == floor.n_voxels and again.shift == floor.shift and again.std_change == floor.std_change
    with pytest.raises(BNAdaptError, match="one, not 2"):
        measure_content_floor(robust_toy, {"a": training_volume, "b": training_volume}, crops=CROPS, n_crops=2)
    broken = copy.deepcopy(measured)
    broken.meta["content_floor"]["references"][0]["shift"].popitem()
    with pytest.raises(BNAdaptError, match="does not match"):
        read_content_floor(broken)


def test_the_guard_keeps_the_source_within_the_floor_and_adapts_beyond_it(robust_toy, measured, bright_stack,
                                                                          one_torch_thread):
    from napari_bnadapt import synthetic

    crop = synthetic.generate(2, (64, 64), seed=32, **SOURCE)[0]
    adapted, report = nb.adapt(robust_toy, crop, device="cpu", pixel_size_nm=PX)
    assert report.stack_voxels == 2 * 64 * 64
    plain = adaptation_needed(robust_toy, adapted, report)
    # no floor, or a zero one: the half-sample floor and the contrast limit alone decide, as before
    assert adaptation_needed(_floor(robust_toy, 0.0), adapted, report, content_floor=True).to_dict() == plain.to_dict()
    assert not plain.by_content_floor
    wide_model = _floor(robust_toy, 10.0)
    assert adaptation_needed(wide_model, adapted, report).to_dict() == plain.to_dict()  # only when asked
    wide = adaptation_needed(wide_model, adapted, report, content_floor=True)
    assert not wide.needed and wide.weight == 0.0 and "crops of that size of the training data" in wide.message
    assert wide.by_content_floor == plain.needed
    # the reliability check's in-domain route (the held-out IoU applies) is not opened by the content floor
    from napari_bnadapt.bound.assess import _within_noise_floor

    assert _within_noise_floor(wide_model, adapted) == (not plain.needed)
    # the floor is measured on the model's pixel grid: a stack of unknown pixel size is judged without it
    with pytest.warns(UserWarning, match="pixel size"):
        unknown, unknown_report = nb.adapt(robust_toy, crop, device="cpu")
    blind = adaptation_needed(wide_model, unknown, unknown_report, content_floor=True)
    assert blind.needed == plain.needed and not blind.by_content_floor
    assert "the content floor was not used" in blind.message
    # a brightness shift of 40 grey values lies far beyond what crops of the training data differ by
    shifted, shifted_report = nb.adapt(measured, bright_stack[0][:2], device="cpu", pixel_size_nm=PX)
    verdict = adaptation_needed(measured, shifted, shifted_report, content_floor=True)
    assert verdict.needed and not verdict.by_content_floor and verdict.layer == "inc.bn1"


def test_one_factor_over_all_layers_lets_the_quantile_of_crops_pass_every_layer():
    from napari_bnadapt.adabn.content_floor import _floors
    from napari_bnadapt.adabn.references import Comparison

    rng = np.random.default_rng(0)
    crops = []
    for _ in range(40):
        s, v = dict(zip("abcdef", rng.gamma(2.0, 0.1, 6))), dict(zip("abcdef", rng.gamma(2.0, 0.05, 6)))
        crops.append(Comparison(max(s.values()), "a", max(v.values()), "a", s, v))

    def passing(floors):
        return np.mean([all(c.shifts[k] <= floors[k][0] and c.std_changes[k] <= floors[k][1] for k in floors)
                        for c in crops])

    assert passing(_floors(crops, 1.0)) == 1.0
    assert passing(_floors(crops, 0.9)) == pytest.approx(0.9, abs=0.03)
    # each layer's own 0.9 quantile lets far fewer crops pass all twelve tests at once
    own = {k: (np.quantile([c.shifts[k] for c in crops], 0.9), np.quantile([c.std_changes[k] for c in crops], 0.9))
           for k in "abcdef"}
    assert passing(own) < 0.6


def test_the_workflow_and_the_cli_use_it_only_when_asked(robust_toy, tmp_path, capsys, one_torch_thread):
    import tifffile

    from napari_bnadapt import synthetic, workflow
    from napari_bnadapt.cli import main

    model = _floor(robust_toy, 10.0)
    crop = synthetic.generate(2, (64, 64), seed=33, **SOURCE)[0]
    plain = workflow.run(model, crop, assess=False, device="cpu", pixel_size_nm=PX)
    asked = workflow.run(model, crop, assess=False, device="cpu", pixel_size_nm=PX, content_floor=True)
    assert not asked.need.needed and asked.source_statistics_kept
    assert asked.need.by_content_floor == plain.need.needed
    path, img, out = tmp_path / "floor.safetensors", tmp_path / "crop.tif", tmp_path / "labels.tif"
    nb.save_model(model, path)
    tifffile.imwrite(img, crop)
    common = ["segment", "--model", str(path), "--adapt", "--no-assess", "--input", str(img), "--device", "cpu",
              "--quiet", "--output", str(out), "--overwrite"]
    assert main([*common, "--content-floor", "--pixel-size", "5", "5"]) == 0
    assert "the source model's statistics are kept" in capsys.readouterr().out
