"""The reliability report: a clearly good and a clearly failed adaptation, the decision logic, the text."""

import copy
import math

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.bound.assess import (
    reliability,
    reliability_iter,
    supervised_distances,
)
from napari_bnadapt.bound.curve import calibration_curve
from napari_bnadapt.bound.decision import DEFAULT_GATE, decide
from napari_bnadapt.bound.report import ReliabilityReport
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.progress import Progress, Result

from ..conftest import BRIGHT, state_bytes

INVERTED = {"mu0": 138, "sigma0": 18, "mu1": 96, "sigma1": 18}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bright_small():
    from napari_bnadapt import synthetic

    return synthetic.generate(32, (64, 64), seed=21, **BRIGHT)


@pytest.fixture(scope="module")
def inverted_small():
    from napari_bnadapt import synthetic

    return synthetic.generate(32, (64, 64), seed=22, **INVERTED)


@pytest.fixture(scope="module")
def good(toy_model, bright_small):
    images, truth = bright_small
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    report = reliability(toy_model, adapted, images, device="cpu")
    return report, nb.iou(nb.segment(adapted, images, device="cpu"), truth)


@pytest.fixture(scope="module")
def failed(toy_model, inverted_small):
    images, truth = inverted_small
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    report = reliability(toy_model, adapted, images, device="cpu")
    return report, nb.iou(nb.segment(adapted, images, device="cpu"), truth)


def test_bundled_model_is_calibrated(toy_model):
    cal = toy_model.meta["calibration"]
    assert cal["validation"]["coverage"] >= 0.9
    curve = calibration_curve(toy_model)
    assert np.all(np.diff(curve.y) <= 0) and curve.label.startswith("log(1 + ")
    assert toy_model.meta["source_statistics"]["layers"]["ls0"]["form"] == "full"


def test_clearly_good_adaptation(good):
    """docs/reliability.md: brightness +40, 32 images of 64 x 64: true IoU 0.979, RELIABLE, bound 0.97."""
    report, true_iou = good
    assert true_iou >= 0.97  # measured 0.979
    assert report.verdict == "reliable"
    # the first step of the stored curve (x <= 0.027: bound 0.970); measured x = 0.010, bound 0.970
    assert report.calibration_x < 0.027
    assert 0.95 <= report.iou_lower_bound <= true_iou
    assert not report.gate_failures
    # the gain of adapting is visible: without adaptation the model is beyond the calibrated range
    # (largest calibrated x 1.70; measured 2.63), where nothing is promised
    assert report.calibration_x_source_only > 1.7
    names = [d.name for d in report.distances]
    assert names == ["ls0", "ls1", "ls2", "ls3", "ls4", "dec", "out"]
    assert sum(d.calibrated for d in report.distances) == 1
    for d in report.distances:
        assert d.floor > 0 and d.m_eff > 0 and d.dim > 0
        if d.meaningful:  # adaptation brought every measurable space much closer to the source
            assert d.value < d.value_source_only / 10, d.name
    dec = next(d for d in report.distances if d.name == "dec")
    assert dec.calibrated and dec.meaningful and dec.value < 3 * dec.floor  # at the noise floor (0.009 vs 0.039)
    # the predicted foreground fraction is the source's (measured 19.9 % against 19.9 %)
    assert abs(report.signals["fg_logratio"]) < 0.05


def test_clearly_failed_adaptation(failed):
    """docs/reliability.md: inverted contrast is caught twice, by the confidence gate and by the distance."""
    report, true_iou = failed
    assert true_iou < 0.01  # measured 0.00004
    assert report.verdict == "unreliable"
    assert report.iou_lower_bound == 0.0
    # 1. the confidence gate (drop 0.049 against the gate's 0.021)
    assert [g[0] for g in report.gate_failures] == ["conf_drop"]
    assert report.signals["conf_drop"] > 0.03
    # 2. the dec distance lies beyond the largest calibrated distance (1.70; measured 2.56)
    assert report.calibration_x > 1.7
    assert "Do not trust" in report.sentence


def test_report_text_is_readable(good, failed):
    for report, _ in (good, failed):
        text = str(report)
        assert text.startswith("Reliability of the adaptation: ")
        assert report.verdict.upper() in text.splitlines()[0]
        assert report.sentence in " ".join(text.split())
        for name in ("ls0", "dec", "floor", "m_eff", "confidence", "mitochondria"):
            assert name in text
        assert "nan" not in text.lower().replace("n/a", "")
        assert max(len(line) for line in text.splitlines()) < 200
    assert "IoU of the adapted model >=" in str(good[0])


def test_too_little_data_gives_an_uncertain_report_not_an_error(toy_model):
    """docs/reliability.md: `uncertain` when the calibrated distance is not meaningful (too little data)."""
    from napari_bnadapt import synthetic

    images = synthetic.generate(4, (96, 96), seed=0, mu0=136, mu1=178)[0]  # dec: m_eff ~23 < 10 x 8
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    report = reliability(toy_model, adapted, images, device="cpu")
    assert report.verdict == "uncertain" and report.iou_lower_bound is None
    assert "not meaningful" in str(report)


def test_generator_form_and_the_models_stay_untouched(toy_model, bright_small):
    images, _ = bright_small
    adapted, _ = nb.adapt(toy_model, images[:8], device="cpu")
    before_s, before_a = state_bytes(toy_model), state_bytes(adapted)
    meta_before = copy.deepcopy({k: v for k, v in toy_model.meta.items() if k != "arrays"})
    items = list(reliability_iter(toy_model, adapted, images[:8], device="cpu"))
    assert all(isinstance(i, Progress) for i in items[:-1]) and isinstance(items[-1], Result)
    assert isinstance(items[-1].value, ReliabilityReport)
    assert {p.stage for p in items[:-1]} == {"measuring the adapted model", "measuring the source model"}
    assert state_bytes(toy_model) == before_s and state_bytes(adapted) == before_a
    assert {k: v for k, v in toy_model.meta.items() if k != "arrays"} == meta_before


def test_without_statistics_it_says_what_to_do(toy_model, bright_small):
    bare = copy.deepcopy(toy_model)
    bare.meta = {k: v for k, v in bare.meta.items() if k not in ("source_statistics", "calibration", "arrays")}
    with pytest.raises(BNAdaptError, match="compute_source_statistics"):
        reliability(bare, bare, bright_small[0][:4], device="cpu")


def test_without_calibration_no_bound_but_the_gate_still_works(toy_model, bright_small, inverted_small):
    uncal = copy.deepcopy(toy_model)
    del uncal.meta["calibration"]
    images = bright_small[0][:16]
    adapted, _ = nb.adapt(uncal, images, device="cpu")
    r = reliability(uncal, adapted, images, device="cpu")
    assert r.iou_lower_bound is None and r.verdict == "uncertain" and r.calibration_x is None
    assert "no calibration" in r.sentence
    inv = inverted_small[0][:16]
    adapted, _ = nb.adapt(uncal, inv, device="cpu")
    assert reliability(uncal, adapted, inv, device="cpu").verdict == "unreliable"


def _cal():
    return {
        "feature": {"key": "dec|source|full", "x_label": "log(1 + snW2² of dec)"},
        "curve": {"x": [0.1, 0.5, 1.0], "y": [0.95, 0.7, 0.3], "quantile": 0.05, "x_min": 0.0},
        "gate": {"conf_drop": [None, 0.02]},
        "thresholds": {"reliable": 0.8, "unreliable": 0.5},
        "floor_reference": 0.0,
    }


@pytest.mark.parametrize(
    "d, conf_drop, bound, verdict",
    [
        (0.05, 0.0, 0.95, "reliable"),
        (math.expm1(0.3), 0.0, 0.7, "uncertain"),
        (math.expm1(0.8), 0.0, 0.3, "unreliable"),
        (math.expm1(3.0), 0.0, 0.0, "unreliable"),  # beyond the calibrated range: nothing promised
        (0.05, 0.05, 0.0, "unreliable"),  # gate: confidence dropped
    ],
)
def test_decide(d, conf_drop, bound, verdict):
    out = decide(_cal(), {"dec|source|full": d}, {"conf_drop": conf_drop, "fg_logratio": 0.0})
    assert out.verdict == verdict
    assert out.bound == pytest.approx(bound)


def test_decide_adds_back_the_calibration_noise():
    from napari_bnadapt.stats.wasserstein import Distance

    cal = _cal()
    cal["floor_reference"] = 0.2
    quiet = Distance(0.0, 0.01, 1e6, 1e6, 8, "full", "source", True)
    out = decide(cal, {"dec|source|full": quiet}, {"conf_drop": 0.0})
    assert out.x == pytest.approx(math.log1p(0.19))
    assert out.bound == pytest.approx(0.7)
    not_meaningful = Distance(0.05, 0.01, 10, 10, 8, "full", "source", False, "too few effective samples")
    out = decide(cal, {"dec|source|full": not_meaningful}, {"conf_drop": 0.0})
    assert out.bound is None and out.verdict == "uncertain" and "too few" in out.reason


def test_decide_without_calibration_uses_the_default_gate():
    assert decide(None, {}, {"fg_logratio": 0.0, "conf_drop": 0.0}).verdict == "uncertain"
    assert decide(None, {}, {"fg_logratio": math.log(3.0), "conf_drop": 0.0}).verdict == "unreliable"
    assert set(DEFAULT_GATE) == {"fg_logratio", "conf_drop"}


def _latent_samples(model, images):
    """Every latent space (and the output logits) of ``model`` on ``images``, as (samples, channels) float64."""
    import torch

    from napari_bnadapt.io.stack_view import Normalization

    mods = dict(model.latent_modules())
    mods["out"] = model.outc
    got = {k: [] for k in mods}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: got[k].append(o.detach().double().clone()))
             for k, m in mods.items()]
    x = torch.from_numpy(Normalization.from_meta(model.meta["normalization"]).apply(images)[:, None])
    try:
        with torch.no_grad():
            copy.deepcopy(model).eval()(x.float())
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v).transpose(0, 1).reshape(v[0].shape[1], -1).T.numpy() for k, v in got.items()}


def _reference_snw2(ref, other, form):
    """W2^2 whitened by the first sample's Gaussian, by a route independent of wasserstein.py.

    Symmetric inverse square root W = S_r^-1/2 (eigh, not Cholesky):
    |W (m_o - m_r)|^2 + sum (sqrt(eig(W S_o W)) - 1)^2; diagonal: per channel.
    """
    mr, mo = ref.mean(0), other.mean(0)
    if form == "diagonal":
        vr, vo = ref.var(0, ddof=1), other.var(0, ddof=1)
        return float(np.sum((mo - mr) ** 2 / vr) + np.sum((np.sqrt(vo / vr) - 1) ** 2))
    w, v = np.linalg.eigh(np.cov(ref, rowvar=False))
    whiten = (v / np.sqrt(w)) @ v.T
    z = whiten @ (mo - mr)
    lam = np.linalg.eigvalsh(whiten @ np.cov(other, rowvar=False) @ whiten)
    return float(z @ z + np.sum((np.sqrt(lam) - 1) ** 2))


def test_supervised_research_mode(toy_model, bright_small):
    images = bright_small[0][:8]
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    rows = supervised_distances(adapted, adapted, images, device="cpu")
    assert [r.name for r in rows] == ["ls0", "ls1", "ls2", "ls3", "ls4", "dec", "out"]
    for r in rows:  # a model against itself on the same images: distance 0
        assert r.value == pytest.approx(0.0, abs=1e-8)
    # against a different model (the unadapted source model as the "target-trained" reference):
    # every distance equals an independent computation from the activations themselves
    rows = supervised_distances(adapted, toy_model, images, device="cpu")
    ref, other = _latent_samples(toy_model, images), _latent_samples(adapted, images)
    for r in rows:
        want = _reference_snw2(ref[r.name], other[r.name], r.form)
        assert want > 10 * r.floor, r.name  # a real distance (measured 14-690), far above the noise
        assert r.value == pytest.approx(want, rel=1e-6), r.name
    assert {r.name: r.form for r in rows}["ls0"] == "full"  # 8 channels, well sampled: full covariance


def test_reliability_is_measured_on_the_stack_resampled_to_the_model_pixel_size(toy_model_5nm):
    from napari_bnadapt import synthetic

    images, _ = synthetic.generate(2, (48, 48), seed=43, **BRIGHT)
    adapted, _ = nb.adapt(toy_model_5nm, images, device="cpu", pixel_size_nm=(10.0, 10.0))
    rep = reliability(toy_model_5nm, adapted, images, device="cpu", pixel_size_nm=(10.0, 10.0))
    assert rep.n_voxels == 2 * 96 * 96  # 48 px at 10 nm = 96 px at the model's 5 nm
    assert any("measured on the stack resampled to the model's 5 x 5 nm" in n for n in rep.notes)
    same = reliability(toy_model_5nm, adapted, images, device="cpu", pixel_size_nm=(5.0, 5.0))
    assert same.n_voxels == 2 * 48 * 48 and not any("resampled" in n for n in same.notes)
