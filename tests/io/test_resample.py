"""io/resample.py: where a network runs (the model's pixel size) and results back on the image's grid."""

import types
import warnings

import numpy as np
import pytest

from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.pixel_size import RESAMPLE_TOLERANCE, TOLERANCE, zoom_slice
from napari_bnadapt.io.resample import (
    ModelGrid,
    PixelSizeWarning,
    ResampledStack,
    image_pixel_size,
    model_grid,
    model_pixel_size,
    resolve_grid,
)
from napari_bnadapt.io.stack_view import check_stack


def test_the_resample_tolerance_is_small_and_separate_from_the_warning():
    assert RESAMPLE_TOLERANCE == 0.02 and RESAMPLE_TOLERANCE < TOLERANCE


@pytest.mark.parametrize(
    "image, model, zoom",
    [
        ((10.0, 10.0), (5.0, 5.0), (2.0, 2.0)),
        ((2.5, 2.5), (5.0, 5.0), (0.5, 0.5)),
        ((5.05, 5.05), (5.0, 5.0), None),  # 1 %: not worth the interpolation blur
        ((4.95, 5.0), (5.0, 5.0), None),
        ((5.2, 5.0), (5.0, 5.0), (1.04, 1.0)),  # 4 % on one axis: resampled, each axis by its own factor
        ((5.0, 5.0), (5.0, 5.0), None),
        (None, (5.0, 5.0), None),
        ((10.0, 10.0), None, None),
        (None, None, None),
    ],
)
def test_resample_only_beyond_the_tolerance(image, model, zoom):
    grid = resolve_grid(image, model)
    assert grid.zoom == (None if zoom is None else pytest.approx(zoom))
    assert grid.resamples == (zoom is not None)


def test_pass_on_makes_the_next_calls_decide_the_same_and_stay_silent():
    assert resolve_grid(None, (5.0, 5.0)).pass_on() == (5.0, 5.0)  # runs as it is
    assert resolve_grid((10.0, 10.0), None).pass_on() is None  # nothing to compare
    assert resolve_grid((10.0, 10.0), (5.0, 5.0)).pass_on() == (10.0, 10.0)
    for image, model in [(None, (5.0, 5.0)), ((10.0, 10.0), None), ((10.0, 10.0), (5.0, 5.0))]:
        first = resolve_grid(image, model)
        assert resolve_grid(first.pass_on(), model).zoom == first.zoom


def test_sentences_say_what_happens():
    assert "resampled" in resolve_grid((10.0, 10.0), (5.0, 5.0)).sentence()
    assert "2.00x" in resolve_grid((10.0, 10.0), (5.0, 5.0)).sentence()
    assert "image's pixel size is unknown" in resolve_grid(None, (5.0, 5.0)).sentence()
    assert "model's training pixel size is unknown" in resolve_grid((10.0, 10.0), None).sentence()
    assert resolve_grid((5.0, 5.0), (5.0, 5.0)).sentence() is None
    assert resolve_grid(None, None).sentence() is None


@pytest.mark.parametrize("bad", [(0.0, 5.0), (5.0,), ("a", "b"), (float("nan"), 5.0)])
def test_bad_pixel_sizes_are_a_sentence(bad):
    with pytest.raises(BNAdaptError, match="pixel_size_nm"):
        resolve_grid(bad, (5.0, 5.0))


def test_pixel_sizes_of_models_and_layers():
    assert model_pixel_size(types.SimpleNamespace(meta={"pixel_size_nm": [5, 4]})) == (5.0, 4.0)
    assert model_pixel_size(types.SimpleNamespace(meta={"pixel_size_nm": None})) is None
    assert model_pixel_size(object()) is None
    layer = types.SimpleNamespace(scale=(1.0, 10.0, 10.0), units=None, _type_string="image", data=None)
    assert image_pixel_size(layer) == (10.0, 10.0)
    assert image_pixel_size(layer, (3.0, 3.0)) == (3.0, 3.0)  # given wins
    assert image_pixel_size(np.zeros((4, 4))) is None


def test_resampled_stack_reads_like_a_resampled_copy():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, size=(3, 40, 48), dtype=np.uint8)
    view = check_stack(stack)
    grid = resolve_grid((10.0, 10.0), (5.0, 5.0))
    seen = grid.view(view)
    assert seen.shape3d == (3, 80, 96) and not seen.is_2d and seen.dtype == np.float32
    whole = np.stack([zoom_slice(s, (80, 96)) for s in stack])
    np.testing.assert_array_equal(seen.read(1), whole[1])
    np.testing.assert_array_equal(seen.read(2, slice(16, 48), slice(8, 40)), whole[2, 16:48, 8:40])
    np.testing.assert_array_equal(seen.read(slice(0, 2)), whole[:2])
    flat = grid.view(check_stack(stack[0]))
    assert flat.is_2d and flat.shape3d == (1, 80, 96)
    np.testing.assert_array_equal(flat.read(0), whole[0])
    assert resolve_grid((5.0, 5.0), (5.0, 5.0)).view(view) is view  # no zoom: the same view
    assert isinstance(seen.data, ResampledStack)


def test_probabilities_go_back_to_the_input_grid():
    grid = resolve_grid((10.0, 10.0), (5.0, 5.0))
    y, x = np.mgrid[0:32, 0:40]
    prob = (0.5 + 0.4 * np.sin(y / 6.0) * np.cos(x / 7.0)).astype(np.float32)
    up = zoom_slice(prob, grid.shape_yx(32, 40))
    back = grid.to_input(up, (32, 40))
    assert back.shape == (32, 40) and back.min() >= 0 and back.max() <= 1
    np.testing.assert_allclose(back[2:-2, 2:-2], prob[2:-2, 2:-2], atol=0.01)  # smooth maps survive the round trip
    same = ModelGrid((5.0, 5.0), (5.0, 5.0), None)
    assert same.to_input(prob, (32, 40)) is prob


def test_too_small_on_the_model_grid_is_refused():
    grid = resolve_grid((2.5, 2.5), (5.0, 5.0))
    with pytest.raises(BNAdaptError, match="at the model's 5 x 5 nm pixel size"):
        grid.shape_yx(24, 64)


def test_model_grid_warns_once_per_call_only_when_one_side_is_unknown():
    five = types.SimpleNamespace(meta={"pixel_size_nm": [5.0, 5.0]})
    none = types.SimpleNamespace(meta={"pixel_size_nm": None})
    image = np.zeros((32, 32), np.uint8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert model_grid(five, image, None).zoom is None  # runs as it is
        assert len(seen) == 1 and issubclass(seen[0].category, PixelSizeWarning)
        assert "pixel_size_nm=(y, x)" in str(seen[0].message)
        model_grid(none, image, (10.0, 10.0))
        assert len(seen) == 2 and "model's training pixel size is unknown" in str(seen[1].message)
        model_grid(none, image, None)  # neither known: nothing to compare, nothing said
        model_grid(five, image, (5.0, 5.0))
        assert model_grid(five, image, (10.0, 10.0)).zoom == (2.0, 2.0)  # resampling is no warning
        assert len(seen) == 2
