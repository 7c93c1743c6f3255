"""Training-volume statistics (adabn/volumes.py): the guard of a model trained on several volumes."""

import copy

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.adabn.need import SOURCE_REFERENCE, adaptation_needed, apply_verdict
from napari_bnadapt.adabn.volumes import (
    VOLUME_ARRAY_PREFIX,
    measure_volume_statistics,
    read_volume_statistics,
)
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.model.foreign import batchnorm_layers

from ..conftest import BRIGHT, SOURCE, state_bytes


@pytest.fixture(scope="module")
def two_volumes(source_stack, bright_stack):
    return {"dim": source_stack[0], "bright": bright_stack[0]}


@pytest.fixture(scope="module")
def mixture_model(toy_model, two_volumes, one_torch_thread):
    """A stand-in for a model trained on batches that mixed two volumes: its running statistics are those of
    the two volumes pooled (AdaBN on both at once), and it carries each volume's own."""
    pooled, _ = nb.adapt(toy_model, np.concatenate(list(two_volumes.values())), device="cpu", seed=0)
    pooled.meta.pop("adaptation")
    return measure_volume_statistics(pooled, two_volumes, device="cpu")


def _verdict(model, images):
    adapted, report = nb.adapt(model, images, device="cpu", seed=0)
    return adapted, adaptation_needed(model, adapted, report)


def test_a_target_like_one_training_volume_keeps_the_mixture_statistics(mixture_model, one_torch_thread):
    from napari_bnadapt import synthetic

    fresh_dim = synthetic.generate(48, (64, 64), seed=31, **SOURCE)[0]
    adapted, verdict = _verdict(mixture_model, fresh_dim)
    assert not verdict.needed and verdict.reference == "training volume 'dim'", verdict.message
    assert "training volume 'dim'" in verdict.message and verdict.ratio <= verdict.margin
    assert state_bytes(apply_verdict(mixture_model, adapted, verdict)) == state_bytes(mixture_model)
    # the same target against the running (mixture) statistics alone: "needed", the trap this module removes
    plain = copy.deepcopy(mixture_model)
    plain.meta.pop("volume_statistics")
    _, alone = _verdict(plain, fresh_dim)
    assert alone.needed and alone.reference == SOURCE_REFERENCE
    fresh_bright = synthetic.generate(48, (64, 64), seed=32, **BRIGHT)[0]
    assert _verdict(mixture_model, fresh_bright)[1].reference == "training volume 'bright'"


def test_a_target_like_neither_volume_is_adapted(mixture_model, one_torch_thread):
    from napari_bnadapt import synthetic

    other = synthetic.generate(48, (64, 64), seed=33, mu0=70, sigma0=28, mu1=100, sigma1=28)[0]
    _, verdict = _verdict(mixture_model, other)
    assert verdict.needed and verdict.reference == SOURCE_REFERENCE and "differs" in verdict.message


def test_statistics_survive_the_model_file_and_leave_the_weights_alone(mixture_model, tmp_path):
    path = nb.save_model(mixture_model, tmp_path / "mixture")
    loaded = nb.load_model(path, device="cpu")
    assert state_bytes(loaded) == state_bytes(mixture_model)
    refs = read_volume_statistics(loaded)
    assert [r.label for r in refs] == ["dim", "bright"]
    names = [n for n, _ in batchnorm_layers(loaded)]
    for ref, orig in zip(refs, read_volume_statistics(mixture_model)):
        assert list(ref.statistics) == names
        for n in names:
            assert ref.statistics[n][0].dtype == ref.statistics[n][1].dtype == orig.statistics[n][0].dtype
            assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ref.statistics[n], orig.statistics[n]))
    entry = loaded.meta["volume_statistics"]["volumes"][0]
    assert entry["label"] == "dim" and entry["n_patches"] > 0 and entry["estimator"] == "cumulative"


def test_damaged_or_newer_statistics_are_refused(mixture_model):
    damaged = copy.deepcopy(mixture_model)
    key = next(k for k in damaged.meta["arrays"] if k.startswith(VOLUME_ARRAY_PREFIX + "1."))
    damaged.meta["arrays"][key] = damaged.meta["arrays"][key][:-1]
    with pytest.raises(BNAdaptError, match="training volume 'bright' do not match"):
        read_volume_statistics(damaged)
    newer = copy.deepcopy(mixture_model)
    newer.meta["volume_statistics"]["version"] = 99
    with pytest.raises(BNAdaptError, match="newer"):
        read_volume_statistics(newer)
    assert read_volume_statistics(nb.load_model("toy-perlin", device="cpu")) == []


def test_measuring_needs_two_volumes_and_copies_the_model(toy_model, two_volumes, one_torch_thread):
    before = state_bytes(toy_model)
    with pytest.raises(BNAdaptError, match="two or more volumes"):
        measure_volume_statistics(toy_model, {"dim": two_volumes["dim"]}, device="cpu")
    with pytest.raises(BNAdaptError, match="not listed"):
        measure_volume_statistics(toy_model, two_volumes, pixel_sizes_nm={"other": (5.0, 5.0)}, device="cpu")
    assert "volume_statistics" not in toy_model.meta and state_bytes(toy_model) == before


def test_training_on_two_volumes_stores_them_under_their_names(two_volumes, source_stack, bright_stack):
    images = [two_volumes["dim"][:8], two_volumes["bright"][:8]]
    labels = [source_stack[1][:8], bright_stack[1][:8]]
    kw = dict(steps=2, batch_size=2, patch_size=32, val_fraction=0, device="cpu", source_statistics=True,
              statistics_patches=4)
    model = nb.train(images, labels, volume_names=["dim lab", "bright lab"], **kw)
    assert [r.label for r in read_volume_statistics(model)] == ["dim lab", "bright lab"]
    assert [v["name"] for v in model.meta["training"]["data"]["volumes"]] == ["dim lab", "bright lab"]
    with pytest.raises(BNAdaptError, match="distinct, non-empty names"):
        nb.train(images, labels, volume_names=["same", "same"], **kw)
    single = nb.train(images[0], labels[0], **kw)
    assert "volume_statistics" not in single.meta


@pytest.mark.parametrize("name", ["em-generalist", "em-generalist-2"])
def test_bundled_generalists_carry_both_volumes(name):
    assert [r.label for r in read_volume_statistics(nb.load_model(name, device="cpu"))] == ["Lucchi++", "VNC"]
