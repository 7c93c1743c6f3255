import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress

from ..conftest import state_bytes


@pytest.fixture(scope="module")
def small_data():
    from napari_bnadapt import synthetic

    return synthetic.generate(40, (64, 64), seed=7)


def test_short_training_learns_and_records_card(small_data):
    images, masks = small_data
    # "geometric": the flips-and-rotations recipe these figures were measured with (EM randomisation is the default)
    items = list(nb.train_iter(images, masks, width=8, steps=60, batch_size=8, patch_size=64, lr=3e-3, eval_every=30,
                               augment="geometric",
                               seed=1, device="cpu", name="tiny"))
    model = items[-1].value
    assert any(isinstance(i, Progress) and i.stage == "training" for i in items)
    card = model.meta["training"]
    assert card["metrics"]["val_iou"] > 0.88  # measured 0.903 after 60 steps (chance: about 0.2)
    assert card["recipe"]["seed"] == 1 and card["data"]["train_slices"] == 36
    assert card["recipe"]["augmentation"]["p_grey"] == 0.0 and card["recipe"]["augmentation"]["rotate_flip"]
    assert model.meta["objects"]["count"] > 0  # training-label object sizes, for the scale search
    assert model.meta["normalization"]["mean"] == pytest.approx(images.mean() / 255, abs=0.02)


def test_training_is_reproducible(small_data):
    images, masks = small_data
    kw = dict(width=4, steps=10, batch_size=4, patch_size=32, eval_every=5, seed=3, device="cpu")
    a, b = nb.train(images, masks, **kw), nb.train(images, masks, **kw)
    assert state_bytes(a) == state_bytes(b)


def test_without_validation_the_final_weights_are_kept_and_named(small_data):
    images, masks = small_data
    model = nb.train(images, masks, width=4, steps=6, batch_size=4, patch_size=32, eval_every=3, seed=3,
                     val_fraction=0.0, device="cpu")
    metrics = model.meta["training"]["metrics"]
    assert metrics["best_step"] == metrics["steps_run"] == 6 and "val_iou" not in metrics


def test_bad_training_input(small_data):
    images, masks = small_data
    with pytest.raises(BNAdaptError, match="differ in shape"):
        nb.train(images, masks[:5])
    with pytest.raises(BNAdaptError, match="integers"):
        nb.train(images, masks.astype(np.float32))
    with pytest.raises(BNAdaptError, match="val_fraction"):
        nb.train(images, masks, val_fraction=1.5)


def test_thesis_optimizer_option(small_data):
    images, masks = small_data
    m = nb.train(images, masks, width=4, steps=5, batch_size=4, patch_size=32, eval_every=5, seed=0, device="cpu",
                 optimizer="rmsprop", lr=1e-5)
    assert m.meta["training"]["recipe"]["optimizer"] == "rmsprop"
    with pytest.raises(BNAdaptError, match="optimizer"):
        nb.train(images, masks, steps=1, optimizer="sgd")


def test_bfloat16_mixed_precision_trains_a_float32_model(small_data, tmp_path):
    import torch

    images, masks = small_data
    m = nb.train(images, masks, width=8, steps=60, batch_size=8, patch_size=64, lr=3e-3, eval_every=30, seed=1,
                 augment="geometric",
                 device="cpu", precision="bfloat16", source_statistics=False)
    assert m.meta["training"]["recipe"]["precision"] == "bfloat16"
    assert m.meta["training"]["metrics"]["val_iou"] > 0.88  # learns like float32 (test above): measured 0.900
    assert all(t.dtype == torch.float32 for t in m.state_dict().values() if t.is_floating_point())
    assert all(p.is_contiguous() for p in m.parameters())  # channels-last was for training only
    path = nb.save_model(m, tmp_path / "bf16.safetensors")
    assert state_bytes(nb.load_model(path, device="cpu")) == state_bytes(m)
    with pytest.raises(BNAdaptError, match="precision"):
        nb.train(images, masks, steps=1, precision="float16")
