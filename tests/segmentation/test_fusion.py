"""The inference copy (BatchNorm folded, channels-last) computes what the model computes."""

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.model.unet import Up
from napari_bnadapt.segmentation.fusion import fold_batchnorm, inference_copy

from ..conftest import state_bytes


@pytest.mark.parametrize("bilinear", [False, True])
def test_folded_copy_matches_the_model(bilinear, one_torch_thread):
    torch.manual_seed(0)
    model = nb.UNet(width=4, bilinear=bilinear)
    for m in model.modules():  # non-trivial statistics, as after training or adaptation
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.train()  # the copy is eval whatever the model's mode; the model's mode is kept
    before = state_bytes(model)
    fast = inference_copy(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not any(isinstance(m, Up) for m in fast.modules())  # concatenations split
    assert model.training and state_bytes(model) == before
    x = torch.rand(2, 1, 64, 48)
    with torch.inference_mode():
        ref = model.eval()(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_predict_is_the_same_with_and_without_fusion(toy_model, one_torch_thread):
    from napari_bnadapt.io.stack_view import check_stack, resolve_normalization
    from napari_bnadapt.segmentation.engine import iter_slice_probabilities
    from napari_bnadapt.stats.source_statistics import model_normalization

    rng = np.random.default_rng(1)
    stack = rng.integers(60, 200, size=(2, 96, 80), dtype=np.uint8)
    view = check_stack(stack)
    norm = resolve_normalization(view, model_normalization(toy_model), None)
    out = {}
    for fused in (False, True):
        items = iter_slice_probabilities(toy_model, view, norm, fused=fused, device="cpu")
        out[fused] = np.stack([p for it in items if isinstance(it, tuple) for p in [it[1]]])
    np.testing.assert_allclose(out[True], out[False], atol=1e-5)


def test_a_model_that_is_not_a_unet_is_used_as_is():
    m = torch.nn.Conv2d(1, 2, 3)
    assert inference_copy(m, torch.device("cpu")) is m
    assert isinstance(fold_batchnorm(nb.UNet(width=2)).inc.bn1, torch.nn.Identity)
