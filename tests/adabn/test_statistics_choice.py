"""The label-free choice between the source and the adapted statistics (adabn/statistics_choice.py)."""

import copy

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt import synthetic
from napari_bnadapt.adabn.statistics_choice import (
    choose_statistics,
    choose_statistics_iter,
    keep_source,
)
from napari_bnadapt.bound.decision import signal_log_ratio
from napari_bnadapt.bound.witnesses import foreground_match
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result
from napari_bnadapt.stats.source_statistics import training_foreground

from ..conftest import SOURCE, state_bytes


def test_the_rule_needs_both_witnesses():
    # more consistent and nearer the training share: the source
    assert keep_source(0.99, 0.80, 0.25, 0.14, 0.20)
    # an empty segmentation is perfectly consistent but far from the training share: the adapted one
    assert not keep_source(1.0, 0.95, 0.0, 0.19, 0.20)
    # nearer the training share but less consistent, and ties: the adapted one
    assert not keep_source(0.90, 0.95, 0.20, 0.30, 0.20)
    assert not keep_source(0.95, 0.95, 0.20, 0.30, 0.20)
    assert foreground_match(signal_log_ratio(0.2, 0.2)) == 0.0 and foreground_match(signal_log_ratio(0.0, 0.2)) < -7


@pytest.fixture(scope="module")
def misadapted(toy_model, source_stack, one_torch_thread):
    """A source-domain stack, and the toy model adapted to a stack 25 grey values brighter (wrong statistics
    for this one: it under-segments it)."""
    brighter = synthetic.generate(48, (64, 64), seed=12, **{**SOURCE, "mu0": SOURCE["mu0"] + 25,
                                                            "mu1": SOURCE["mu1"] + 25})[0]
    adapted, _ = nb.adapt(toy_model, brighter, device="cpu")
    return source_stack[0], source_stack[1] > 0, adapted


def test_statistics_that_fit_the_stack_worse_are_not_kept(toy_model, misadapted, one_torch_thread):
    images, truth, adapted = misadapted
    before = (state_bytes(toy_model), state_bytes(adapted), images.copy())
    model, choice = choose_statistics(toy_model, adapted, images, device="cpu")
    assert model is toy_model and not choice.adapted
    assert choice.flip_source > choice.flip_adapted and choice.foreground_training == training_foreground(toy_model)
    assert keep_source(choice.flip_source, choice.flip_adapted, choice.foreground_source, choice.foreground_adapted,
                       choice.foreground_training)
    assert choice.reason.startswith("source statistics kept") and f"{choice.flip_adapted:.3f} adapted" in choice.reason
    # and it chose right: the source model segments this stack better
    ious = [nb.iou(nb.predict(m, images, device="cpu") > 0.5, truth) for m in (toy_model, adapted)]
    assert ious[0] > ious[1] + 0.2
    assert (state_bytes(toy_model), state_bytes(adapted)) == before[:2]
    np.testing.assert_array_equal(images, before[2])


def test_statistics_adapted_to_the_stack_are_kept(toy_model, bright_stack, one_torch_thread):
    images = bright_stack[0]
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    items = list(choose_statistics_iter(toy_model, adapted, images, n_slices=3, side=64, device="cpu"))
    model, choice = items[-1].value
    assert isinstance(items[-1], Result) and model is adapted and choice.adapted
    assert (choice.n_slices, choice.side) == (3, 64) and choice.reason.startswith("adapted statistics kept (")
    steps = [i for i in items if isinstance(i, Progress)]
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total == 6


def test_without_training_share_or_contrast_nothing_is_chosen(toy_model, misadapted, one_torch_thread):
    images, _, adapted = misadapted
    bare = copy.deepcopy(toy_model)
    del bare.meta["source_statistics"]
    model, choice = choose_statistics(bare, adapted, images, device="cpu")
    assert model is adapted and choice.adapted and "no source statistics" in choice.reason
    assert np.isnan(choice.flip_source)
    blank = np.full((2, 64, 64), 100, np.uint8)
    model, choice = choose_statistics(toy_model, adapted, blank, device="cpu")
    assert model is adapted and "blank" in choice.reason
    with pytest.raises(BNAdaptError, match="at least one slice"):
        choose_statistics(toy_model, adapted, images, n_slices=0, device="cpu")
