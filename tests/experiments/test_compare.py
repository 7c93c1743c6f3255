"""bnadapt experiment compare: registered, end to end on tiny data, resumable, the real pair skips cleanly."""

from __future__ import annotations

import argparse
import math

import pytest

from napari_bnadapt import experiments
from napari_bnadapt.experiments import compare
from napari_bnadapt.experiments.results import read_csv

TINY = {"seeds": 1, "n_train": 32, "n_test": 8, "train_steps": 20, "tent_steps": 2, "adda_steps": 4,
        "adda_batch": 4, "adda_checkpoint": 2, "glss_steps": 4, "glss_latent": 8, "glss_search_steps": 2}


def test_compare_is_registered_with_its_scales():
    assert "compare" in experiments.EXPERIMENTS
    assert experiments.default_scale("compare") == compare.DEFAULT
    full = experiments.default_scale("compare", full=True)
    assert full.seeds > compare.DEFAULT.seeds and full.adda_steps > compare.DEFAULT.adda_steps
    p = argparse.ArgumentParser()
    experiments.add_experiment_parser(p.add_subparsers())
    args = p.parse_args(["experiment", "compare", "--only", "brightness", "--scale", "seeds=1"])
    assert args.name == "compare"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("compare")
    res = experiments.run("compare", out=out, only=["brightness"], scale=TINY, figures=True)
    return out, res


def test_every_method_runs_end_to_end_on_a_brightness_pair(tiny_run, tmp_path):
    out, res = tiny_run
    rows = read_csv(res.csv)
    assert [r["method"] for r in rows if r["family"] == "brightness"] == list(compare.METHODS)
    for r in rows:
        assert 0.0 <= r["iou"] <= 1.0 and r["seconds"] > 0
        assert bool(r["target_at_training"]) == compare.METHODS[r["method"]][1]
    b = {r["method"]: r for r in rows if r["family"] == "brightness"}
    assert b["source-only"]["iou"] < 0.35  # b90 -> b150: all white without adaptation
    assert b["adabn"]["iou"] > b["source-only"]["iou"] + 0.3
    assert math.isfinite(b["adda"]["confusion"]) and b["adda"]["selected_step"] in (2, 4)
    assert b["adda-label"]["iou"] >= b["adda"]["iou"]  # labels choose among the same checkpoints
    assert b["glss"]["search_s_per_image"] > 0
    assert (out / "table.md").read_text().count("| brightness |") == len(compare.METHODS)
    assert [p.name for p in res.figures] == ["compare_brightness.png"] and res.figures[0].exists()


def test_a_second_run_resumes_without_recomputing(tiny_run):
    out, first = tiny_run
    again = experiments.run("compare", out=out, only=["brightness"], scale=TINY, figures=False)
    assert again.computed == 0 and again.rows == first.rows


def test_the_real_pair_skips_cleanly_without_its_data(tmp_path, monkeypatch):
    ok, why = compare.real_available(tmp_path / "nothing-here")
    assert not ok and "not in" in why
    monkeypatch.setattr(compare, "real_available", lambda data=None: (False, "the real EM data is not in /nowhere"))
    res = experiments.run("compare", out=tmp_path / "r", only=["real"], scale=TINY, figures=False)
    assert res.rows == 0 and res.findings["notes"] == ["real pair skipped: the real EM data is not in /nowhere"]


def test_summary_table_and_published_anchors():
    rows = []
    for seed, (a, b) in enumerate(((0.2, 0.8), (0.4, 0.6))):
        for m, v in (("source-only", a), ("adabn", b)):
            rows.append({"family": "real", "pair_id": "lucchi->vnc", "method": m, "iou": v, "seconds": 1.0 + seed,
                         "search_s_per_image": ""})
    s = compare.summarise(rows)
    pm = s["pairs"]["lucchi->vnc"]["methods"]
    assert pm["adabn"]["iou"] == pytest.approx(0.7) and pm["adabn"]["sd"] == pytest.approx(math.sqrt(0.02))
    assert s["families"]["real"]["best"] == "adabn"
    t = compare.table(s)
    assert "Attention Y-Net (published) | 0.40 +- 0.04" in t and "| AdaBN | 0.700 +- 0.141 | 2 | 1.5 | no |" in t


def test_unknown_family_is_refused(tmp_path):
    from napari_bnadapt.errors import BNAdaptError

    with pytest.raises(BNAdaptError, match="unknown pair family"):
        experiments.run("compare", out=tmp_path, only=["nope"], scale=TINY)
