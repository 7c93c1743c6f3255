"""GLSS: SSIM, the VAE, the latent search and its cost; the source model is not touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_bnadapt.baselines.glss import _tiles, _untile, nearest_clones, train_glss
from napari_bnadapt.baselines.ssim import ssim
from napari_bnadapt.baselines.vae import ConvVAE
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.metrics import iou
from napari_bnadapt.segmentation.predict import segment

from ..conftest import state_bytes


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim(x, noisy)
    assert (s < 0.9).all() and (s > 0).all()
    with pytest.raises(ValueError):
        ssim(x, x[:, :, :16])


def test_tiles_put_back_together_exactly():
    x = np.random.default_rng(0).random((2, 40, 56)).astype(np.float32)
    t, grid = _tiles(x, 16)
    assert t.shape == (2 * 3 * 4, 16, 16)
    assert np.array_equal(_untile(t, grid, 16, 40, 56), x)


def test_vae_shapes_and_bad_sizes():
    v = ConvVAE(32, latent=8, width=4)
    rec, mu, logvar = v(torch.rand(3, 1, 32, 32))
    assert rec.shape == (3, 1, 32, 32) and mu.shape == (3, 8) and float(rec.min()) >= 0 and float(rec.max()) <= 1
    with pytest.raises(BNAdaptError):
        ConvVAE(40)


@pytest.fixture(scope="module")
def glss(toy_model, source_stack, one_torch_thread):
    before = state_bytes(toy_model)
    g = train_glss(toy_model, source_stack[0], steps=60, batch_size=16, patch_size=64, latent=16, width=8, lr=3e-3,
                   perceptual_weight=0.0, seed=0)
    assert state_bytes(toy_model) == before
    return g


def test_glss_runs_end_to_end_and_the_search_raises_ssim(glss, toy_model, bright_stack):
    x, y = bright_stack[0][:8], bright_stack[1][:8]
    before = state_bytes(toy_model)
    clones, rep = nearest_clones(glss, x, steps=10, seed=0)
    assert clones.shape == x.shape and clones.dtype == np.float32
    assert rep.ssim_end > rep.ssim_start
    assert rep.n_images == 8 and rep.seconds_per_image == pytest.approx(rep.seconds / 8)
    source_only = iou(segment(toy_model, x, device="cpu", overlap=0) > 0, y > 0)
    on_clones = iou(segment(toy_model, clones, device="cpu", overlap=0) > 0, y > 0)
    assert state_bytes(toy_model) == before
    # What it does at this tiny scale (a VAE of 60 steps): the clones carry the source's grey values,
    # so the source model no longer calls everything object; the IoU moves off the all-white value.
    assert source_only < 0.35
    assert on_clones != pytest.approx(source_only, abs=1e-3)


def test_search_from_the_prior_and_bad_init(glss, bright_stack):
    clones, rep = nearest_clones(glss, bright_stack[0][:2], steps=3, init="prior", seed=1)
    assert clones.shape == (2, 64, 64) and rep.steps == 3
    with pytest.raises(BNAdaptError, match="init"):
        nearest_clones(glss, bright_stack[0][:2], init="zeros")
