"""ADDA on the bundled toy model: runs, adapts, resets its moments, picks checkpoints without labels."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from napari_bnadapt.baselines import adda as adda_mod
from napari_bnadapt.baselines.adda import adda, confusion_score, reset_moments
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.metrics import iou
from napari_bnadapt.segmentation.predict import segment

from ..conftest import state_bytes

KW = {"steps": 16, "batch_size": 4, "patch_size": 64, "checkpoint_every": 8, "seed": 0}


@pytest.fixture(scope="module")
def run(toy_model, source_stack, bright_stack, one_torch_thread):
    before = state_bytes(toy_model)
    res = adda(toy_model, source_stack[0][:16], bright_stack[0][:16], **KW)
    assert state_bytes(toy_model) == before  # the source model is byte-identical afterwards
    return res


def test_adda_adapts_a_copy_and_beats_source_only_on_a_brightness_shift(toy_model, bright_stack, run):
    x, y = bright_stack[0][16:32], bright_stack[1][16:32]
    source_only = iou(segment(toy_model, x, device="cpu", overlap=0) > 0, y > 0)
    adapted = iou(segment(run.model(), x, device="cpu", overlap=0) > 0, y > 0)
    assert [c.step for c in run.checkpoints] == [8, 16]
    assert source_only < 0.35  # the brighter target: the source model calls almost everything object
    # a few steps already help: the target encoder's BatchNorm runs on target batches (module docstring)
    assert adapted > source_only + 0.2
    # the decoder is the source's, byte for byte
    dec = {k: v for k, v in run.model().state_dict().items() if k.startswith(("up", "outc"))}
    src = {k: v for k, v in toy_model.state_dict().items() if k.startswith(("up", "outc"))}
    assert all(torch.equal(dec[k], src[k]) for k in src)


def test_confusion_score_is_one_for_a_coin_and_zero_for_a_perfect_or_inverted_discriminator():
    assert confusion_score([0.5, 0.5], [0.5, 0.5]) == pytest.approx(1.0)
    assert confusion_score([1.0, 1.0], [0.0, 0.0]) == pytest.approx(0.0)
    assert confusion_score([0.0], [1.0]) == pytest.approx(0.0)
    assert confusion_score([0.7], [0.4]) == pytest.approx(1 - 0.2 - 0.1)
    assert np.isnan(confusion_score([], []))
    with pytest.raises(BNAdaptError, match="differ in length"):
        confusion_score([0.5], [0.5, 0.5])


def test_the_confusion_choice_uses_no_target_labels(run, bright_stack):
    # adda() takes no labels at all ...
    params = set(inspect.signature(adda).parameters)
    assert not {p for p in params if "label" in p or p in ("y", "truth", "masks")}
    # ... the choice is a function of the discriminator's rates only ...
    best = run.best_by_confusion()
    assert best.confusion == max(c.confusion for c in run.checkpoints)
    for c in run.checkpoints:
        assert c.confusion == pytest.approx(confusion_score(run.recalls[c.step - 8:c.step],
                                                            run.false_positive_rates[c.step - 8:c.step]))
    # ... and a label-based selection with poisoned (inverted) labels leaves it where it was
    x, y = bright_stack[0][:8], bright_stack[1][:8]
    poisoned = 1 - y
    run.select(lambda m: iou(segment(m, x, device="cpu", overlap=0) > 0, poisoned > 0))
    assert run.best_by_confusion() is best


def test_momentum_reset_clears_both_optimisers_moments(toy_model, source_stack, bright_stack, monkeypatch):
    calls = []

    def spy(opt):
        had = sum(len(s) for s in opt.state.values())
        reset_moments(opt)
        calls.append((had, len(opt.state)))

    monkeypatch.setattr(adda_mod, "reset_moments", spy)
    kw = dict(KW, steps=6, checkpoint_every=6)
    res = adda(toy_model, source_stack[0][:8], bright_stack[0][:8], momentum_reset=2, **kw)
    assert res.resets == [2, 4]  # not after the last step
    assert len(calls) == 4  # encoder and discriminator optimisers, at each reset
    assert all(had > 0 and after == 0 for had, after in calls)
    calls.clear()
    assert adda(toy_model, source_stack[0][:8], bright_stack[0][:8], **kw).resets == []
    assert calls == []


def test_reset_moments_restarts_adam_from_zero_moments():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    assert float(opt.state[p]["step"]) == 3 and float(opt.state[p]["exp_avg"].abs().sum()) > 0
    reset_moments(opt)
    assert len(opt.state) == 0
    opt.zero_grad()
    (p ** 2).sum().backward()
    g = p.grad.clone()
    opt.step()
    assert float(opt.state[p]["step"]) == 1
    assert torch.allclose(opt.state[p]["exp_avg"], 0.1 * g)  # (1 - beta1) * g: the old moments are gone


def test_adda_refuses_bad_settings_in_words(toy_model, source_stack, bright_stack):
    with pytest.raises(BNAdaptError, match="momentum_reset"):
        adda(toy_model, source_stack[0][:4], bright_stack[0][:4], momentum_reset=0, steps=1)
    with pytest.raises(BNAdaptError, match="patch"):
        adda(toy_model, source_stack[0][:4], bright_stack[0][:4], patch_size=128, steps=1)
    with pytest.raises(BNAdaptError, match="U-Net"):
        adda(torch.nn.Sequential(torch.nn.BatchNorm2d(1)), source_stack[0][:4], bright_stack[0][:4])
