"""The trust verdict: degenerate calibrations rejected, verdict-conditional coverage, bounds rounded
down, default thresholds said, witnesses measured, abstention outside the calibrated region."""

import copy
import dataclasses
import math

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.bound.curve import LowerBound
from napari_bnadapt.bound.decision import Decision
from napari_bnadapt.bound.report import _sentence
from napari_bnadapt.bound.trust import (
    NO_GUARANTEE,
    SIZE_SLACK,
    TrustCase,
    choose_rule,
    fit_trust,
    heldout_iou,
    leave_one_volume_out,
    shipped_trust,
    trust_decide,
)
from napari_bnadapt.bound.validity import calibration_problem, floor_bound, format_bound, verdict_coverage
from napari_bnadapt.bound.witnesses import WITNESS_NAMES, measure_witnesses, size_ratio, stack_is_blank

from ..conftest import state_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ degenerate calibrations
def _cal(x, y, x_min, candidates=None, chosen=None):
    return {"curve": {"x": x, "y": y, "quantile": 0.05, "x_min": x_min},
            "selection": {"chosen": chosen or {"key": "a|source|full", "mean_bound": 0.5, "coverage": 0.95},
                          "candidates": candidates or []}}


def test_a_bound_of_about_zero_everywhere_is_rejected():
    assert "about 0" in calibration_problem(_cal([0.5, 1.0], [0.01, 0.0], 0.1))


def test_a_collapsed_distance_range_is_rejected():
    # the bundled vnc model's shape: x from 0.0947 to 0.0950
    assert "collapsed" in calibration_problem(_cal([0.0950], [0.6], 0.0947))


def test_a_winner_by_a_tie_is_rejected_and_a_clear_winner_is_not():
    tie = [{"key": "b|source|full", "mean_bound": 0.5, "coverage": 0.95},
           {"key": "a|source|full", "mean_bound": 0.5, "coverage": 0.95}]
    assert "tie" in calibration_problem(_cal([1.0, 2.0], [0.9, 0.6], 0.1, tie))
    clear = [{"key": "b|source|full", "mean_bound": 0.45, "coverage": 0.95}]
    assert calibration_problem(_cal([1.0, 2.0], [0.9, 0.6], 0.1, clear)) == ""


def test_bundled_calibrations_toy_kept_em_rejected(toy_model):
    assert calibration_problem(toy_model.meta["calibration"]) == ""
    if "lucchi-pp" in nb.list_models():
        assert "tie" in calibration_problem(nb.load_model("lucchi-pp", device="cpu").meta["calibration"])
    if "vnc" in nb.list_models():
        assert calibration_problem(nb.load_model("vnc", device="cpu").meta["calibration"]) != ""


# ------------------------------------------------------------------ what a stated bound says
def test_lower_bounds_are_rounded_down():
    assert format_bound(0.968) == "0.96"
    assert format_bound(0.97) == "0.97"
    assert format_bound(0.6995) == "0.69"
    assert floor_bound(0.999) == 0.99


def test_coverage_quoted_is_the_one_of_the_verdict(toy_model):
    cal = toy_model.meta["calibration"]
    cov, n = verdict_coverage(cal, "reliable")
    # recomputed by hand from the stored held-out cases
    curve = LowerBound.from_dict(cal["curve"])
    rel = [c for c in cal["cases"] if c["split"] == "validation" and c["in_gate"] and c["x"] is not None
           and curve(c["x"]) >= cal["thresholds"]["reliable"]]
    assert n == len(rel) > 0
    assert cov == pytest.approx(np.mean([c["iou"] >= curve(c["x"]) for c in rel]))
    assert cov != pytest.approx(cal["validation"]["coverage"])  # not the overall figure
    dec = Decision(bound=0.968, verdict="reliable", x=0.1, key="k", meaningful=True)
    text = _sentence(dec, {}, {}, True, cov, basis=f"of {n} held-out calibration shifts given 'reliable'")
    assert "0.96" in text and "0.97" not in text and f"{cov:.0%}" in text


def test_uncalibrated_gate_says_its_limits_are_defaults():
    dec = Decision(bound=None, verdict="unreliable", gate_failures=[("fg_logratio", 2.0, (-0.69, 0.69))])
    text = _sentence(dec, {"foreground_fraction": 0.5, "confidence": 0.9},
                     {"foreground_fraction": 0.05, "confidence": 0.99}, False)
    assert "default limits" in text
    assert "default limits" in _sentence(Decision(), {}, {}, False)


# ------------------------------------------------------------------ trust calibration
def _case(i, iou, w, volume="a", fg=0.05):
    return TrustCase("m", f"t{i}", volume, iou, dict(zip(WITNESS_NAMES, w)), fg)


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):  # successes: the model agrees with itself
        out.append(_case(i, 0.8 + 0.1 * rng.random(), 0.9 + 0.09 * rng.random(3), "ab"[i % 2]))
    for i in range(12, 20):  # failures: at least one witness low
        w = 0.9 + 0.09 * rng.random(3)
        w[i % 3] = 0.4 + 0.3 * rng.random()
        out.append(_case(i, 0.1 + 0.4 * rng.random(), w, "ab"[i % 2]))
    return out


def test_fit_accepts_no_failure_and_promises_its_level():
    cases = _cases()
    cal = fit_trust(cases)
    assert cal["n_accepted"] == 12  # every success, no failure
    assert cal["bound"] == cal["level"] == 0.7  # what every accepted case reached, not their own minimum
    assert cal["accepted_iou_min"] == pytest.approx(min(c.iou for c in cases if c.iou >= 0.7))
    assert fit_trust(cases, level=0.95)["bound"] is None  # too few cases reach it: no bound at all
    for c in cases:
        d = trust_decide(cal, c.witnesses, c.foreground_fraction)
        assert (d.verdict == NO_GUARANTEE) == (c.iou < 0.7)
        assert d.bound is None or d.bound <= c.iou


def test_abstains_on_a_target_unlike_the_calibration_with_one_sentence():
    cal = fit_trust(_cases())
    w = {"patch_agreement": 0.99, "flip_consistency": 0.95, "scale_consistency": 0.5}
    d = trust_decide(cal, w, 0.05)
    assert d.verdict == NO_GUARANTEE and d.bound is None
    assert "unlike anything the model was checked on" in d.reason and "spot check" in d.reason
    assert "scale" in d.reason and "disagree" in d.reason  # two witnesses passed, one did not
    assert [f[0] for f in d.failing] == ["scale_consistency"]
    # a model that predicts (almost) nothing agrees with itself perfectly: the foreground range catches it
    d = trust_decide(cal, dict.fromkeys(WITNESS_NAMES, 1.0), 0.0)
    assert d.verdict == NO_GUARANTEE and "mitochondria" in d.reason
    assert trust_decide(cal, None).verdict == NO_GUARANTEE  # no witnesses measured: no number
    assert trust_decide(None, w).verdict == NO_GUARANTEE  # no trust calibration: no number
    assert "blank" in trust_decide(cal, w, 0.05, blank=True).reason


def test_the_rule_is_chosen_without_false_promises_when_one_exists():
    cases = _cases()
    rule, table = choose_rule(cases)
    best = [r for r in table if r["witnesses"] == rule["witnesses"] and r["level"] == rule["level"]][0]
    assert best["n_false_promises"] == 0 and best["n_stated"] > 0
    # nothing at a higher level is free of false promises
    assert not [r for r in table if r["level"] > rule["level"] and r["n_stated"] and not r["n_false_promises"]]
    cal = shipped_trust(cases)
    assert set(cal["thresholds"]) == set(rule["witnesses"]) and cal["bound"] == rule["level"]


def test_leave_one_volume_out_finds_a_false_promise():
    cases = _cases()
    # a failure that looks like a success, in volume b: fitted on a, it is accepted -> a false promise
    cases.append(_case(99, 0.3, [0.99, 0.99, 0.99], "b"))
    lovo = leave_one_volume_out(cases)
    assert [f["judged_on"] for f in lovo["folds"]] == ["a", "b"]
    fps = lovo["pooled"]["false_promises"]
    assert [f["target"] for f in fps] == ["t99"] and "above the true IoU" in fps[0]["why"]
    assert lovo["pooled"]["coverage"] < 1.0
    rule, table = choose_rule(cases)
    # the look-alike failure (witnesses 0.99) is a false promise with every witness set and level, and at
    # 0.8 a false 'reliable': the choice falls back to the best coverage at the lowest level
    assert all(r["n_false_promises"] >= 1 for r in table if r["n_stated"])
    assert any(r["n_false_reliable"] for r in table if r["level"] == 0.8)
    assert rule["level"] == 0.6
    shipped = shipped_trust(cases)  # fitted on everything: the look-alike failure is excluded
    assert shipped["level"] == 0.6 and shipped["validation"]["n_false_promises"] >= 1
    assert trust_decide(shipped, cases[-1].witnesses, 0.05).verdict == NO_GUARANTEE


def _in_domain(i, iou, volume="a", heldout=0.85, w=(0.5, 0.95, 0.95)):
    """An in-domain case whose patch agreement fell short (as lucchi-pp on Lucchi++ test slices)."""
    return TrustCase("m", f"in{i}", volume, iou, dict(zip(WITNESS_NAMES, w)), 0.05,
                     in_domain=True, heldout_iou=heldout)


def test_in_domain_route_states_the_held_out_iou_capped_at_the_level():
    cases = _cases() + [_in_domain(0, 0.9), _in_domain(1, 0.88, "b")]
    cal = fit_trust(cases)
    assert cal["in_domain"] == {"n": 2, "iou_min": 0.88, "n_contradicted": 0, "enabled": True}
    low = dict(zip(WITNESS_NAMES, [0.5, 0.95, 0.95]))  # a witness below its threshold
    assert trust_decide(cal, low, 0.05).verdict == NO_GUARANTEE  # without the noise-floor test: abstain
    d = trust_decide(cal, low, 0.05, in_domain=True, heldout=0.85)
    assert (d.route, d.bound, d.verdict) == ("in-domain", 0.7, "uncertain")  # min(level 0.7, held-out 0.85)
    d = trust_decide(cal, low, 0.05, in_domain=True, heldout=0.45)  # a poor model: its own held-out IoU
    assert (d.bound, d.verdict) == (0.45, "unreliable")
    assert trust_decide(cal, low, 0.05, in_domain=True, heldout=None).verdict == NO_GUARANTEE  # nothing measured
    assert trust_decide(cal, low, 0.9, in_domain=True, heldout=0.85).verdict == NO_GUARANTEE  # foreground far off
    assert trust_decide(cal, low, 0.05, in_domain=True, heldout=0.85, blank=True).verdict == NO_GUARANTEE


def test_in_domain_route_is_not_used_when_a_calibration_case_contradicts_it_or_none_took_it():
    cal = fit_trust(_cases() + [_in_domain(0, 0.9), _in_domain(1, 0.6, "b")])  # 0.6 < min(0.7, 0.85)
    assert cal["in_domain"]["n_contradicted"] == 1 and not cal["in_domain"]["enabled"]
    low = dict(zip(WITNESS_NAMES, [0.5, 0.95, 0.95]))
    assert trust_decide(cal, low, 0.05, in_domain=True, heldout=0.85).verdict == NO_GUARANTEE
    assert not fit_trust(_cases())["in_domain"]["enabled"]
    # leave one volume out: the route is checked on the other volume's cases only
    lovo = leave_one_volume_out(_cases() + [_in_domain(0, 0.9), _in_domain(1, 0.6, "b")])
    routed = {d["target"]: d for d in lovo["decisions"] if d["route"] == "in-domain"}
    assert routed["in1"]["bound"] == 0.7 and "above the true IoU" in routed["in1"]["why"]  # caught as a false promise
    assert "in0" not in routed  # fitted on b, whose in-domain case contradicts the route


def test_the_rule_choice_ignores_the_in_domain_route():
    # route cases alone would make level 0.8 look free of false promises; the witness rule must not follow them
    cases = _cases() + [_in_domain(i, 0.95, "ab"[i % 2], heldout=0.9, w=(0.3, 0.3, 0.3)) for i in range(4)]
    plain = [dataclasses.replace(c, in_domain=False) for c in cases]
    (rule, table), (rule_plain, table_plain) = choose_rule(cases), choose_rule(plain)
    assert rule == rule_plain
    assert [r["n_stated"] for r in table] == [r["n_stated"] for r in table_plain]  # no statement by the route
    assert leave_one_volume_out(cases, **rule)["pooled"]["n_stated"] > leave_one_volume_out(plain, **rule)["pooled"]["n_stated"]


def test_object_size_outside_the_calibrated_range_abstains():
    cases = [dataclasses.replace(c, size_ratio=0.8 + 0.02 * i) for i, c in enumerate(_cases())]
    cal = fit_trust(cases)
    accepted = [c.size_ratio for c in cases if c.iou >= 0.7]
    assert cal["size_range"] == pytest.approx([min(accepted) / SIZE_SLACK, max(accepted) * SIZE_SLACK])
    good = dict(zip(WITNESS_NAMES, [0.99, 0.99, 0.99]))
    assert trust_decide(cal, good, 0.05, size_ratio=1.0).bound == 0.7
    assert trust_decide(cal, good, 0.05, size_ratio=math.nan).bound == 0.7  # not measured: no objection
    d = trust_decide(cal, good, 0.05, size_ratio=8.0)  # a nucleus called mitochondria: objects 8x too large
    assert d.verdict == NO_GUARANTEE and d.outside == "object size" and "8 times the size" in d.reason
    d = trust_decide(cal, good, 0.05, size_ratio=8.0, in_domain=True, heldout=0.9)
    assert d.verdict == NO_GUARANTEE  # nor does the in-domain route state a number then
    few = [dataclasses.replace(c, size_ratio=math.nan if i > 2 else 0.9) for i, c in enumerate(_cases())]
    assert all(math.isnan(v) for v in fit_trust(few)["size_range"])  # 3 measured: too few for a range


def test_size_ratio_witness_measures_the_objects_against_the_card():
    yy, xx = np.mgrid[:256, :256]
    prob = np.zeros((1, 256, 256), np.float32)
    for cy, cx in ((60, 60), (60, 180), (180, 60), (180, 180)):
        prob[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 20 ** 2] = 1.0  # discs of diameter ~40 px

    class Card:
        meta = {"objects": {"median_diameter_px": 20.0}}

    assert size_ratio(Card(), prob) == pytest.approx(2.0, rel=0.05)
    assert math.isnan(size_ratio(Card(), prob[:, :128, :128]))  # one whole disc: too few to say
    Card.meta = {}
    assert math.isnan(size_ratio(Card(), prob))  # no sizes in the card


def test_heldout_iou_reads_the_card():
    assert heldout_iou({"training": {"metrics": {"test_iou": 0.884, "val_iou": 0.9}}}) == 0.884
    assert heldout_iou({"training": {"metrics": {"val_iou": 0.9}}}) == 0.9
    assert heldout_iou({}) is None and heldout_iou(None) is None


# ------------------------------------------------------------------ the witnesses themselves
@pytest.fixture(scope="module")
def bright_small():
    from napari_bnadapt import synthetic

    from ..conftest import BRIGHT

    return synthetic.generate(8, (128, 128), seed=23, **BRIGHT)


def test_witnesses_on_a_good_adaptation(toy_model, bright_small):
    images, _ = bright_small
    before = state_bytes(toy_model)
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    w = measure_witnesses(toy_model, adapted, images, device="cpu")
    assert not w.blank and w.n_slices == 2 and w.crop == 128
    for k, v in w.values().items():
        assert 0.0 <= v <= 1.0, (k, v)
    assert w.flip_consistency > 0.8 and w.patch_agreement > 0.8  # a good adaptation agrees with itself
    assert math.isnan(w.size_ratio)  # the toy model's card has no object sizes
    carded = copy.deepcopy(toy_model)
    carded.meta["objects"] = nb.object_size_summary(bright_small[1])  # the true objects' sizes
    ratio = measure_witnesses(carded, adapted, images, device="cpu", n_slices=8).size_ratio
    assert 0.67 < ratio < 1.5, ratio  # a good segmentation finds objects of the true size
    assert state_bytes(toy_model) == before


def test_a_blank_stack_is_blank_and_abstains(toy_model):
    flat = np.full((3, 128, 128), 120, np.uint8)
    assert stack_is_blank(toy_model, flat)
    noisy = flat + np.random.default_rng(0).integers(0, 2, flat.shape).astype(np.uint8)  # one grey level of noise
    assert stack_is_blank(toy_model, noisy)
    adapted, _ = nb.adapt(toy_model, flat, device="cpu")
    rep = nb.reliability(toy_model, adapted, flat, device="cpu")
    assert rep.verdict == NO_GUARANTEE and rep.iou_lower_bound is None and "blank" in rep.sentence


def test_reliability_with_a_trust_calibration_abstains_outside_it(toy_model, bright_small):
    images, _ = bright_small
    adapted, _ = nb.adapt(toy_model, images, device="cpu")
    model = copy.deepcopy(toy_model)
    # a calibration whose covered region no real measurement reaches
    model.meta["trust"] = {"thresholds": dict.fromkeys(WITNESS_NAMES, 1.01), "foreground_range": [0.0, 1.0],
                           "bound": 0.8, "verdict_thresholds": {"reliable": 0.8, "unreliable": 0.5}}
    rep = nb.reliability(model, adapted, images, device="cpu")
    assert rep.verdict == NO_GUARANTEE and rep.iou_lower_bound is None
    assert rep.witnesses["values"] and rep.witnesses["failing"] and "unlike anything" in rep.sentence
    assert rep.spoke and "NO GUARANTEE" in str(rep)
    # and one that covers it: the bound is the smaller of the witnesses' and the W2 curve's, rounded down in text
    model.meta["trust"] = {"thresholds": dict.fromkeys(WITNESS_NAMES, 0.0), "foreground_range": [0.0, 1.0],
                           "bound": 0.85, "verdict_thresholds": {"reliable": 0.8, "unreliable": 0.5},
                           "validation": {"by_verdict": {"reliable": {"n": 10, "coverage": 0.9}},
                                          "volumes": ["a", "b"]}}
    rep = nb.reliability(model, adapted, images, device="cpu")
    assert rep.verdict == "reliable" and rep.iou_lower_bound == pytest.approx(min(0.85, rep.w2_bound))
    assert rep.coverage == 0.9 and "90%" in rep.sentence and "leave one volume out" in rep.sentence
    assert format_bound(rep.iou_lower_bound) in rep.sentence
    assert math.isfinite(rep.witnesses["values"]["scale_consistency"])
    # without a W2 calibration the default gate cannot overrule the trust calibration, so the report does not
    # warn about the default gate's thresholds (it did, and the CLI printed it for em-generalist)
    model.meta.pop("calibration", None)
    adapted.meta.pop("calibration", None)
    rep = nb.reliability(model, adapted, images, device="cpu")
    assert rep.verdict == "reliable" and not any("DEFAULT thresholds" in n for n in rep.notes)
    del model.meta["trust"]
    rep = nb.reliability(model, adapted, images, device="cpu")
    assert any("DEFAULT thresholds" in n for n in rep.notes)
