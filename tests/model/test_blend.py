import copy
import math

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.blend import blend_models
from napari_bnadapt.model.unet import UNet, batchnorm_layers

from ..conftest import state_bytes


@pytest.fixture(scope="module")
def pair(toy_model):
    """The toy model and a copy of it moved as a fine-tuning would move it (every weight and statistic)."""
    import torch

    base = copy.deepcopy(toy_model)
    tuned = copy.deepcopy(toy_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, v in tuned.state_dict().items():
            if v.is_floating_point():
                v.add_(0.05 * torch.randn(v.shape, generator=g).abs())
    tuned.meta = copy.deepcopy(toy_model.meta)
    tuned.meta["name"] = "toy-tuned"
    tuned.meta["training"]["init"] = base.meta["name"]
    return base, tuned


def test_the_ends_are_the_two_models_and_the_middle_is_their_mean(pair):
    base, tuned = pair
    before = state_bytes(base), state_bytes(tuned)
    at0, at1, half = (blend_models(base, tuned, w) for w in (0.0, 1.0, 0.5))
    assert state_bytes(at0) == before[0] and state_bytes(at1) == before[1]
    a, b, m = base.state_dict(), tuned.state_dict(), half.state_dict()
    for k in a:
        if a[k].is_floating_point():
            np.testing.assert_allclose(m[k].numpy(), (a[k].double().numpy() + b[k].double().numpy()) / 2, atol=1e-6)
    assert (state_bytes(base), state_bytes(tuned)) == before  # neither model changed
    assert half.training is False and half is not tuned


def test_the_card_says_how_the_blend_was_made_and_drops_what_the_weights_measured(pair, tmp_path):
    base, tuned = pair
    assert tuned.meta.get("source_statistics")  # the toy model's card has them: the blend's must not
    blend = blend_models(base, tuned, 0.3)
    record = blend.meta["blend"]
    assert blend.meta["name"] == "toy-tuned-blend-30"
    assert record["base"] == base.meta["name"] and record["tuned"] == "toy-tuned" and record["weight"] == 0.3
    assert record["tuned_started_from_base"] is True
    assert not {"source_statistics", "calibration", "trust", "arrays"} & set(blend.meta)
    assert blend.meta["normalization"] == tuned.meta["normalization"]
    assert tuned.meta["training"]["metrics"] and blend.meta["training"]["metrics"] == {}  # its scores are not the blend's
    assert blend.meta["training"]["recipe"] == tuned.meta["training"]["recipe"]
    path = nb.save_model(blend, tmp_path / "b.safetensors")
    assert nb.load_model(path, device="cpu").meta["blend"] == record
    apart = copy.deepcopy(tuned)
    apart.meta["training"]["init"] = None
    assert blend_models(base, apart, 0.5, name="x").meta["blend"]["tuned_started_from_base"] is False


def test_running_statistics_estimated_again_on_training_images(pair, source_stack):
    base, tuned = pair
    images = source_stack[0][:8]
    mixed = blend_models(base, tuned, 0.5)
    again = blend_models(base, tuned, 0.5, statistics_images=images)
    adapted, _ = nb.adapt(mixed, images, device="cpu")
    for (name, bn_mixed), (_, bn_again), (_, bn_adapted) in zip(
            batchnorm_layers(mixed), batchnorm_layers(again), batchnorm_layers(adapted)):
        assert not np.allclose(bn_mixed.running_mean.numpy(), bn_again.running_mean.numpy()), name
        np.testing.assert_array_equal(bn_again.running_var.numpy(), bn_adapted.running_var.numpy())
    conv = [k for k in mixed.state_dict() if k.endswith("weight") and "bn" not in k.lower()][0]
    np.testing.assert_array_equal(mixed.state_dict()[conv].numpy(), again.state_dict()[conv].numpy())
    assert "estimated again" in again.meta["blend"]["running_statistics"]


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, "0.5", None])
def test_a_weight_outside_the_line_is_refused(pair, weight):
    with pytest.raises(BNAdaptError, match="from 0"):
        blend_models(*pair, weight)


def test_models_that_cannot_be_blended_are_refused(pair):
    base, tuned = pair
    other = UNet(width=base.config()["width"] * 2, bilinear=base.config()["bilinear"]).eval()
    with pytest.raises(BNAdaptError, match="different sizes|different networks"):
        blend_models(base, other, 0.5)
    shifted = copy.deepcopy(tuned)
    shifted.meta["normalization"] = {**tuned.meta["normalization"], "mean": 0.9}
    with pytest.raises(BNAdaptError, match="grey values"):
        blend_models(base, shifted, 0.5)
    fine, coarse = copy.deepcopy(base), copy.deepcopy(tuned)
    fine.meta["pixel_size_nm"], coarse.meta["pixel_size_nm"] = [5.0, 5.0], [8.0, 8.0]
    with pytest.raises(BNAdaptError, match="pixel sizes"):
        blend_models(fine, coarse, 0.5)
