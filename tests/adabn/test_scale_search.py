"""adabn/scale_search.py: object sizes, the label-free zoom choice on toy stacks shrunk by a known factor."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest

from napari_bnadapt.adabn.scale_search import (
    OBJECTS_KEY,
    QUANTILE_LEVELS,
    ZoomChoice,
    choose_zoom,
    choose_zoom_iter,
    default_factors,
    object_size_summary,
    reference_sizes,
    size_distance,
)
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result

from ..conftest import SOURCE


def _disc(shape: tuple[int, int], centre: tuple[int, int], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r


def test_summary_of_discs_gives_their_diameters():
    mask = np.zeros((2, 64, 64), np.uint8)
    mask[0] = _disc((64, 64), (16, 16), 8) | _disc((64, 64), (45, 45), 8)
    mask[1] = _disc((64, 64), (32, 32), 8)
    mask[1, 0, 0] = 1  # a one-pixel speck: ignored
    s = object_size_summary(mask)
    assert s["count"] == 3 and s["slices"] == 2
    assert s["median_diameter_px"] == pytest.approx(16, rel=0.05)
    assert s["quantile_levels"] == list(QUANTILE_LEVELS) and len(s["diameter_quantiles_px"]) == len(QUANTILE_LEVELS)
    assert 0 < s["foreground_fraction"] < 0.2
    json.dumps(s)  # plain JSON for the model card


def test_instance_labels_keep_touching_objects_apart():
    lab = np.zeros((1, 32, 64), np.int32)
    lab[0, 8:24, 8:32] = 3
    lab[0, 8:24, 32:56] = 7  # touches the first one
    assert object_size_summary(lab)["count"] == 2
    assert object_size_summary(lab > 0)["count"] == 1
    empty = object_size_summary(np.zeros((2, 16, 16), np.uint8))
    assert empty["count"] == 0 and empty["median_diameter_px"] is None
    assert size_distance(empty, object_size_summary(lab)) == math.inf


def test_size_distance_of_a_pure_scale_change_is_its_log():
    rng = np.random.default_rng(0)
    q = np.sort(rng.uniform(5, 30, len(QUANTILE_LEVELS)))
    a = {"quantile_levels": list(QUANTILE_LEVELS), "diameter_quantiles_px": list(q)}
    b = {"quantile_levels": list(QUANTILE_LEVELS), "diameter_quantiles_px": list(1.7 * q)}
    assert size_distance(a, b) == pytest.approx(math.log(1.7))
    assert size_distance(a, a) == 0


def test_reference_sizes_reads_the_card():
    summary = object_size_summary(_disc((32, 32), (16, 16), 6)[None])

    class M:
        meta = {"normalization": {"mode": "fixed"}, OBJECTS_KEY: summary}

    assert reference_sizes(M()) is summary and reference_sizes(M.meta) is summary
    assert reference_sizes({"normalization": {}}) is None
    assert reference_sizes(object()) is None


def test_default_factors_centre_on_the_pixel_size_ratio():
    assert default_factors() == pytest.approx([0.5, 0.63, 0.794, 1.0, 1.26, 1.587, 2.0], abs=1e-3)
    grid = default_factors((10.0, 10.0), (5.0, 5.0), steps=5)
    assert grid[2] == pytest.approx(2.0) and grid[0] == pytest.approx(1.0) and grid[-1] == pytest.approx(4.0)


def test_the_module_imports_without_torch():
    code = "import sys, napari_bnadapt.adabn.scale_search; assert 'torch' not in sys.modules"
    import subprocess

    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- the search on the toy model
@pytest.fixture(scope="module")
def toy_with_sizes(toy_model):
    """The toy model with the object sizes of its training data (64 x 64 toy images) in a copy of its card."""
    from napari_bnadapt import synthetic

    _, masks = synthetic.generate(300, (64, 64), seed=1, **SOURCE)
    model = copy.deepcopy(toy_model)
    model.meta = {**toy_model.meta, OBJECTS_KEY: object_size_summary(masks)}
    return model


@pytest.fixture(scope="module")
def toy_stack():
    """Toy images at the training scale (lattice cell 32 px), larger than the training images."""
    from napari_bnadapt import synthetic

    return synthetic.generate(6, (160, 160), seed=5, cell_size=32, **SOURCE)[0]  # about 50 whole objects


def _grid_steps(a: float, b: float) -> float:
    return abs(math.log(a / b)) / (math.log(2.0) / 3)  # the default grid's step is 2**(1/3)


def test_choose_zoom_recovers_a_known_shrink(toy_with_sizes, toy_stack, one_torch_thread):
    from scipy.ndimage import zoom

    shrunk = np.stack([zoom(s.astype(np.float32), 0.5, order=1) for s in toy_stack]).round().astype(np.uint8)
    choice = choose_zoom(toy_with_sizes, shrunk, device="cpu", n_slices=6)
    assert isinstance(choice, ZoomChoice) and choice.criterion == "size"
    assert _grid_steps(choice.factor, 2.0) <= 1.01, str(choice)
    assert len(choice.scores) == len(choice.factors) == 7
    assert "zoom" in choice.reason and "median diameter" in choice.reason
    # at the chosen zoom the predicted objects are about the training size
    best = choice.median_diameters_px[choice.factors.index(choice.factor)]
    assert best == pytest.approx(choice.reference["median_diameter_px"], rel=0.35)


def test_choose_zoom_keeps_scale_one_and_reports_progress(toy_with_sizes, toy_stack, one_torch_thread):
    items = list(choose_zoom_iter(toy_with_sizes, toy_stack, factors=[0.79, 1.0, 1.26], device="cpu", n_slices=6))
    assert all(isinstance(i, Progress) for i in items[:-1]) and isinstance(items[-1], Result)
    assert items[-2] == Progress("searching the scale", 3, 3)
    choice = items[-1].value
    assert choice.factor == pytest.approx(1.0), str(choice)
    assert "rough guess" not in choice.reason  # enough whole objects in the sample
    assert toy_with_sizes.meta.get("adaptation") is None  # the model itself is never adapted


def test_without_sizes_in_the_card_it_falls_back_to_flip_consistency(toy_model, toy_stack, one_torch_thread):
    choice = choose_zoom(toy_model, toy_stack[:2], factors=[0.5, 1.0], device="cpu", n_slices=2)
    assert choice.criterion == "flip" and choice.reference is None
    assert all(0 <= s <= 1 for s in choice.scores)
    assert "flipped" in choice.reason


def test_bad_arguments_are_refused_in_words(toy_model, toy_stack):
    with pytest.raises(BNAdaptError, match="zoom factors"):
        choose_zoom(toy_model, toy_stack, factors=[0.0, 1.0], device="cpu")
    with pytest.raises(BNAdaptError, match="no object"):
        choose_zoom(toy_model, toy_stack, reference={"count": 0}, device="cpu")


def test_effective_pixel_size_makes_the_entry_points_run_at_the_chosen_zoom():
    choice = ZoomChoice(factor=1.5, factors=[1.0, 1.5], scores=[0.3, 0.1], criterion="size", reason="",
                        reference=None, median_diameters_px=[10.0, 15.0], model_pixel_size_nm=(5.0, 5.0))
    assert choice.effective_pixel_size_nm() == (7.5, 7.5)  # image_nm / model_nm = 1.5: the zoom they apply
    choice.model_pixel_size_nm = None
    assert choice.effective_pixel_size_nm() is None
    assert "<-" in str(choice).splitlines()[2]
