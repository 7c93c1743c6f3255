"""Class-balanced AdaBN (mode="balanced"): weights, exactness, what it buys, and its refusals."""

import copy

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt import synthetic
from napari_bnadapt.adabn.balanced import (
    MAX_WEIGHT_RATIO,
    _weighted_pass_iter,
    balance_statistics_iter,
    class_weights,
)
from napari_bnadapt.adabn.estimators import MODES, _bn_layers
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result, run_to_end
from napari_bnadapt.stats.source_statistics import training_foreground

from ..conftest import BRIGHT, SOURCE, state_bytes


def test_class_weights():
    assert class_weights(0.2, 0.2) == pytest.approx((1.0, 1.0))
    fg, bg = class_weights(0.1, 0.2)  # too few mitochondria: they count more, the background less
    assert fg == pytest.approx(2.0) and bg == pytest.approx(0.8 / 0.9)
    assert class_weights(0.0, 0.2) == pytest.approx((MAX_WEIGHT_RATIO, 0.8))  # none predicted: bounded
    assert class_weights(1.0, 0.2)[1] == pytest.approx(MAX_WEIGHT_RATIO)


def _sparse_and_dense(n: int, seed: int, domain: dict) -> tuple[tuple, tuple]:
    """The 24 slices with the fewest and the 24 with the most mitochondria among ``n`` of one domain."""
    x, y = synthetic.generate(n, (64, 64), seed=seed, **domain)
    order = np.argsort((y > 0).mean((1, 2)))
    return (x[order[:24]], y[order[:24]] > 0), (x[order[-24:]], y[order[-24:]] > 0)


@pytest.fixture(scope="module")
def sparse_dense():
    return _sparse_and_dense(200, 21, SOURCE)


def _network_input(model, images, batch_size):
    """The batches ``nb.adapt`` reads from a small stack (all of it, in its order)."""
    import torch

    from napari_bnadapt.adabn.patches import iter_patch_batches, plan_patches
    from napari_bnadapt.io.stack_view import check_stack, resolve_normalization

    view = check_stack(images)
    norm = resolve_normalization(view, model.meta["normalization"], None)
    plan = plan_patches(view.shape3d, None, 256, 0)
    assert plan.exhaustive
    return [torch.from_numpy(b) for b in iter_patch_batches(view, plan, norm.apply, batch_size)]


def _mean_shift(report) -> float:
    return float(np.mean([layer.mean_shift for layer in report.layers]))


def test_uniform_weights_give_plain_adabn(toy_model, sparse_dense, one_torch_thread):
    """The weighted pass with equal weights is AdaBN itself (each batch normalised with its own statistics)."""
    import torch

    images = sparse_dense[0][0]
    plain, report = nb.adapt(toy_model, images, device="cpu")
    model = copy.deepcopy(toy_model)
    batches = _network_input(toy_model, images, report.batch_size)
    target = run_to_end(_weighted_pass_iter(model, _bn_layers(model), batches,
                                            lambda b: torch.ones_like(b), lambda i: Progress("pass", i, 1)))
    for name, bn in _bn_layers(plain):
        np.testing.assert_allclose(target[name][0].numpy(), bn.running_mean.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(target[name][1].numpy(), bn.running_var.numpy(), rtol=2e-3, atol=1e-4)


def test_a_stack_with_few_mitochondria_is_not_misread_as_a_shift(toy_model, sparse_dense, one_torch_thread):
    """Same imaging, other content: plain AdaBN moves the statistics by what the slices hold and loses IoU;
    the balanced ones stay nearer the source's and keep its quality, on sparse and on dense slices."""
    for images, truth in sparse_dense:
        before = (state_bytes(toy_model), images.copy())
        source = nb.iou(nb.predict(toy_model, images, device="cpu") > 0.5, truth)
        plain, rp = nb.adapt(toy_model, images, device="cpu")
        balanced, rb = nb.adapt(toy_model, images, device="cpu", mode="balanced")
        ious = [nb.iou(nb.predict(m, images, device="cpu") > 0.5, truth) for m in (plain, balanced)]
        assert _mean_shift(rb) < _mean_shift(rp)
        assert ious[1] >= ious[0] and ious[1] > source - 0.02
        assert rb.mode == "balanced" and rb.notes[-1].startswith("class-balanced: predicted share")
        assert balanced.meta["adaptation"]["report"]["mode"] == "balanced"
        assert state_bytes(toy_model) == before[0]
        np.testing.assert_array_equal(images, before[1])
    # the sparse slices: the loss is plain AdaBN's, and the balanced statistics take it back
    images, truth = sparse_dense[0]
    assert nb.iou(nb.predict(nb.adapt(toy_model, images, device="cpu")[0], images, device="cpu") > 0.5, truth) < 0.9


def test_a_real_shift_is_still_adapted(toy_model, one_torch_thread):
    """Brighter AND sparse: the source model fails, the balanced statistics adapt as well as plain AdaBN."""
    images, truth = _sparse_and_dense(120, 22, BRIGHT)[0]
    source = nb.iou(nb.predict(toy_model, images, device="cpu") > 0.5, truth)
    ious = [nb.iou(nb.predict(nb.adapt(toy_model, images, device="cpu", mode=mode)[0], images, device="cpu") > 0.5,
                   truth) for mode in ("cumulative", "balanced")]
    assert source < 0.5 and ious[0] > 0.85 and ious[1] >= ious[0] - 0.01


def test_cancel_leaves_plain_statistics(toy_model, sparse_dense, one_torch_thread):
    images = sparse_dense[0][0]
    plain, report = nb.adapt(toy_model, images, device="cpu")
    before = state_bytes(plain)
    batches = _network_input(toy_model, images, report.batch_size)
    n = len(batches)
    it = balance_statistics_iter(plain, lambda: batches, n, training_foreground(toy_model), iterations=3)
    while (step := next(it)).done <= 2 * n:  # until the second round has begun
        assert isinstance(step, Progress) and step.total == 6 * n
    assert state_bytes(plain) != before  # the first round's statistics are in the model
    it.close()  # cancelled: they must not stay
    assert state_bytes(plain) == before
    steps = list(balance_statistics_iter(copy.deepcopy(plain), lambda: batches, n, training_foreground(toy_model)))
    assert [s.done for s in steps[:-1]] == list(range(4 * n + 1)) and isinstance(steps[-1], Result)
    assert len(steps[-1].value.target_shares) == 2


def test_refusals(toy_model, sparse_dense):
    images = sparse_dense[0][0]
    assert "balanced" in MODES
    no_card = copy.deepcopy(toy_model)
    no_card.meta.pop("source_statistics", None)
    with pytest.raises(BNAdaptError, match="share of pixels the model calls mitochondria"):
        nb.adapt(no_card, images, device="cpu", mode="balanced")
    with pytest.raises(BNAdaptError, match="unknown adaptation mode 'median'"):
        nb.adapt(toy_model, images, device="cpu", mode="median")
    with pytest.raises(BNAdaptError, match=r"must be in \(0, 1\)"):
        list(balance_statistics_iter(copy.deepcopy(toy_model), lambda: [], 0, 0.0))
    with pytest.raises(BNAdaptError, match="no target data"):
        list(balance_statistics_iter(copy.deepcopy(toy_model), lambda: [], 0, 0.2))
