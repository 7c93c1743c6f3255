import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.stack_view import Normalization, check_stack
from napari_bnadapt.model.augment import Augmentation, resolve_augmentation
from napari_bnadapt.model.crops import TrainingVolume, crop_batch

from ..conftest import state_bytes


def _ramp(n: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0.1, 0.9, n, dtype=np.float32), (n, 1))


def test_grey_steps_follow_the_seed_and_change_the_image():
    aug = Augmentation(p_grey=1.0, p_blur=1.0, p_noise=1.0, p_stripes=1.0)
    x = _ramp()
    a = aug.grey(x, np.random.default_rng(5))
    b = aug.grey(x, np.random.default_rng(5))
    c = aug.grey(x, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.abs(a - x).mean() > 0.01
    assert np.array_equal(Augmentation.off().grey(x, np.random.default_rng(0)), x)


def test_inversion_and_geometry_keep_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = np.zeros((32, 32), bool)
    label[4:12, 6:20] = True
    aug = Augmentation()
    for _ in range(16):
        im, lb = aug.geometry(label.astype(np.float32), label, rng)
        assert np.array_equal(im > 0.5, lb)
    inverted = Augmentation(p_invert=1.0, p_grey=0.0).grey(_ramp(), rng)
    assert np.allclose(inverted, 1.0 - _ramp())


def test_settings_round_trip_and_presets():
    aug = Augmentation(gamma=(0.8, 1.2), p_stripes=0.0)
    assert Augmentation.from_meta(aug.to_meta()) == aug
    assert resolve_augmentation(True) == Augmentation()
    assert resolve_augmentation("geometric").p_grey == 0.0 and resolve_augmentation("geometric").rotate_flip
    assert not resolve_augmentation(False).rotate_flip
    assert resolve_augmentation(aug.to_meta()) == aug
    with pytest.raises(BNAdaptError, match="probability"):
        Augmentation(p_noise=1.5)
    with pytest.raises(BNAdaptError, match="range"):
        Augmentation(gain=(1.4, 0.6))
    with pytest.raises(BNAdaptError, match="augment must be"):
        resolve_augmentation("strong")


def test_crops_are_resampled_to_the_model_pixel_size():
    """A volume with 2x larger pixels gives crops whose objects are 2x wider, labels aligned with the image."""
    img = np.zeros((2, 64, 64), np.uint8)
    img[:, 24:40, 24:40] = 255  # a 16 px square
    view, labels = check_stack(img), check_stack((img > 0).astype(np.uint8))
    norm = Normalization(mean=0.0, std=1.0)
    plain = Augmentation.off()
    vol = TrainingVolume(view, labels, norm, 2.0, np.array([0, 1]), np.array([], int))
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(40):
        x, y = vol.crop(0, (64, 64), plain, rng)
        assert x.shape == y.shape == (64, 64)
        assert np.mean((x > 0.5) == (y > 0)) > 0.98
        inside = y.any() and not (y[0].any() or y[-1].any() or y[:, 0].any() or y[:, -1].any())
        if inside:  # the whole square in the crop: measure its width
            sizes.append(int(y.any(axis=0).sum()))
    assert sizes and all(30 <= s <= 34 for s in sizes)


def test_one_volume_batches_draw_like_the_single_source_recipe():
    img = np.random.default_rng(0).integers(0, 255, (5, 64, 64)).astype(np.uint8)
    vol = TrainingVolume(check_stack(img), check_stack((img > 128).astype(np.uint8)), Normalization(), 1.0,
                         np.array([0, 2, 4]), np.array([1]))
    a = crop_batch([vol], np.ones(1), (32, 32), 6, Augmentation.geometric(), np.random.default_rng(3))
    b = crop_batch([vol], np.ones(1), (32, 32), 6, Augmentation.geometric(), np.random.default_rng(3))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert a[0].shape == (6, 1, 32, 32) and a[1].shape == (6, 32, 32)


def test_training_on_two_volumes_with_pixel_sizes_records_the_card_and_leaves_init_alone():
    from napari_bnadapt import synthetic

    a_img, a_lab = synthetic.generate(6, (64, 64), seed=1)
    b_img, b_lab = synthetic.generate(4, (96, 80), seed=2)
    init = nb.train(a_img, a_lab, width=4, steps=2, batch_size=2, patch_size=32, eval_every=2, device="cpu",
                    source_statistics=False, name="start")
    before = state_bytes(init)
    m = nb.train([a_img, b_img], [a_lab, b_lab], steps=3, batch_size=4, patch_size=32, eval_every=3, device="cpu",
                 pixel_size_nm=(5.0, 5.0), volume_pixel_sizes_nm=[(5.0, 5.0), (7.5, 7.5)], init=init,
                 statistics_patches=8, seed=4)
    assert state_bytes(init) == before
    card = m.meta["training"]
    assert card["init"] == "start" and m.width == 4
    assert [v["zoom"] for v in card["data"]["volumes"]] == [1.0, 1.5]
    assert card["data"]["train_slices"] == sum(v["train_slices"] for v in card["data"]["volumes"])
    assert card["recipe"]["augmentation"] == Augmentation().to_meta()
    assert "source_statistics" in m.meta
    with pytest.raises(BNAdaptError, match="2 image stacks but 1"):
        nb.train([a_img, b_img], [a_lab], steps=1)
    with pytest.raises(BNAdaptError, match="pixel sizes for 2 volumes"):
        nb.train([a_img, b_img], [a_lab, b_lab], steps=1, pixel_size_nm=(5, 5), volume_pixel_sizes_nm=[(5, 5)])
