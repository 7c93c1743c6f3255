"""The spot check: IoU on the annotated slice, an interval for the whole stack, clear errors, no side effects."""

from __future__ import annotations

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.bound.spot_check import MIN_OBJECTS, score_segmentation
from napari_bnadapt.bound.spot_interval import (
    BETWEEN_SLICE_SD,
    PART_SLICE_SD,
    arcsine,
    fit_between_sd,
    stack_interval,
    tile_counts,
)
from napari_bnadapt.errors import BNAdaptError

from ..conftest import BRIGHT, state_bytes


@pytest.fixture(scope="module")
def toy(toy_model, one_torch_thread):
    """A small bright toy stack, its labels and the toy model adapted to it."""
    from napari_bnadapt import synthetic

    x, y = synthetic.generate(5, (128, 128), seed=21, **BRIGHT)
    adapted, _ = nb.adapt(toy_model, x, device="cpu")
    return x, y, adapted


def _one_slice(y: np.ndarray, z: int) -> np.ndarray:
    lab = np.zeros_like(y)
    lab[z] = y[z]
    return lab


def test_the_iou_is_metrics_iou_on_the_annotated_slice(toy):
    x, y, adapted = toy
    seg = nb.segment(adapted, x, device="cpu")
    check = nb.spot_check(adapted, x, _one_slice(y, 3), device="cpu")
    assert check.slices == (3,)
    assert check.iou == pytest.approx(nb.iou(seg[3], y[3]), abs=1e-12)
    lo, hi = check.interval
    assert 0.0 <= lo <= check.iou <= hi <= 1.0
    assert check.counts[2] == int(np.count_nonzero(y[3]))


def test_two_annotated_slices_pool_their_pixels_and_narrow_the_between_slice_part(toy):
    x, y, adapted = toy
    seg = nb.segment(adapted, x, device="cpu")
    lab = _one_slice(y, 1) + _one_slice(y, 4)
    check = nb.spot_check(adapted, x, lab, device="cpu")
    assert check.slices == (1, 4)
    assert check.iou == pytest.approx(nb.iou(seg[[1, 4]], y[[1, 4]]), abs=1e-12)
    assert check.between_sd == pytest.approx(BETWEEN_SLICE_SD / np.sqrt(2))
    assert check.per_slice == pytest.approx((nb.iou(seg[1], y[1]), nb.iou(seg[4], y[4])))


def test_bbox_counts_only_the_bounding_box_of_the_painting():
    truth = np.zeros((2, 64, 64), np.uint8)
    truth[0, 10:20, 10:20] = 1
    seg = np.zeros_like(truth)
    seg[0, 10:20, 10:15] = 1   # half of the painted object
    seg[0, 40:60, 40:60] = 1   # a false positive outside the painting's box
    assert score_segmentation(seg, truth, region="bbox").iou == pytest.approx(0.5)
    assert score_segmentation(seg, truth, region="slice").iou == pytest.approx(50 / (100 + 400))
    mask = np.zeros(truth.shape, bool)
    mask[0, :32, :32] = True
    check = score_segmentation(seg, truth, mask=mask)
    assert check.region == "mask" and check.iou == pytest.approx(0.5) and check.n_pixels == 32 * 32


def test_too_few_painted_mitochondria_give_no_interval_and_say_so():
    truth = np.zeros((3, 96, 96), np.uint8)
    truth[1, 10:20, 10:20] = 1
    truth[1, 50:60, 50:60] = 1
    seg = truth.copy()
    check = score_segmentation(seg, truth)
    assert check.n_objects == 2 < MIN_OBJECTS and check.iou == 1.0
    assert check.interval == (0.0, 1.0) and any("too few" in n for n in check.notes)
    truth[1, 70:80, 20:30] = 1
    check = score_segmentation(truth.copy(), truth)
    assert check.n_objects == 3 and check.interval[0] > 0.5


def test_a_rectangle_uses_the_part_of_a_slice_spread():
    rng = np.random.default_rng(5)
    seg, truth = _simulated_stack(rng, n=2)
    whole = score_segmentation(seg, truth, slices=[0])
    mask = np.zeros(truth.shape, bool)
    mask[0, :128, :128] = True
    part = score_segmentation(seg, truth, mask=mask)
    assert whole.share == 1.0 and whole.between_sd == BETWEEN_SLICE_SD
    assert part.share == pytest.approx(0.25) and part.between_sd == PART_SLICE_SD


def test_tiles_partition_the_region():
    rng = np.random.default_rng(1)
    p, t = rng.random((300, 200)) > 0.5, rng.random((300, 200)) > 0.6
    region = np.zeros((300, 200), bool)
    region[20:290, 5:170] = True
    counts = tile_counts(p, t, region, tile=64)
    assert counts[:, 0].sum() == np.count_nonzero(p & t & region)
    assert counts[:, 1].sum() == np.count_nonzero((p | t) & region)


def test_the_fit_recovers_a_known_between_slice_spread():
    rng = np.random.default_rng(2)
    within = rng.uniform(0.005, 0.03, 20000)
    gaps = rng.normal(0, np.sqrt(within ** 2 + 0.05 ** 2))
    assert fit_between_sd(gaps, within) == pytest.approx(0.05, abs=0.004)
    assert fit_between_sd(gaps * 0, within) == 0.0


def _simulated_stack(rng: np.random.Generator, n: int = 40, spread: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Disks; the segmentation of each slice is the truth dilated or eroded by a random per-slice amount
    (a slice-level effect the tiles of one slice cannot see) plus tile-level noise."""
    from scipy.ndimage import binary_dilation, binary_erosion

    yy, xx = np.mgrid[:256, :256]
    truth = np.zeros((n, 256, 256), bool)
    seg = np.zeros_like(truth)
    for z in range(n):
        for _ in range(14):
            cy, cx, r = rng.integers(15, 241), rng.integers(15, 241), rng.integers(6, 14)
            truth[z] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        k = int(np.clip(np.rint(rng.normal(0, spread * 25)), -3, 3))  # the slice's own bias
        s = truth[z]
        s = binary_dilation(s, iterations=k) if k > 0 else binary_erosion(s, iterations=-k) if k < 0 else s
        seg[z] = s ^ (rng.random((256, 256)) < 0.002)
    return seg, truth


def _cases(seed: int) -> tuple[float, list]:
    seg, truth = _simulated_stack(np.random.default_rng(seed))
    return nb.iou(seg, truth), [score_segmentation(seg, truth, slices=[z], seed=z) for z in range(len(truth))]


def test_the_interval_covers_the_stack_iou_in_a_simulation_with_a_known_answer():
    # as the benchmark does on real volumes: the between-slice spread is fitted on one simulated
    # stack (its stack IoU known), and the intervals are judged on a fresh stack of the same process
    fit_iou, fit_cases = _cases(3)
    sd = fit_between_sd([arcsine(fit_iou) - arcsine(c.iou) for c in fit_cases], [c.within_sd for c in fit_cases])
    stack_iou, cases = _cases(5)  # the known answer

    def coverage(between: float) -> float:
        ivs = [stack_interval(c.iou, c.within_sd, 1, between_sd=between) for c in cases]
        return float(np.mean([lo <= stack_iou <= hi for lo, hi in ivs]))

    assert coverage(sd) >= 0.8
    assert coverage(0.0) < 0.5  # the tiles of one slice cannot see the slice's own bias


def test_every_slice_annotated_gives_the_stack_iou_itself():
    rng = np.random.default_rng(4)
    seg, truth = _simulated_stack(rng, n=6)
    c = score_segmentation(seg, truth)
    assert c.slices == tuple(range(6)) and c.iou == pytest.approx(nb.iou(seg, truth))
    assert c.interval[0] <= nb.iou(seg, truth) <= c.interval[1]


def test_the_arcsine_scale_keeps_the_interval_inside_0_and_1():
    assert stack_interval(0.0, 0.1, 1) == (0.0, pytest.approx(float(np.sin(np.sqrt(0.1 ** 2 + BETWEEN_SLICE_SD ** 2)
                                                                             * 1.6448536) ** 2), rel=1e-4))
    assert stack_interval(1.0, 0.0, 1)[1] == 1.0
    assert float(arcsine(0.25)) == pytest.approx(np.pi / 6)


@pytest.mark.parametrize("labels,slices,kw,message", [
    (np.zeros((5, 128, 128), np.uint8), None, {}, "no painted mitochondria"),
    (np.ones((5, 64, 64), np.uint8), None, {}, "does not have the image's shape"),
    (np.ones((5, 128, 128), np.uint8), [7], {}, "not a slice of this stack"),
    (np.ones((5, 128, 128), np.uint8), [], {}, "slices is empty"),
    (np.ones((5, 128, 128), np.uint8), None, {"region": "rectangle"}, "region must be one of"),
    (np.ones((5, 128, 128), np.uint8), None, {"mask": np.ones((5, 64, 64), bool)}, "the mask"),
])
def test_bad_input_is_refused_in_words(toy, labels, slices, kw, message):
    x, _, adapted = toy
    with pytest.raises(BNAdaptError, match=message):
        nb.spot_check(adapted, x, labels, slices, device="cpu", **kw)


def test_an_annotated_slice_without_mitochondria_in_its_region_is_refused(toy):
    x, y, adapted = toy
    with pytest.raises(BNAdaptError, match="no painted mitochondria inside"):
        nb.spot_check(adapted, x, _one_slice(y, 2), [0], device="cpu")


def test_a_corrected_copy_of_the_segmentation_is_flagged(toy):
    x, y, adapted = toy
    seg = nb.segment(adapted, x, device="cpu")
    lab = seg.copy()
    lab[2] = y[2]
    check = nb.spot_check(adapted, x, lab, device="cpu")
    assert any("equals the segmentation exactly" in n for n in check.notes)


def test_compare_scores_every_variant_and_changes_neither_model_nor_arrays(toy, toy_model):
    x, y, adapted = toy
    lab = _one_slice(y, 2)
    before = (state_bytes(toy_model), state_bytes(adapted), x.tobytes(), lab.tobytes())
    check = nb.spot_check(adapted, x, lab, compare=True, source=toy_model, device="cpu")
    assert before == (state_bytes(toy_model), state_bytes(adapted), x.tobytes(), lab.tobytes())
    names = [v.name for v in check.variants]
    assert set(names) == {"as given", "source only", "AdaBN cumulative", "AdaBN EMA", "AdaBN prior",
                          "AdaBN, smoothed", "+ TTA (4 flips)", "+ entropy step"}
    assert any(n.startswith("'AdaBN, smoothed': a blur of") for n in check.notes)  # the blur it chose
    assert [v.iou for v in check.variants] == sorted((v.iou for v in check.variants), reverse=True)
    assert check.best == names[0]
    given = next(v for v in check.variants if v.name == "as given")
    assert given.iou == check.iou
    # the source alone fails on this brighter stack: the spot check sees it on one slice
    assert next(v for v in check.variants if v.name == "source only").iou < check.iou - 0.2
    assert "Best on the annotated region" in check.sentence()


def test_compare_without_the_source_of_an_adapted_model_says_so(toy):
    x, y, adapted = toy
    check = nb.spot_check(adapted, x, _one_slice(y, 2), compare=True, device="cpu")
    assert {v.name for v in check.variants} == {"as given", "+ TTA (4 flips)", "+ entropy step"}
    assert any("source=" in n for n in check.notes)


def test_a_single_slice_image_works(toy):
    x, y, adapted = toy
    check = nb.spot_check(adapted, x[1], y[1], device="cpu")
    assert check.slices == (0,)
    assert check.iou == pytest.approx(nb.iou(nb.segment(adapted, x[1], device="cpu"), y[1]))
