"""Removing objects far larger than any training mitochondrion (segmentation/oversized.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from napari_bnadapt.adabn.scale_search import object_size_summary
from napari_bnadapt.segmentation.oversized import OVERSIZE_FACTOR, remove_oversized_objects, training_diameter


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1
    return m


def _model_trained_on(mask):
    """A stand-in model whose card holds the object sizes of ``mask`` (all the function reads)."""
    return SimpleNamespace(meta={"objects": object_size_summary(mask)})


GRID = [(40 + 80 * i, 40 + 80 * j) for i in range(6) for j in range(6)]  # 36 discs of radius 15 px


def test_a_nucleus_sized_object_goes_and_mitochondria_stay():
    model = _model_trained_on(_discs((480, 480), GRID, 15)[None])
    p95, median = training_diameter(model)
    assert math.isclose(median, 30, rel_tol=0.1)  # discs of radius 15 px
    mask = _discs((480, 480), GRID[:20], 15)
    mask[300:470, 200:470] = 1  # a 170 x 270 px block: 243 px equivalent diameter, > 3 x 31
    before = mask.copy()
    rep = remove_oversized_objects(mask, model)
    assert rep.removed_objects == 1 and rep.removed_pixels == 170 * 270
    assert math.isclose(rep.limit_diameter_px, OVERSIZE_FACTOR * p95)
    assert (mask[300:470, 200:470] == 0).all()  # removed in place
    np.testing.assert_array_equal(mask[:290], before[:290])  # the mitochondria are untouched
    assert "removed 1 object" in rep.message


def test_nothing_removed_from_training_like_objects_and_without_sizes():
    model = _model_trained_on(_discs((480, 480), GRID, 15)[None])
    mask = np.stack([_discs((480, 480), GRID, r) for r in (10, 15, 20)])
    rep = remove_oversized_objects(mask.copy(), model)
    assert rep.removed_objects == 0 and rep.largest_diameter_px < rep.limit_diameter_px
    untouched = mask.copy()
    assert remove_oversized_objects(untouched, SimpleNamespace(meta={})) is None
    np.testing.assert_array_equal(untouched, mask)


def test_the_limit_follows_a_stack_seen_at_another_scale():
    """Unknown, finer pixel size: every object 3x larger; with many of them the limit grows and keeps them."""
    model = _model_trained_on(_discs((480, 480), GRID, 15)[None])
    big = _discs((1440, 1440), [(3 * y, 3 * x) for y, x in GRID], 45)  # 3x zoomed: 90 px discs
    rep = remove_oversized_objects(big.copy(), model)
    assert rep.removed_objects == 0 and rep.stack_ratio > 2.5
    # the stack's resampling is known (zoom: model pixels per image pixel): the same limit, in image pixels
    rep_zoom = remove_oversized_objects(big.copy(), model, zoom=(1 / 3, 1 / 3))
    assert rep_zoom.removed_objects == 0 and math.isclose(rep_zoom.stack_ratio, 1.0, rel_tol=0.05)
    assert math.isclose(rep_zoom.limit_diameter_px, 3 * OVERSIZE_FACTOR * training_diameter(model)[0])


def test_a_stack_holding_little_but_a_nucleus_does_not_stretch_the_limit():
    model = _model_trained_on(_discs((480, 480), GRID, 15)[None])
    mask = _discs((480, 480), GRID[:3], 15)
    mask[250:470, 150:470] = 1
    rep = remove_oversized_objects(mask, model)
    assert math.isnan(rep.stack_ratio) and rep.removed_objects == 1 and mask[250:470, 150:470].max() == 0
