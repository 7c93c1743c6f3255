import numpy as np
import pytest
import tifffile

from napari_bnadapt.cli import main


def test_generate_segment_adapt_with_truth(tmp_path, capsys):
    img, lab, out = tmp_path / "t.tif", tmp_path / "truth.tif", tmp_path / "labels.tif"
    assert main(["generate", "--n", "4", "--shape", "96", "96", "--mu0", "136", "--mu1", "178",
                 "--output", str(img), "--labels", str(lab)]) == 0
    assert main(["segment", "--model", "toy-perlin", "--adapt", "--input", str(img), "--output", str(out),
                 "--truth", str(lab), "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    before = float(text.split("IoU without adaptation: ")[1].split()[0])
    after = float(text.split("IoU after adaptation: ")[1].split()[0])
    assert before < 0.3 and after >= 0.97  # measured 0.172 -> 0.986 (brightness +40: AdaBN restores it)
    labels = tifffile.imread(out)
    assert labels.shape == (4, 96, 96) and labels.dtype == np.uint8


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "x.tif"
    out.write_bytes(b"keep me")
    assert main(["generate", "--n", "2", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_clear_errors(tmp_path, capsys):
    assert main(["segment", "--input", str(tmp_path / "missing.tif"), "--output", str(tmp_path / "o.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    img = tmp_path / "rgb.tif"
    tifffile.imwrite(img, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert main(["segment", "--input", str(img), "--output", str(tmp_path / "o.tif")]) == 2
    assert "colour" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_adapt_saves_model(tmp_path, capsys):
    img = tmp_path / "t.tif"
    main(["generate", "--n", "2", "--shape", "64", "64", "--mu0", "136", "--mu1", "178", "--output", str(img)])
    out = tmp_path / "adapted.safetensors"
    assert main(["adapt", "--model", "toy-perlin", "--input", str(img), "--output", str(out), "--device", "cpu", "--quiet"]) == 0
    import napari_bnadapt as nb

    assert nb.model_card(out).adaptation["source_model"] == "toy-perlin"


def test_models_and_help(capsys):
    assert main(["models"]) == 0
    assert "toy-perlin" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    assert "--intensity-range" in capsys.readouterr().out


def test_folder_of_unpadded_slices_keeps_order_and_voxel_size(tmp_path, capsys):
    from napari_bnadapt import read_stack, synthetic

    images, truth = synthetic.generate(11, (64, 64), seed=4, mu0=136, mu1=178)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, img in enumerate(images, start=1):  # 1.tif ... 11.tif: text order would be wrong
        tifffile.imwrite(folder / f"{i}.tif", img, resolution=(1 / 5.0, 1 / 5.0), metadata={"unit": "nm"}, imagej=True)
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    out = tmp_path / "labels.tif"
    assert main(["segment", "--model", "toy-perlin", "--adapt", "--input", str(folder), "--output", str(out), "--truth", str(tmp_path / "truth.tif"),
                 "--device", "cpu", "--quiet"]) == 0
    # the right order: measured 0.980 (slices in text order would pair images with the wrong truth)
    assert float(capsys.readouterr().out.split("IoU after adaptation: ")[1].split()[0]) >= 0.97
    labels, info = read_stack(out)
    assert labels.shape == images.shape
    assert info.voxel_size_nm[-2:] == pytest.approx((5.0, 5.0))


def test_demo_without_display_falls_back_to_text(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    before = float(out.split("IoU without adaptation: ")[1].split()[0])
    after = float(out.split("IoU with BatchNorm adaptation: ")[1].split()[0])
    assert "no display" in out and before < 0.3 and after >= 0.97  # measured 0.208 -> 0.984


def test_export_writes_a_bioimageio_package_and_never_overwrites(tmp_path, capsys):
    import zipfile

    out = tmp_path / "toy.zip"
    assert main(["export", "--model", "toy-perlin", "--output", str(out)]) == 0
    assert "bioimage.io model package" in capsys.readouterr().out
    with zipfile.ZipFile(out) as z:
        assert {"rdf.yaml", "torchscript.pt", "state_dict.pt", "test_input.npy"} <= set(z.namelist())
    before = out.read_bytes()
    assert main(["export", "--model", "toy-perlin", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "--model", "toy-perlin", "--output", str(out), "--overwrite", "--name", "toy again"]) == 0
    assert b"toy again" in zipfile.ZipFile(out).read("rdf.yaml")
    assert main(["export", "--model", "toy-perlin", "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "must be a .zip" in capsys.readouterr().err


def test_segment_takes_the_pixel_size_and_writes_on_the_input_grid(tmp_path, capsys, toy_model_5nm, recwarn):
    import napari_bnadapt as nb
    from napari_bnadapt.io.resample import PixelSizeWarning

    model = nb.save_model(toy_model_5nm, tmp_path / "five-nm.safetensors")
    img, out, out2 = tmp_path / "t.tif", tmp_path / "labels.tif", tmp_path / "as-is.tif"
    main(["generate", "--n", "2", "--shape", "48", "48", "--output", str(img)])
    capsys.readouterr()
    assert main(["segment", "--model", str(model), "--input", str(img), "--output", str(out),
                 "--pixel-size", "10", "10", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "resampled to the model's pixel size" in err and "zoom 2 x 2" in err
    assert tifffile.imread(out).shape == (2, 48, 48)
    # one value: square pixels, the same run
    square = tmp_path / "square.tif"
    assert main(["segment", "--model", str(model), "--input", str(img), "--output", str(square),
                 "--pixel-size", "10", "--device", "cpu", "--quiet"]) == 0
    assert "zoom 2 x 2" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(square), tifffile.imread(out))
    with pytest.raises(SystemExit) as too_many:
        main(["segment", "--model", str(model), "--input", str(img), "--output", str(tmp_path / "y.tif"),
              "--pixel-size", "10", "10", "10", "--quiet"])
    assert too_many.value.code == 2 and "one value (square pixels) or two" in capsys.readouterr().err
    assert not (tmp_path / "y.tif").exists()
    # no --pixel-size and none in the file: said once, by the CLI; the run goes on as it is
    assert main(["segment", "--model", str(model), "--input", str(img), "--output", str(out2),
                 "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("pixel size is unknown") == 1 and "--pixel-size" in err
    assert not [w for w in recwarn if issubclass(w.category, PixelSizeWarning)]
    assert not np.array_equal(tifffile.imread(out), tifffile.imread(out2))
    assert main(["segment", "--model", str(model), "--input", str(img), "--output", str(tmp_path / "x.tif"),
                 "--pixel-size", "0", "10", "--quiet"]) == 2
    assert "positive" in capsys.readouterr().err


def test_segment_smooths_on_request_and_refuses_a_bad_blur(tmp_path, capsys):
    img, out = tmp_path / "t.tif", tmp_path / "labels.tif"
    assert main(["generate", "--n", "2", "--shape", "96", "96", "--output", str(img)]) == 0
    common = ["segment", "--model", "toy-perlin", "--adapt", "--no-assess", "--input", str(img), "--device", "cpu",
              "--quiet"]
    assert main([*common, "--smooth", "auto", "--output", str(out)]) == 0
    assert "smoothing: " in capsys.readouterr().out and tifffile.imread(out).shape == (2, 96, 96)
    assert main([*common, "--choose-statistics", "--output", str(out), "--overwrite"]) == 0
    assert "statistics: " in capsys.readouterr().out
    assert main([*common, "--mode", "balanced", "--output", str(out), "--overwrite"]) == 0
    with pytest.raises(SystemExit):
        main([*common, "--smooth", "-1", "--output", str(tmp_path / "o.tif")])
    assert "--smooth takes 'auto' or a blur of 0 or more pixels" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_segment_removes_oversized_objects_unless_kept(tmp_path, capsys, monkeypatch):
    """The workflow's default removal reaches the CLI; --keep-oversized turns it off."""
    from napari_bnadapt import workflow

    seen = []
    real = workflow.run_iter

    def spy(*args, **kwargs):
        seen.append(kwargs["remove_oversized"])
        return real(*args, **kwargs)

    monkeypatch.setattr(workflow, "run_iter", spy)
    img = tmp_path / "t.tif"
    assert main(["generate", "--n", "1", "--shape", "96", "96", "--output", str(img)]) == 0
    common = ["segment", "--model", "toy-perlin", "--input", str(img), "--device", "cpu", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "a.tif")]) == 0
    assert main([*common, "--keep-oversized", "--output", str(tmp_path / "b.tif")]) == 0
    assert seen == [True, False]


def test_blend_writes_a_blend_with_its_statistics_and_changes_neither_model(tmp_path, capsys, toy_model):
    import copy

    import torch

    import napari_bnadapt as nb

    tuned = copy.deepcopy(toy_model)
    with torch.no_grad():
        for v in tuned.state_dict().values():
            if v.is_floating_point():
                v.mul_(1.05)
    tuned_file, img, out = tmp_path / "tuned.safetensors", tmp_path / "src.tif", tmp_path / "b.safetensors"
    nb.save_model(tuned, tuned_file)
    before = tuned_file.read_bytes()
    main(["generate", "--n", "2", "--shape", "64", "64", "--output", str(img)])
    assert main(["blend", "--base", "toy-perlin", "--tuned", str(tuned_file), "--weight", "0.25", "--training-images",
                 str(img), "--output", str(out), "--device", "cpu", "--quiet"]) == 0
    card = nb.model_card(out)
    assert card.name == "b" and card.meta["blend"]["weight"] == 0.25 and card.has_source_statistics
    assert "estimated again" in card.meta["blend"]["running_statistics"] and tuned_file.read_bytes() == before
    capsys.readouterr()
    assert main(["blend", "--base", "toy-perlin", "--tuned", str(tuned_file), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    plain = tmp_path / "plain.safetensors"
    assert main(["blend", "--base", "toy-perlin", "--tuned", str(tuned_file), "--output", str(plain)]) == 0
    assert "no source statistics" in capsys.readouterr().err and not nb.model_card(plain).has_source_statistics
    assert main(["blend", "--base", "toy-perlin", "--tuned", str(tuned_file), "--weight", "2",
                 "--output", str(tmp_path / "w.safetensors")]) == 2
    assert "from 0" in capsys.readouterr().err and not (tmp_path / "w.safetensors").exists()
