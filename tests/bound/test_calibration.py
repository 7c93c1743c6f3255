"""Calibration: the monotone lower-bound fit, the shifts, the selection, and a tiny end-to-end run."""

import math

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.bound.calibration import calibrate, finish_calibration, split_cases
from napari_bnadapt.bound.cases import CalibrationCase
from napari_bnadapt.bound.curve import (
    LowerBound,
    calibration_curve,
    evaluate_bound,
    fit_lower_bound,
)
from napari_bnadapt.bound.shifts import Shift, apply_shift, em_shifts, toy_grid_shifts
from napari_bnadapt.errors import BNAdaptError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _draw(rng, n):
    """IoU-like data whose 5 % quantile falls with x (true lower edge 1 - x / 4)."""
    x = rng.uniform(0, 4, n)
    lo = np.clip(1 - 0.25 * x, 0, 1)
    return x, lo + (1 - lo) * rng.beta(2, 2, n)


def test_fit_is_monotone_and_covers():
    rng = np.random.default_rng(0)
    x, y = _draw(rng, 400)
    b = fit_lower_bound(x, y, quantile=0.05)
    assert np.all(np.diff(b.y_knots) <= 0) and np.all(np.diff(b.x_knots) > 0)
    assert np.all((b.y_knots >= 0) & (b.y_knots <= 1))
    grid = np.linspace(0, b.x_max, 500)
    assert np.all(np.diff(b(grid)) <= 0)
    assert evaluate_bound(b, x, y).coverage >= 0.95
    fresh = evaluate_bound(b, *_draw(rng, 4000))
    assert fresh.coverage >= 0.9
    assert fresh.mean_bound > 0.4  # not a trivial bound
    # a lower quantile gives a lower curve (same blocks)
    low, high = (fit_lower_bound(x, y, quantile=q, min_block=40)(grid) for q in (0.01, 0.2))
    assert np.all(low <= high + 1e-12) and low.mean() < high.mean() - 0.1


def test_fit_edge_cases():
    b = fit_lower_bound([0.0, 1.0, 2.0], [0.2, 0.9, 0.8], quantile=0.05)
    assert np.all(np.diff(b.y_knots) <= 0)
    assert b(10.0) == 0.0  # beyond the calibrated range nothing is promised
    assert math.isnan(float(b(np.nan)))
    with pytest.raises(BNAdaptError):
        fit_lower_bound([1.0], [0.5])
    with pytest.raises(BNAdaptError):
        fit_lower_bound([1.0, 2.0], [0.5, 0.6], quantile=0.7)
    back = LowerBound.from_dict(b.to_dict())
    np.testing.assert_array_equal(back(np.linspace(0, 3, 31)), b(np.linspace(0, 3, 31)))


def test_toy_grid_shifts():
    s = toy_grid_shifts(800, seed=0, n_inverted=0, n_faint=0)
    assert len(s) == 800 and len({tuple(sorted(x.params.items())) for x in s}) == 800
    assert all(x.params["mu1"] <= 192 and x.params["mu1"] > x.params["mu0"] for x in s)
    a = toy_grid_shifts(20, seed=3, n_inverted=4, n_faint=2)
    assert a == toy_grid_shifts(20, seed=3, n_inverted=4, n_faint=2)
    assert [x.family for x in a].count("inverted") == 4
    assert all(x.params["mu1"] < x.params["mu0"] for x in a if x.family == "inverted")
    e = em_shifts(30, seed=0, n_inverted=3)
    assert len(e) == 33 and sum(bool(x.params.get("invert")) for x in e) == 3
    assert "inverted" in e[-1].label()


def test_apply_shift():
    from napari_bnadapt import synthetic

    x, m = synthetic.generate(16, (64, 64), seed=2, mu0=96, sigma0=18, mu1=138, sigma1=18)
    s = Shift("grid", {"mu0": 150.0, "sigma0": 10.0, "mu1": 90.0, "sigma1": 25.0})
    t = apply_shift(x, m, s, seed=0)
    assert t.dtype == np.uint8 and t.shape == x.shape
    assert t[m == 0].mean() == pytest.approx(150, abs=1.0) and t[m == 0].std() == pytest.approx(10, abs=1.0)
    assert t[m > 0].mean() == pytest.approx(90, abs=1.0) and t[m > 0].std() == pytest.approx(25, abs=1.5)
    inv = apply_shift(x, m, Shift("em-inverted", {"invert": True}), seed=0)
    assert inv[m > 0].mean() < inv[m == 0].mean()
    blur = apply_shift(x, m, Shift("em", {"blur": 2.0}), seed=0)
    assert blur.std() < x.std()
    f = apply_shift(x.astype(np.float32) / 255, m, Shift("em", {"gain": 2.0}), seed=0)
    assert f.dtype == np.float32 and f.std() > 1.5 * (x / 255).std()
    assert np.array_equal(apply_shift(x, m, s, seed=1), apply_shift(x, m, s, seed=1))


def test_split_is_stratified_and_seeded():
    shifts = toy_grid_shifts(50, seed=0, n_inverted=10, n_faint=5)
    sp = split_cases(shifts, 0.4, seed=0)
    assert sp == split_cases(shifts, 0.4, seed=0)
    for fam, n in (("grid", 50), ("inverted", 10), ("faint", 5)):
        val = sum(1 for s, p in zip(shifts, sp) if s.family == fam and p == "validation")
        assert val == round(0.4 * n)


def _synthetic_cases(n=160, seed=0):
    """Cases where 'dec' bounds the IoU, 'ls0' is noise, and a gate signal flags the failures."""
    rng = np.random.default_rng(seed)
    cases = []
    shifts = [Shift("grid" if i % 8 else "inverted", {"i": i}) for i in range(n)]
    for i, (s, sp) in enumerate(zip(shifts, split_cases(shifts, 0.4, seed))):
        if s.family == "inverted":
            iou, d_dec, d_ls0, conf = 0.0, rng.uniform(0.1, 0.5), rng.uniform(0, 3), 0.05
        else:
            d_dec = rng.uniform(0, 3)
            lo = max(0.0, 1 - 0.2 * d_dec)
            iou, d_ls0, conf = lo + (1 - lo) * rng.uniform(0.2, 1), rng.uniform(0, 3), rng.uniform(0, 0.01)
        dist = {"dec|source|full": d_dec, "ls0|source|full": d_ls0, "ls0|source|diagonal": 1e-4}
        floors = {"dec|source|full": 0.01, "ls0|source|full": 0.01, "ls0|source|diagonal": 1e-2}
        feats = {"fg_logratio": 0.0, "conf_drop": conf}
        cases.append(CalibrationCase(s, sp, iou, 0.1, dist, dist, floors, feats, feats))
    return cases


def test_selection_finds_the_informative_space_and_the_gate():
    run = finish_calibration(_synthetic_cases(), quantile=0.05)
    assert run.best["key"] == "dec|source|full"
    assert "conf_drop" in run.best["gate"]
    excluded = {r["key"] for r in run.table if r.get("excluded")}
    assert "ls0|source|diagonal" in excluded  # below its noise floor
    assert run.validation["coverage"] >= 0.9
    assert run.validation_by_family["inverted"]["mean_bound"] == 0.0
    assert run.verdicts["unreliable"]["families"].get("inverted", 0) == sum(
        1 for c in run.cases if c.split == "validation" and c.shift.family == "inverted")
    assert "reliable" in run.verdicts and run.verdicts["reliable"]["iou_min"] >= 0.8
    cal = run.calibration
    assert cal["feature"]["x_label"] == "log(1 + snW2² of dec)"
    assert len(cal["cases"]) == len(run.cases)


def test_calibrate_end_to_end_tiny(toy_model, tmp_path):
    from napari_bnadapt import synthetic

    x, y = synthetic.generate(24, (64, 64), seed=8, mu0=96, sigma0=18, mu1=138, sigma1=18)
    shifts = toy_grid_shifts(12, seed=1, n_inverted=4, n_faint=0)
    model = calibrate(toy_model, x, y, shifts=shifts, n_images=12, device="cpu", folds=2,
                      keys=["dec|source|full", "out|source|full"], validation_fraction=0.25)
    assert model is not toy_model
    assert toy_model.meta["calibration"] != model.meta["calibration"]
    cal = model.meta["calibration"]
    # the documented rule picked the feature: among the candidates with cross-validated coverage >= 0.9,
    # the largest mean bound (here: dec with the confidence gate, mean bound 0.60; out is not computable)
    sel = cal["selection"]
    eligible = [c for c in sel["candidates"] if c["coverage"] >= 0.9]  # (nan coverage: not eligible)
    assert eligible
    best = max(eligible, key=lambda c: c["mean_bound"])
    assert (sel["chosen"]["key"], sel["chosen"]["gate"]) == (best["key"], best["gate"])
    assert cal["feature"]["key"] == best["key"] == "dec|source|full"
    assert sorted(cal["gate"]) == sorted(best["gate"]) == ["conf_drop"]
    assert cal["validation"]["n"] == 4 and len(cal["cases"]) == 16
    assert cal["validation"]["coverage"] >= 0.9
    assert cal["provenance"]["n_images_per_shift"] == 12
    inverted = [c for c in cal["cases"] if c["family"] == "inverted"]
    assert len(inverted) == 4 and all(c["iou"] < 0.01 for c in inverted)  # measured <= 0.002
    assert min(c["iou"] for c in cal["cases"] if c["family"] == "grid") > 0.8  # measured 0.868-0.999
    back = nb.load_model(nb.save_model(model, tmp_path / "cal.safetensors"), device="cpu")
    curve = calibration_curve(back)
    assert np.all(np.diff(curve.y) <= 0) and curve.label == cal["feature"]["x_label"]
    with pytest.raises(BNAdaptError, match="too few"):
        calibrate(toy_model, x, y, shifts=shifts[:3], device="cpu")
