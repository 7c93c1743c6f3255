"""Source statistics: measured once on the source data, stored in the model file, read back exactly."""

import copy

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.stack_view import Normalization
from napari_bnadapt.progress import Progress, Result
from napari_bnadapt.stats.source_statistics import (
    ARRAY_PREFIX,
    SIGNAL_NAMES,
    compute_source_statistics,
    compute_source_statistics_iter,
    has_source_statistics,
    read_source_statistics,
)

from ..conftest import state_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bare(model):
    m = copy.deepcopy(model)
    m.meta = {k: v for k, v in m.meta.items() if k not in ("source_statistics", "calibration", "arrays")}
    return m


@pytest.fixture(scope="module")
def measured(toy_model, source_stack):
    bare = _bare(toy_model)
    return bare, compute_source_statistics(bare, source_stack[0][:16], device="cpu", batch_size=16)


def test_returns_a_copy_and_leaves_the_model_alone(measured):
    bare, with_stats = measured
    assert with_stats is not bare
    assert not has_source_statistics(bare)
    assert has_source_statistics(with_stats)
    assert state_bytes(bare) == state_bytes(with_stats)


def test_contents(measured, source_stack):
    _, m = measured
    stats = read_source_statistics(m)
    assert list(stats.moments) == ["ls0", "ls1", "ls2", "ls3", "ls4", "dec", "out"]
    width = m.width
    assert stats.moments["ls0"].dim == width and stats.moments["ls4"].dim == 16 * width
    assert stats.moments["out"].dim == 2
    assert set(stats.forms().values()) == {"full"}  # the toy model is small: full everywhere
    for k in SIGNAL_NAMES:
        assert k in stats.signals
    # the predicted foreground fraction is that of the segmentation (p > 0.5), here the true one
    # (measured 0.16806 predicted against 0.16808 true); confidence 0.997 as in docs/reliability.md
    images, truth = source_stack[0][:16], source_stack[1][:16]
    assert stats.signals["foreground_fraction"] == pytest.approx(nb.segment(m, images, device="cpu").mean(), abs=1e-9)
    assert stats.signals["foreground_fraction"] == pytest.approx(truth.mean(), abs=0.01)
    assert stats.signals["confidence"] > 0.99
    # the stored Gaussian of ls0 is that of the pre-ReLU output of inc.bn2, computed directly
    x = torch.from_numpy(Normalization.from_meta(m.meta["normalization"]).apply(images)[:, None]).float()
    with torch.no_grad():
        ls0 = m.inc.bn2(m.inc.conv2(m.inc.relu1(m.inc.bn1(m.inc.conv1(x))))).double()
    flat = ls0.transpose(0, 1).reshape(ls0.shape[1], -1).T.numpy()
    np.testing.assert_allclose(stats.moments["ls0"].mean, flat.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.moments["ls0"].cov, np.cov(flat, rowvar=False), rtol=1e-5, atol=1e-7)
    card = m.meta["source_statistics"]
    assert card["provenance"]["n_patches"] == 16 and card["provenance"]["exhaustive"]
    assert all(layer["form"] == "full" for layer in card["layers"].values())
    assert "ls0" in card["note"] or "channels" in card["note"]
    # the whole images were measured: count = pixels
    assert stats.moments["ls0"].count == 16 * 64 * 64


def test_round_trip_through_the_model_file(measured, tmp_path):
    _, m = measured
    path = nb.save_model(m, tmp_path / "with-stats.safetensors")
    back = nb.load_model(path, device="cpu")
    a, b = read_source_statistics(m), read_source_statistics(back)
    assert a.signals == b.signals
    for name in a.moments:
        ga, gb = a.moments[name], b.moments[name]
        assert ga.count == gb.count and ga.full_covariance == gb.full_covariance
        np.testing.assert_array_equal(ga.mean, gb.mean)
        np.testing.assert_array_equal(ga.cov, gb.cov)
        assert ga.effective_count == pytest.approx(gb.effective_count, rel=1e-12)
    assert any(k.startswith(ARRAY_PREFIX) for k in back.meta["arrays"])


def test_diagonal_above_the_size_limit_and_in_place(toy_model, source_stack):
    m = _bare(toy_model)
    gen = compute_source_statistics_iter(m, source_stack[0][:4], device="cpu", full_cov_max_dim=16, in_place=True)
    items = list(gen)
    assert isinstance(items[0], Progress) and isinstance(items[-1], Result)
    assert items[-1].value is m
    forms = read_source_statistics(m).forms()
    assert forms["ls0"] == "full" and forms["ls1"] == "full"
    assert forms["ls2"] == "diagonal" and forms["ls4"] == "diagonal"
    assert read_source_statistics(m).moments["ls4"].cov is None


def test_batching_does_not_change_the_statistics(toy_model, source_stack):
    x = source_stack[0][:8]
    a = read_source_statistics(compute_source_statistics(_bare(toy_model), x, device="cpu", batch_size=8))
    b = read_source_statistics(compute_source_statistics(_bare(toy_model), x, device="cpu", batch_size=3))
    for name in a.moments:
        np.testing.assert_allclose(a.moments[name].mean, b.moments[name].mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a.moments[name].cov, b.moments[name].cov, rtol=1e-7, atol=1e-9)
    assert a.signals["foreground_fraction"] == pytest.approx(b.signals["foreground_fraction"], abs=1e-12)


def test_damaged_statistics_are_reported(measured):
    _, m = measured
    broken = copy.deepcopy(m)
    broken.meta["arrays"] = {k: v for k, v in broken.meta["arrays"].items() if not k.endswith("ls0.m2")}
    with pytest.raises(BNAdaptError, match="incomplete"):
        read_source_statistics(broken)
    assert read_source_statistics(_bare(m)) is None


def test_train_stores_source_statistics():
    from napari_bnadapt import synthetic

    x, y = synthetic.generate(8, (32, 32), seed=3)
    model = nb.train(x, y, width=4, steps=2, batch_size=2, patch_size=32, val_fraction=0.0, device="cpu")
    stats = read_source_statistics(model)
    assert stats is not None
    assert stats.moments["ls0"].count == 8 * 32 * 32  # a small stack is measured whole
    assert model.meta["source_statistics"]["provenance"]["intensity_range"] == [0.0, 255.0]
