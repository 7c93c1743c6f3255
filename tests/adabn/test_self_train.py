"""Self-training after AdaBN (adabn/self_train.py): a copy learns its confident pixels; BN and the source stay."""

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.adabn.self_train import balanced_loss, self_train, self_train_iter
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.unet import batchnorm_layers
from napari_bnadapt.progress import Progress, Result

from ..conftest import BRIGHT, state_bytes


@pytest.fixture(scope="module")
def bright_adapted(toy_model, one_torch_thread):
    from napari_bnadapt import synthetic

    images, truth = synthetic.generate(24, (64, 64), seed=21, **BRIGHT)
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    return images, truth, adapted


def test_balanced_loss_weighs_the_classes_equally_and_ignores_unlabelled_pixels():
    z = torch.tensor([[4.0, -4.0, 0.0, 9.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")[0]
    weight = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # pixels 2 and 3 unlabelled
    assert float(balanced_loss(z, target, weight)) == pytest.approx(float((bce[0] + bce[1]) / 2), rel=1e-6)
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # one foreground pixel weighs as much as all background
    expected = ((bce[0] + bce[2]) / 2 + (bce[1] + bce[3]) / 2) / 2
    assert float(balanced_loss(z, target, weight)) == pytest.approx(float(expected), rel=1e-6)
    assert float(balanced_loss(z, target, torch.zeros_like(z))) == 0.0


def test_trains_a_copy_keeps_batchnorm_and_the_source(bright_adapted, toy_model, one_torch_thread):
    images, truth, adapted = bright_adapted
    before, source = state_bytes(adapted), state_bytes(toy_model)
    tuned, report = self_train(adapted, images, device="cpu", steps=6, batch_size=2, patch_size=64)
    assert state_bytes(adapted) == before and state_bytes(toy_model) == source  # never changed
    bn = {f"{n}.{k}" for n, layer in batchnorm_layers(adapted) for k in layer.state_dict()}
    src, dst = adapted.state_dict(), tuned.state_dict()
    changed = {k for k in src if not torch.equal(src[k], dst[k])}
    assert changed and not changed & bn  # convolutions moved, BatchNorm (statistics and affine) did not
    assert all(p.requires_grad == q.requires_grad for p, q in zip(adapted.parameters(), tuned.parameters()))
    assert report.steps_run == 6 and not report.reverted and report.n_patches == 12
    assert 0.5 < report.confident_fraction <= 1.0 and 0 < report.pseudo_foreground < 1
    assert tuned.meta["adaptation"]["self_train"]["steps_run"] == 6
    assert "self_train" not in adapted.meta["adaptation"]
    # on a shift AdaBN already undoes, the pass must not break the segmentation
    iou_adabn = nb.iou(nb.segment(adapted, images, device="cpu"), truth)
    iou_tuned = nb.iou(nb.segment(tuned, images, device="cpu"), truth)
    assert iou_tuned > iou_adabn - 0.05, (iou_adabn, iou_tuned)
    # the same seed gives the same copy
    again, _ = self_train(adapted, images, device="cpu", steps=6, batch_size=2, patch_size=64)
    assert state_bytes(again) == state_bytes(tuned)


def test_guard_restores_the_starting_weights(bright_adapted, one_torch_thread):
    images, _, adapted = bright_adapted
    tuned, report = self_train(adapted, images, device="cpu", steps=3, batch_size=2, patch_size=64,
                               max_foreground_ratio=1.000001)
    assert report.reverted and "restored" in report.guard and report.steps_run == 0
    assert state_bytes(tuned) == state_bytes(adapted)


def test_progress_and_bad_arguments(bright_adapted):
    images, _, adapted = bright_adapted
    items = list(self_train_iter(adapted, images, device="cpu", steps=2, batch_size=1, patch_size=64))
    assert all(isinstance(i, Progress) for i in items[:-1]) and isinstance(items[-1], Result)
    for kwargs, words in (({"confidence": 0.5}, "confidence"), ({"confidence": 1.0}, "confidence"),
                          ({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                          ({"max_foreground_ratio": 1.0}, "max_foreground_ratio")):
        with pytest.raises(BNAdaptError, match=words):
            self_train(adapted, images, device="cpu", **kwargs)
    with pytest.raises(BNAdaptError):
        self_train(torch.nn.Conv2d(1, 1, 3), images, device="cpu")  # no BatchNorm
    with pytest.raises(BNAdaptError):
        self_train(adapted, np.zeros((0, 64, 64), np.uint8), device="cpu")
