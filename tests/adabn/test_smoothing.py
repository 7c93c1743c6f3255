"""Smoothing the target to the training data's sharpness, chosen without labels (adabn/smoothing.py)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_bnadapt.adabn.smoothing import (
    choose_smoothing,
    choose_smoothing_iter,
    given_smoothing,
    image_sigma,
)
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.resample import resolve_grid
from napari_bnadapt.progress import Progress, Result

from ..conftest import state_bytes


def _sharpened(x: np.ndarray, amount: float = 2.0) -> np.ndarray:
    """Unsharp masking: edges and texture stronger than in the training data."""
    xs = x.astype(np.float32)
    out = xs + amount * (xs - np.stack([gaussian_filter(z, 1.5) for z in xs]))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_a_sharpened_target_is_smoothed_and_an_in_domain_one_is_not(toy_model, source_stack, one_torch_thread):
    images = source_stack[0][:8]
    sharp = _sharpened(images)
    before = (state_bytes(toy_model), images.copy(), sharp.copy())
    same = choose_smoothing(toy_model, images, device="cpu", n_patches=8, patch_size=64)
    assert same.sigma == 0.0 and same.sigma_image_px == (0.0, 0.0) and same.reason.startswith("no smoothing")
    chosen = choose_smoothing(toy_model, sharp, device="cpu", n_patches=8, patch_size=64)
    assert chosen.sigma > 0 and "Gaussian blur" in chosen.reason
    for c in (same, chosen):
        assert c.sigmas == [0.0, 0.5, 1.0, 1.5, 2.0] and len(c.distances) == 5 and c.layer == "inc.bn1"
        assert c.distances[c.sigmas.index(c.sigma)] == min(c.distances)
    # the sharpened image starts farther from the training data than the original does
    assert chosen.distances[0] > same.distances[0]
    assert (state_bytes(toy_model), images, sharp)[0] == before[0]
    np.testing.assert_array_equal(images, before[1])
    np.testing.assert_array_equal(sharp, before[2])


def test_the_blur_is_converted_to_the_image_pixels_and_progress_is_reported(toy_model_5nm, source_stack,
                                                                          one_torch_thread):
    grid = resolve_grid((10.0, 2.5), (5.0, 5.0))  # zoom 2 along y, 0.5 along x
    assert image_sigma(2.0, grid) == (1.0, 4.0) and image_sigma(2.0, resolve_grid(None, (5.0, 5.0))) == (2.0, 2.0)
    asked = given_smoothing(1.5, grid)
    assert asked.sigma_image_px == (0.75, 3.0) and asked.reason.endswith("as asked")
    items = list(choose_smoothing_iter(toy_model_5nm, source_stack[0][:4], sigmas=[1, 0], device="cpu",
                                       n_patches=4, patch_size=64, pixel_size_nm=(10.0, 10.0)))
    assert isinstance(items[-1], Result) and all(isinstance(p, Progress) for p in items[:-1])
    assert [(p.done, p.total) for p in items[:-1]] == [(0, 2), (1, 2), (2, 2)]
    choice = items[-1].value
    assert choice.sigmas == [0.0, 1.0] and choice.sigma_image_px == (choice.sigma / 2, choice.sigma / 2)


def test_bad_arguments_and_models_are_refused(toy_model, source_stack):
    images = source_stack[0][:2]
    with pytest.raises(BNAdaptError, match="sigmas must be finite blurs"):
        choose_smoothing(toy_model, images, sigmas=[-1, 0], device="cpu")
    with pytest.raises(BNAdaptError, match="blur >= 0"):
        given_smoothing(float("inf"), resolve_grid(None, None))
    with pytest.raises(BNAdaptError, match="no BatchNorm"):
        choose_smoothing(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)), images, device="cpu")
