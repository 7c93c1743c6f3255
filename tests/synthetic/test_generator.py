"""Tests of the toy-mitochondria generator (napari_bnadapt.synthetic)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_bnadapt import synthetic as syn
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.synthetic import perlin, shapes

# ---------------------------------------------------------------- basics


def test_shapes_dtypes_and_mask_values():
    images, masks = syn.generate(7, seed=0)
    assert images.shape == masks.shape == (7, 64, 64)
    assert images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    images, masks = syn.generate(3, (48, 80), seed=0)
    assert images.shape == masks.shape == (3, 48, 80)
    images, masks = syn.generate(2, 32, seed=0)
    assert images.shape == (2, 32, 32)


def test_reproducible_with_seed():
    a = syn.generate(20, seed=123)
    b = syn.generate(20, seed=123)
    c = syn.generate(20, seed=124)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # a Generator works and advances (two calls differ)
    rng = np.random.default_rng(5)
    d1, d2 = syn.generate(3, seed=rng)[1], syn.generate(3, seed=rng)[1]
    assert not np.array_equal(d1, d2)


def test_prefix_stable_across_n_and_chunks():
    # 64x64 chunks hold 256 images; 300 spans two chunks
    big_img, big_mask = syn.generate(300, seed=9)
    small_img, small_mask = syn.generate(40, seed=9)
    assert np.array_equal(big_img[:40], small_img)
    assert np.array_equal(big_mask[:40], small_mask)


def test_return_stats():
    images, masks, stats = syn.generate(50, seed=1, return_stats=True)
    assert isinstance(stats, syn.GenerationStats)
    assert stats.n_pixels == images.size
    assert stats.foreground_fraction == pytest.approx(masks.mean())
    assert stats.clipped_fraction == pytest.approx(stats.clipped_low_fraction + stats.clipped_high_fraction)
    assert set(stats.as_dict()) >= {"clipped_fraction", "foreground_fraction"}


# ---------------------------------------------------------------- Perlin


def _naive_perlin(angles, offset, shape, cell):
    """Per-pixel textbook Perlin evaluation (reference for the matrix form)."""
    h, w = shape
    out = np.zeros(shape)
    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    for r in range(h):
        for c in range(w):
            py, px = (r + offset[0]) / cell[0], (c + offset[1]) / cell[1]
            iy, ix = int(math.floor(py)), int(math.floor(px))
            fy, fx = py - iy, px - ix
            dots = {}
            for a in (0, 1):
                for b in (0, 1):
                    ang = angles[iy + a, ix + b]
                    dots[a, b] = math.sin(ang) * (fy - a) + math.cos(ang) * (fx - b)
            uy, ux = fade(fy), fade(fx)
            top = dots[0, 0] * (1 - ux) + dots[0, 1] * ux
            bot = dots[1, 0] * (1 - ux) + dots[1, 1] * ux
            out[r, c] = math.sqrt(2) * (top * (1 - uy) + bot * uy)
    return out


@pytest.mark.parametrize("shape", [(16, 16), (20, 27)])
def test_matrix_perlin_matches_naive(shape):
    rng = np.random.default_rng(0)
    cell = (shape[0] / 2, shape[1] / 2)
    ny, nx = perlin._n_nodes(shape[0], cell[0]), perlin._n_nodes(shape[1], cell[1])
    angles = rng.random((2, ny, nx)) * 2 * np.pi
    offsets = np.array([[0, 0], [math.ceil(cell[0]) - 1, math.ceil(cell[1]) - 1]])
    fast = perlin._perlin_2d_from(angles, offsets, shape, cell)
    for k in range(2):
        np.testing.assert_allclose(fast[k], _naive_perlin(angles[k], offsets[k], shape, cell), atol=2e-6)


def test_perlin_2d_range():
    noise = syn.perlin_2d(50, seed=0)
    assert noise.shape == (50, 64, 64) and noise.dtype == np.float32
    assert np.abs(noise).max() <= 1.0 + 1e-6
    # the generator's masks are this noise, thresholded
    _, masks = syn.generate(50, seed=0)
    assert np.array_equal(masks, (np.abs(noise) > syn.PERLIN_THRESHOLD).astype(np.uint8))


def test_foreground_fraction_matches_thesis():
    _, masks = syn.generate(400, seed=2)
    per_image = masks.mean(axis=(1, 2))
    assert 0.17 < per_image.mean() < 0.25  # thesis: ~0.21
    assert 0.05 < per_image.std() < 0.11  # thesis: +- 0.08


def test_crop_shift_puts_objects_on_lattice_nodes():
    _, masks = syn.generate(600, seed=3)
    freq = masks.mean(axis=0)
    # no pixel that is never foreground, in particular not the 2x2 lattice nodes
    assert freq.min() > 0.05
    for y, x in [(0, 0), (0, 32), (32, 0), (32, 32)]:
        assert freq[y, x] > 0.1
    # control: without the shift, the node pixels are never foreground
    rng = np.random.default_rng(0)
    angles = rng.random((200, 4, 4)) * 2 * np.pi
    unshifted = np.abs(perlin._perlin_2d_from(angles, np.zeros((200, 2), int), (64, 64), (32.0, 32.0))) > 0.4
    assert not unshifted[:, ::32, ::32].any()


# ---------------------------------------------------------------- grey values


def test_rounding_is_unbiased():
    images, masks = syn.generate(150, mu0=100, sigma0=18, seed=4)
    bg = images[masks == 0].astype(np.float64)
    assert abs(bg.mean() - 100.0) < 0.1  # truncation would give ~99.5
    # without noise, 100.4 -> 100 and 100.6 -> 101 (rounded, not truncated)
    images, masks = syn.generate(5, mu0=100.6, sigma0=0, mu1=150.4, sigma1=0, seed=4)
    assert np.all(images[masks == 0] == 101) and np.all(images[masks == 1] == 150)


def test_class_statistics_match_parameters():
    images, masks = syn.generate(200, mu0=90, sigma0=12, mu1=150, sigma1=25, seed=5)
    bg = images[masks == 0].astype(np.float64)
    fg = images[masks == 1].astype(np.float64)
    assert bg.mean() == pytest.approx(90, abs=0.15)
    assert fg.mean() == pytest.approx(150, abs=0.25)
    assert bg.std() == pytest.approx(12, rel=0.02)
    assert fg.std() == pytest.approx(25, rel=0.02)


def test_per_image_parameters():
    mu0 = np.array([70, 120, 170])
    images, masks = syn.generate(3, mu0=mu0, mu1=mu0 + 40, seed=6)
    for k in range(3):
        assert images[k][masks[k] == 0].mean() == pytest.approx(mu0[k], abs=1.5)


def test_clipping_warning_above_two_percent_only():
    with pytest.warns(syn.ClippingWarning, match="clipped"):
        _, _, stats = syn.generate(50, mu0=40, sigma0=30, seed=7, return_stats=True)
    assert stats.clipped_fraction > 0.02 and stats.clipped_low_fraction > 0.02
    with pytest.warns(syn.ClippingWarning):
        syn.generate(50, mu1=230, sigma1=30, seed=7)
    # defaults and the edge of the safe range stay silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        syn.generate(50, seed=7)
        _, _, stats = syn.generate(50, mu0=64, sigma0=30, mu1=192, sigma1=30, seed=7, return_stats=True)
    assert 0 < stats.clipped_fraction < 0.02


def test_draw_parameters():
    p = syn.draw_parameters(11)
    assert p == syn.draw_parameters(11)
    assert set(p) == {"mu0", "sigma0", "mu1", "sigma1"} and all(isinstance(v, int) for v in p.values())
    many = syn.draw_parameters(12, n=500)
    for key in ("mu0", "mu1"):
        assert many[key].min() >= 64 and many[key].max() <= 192
    for key in ("sigma0", "sigma1"):
        assert many[key].min() >= 6 and many[key].max() <= 30
    assert np.all(np.abs(many["mu1"] - many["mu0"]) >= 24)
    # the draws are in the non-clipping range: no warning, per image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, masks = syn.generate(500, seed=12, **many)
    assert images.shape == (500, 64, 64)
    with pytest.raises(BNAdaptError):
        syn.draw_parameters(0, min_distance=500)


# ---------------------------------------------------------------- shapes and styles


@pytest.mark.parametrize("shapes", syn.SHAPES)
@pytest.mark.parametrize("style", syn.STYLES)
def test_shapes_and_styles_valid(shapes, style):
    images, masks, stats = syn.generate(120, seed=8, shapes=shapes, style=style, return_stats=True)
    assert images.shape == masks.shape == (120, 64, 64)
    assert images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    assert 0.12 < stats.foreground_fraction < 0.3
    assert stats.clipped_fraction < 0.02
    fg = images[masks == 1].astype(float).mean()
    bg = images[masks == 0].astype(float).mean()
    assert fg - bg > 30  # objects brighter than background (mu1 - mu0 = 42)


def test_gradient_style_is_smooth_ramps():
    images, masks = syn.generate(30, seed=9, style="gradient", sigma0=18, sigma1=18)
    img = images.astype(float)
    # inside one class, neighbouring pixels differ by at most about one ramp step
    same = (masks[:, :, 1:] == masks[:, :, :-1])
    step = np.abs(np.diff(img, axis=2))[same]
    assert step.max() <= 4
    # the two classes keep their means on average
    assert img[masks == 0].mean() == pytest.approx(96, abs=2)
    assert img[masks == 1].mean() == pytest.approx(138, abs=3)


def test_edges_style_brightens_borders_only():
    noise_img, noise_mask = syn.generate(20, seed=10, style="noise")
    edge_img, edge_mask = syn.generate(20, seed=10, style="edges")
    assert np.array_equal(noise_mask, edge_mask)
    diff = edge_img.astype(int) - noise_img.astype(int)
    assert diff.min() >= 0
    m = edge_mask.astype(int)
    border = np.zeros_like(m, dtype=bool)
    border[:, :, 1:] |= m[:, :, 1:] != m[:, :, :-1]
    border[:, :, :-1] |= m[:, :, 1:] != m[:, :, :-1]
    border[:, 1:, :] |= m[:, 1:, :] != m[:, :-1, :]
    border[:, :-1, :] |= m[:, 1:, :] != m[:, :-1, :]
    assert diff[border].mean() > 30
    # far from any border (uniform 3x3 neighbourhood) nothing changes
    pad = np.pad(m, ((0, 0), (1, 1), (1, 1)), mode="edge")
    win = sum(pad[:, 1 + dy:pad.shape[1] - 1 + dy, 1 + dx:pad.shape[2] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    flat = (win == 0) | (win == 9)
    assert np.all(diff[flat] == 0)


@pytest.mark.parametrize("shapes", ["circles", "triangles"])
def test_distractors_are_bright_but_not_labelled(shapes):
    images, masks = syn.generate(100, seed=11, shapes=shapes, mu0=96, sigma0=0, mu1=138, sigma1=0,
                                 distractors=True)
    bright = images == 138
    assert np.all(bright[masks == 1])
    assert (bright & (masks == 0)).sum() > 0.03 * masks.size


def test_single_circle_and_triangle_areas():
    # one object in the centre of a 256 x 256 image, reference length 256
    u_circle = np.array([[0.0, 0.5, 0.5, 0.5]])
    circle = shapes._render_shapes("circles", u_circle, 1, 1, 256.0, 0.0, (256, 256))[0]
    r = (shapes._CIRCLE_RADIUS[0] + 0.5 * (shapes._CIRCLE_RADIUS[1] - shapes._CIRCLE_RADIUS[0])) * 256
    assert circle.sum() == pytest.approx(math.pi * r * r, rel=0.02)
    # equilateral (no jitter: u = 0.5; full radius: u = 1), any rotation
    u_tri = np.array([[0.0, 0.5, 0.5, 0.5, 0.3, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]])
    tri = shapes._render_shapes("triangles", u_tri, 1, 1, 256.0, 0.0, (256, 256))[0]
    big_r = (shapes._TRIANGLE_RADIUS[0] + 0.5 * (shapes._TRIANGLE_RADIUS[1] - shapes._TRIANGLE_RADIUS[0])) * 256
    assert tri.sum() == pytest.approx(3 * math.sqrt(3) / 4 * big_r**2, rel=0.02)
    assert tri[128, 128] and circle[128, 128]


# ---------------------------------------------------------------- volume


def test_volume_shapes_and_reproducible():
    vol, mask, stats = syn.generate_volume((12, 64, 80), seed=0, return_stats=True)
    assert vol.shape == mask.shape == (12, 64, 80)
    assert vol.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    vol2, mask2 = syn.generate_volume((12, 64, 80), seed=0)
    assert np.array_equal(vol, vol2) and np.array_equal(mask, mask2)
    assert 0.1 < stats.foreground_fraction < 0.35


def test_volume_slices_are_coherent():
    _, mask = syn.generate_volume((16, 128, 128), seed=1)

    def iou(a, b):
        union = np.logical_or(a, b).sum()
        return np.logical_and(a, b).sum() / max(union, 1)

    adjacent = np.mean([iou(mask[z], mask[z + 1]) for z in range(15)])
    _, other = syn.generate_volume((16, 128, 128), seed=2)
    unrelated = np.mean([iou(mask[z], other[z]) for z in range(16)])
    assert adjacent > 0.65
    assert unrelated < 0.3
    assert adjacent > unrelated + 0.4


def test_volume_grey_values():
    vol, mask = syn.generate_volume((8, 128, 128), mu0=80, sigma0=10, mu1=150, sigma1=20, seed=3)
    assert vol[mask == 0].mean() == pytest.approx(80, abs=0.3)
    assert vol[mask == 1].mean() == pytest.approx(150, abs=0.5)
    with pytest.warns(syn.ClippingWarning):
        syn.generate_volume((4, 32, 32), mu0=10, sigma0=30, seed=3)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -3},
        {"n": 2.5},
        {"n": True},
        {"n": 2, "shape": (8, 64)},
        {"n": 2, "shape": (64,)},
        {"n": 2, "shape": "64x64"},
        {"n": 2, "sigma0": -1},
        {"n": 2, "sigma1": -0.5},
        {"n": 2, "mu0": float("nan")},
        {"n": 2, "mu1": "bright"},
        {"n": 2, "mu0": [1, 2, 3]},
        {"n": 2, "shapes": "squares"},
        {"n": 2, "style": "blur"},
        {"n": 2, "seed": -1},
        {"n": 2, "seed": "abc"},
        {"n": 2, "cell_size": 1},
        {"n": 2, "distractors": True},
        {"n": 2, "edge_strength": float("inf")},
    ],
)
def test_bad_parameters_raise(kwargs):
    with pytest.raises(BNAdaptError):
        syn.generate(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (1, 64, 64)}, {"shape": (16, 8, 64)}, {"shape": (16, 64)}, {"sigma0": -2},
     {"cell_size": (8, 1, 32)}],
)
def test_bad_volume_parameters_raise(kwargs):
    with pytest.raises(BNAdaptError):
        syn.generate_volume(**kwargs)


def test_errors_are_value_errors():
    with pytest.raises(ValueError, match="at least 1"):
        syn.generate(0)


@pytest.mark.parametrize("kind, width", [("circles", 3), ("triangles", 10)])
def test_dense_and_sparse_shape_rendering_agree(kind, width):
    rng = np.random.default_rng(0)
    u = rng.random((5, 1 + 8 * width))
    dense = shapes._render_shapes(kind, u, 2, 8, 40.0, 10.0, (48, 64), dense=True)
    sparse = shapes._render_shapes(kind, u, 2, 8, 40.0, 10.0, (48, 64), dense=False)
    assert dense.any() and np.array_equal(dense, sparse)


def test_many_small_objects_in_a_large_image():
    # 512 x 512 with 16 px objects: hundreds of objects, rendered per bounding box
    images, masks, stats = syn.generate(1, (512, 512), seed=0, shapes="circles", cell_size=16,
                                        return_stats=True)
    assert 0.12 < stats.foreground_fraction < 0.3


@pytest.mark.parametrize("shapes", ["circles", "triangles"])
def test_shape_foreground_fraction_does_not_depend_on_image_size(shapes):
    _, small = syn.generate(300, (64, 64), seed=13, shapes=shapes)
    _, large = syn.generate(30, (256, 256), seed=13, shapes=shapes, cell_size=32)
    assert 0.16 < small.mean() < 0.27
    assert 0.16 < large.mean() < 0.27
    assert abs(small.mean() - large.mean()) < 0.05
