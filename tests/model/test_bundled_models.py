"""The bundled models: listed, loadable, and the EM default is the from-scratch generalist (issue #14)."""

from __future__ import annotations

import numpy as np
import pytest


def test_generalist_em_model_is_listed_loads_and_is_the_em_default():
    import napari_bnadapt as nb
    from napari_bnadapt.model.files import DEFAULT_EM_MODEL, DEMO_MODEL

    assert DEFAULT_EM_MODEL == "em-generalist-2" and DEMO_MODEL == "toy-perlin"
    names = nb.list_models()
    for name in ("toy-perlin", "lucchi-pp", "vnc", "em-generalist", "em-generalist-2"):
        assert name in names, f"the bundled {name!r} model is missing from the package"
    model = nb.load_model(DEFAULT_EM_MODEL, device="cpu")
    card = nb.model_card(DEFAULT_EM_MODEL)
    assert card.pixel_size_nm == pytest.approx((5.0, 5.0))
    training = model.meta["training"]
    # trained on every labelled EM volume we have, at a common pixel size, with EM domain randomisation
    volumes = training["data"]["volumes"]
    assert [v["pixel_size_nm"][0] for v in volumes] == pytest.approx([5.0, 4.6])
    assert training["recipe"]["augmentation"]["gamma"] != [1.0, 1.0]
    assert set(training["metrics"]["test_iou_by_set"]) == {"Lucchi++", "VNC"}
    assert model.meta["objects"]["count"] > 0  # what the scale search compares with
    assert "thresholds" in model.meta["trust"]  # the reliability panel's verdict is calibrated for the default
    x = np.random.default_rng(0).integers(60, 200, (1, 64, 64), dtype=np.uint8)
    assert nb.segment(model, x, device="cpu", pixel_size_nm=(5.0, 5.0)).shape == x.shape


def test_cli_segment_and_adapt_default_to_the_em_model():
    from napari_bnadapt.cli import build_parser
    from napari_bnadapt.model.files import DEFAULT_EM_MODEL

    parser = build_parser()
    for cmd in ("segment", "adapt"):
        args = parser.parse_args([cmd, "--input", "x.tif", "--output", "y"])
        assert args.model == DEFAULT_EM_MODEL
