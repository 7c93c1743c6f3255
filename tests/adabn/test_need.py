"""Is adaptation needed (adabn/need.py): the shift against its half-sample floor, and the mixture."""

import copy

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.adabn.need import (
    adaptation_needed,
    apply_verdict,
    mix_statistics,
    patch_count_floor,
)
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.unet import batchnorm_layers

from ..conftest import SOURCE, state_bytes


@pytest.fixture(scope="module")
def in_domain(toy_model, one_torch_thread):
    """The toy model adapted to a fresh stack drawn like its training data."""
    from napari_bnadapt import synthetic

    images = synthetic.generate(48, (64, 64), seed=21, **SOURCE)[0]
    return nb.adapt(toy_model, images, device="cpu")


def test_in_domain_is_not_needed_and_a_brightness_shift_is(toy_model, in_domain, bright_stack, one_torch_thread):
    before = state_bytes(toy_model)
    adapted, report = in_domain
    same = adaptation_needed(toy_model, adapted, report)
    # measured: shift 0.024 source sigma against a floor of 0.054 (ratio 0.45; 0.37-0.46 over three seeds)
    assert not same.needed and same.ratio < 0.8 and same.weight == 0.0
    assert same.floor_from == "half-sample drift" and same.floor == pytest.approx(2 * report.drift)
    assert "already matches" in same.message
    shifted, shifted_report = nb.adapt(toy_model, bright_stack[0], device="cpu")
    bright = adaptation_needed(toy_model, shifted, shifted_report)
    # measured: shift 1.8 source sigma in inc.bn1, 25-36x the floor
    assert bright.needed and bright.ratio > 10 and bright.layer == "inc.bn1" and bright.weight == 1.0
    assert "differs" in bright.message
    # the report stored in the adapted card is found without being passed
    assert adaptation_needed(toy_model, shifted).needed
    assert state_bytes(toy_model) == before


def test_the_floor_falls_back_to_the_patch_count(toy_model, in_domain):
    adapted = copy.deepcopy(in_domain[0])
    adapted.meta.pop("adaptation")
    with pytest.raises(BNAdaptError, match="noise floor"):
        adaptation_needed(toy_model, adapted)
    verdict = adaptation_needed(toy_model, adapted, n_patches=48)
    assert verdict.floor_from == "patch count" and verdict.floor == pytest.approx(patch_count_floor(48))
    assert patch_count_floor(64) == pytest.approx(2 * np.sqrt(2 / (np.pi * 64)))
    # the fallback floor is what two halves of independent standard-normal samples differ by
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 64))
    assert np.abs(x[:, :32].mean(1) - x[:, 32:].mean(1)).mean() == pytest.approx(patch_count_floor(64), rel=0.02)


def test_not_needed_keeps_the_source_statistics(toy_model, in_domain):
    adapted, report = in_domain
    verdict = adaptation_needed(toy_model, adapted, report)
    kept = apply_verdict(toy_model, adapted, verdict)
    assert state_bytes(kept) == state_bytes(toy_model)
    assert kept.meta["adaptation"]["need"]["needed"] is False
    assert kept.meta["adaptation"]["mixed_with_source"] == {"weight": 0.0}
    assert state_bytes(adapted) != state_bytes(toy_model)  # the adapted copy itself is untouched
    assert state_bytes(mix_statistics(toy_model, adapted, 1.0)) == state_bytes(adapted)


def test_mixture_variance_is_the_variance_of_the_pooled_samples():
    """w = 1/2 of two equal samples: the mixed statistics are those of the two samples pooled.

    Averaging the variances alone would miss the spread between the means (1/4 (m_t - m_s)^2 here).
    """
    rng = np.random.default_rng(1)
    xs, xt = rng.normal(0.0, 1.0, (4000, 3)), rng.normal([2.0, -1.0, 0.5], [1.0, 3.0, 0.5], (4000, 3))
    source = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3)).eval()
    adapted = copy.deepcopy(source)
    for model, x in ((source, xs), (adapted, xt)):
        bn = model[1]
        bn.running_mean.copy_(torch.from_numpy(x.mean(0)))
        bn.running_var.copy_(torch.from_numpy(x.var(0)))
    mixed = mix_statistics(source, adapted, 0.5)
    pooled = np.concatenate([xs, xt])
    np.testing.assert_allclose(mixed[1].running_mean.numpy(), pooled.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1].running_var.numpy(), pooled.var(0), rtol=1e-5)
    assert float(source[1].running_mean[0]) == pytest.approx(xs.mean(0)[0])  # neither input changed
    with pytest.raises(BNAdaptError, match="between 0 and 1"):
        mix_statistics(source, adapted, 1.5)
    trained = copy.deepcopy(adapted)
    with torch.no_grad():
        trained[0].weight.add_(1.0)
    with pytest.raises(BNAdaptError, match="more than their BatchNorm statistics"):
        mix_statistics(source, trained, 0.5)


def test_per_layer_weights_keep_the_source_statistics_where_the_weight_is_zero(toy_model, in_domain):
    """Partial AdaBN: weight 1 takes a layer's adapted statistics, 0 keeps the source's, exactly."""
    adapted = in_domain[0]
    before = (state_bytes(toy_model), state_bytes(adapted))
    names = [n for n, _ in batchnorm_layers(toy_model)]
    weights = {n: float(i < len(names) // 2) for i, n in enumerate(names)}
    mixed = mix_statistics(toy_model, adapted, weights)
    src, ad, mx = (dict(batchnorm_layers(m)) for m in (toy_model, adapted, mixed))
    for n in names:
        want = ad[n] if weights[n] else src[n]
        assert torch.equal(mx[n].running_mean, want.running_mean) and torch.equal(mx[n].running_var, want.running_var)
    assert not torch.equal(src[names[0]].running_mean, ad[names[0]].running_mean)  # the test can tell them apart
    assert mixed.meta["adaptation"]["mixed_with_source"] == {"weight": weights}
    assert (state_bytes(toy_model), state_bytes(adapted)) == before  # neither input changed
    with pytest.raises(BNAdaptError, match=r"every BatchNorm layer.*missing"):
        mix_statistics(toy_model, adapted, {n: 1.0 for n in names[1:]})
    with pytest.raises(BNAdaptError, match=r"unknown \['nope'\]"):
        mix_statistics(toy_model, adapted, {**weights, "nope": 1.0})
    with pytest.raises(BNAdaptError, match=f"between 0 and 1, not 2.0 \\({names[0]}\\)"):
        mix_statistics(toy_model, adapted, {**weights, names[0]: 2.0})


def test_only_batchnorm_statistics_are_compared(toy_model, in_domain):
    adapted = in_domain[0]
    names = [n for n, _ in batchnorm_layers(toy_model)]
    verdict = adaptation_needed(toy_model, adapted, in_domain[1])
    assert list(verdict.layers) == names and verdict.shift == max(verdict.layers.values())
    with pytest.raises(BNAdaptError, match="different BatchNorm layers"):
        adaptation_needed(toy_model, torch.nn.Sequential(torch.nn.BatchNorm2d(3)), in_domain[1])


def test_a_change_of_contrast_alone_is_caught(toy_model):
    """Blur shrinks the feature spread while barely moving the means: the std limit says 'needed'."""
    from napari_bnadapt.adabn.need import STD_CHANGE_LIMIT

    narrower = copy.deepcopy(toy_model)
    name, bn = batchnorm_layers(narrower)[3]
    bn.running_var.mul_(0.6)  # sd x 0.77 in one layer, means unchanged: |log| = 0.255
    verdict = adaptation_needed(toy_model, narrower, {"drift": 0.05, "n_patches": 64})
    assert verdict.shift == 0.0 and verdict.ratio == 0.0
    assert verdict.std_change == pytest.approx(-0.5 * np.log(0.6), rel=1e-6)
    assert verdict.std_change > STD_CHANGE_LIMIT
    assert verdict.needed and "contrast" in verdict.message and name in verdict.message
    same = adaptation_needed(toy_model, copy.deepcopy(toy_model), {"drift": 0.05, "n_patches": 64})
    assert not same.needed and same.std_change == 0.0
