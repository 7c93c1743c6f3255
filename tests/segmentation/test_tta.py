"""Test-time augmentation (segmentation/tta.py): the views, their inversion, and predict underneath."""

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result
from napari_bnadapt.segmentation.tta import (
    dihedral_views,
    predict_tta,
    predict_tta_iter,
    segment_tta,
    turn,
    turn_back,
)

from ..conftest import SOURCE, state_bytes


@pytest.fixture(scope="module")
def small_stack():
    from napari_bnadapt import synthetic

    return synthetic.generate(3, (64, 96), seed=7, **SOURCE)  # non-square slices


def test_views_are_the_dihedral_group_and_turn_back_inverts_them():
    a = np.arange(6 * 10).reshape(6, 10)
    sq = np.random.default_rng(0).random((5, 5))
    for n in (1, 2, 4, 8):
        views = dihedral_views(n)
        assert len(views) == n and views[0] == (0, False)
        turned = [turn(sq, v).tobytes() for v in views]
        assert len(set(turned)) == n  # n different views
        for v in views:
            t = turn(a, v)
            assert t.shape == ((10, 6) if v[0] % 2 else (6, 10))
            np.testing.assert_array_equal(turn_back(t, v), a)
    assert all(k == 2 or k == 0 for k, _ in dihedral_views(4))  # the flips never change the shape
    with pytest.raises(BNAdaptError, match="transforms"):
        dihedral_views(3)


def test_one_view_is_exactly_predict(toy_model, small_stack):
    images = small_stack[0]
    np.testing.assert_array_equal(predict_tta(toy_model, images, transforms=1, device="cpu"),
                                  nb.predict(toy_model, images, device="cpu"))


def test_shapes_values_and_source_untouched(toy_model, small_stack, one_torch_thread):
    images, truth = small_stack
    before = state_bytes(toy_model)
    plain = nb.predict(toy_model, images, device="cpu")
    for n in (4, 8):
        p = predict_tta(toy_model, images, transforms=n, device="cpu")
        assert p.shape == images.shape and p.dtype == np.float32
        assert 0.0 <= p.min() and p.max() <= 1.0
        # measured: the averaged views agree with the plain prediction on ~99.7 % of the pixels
        assert ((p > 0.5) == (plain > 0.5)).mean() > 0.98
        assert nb.iou((p > 0.5).astype(np.uint8), truth) > 0.95
    assert not np.array_equal(p, plain)  # the views were really different
    one = predict_tta(toy_model, images[1], transforms=8, device="cpu")  # a single 2D non-square image
    assert one.shape == images[1].shape
    np.testing.assert_allclose(one, p[1], atol=1e-5)
    assert state_bytes(toy_model) == before


def test_out_array_progress_and_labels(toy_model, small_stack, one_torch_thread):
    images = small_stack[0]
    out = np.full(images.shape, 7.0, np.float32)  # zeroed first, then accumulated into
    items = list(predict_tta_iter(toy_model, images, transforms=2, device="cpu", out=out))
    assert isinstance(items[-1], Result) and items[-1].value is out
    progress = [i for i in items if isinstance(i, Progress)]
    assert progress[-1].done == progress[-1].total and all(p.done <= p.total for p in progress)
    np.testing.assert_allclose(out, predict_tta(toy_model, images, transforms=2, device="cpu"), atol=1e-6)
    labels = segment_tta(toy_model, images, transforms=2, device="cpu")
    np.testing.assert_array_equal(labels, (out > 0.5).astype(np.uint8))
    with pytest.raises(BNAdaptError, match="shape"):
        predict_tta(toy_model, images, transforms=2, device="cpu", out=np.zeros((1, 64, 96), np.float32))


def _symmetric_blur_model() -> torch.nn.Module:
    """A network that is exactly D4-equivariant: a 3x3 blur symmetric under every turn and flip."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None] / 4.0)
    return torch.nn.Sequential(conv, torch.nn.BatchNorm2d(1)).eval()


def test_equivariant_network_gives_the_plain_prediction_and_views_are_turned_back():
    """For an exactly equivariant network every view, turned back, is the plain prediction.

    A wrong inversion (turning a quarter turn the wrong way, or forgetting to undo a flip) fails
    this on a random image (slices of 64 x 96: multiples of 16, no padding breaks the symmetry).
    """
    model = _symmetric_blur_model()
    images = np.random.default_rng(3).random((2, 64, 96)).astype(np.float32)
    plain = nb.predict(model, images, device="cpu")
    for n in (2, 4, 8):
        np.testing.assert_allclose(predict_tta(model, images, transforms=n, device="cpu"), plain, atol=1e-5)
