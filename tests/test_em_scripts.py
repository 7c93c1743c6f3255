"""The helpers of scripts/: the step budget of train_em_models, the data packing, the blend recipes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import em_data  # noqa: E402
import em_data_pack  # noqa: E402
import train_em_models  # noqa: E402


def test_steps_within_divides_the_budget_by_the_warm_step_time(monkeypatch):
    from napari_bnadapt.progress import Progress

    clock = [0.0]
    monkeypatch.setattr(train_em_models.time, "perf_counter", lambda: clock[0])
    asked = []

    def training(n):  # 5 s of start-up before the first step, then 0.25 s a step
        asked.append(n)
        yield Progress("training", 0, n)
        clock[0] += 5.0
        for i in range(1, n + 1):
            clock[0] += 0.25
            yield Progress("training", i, n)

    assert train_em_models.steps_within(100.0, training) == 400  # the start-up is not counted as steps
    assert asked == [30]
    assert train_em_models.steps_within(0.01, training) == 1


def _fake_data(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tiny stand-ins for the two real datasets, under their real file names."""
    import tifffile

    images = {}
    for r, nz in ((em_data.RECIPES["lucchi"], 3), (em_data.RECIPES["vnc"], 16)):
        image_file, label_file, _ = r["train"]
        folder = root / r["folder"]
        folder.mkdir(parents=True)
        images[r["folder"]] = rng.integers(0, 256, (nz, 24, 40), dtype=np.uint8)
        tifffile.imwrite(folder / image_file, images[r["folder"]], photometric="minisblack")
        tifffile.imwrite(folder / label_file, (images[r["folder"]] > 128).astype(np.uint8), photometric="minisblack")
    return images


def test_pack_then_unpack_gives_the_training_slices_bit_exact(tmp_path):
    import tifffile

    images = _fake_data(tmp_path / "data", np.random.default_rng(0))
    em_data_pack.pack(tmp_path / "packed", tmp_path / "data")
    em_data_pack.unpack(tmp_path / "packed", tmp_path / "out")
    for key in ("lucchi", "vnc"):
        r = em_data.RECIPES[key]
        image_file, label_file, z = r["train"]
        back = tifffile.imread(tmp_path / "out" / r["folder"] / image_file)
        np.testing.assert_array_equal(back, images[r["folder"]][z])  # VNC: slices 0-13 only, not its test slices
        assert (tmp_path / "out" / r["folder"] / label_file).exists()


def test_unpack_refuses_a_slice_that_changed(tmp_path):
    import io

    from PIL import Image

    _fake_data(tmp_path / "data", np.random.default_rng(1))
    em_data_pack.pack(tmp_path / "packed", tmp_path / "data")
    folder = tmp_path / "packed" / em_data.RECIPES["lucchi"]["folder"]
    first = sorted(folder.glob("*.webp"))[0]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((24, 40), np.uint8)).save(buf, format="WEBP", lossless=True)
    first.write_bytes(buf.getvalue())
    with pytest.raises(SystemExit, match="checksum"):
        em_data_pack.unpack(tmp_path / "packed", tmp_path / "out")


def test_a_blend_recipe_names_a_bundled_specialist_and_its_robust_fine_tuning(tmp_path, capsys):
    by_name = em_data.recipes_by_model_name()
    for key, r in em_data.BLENDS.items():
        assert r["base"] in {s["name"] for s in em_data.RECIPES.values()}
        assert by_name[r["tuned"]]["sources"] == r["sources"] == by_name[r["name"]]["sources"]
        assert 0 < r["weight"] < 1 and "augment" not in em_data.model_recipe(key)  # made, not trained
    assert train_em_models.main(["lucchi-blend", "--out", str(tmp_path)]) == 2  # the fine-tuned model is not there
    assert "lucchi-pp-robust-half.safetensors is missing: train it first" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):  # a weight means nothing to a training recipe
        train_em_models.main(["lucchi-robust-half", "--weight", "0.3", "--out", str(tmp_path)])
    assert "--weight and --tuned are for the blend recipes" in capsys.readouterr().err and not list(tmp_path.iterdir())
