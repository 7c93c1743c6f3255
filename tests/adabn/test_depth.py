"""Partial AdaBN and the label-free choice of its depth (adabn/depth.py)."""

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.adabn.depth import block_weights, choose_depth, choose_depth_iter, network_blocks
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.unet import batchnorm_layers
from napari_bnadapt.progress import Progress, Result

from ..conftest import state_bytes

UNET_BLOCKS = ["inc", "down1.conv", "down2.conv", "down3.conv", "down4.conv",
               "up1.conv", "up2.conv", "up3.conv", "up4.conv"]


@pytest.fixture(scope="module")
def bright_adapted(toy_model, bright_stack, one_torch_thread):
    adapted, _ = nb.adapt(toy_model, bright_stack[0], device="cpu")
    return bright_stack[0], adapted


def test_blocks_are_the_batchnorm_name_prefixes_in_order(toy_model):
    assert network_blocks(toy_model) == UNET_BLOCKS
    w = block_weights(toy_model, 3)
    assert list(w) == [n for n, _ in batchnorm_layers(toy_model)]
    assert {n for n, v in w.items() if v == 1.0} == {"inc.bn1", "inc.bn2", "down1.conv.bn1", "down1.conv.bn2",
                                                     "down2.conv.bn1", "down2.conv.bn2"}
    assert set(block_weights(toy_model, 0).values()) == {0.0} and set(block_weights(toy_model, 9).values()) == {1.0}
    with pytest.raises(BNAdaptError, match="between 0 and 9"):
        block_weights(toy_model, 10)
    with pytest.raises(BNAdaptError, match="no BatchNorm"):
        network_blocks(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))


def test_the_choice_keeps_the_best_agreeing_depth_and_changes_nothing(toy_model, bright_adapted, one_torch_thread):
    images, adapted = bright_adapted
    before = (state_bytes(toy_model), state_bytes(adapted), images.copy())
    model, choice = choose_depth(toy_model, adapted, images, device="cpu", n_slices=2, max_side=64)
    assert choice.depths == [1, 3, 5, 7, 9] and choice.n_blocks == 9 and len(choice.agreement) == 5
    assert all(0.0 <= a <= 1.0 for a in choice.agreement)
    best = max(choice.agreement)
    # the highest agreement wins; among equal ones the deepest (closest to plain AdaBN)
    assert choice.depth == max(d for d, a in zip(choice.depths, choice.agreement) if a == best)
    assert f"Dice {best:.3f}" in choice.reason
    src, ad, out = (dict(batchnorm_layers(m)) for m in (toy_model, adapted, model))
    for name in out:
        want = ad[name] if block_weights(toy_model, choice.depth)[name] else src[name]
        assert torch.equal(out[name].running_mean, want.running_mean)
    assert (state_bytes(toy_model), state_bytes(adapted)) == before[:2]
    np.testing.assert_array_equal(images, before[2])
    # every block as the only candidate: plain AdaBN, the adapted model itself
    same, only = choose_depth(toy_model, adapted, images, depths=[None], device="cpu", n_slices=1, max_side=64)
    assert same is adapted and only.depth == 9 and "plain AdaBN" in only.reason


def test_depth_choice_reports_progress_and_refuses_bad_arguments(toy_model, bright_adapted, one_torch_thread):
    images, adapted = bright_adapted
    items = list(choose_depth_iter(toy_model, adapted, images[:1], depths=[2, 9], device="cpu", max_side=64))
    assert isinstance(items[-1], Result) and items[-1].value[1].depths == [2, 9]
    steps = [i for i in items if isinstance(i, Progress)]
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total == 2
    with pytest.raises(BNAdaptError, match="threshold"):
        choose_depth(toy_model, adapted, images, threshold=1.0, device="cpu")
    with pytest.raises(BNAdaptError, match="block counts"):
        choose_depth(toy_model, adapted, images, depths=[-1], device="cpu")
    trained = nb.load_model("toy-perlin", device="cpu")
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    with pytest.raises(BNAdaptError, match="more than their BatchNorm statistics"):
        choose_depth(toy_model, trained, images, depths=[1], device="cpu", max_side=64)
