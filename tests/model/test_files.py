import json
import os
import pickle

import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError, ModelFileError
from napari_bnadapt.model.files import resolve_model_path
from napari_bnadapt.model.unet import UNet

from ..conftest import state_bytes


def test_bundled_model_listed_and_loadable():
    # docs/models.md: three bundled models
    assert {"toy-perlin", "lucchi-pp", "vnc"} <= set(nb.list_models())
    m = nb.load_model("toy-perlin", device="cpu")
    assert isinstance(m, UNet) and not m.training
    assert m.config() == {"in_channels": 1, "n_classes": 2, "width": 8, "bilinear": False}  # docs/models.md
    card = nb.model_card("toy-perlin")
    assert card.name == "toy-perlin" and not card.imported and card.has_source_statistics
    assert card.normalization["mode"] == "fixed"
    # docs/models.md: validation IoU 0.983 (200 held-out images), test IoU 0.983 (500 fresh images)
    assert card.val_iou == pytest.approx(0.983, abs=0.0005) and card.training["metrics"]["val_iou"] == card.val_iou
    assert card.training["metrics"]["test_iou"] == pytest.approx(0.983, abs=0.0005)
    assert "command" in card.training
    assert "toy-perlin" in card.path and "validation IoU" in card.describe()


@pytest.mark.parametrize("name, test_iou", [("lucchi-pp", 0.884), ("vnc", 0.848)])
def test_bundled_em_models_are_the_documented_ones(name, test_iou):
    """docs/models.md: U-Net width 16, bilinear ups; test IoU 0.884 (lucchi-pp) and 0.848 (vnc)."""
    card = nb.model_card(name)
    assert card.training["metrics"]["test_iou"] == pytest.approx(test_iou, abs=0.0005)
    m = nb.load_model(name, device="cpu")
    assert m.config() == {"in_channels": 1, "n_classes": 2, "width": 16, "bilinear": True}


def test_save_load_roundtrip(tmp_path, toy_model):
    toy_model_copy = nb.load_model("toy-perlin", device="cpu")
    toy_model_copy.meta["arrays"] = {"ls0.mean": np.arange(4.0)}
    p = nb.save_model(toy_model_copy, tmp_path / "m")
    assert p.name == "m.safetensors"
    back = nb.load_model(p, device="cpu")
    assert state_bytes(back) == state_bytes(toy_model)
    np.testing.assert_array_equal(back.meta["arrays"]["ls0.mean"], np.arange(4.0))
    assert back.meta["normalization"] == toy_model.meta["normalization"]


def test_never_overwrites_without_asking(tmp_path, toy_model):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"precious")
    with pytest.raises(BNAdaptError, match="already exists"):
        nb.save_model(toy_model, p)
    assert p.read_bytes() == b"precious"
    nb.save_model(toy_model, p, overwrite=True)
    assert nb.load_model(p, device="cpu") is not None


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps({"inc.conv1.weight": _Evil(marker)}, protocol=2))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"x": _Evil(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(ModelFileError, match="refused"):
            nb.load_model(path, device="cpu")
    assert not marker.exists()


def test_plain_state_dict_import(tmp_path, toy_model):
    path = tmp_path / "plain.pth"
    torch.save(toy_model.state_dict(), path)
    m = nb.load_model(path, device="cpu")
    assert state_bytes(m) == state_bytes(toy_model)
    assert m.meta["imported_from"] == "plain.pth" and m.config() == toy_model.config()


def test_truncated_and_foreign_files(tmp_path):
    good = resolve_model_path("toy-perlin").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "header_cut.safetensors": good[:40],
        "garbage.safetensors": os.urandom(5000),
        "text.safetensors": b"hello, I am not a model",
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError):
            nb.load_model(tmp_path / name, device="cpu")
    # a valid safetensors file of some other network
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="U-Net"):
        nb.load_model(tmp_path / "other.safetensors", device="cpu")
    # our format, written by a newer version
    meta = {"format": "napari-bnadapt-model", "format_version": 99}
    save_file({"a": torch.zeros(1)}, str(tmp_path / "newer.safetensors"), metadata={"napari_bnadapt": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="newer"):
        nb.load_model(tmp_path / "newer.safetensors", device="cpu")


def test_unknown_name():
    with pytest.raises(BNAdaptError, match="no model named"):
        nb.load_model("no-such-model")


def test_user_model_dir(tmp_path, monkeypatch, toy_model):
    monkeypatch.setenv("BNADAPT_MODEL_DIR", str(tmp_path))
    nb.save_model(toy_model, tmp_path / "mine.safetensors")
    assert "mine" in nb.list_models()
    assert state_bytes(nb.load_model("mine", device="cpu")) == state_bytes(toy_model)
