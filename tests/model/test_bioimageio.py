"""bioimage.io export and import: the reference libraries validate, test and run our packages; the
import gives the same model back; malformed, altered, foreign and code-carrying packages are refused.

Everything runs offline: the sockets are closed for this module (a network access would fail loudly).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError, ModelFileError

import bioimageio.core  # noqa: E402,F401  (the [bioimageio] extra: part of [all], installed in CI)

#: bioimage.io core / our predictor on the test tensor: the same float32 network, but a different normalisation
#: arithmetic ((x - M) / S against ((x - low) / (high - low) - mean) / std) and our BatchNorm-folded copy;
#: bioimage.io's own default tolerance (measured: 8e-5).
CORE_ATOL = 1e-3
#: The halo the package declares (core pads the whole image by it, symmetric, and crops it off the output).
HALO = 32
#: The imported state dict is the same U-Net with the same weights: identical predictions (measured 0.0).
IMPORT_ATOL = 1e-6
#: The imported TorchScript network outputs probabilities, turned back into logits (and runs unfused).
TORCHSCRIPT_ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No network for this module: any connection attempt raises."""
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests/model/test_bioimageio.py")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def target():
    """A small toy-shifted stack (brightness +40): 4 slices of 128 x 128."""
    return nb.sample_data.toy_brightness_target()[0][:4, :128, :128]


@pytest.fixture(scope="module")
def adapted(target):
    source = nb.load_model("lucchi-pp", device="cpu")
    model, _ = nb.adapt(source, target, device="cpu")
    report = nb.reliability(source, model, target, device="cpu")
    return model, report


@pytest.fixture(scope="module")
def package(adapted, target, tmp_path_factory):
    model, report = adapted
    path = tmp_path_factory.mktemp("bioimageio") / "lucchi-pp-adapted.zip"
    assert nb.export_bioimageio(model, path, reliability=report, test_image=target[0]) == path
    return path


def _rdf(path: Path) -> dict:
    from ruyaml import YAML

    with zipfile.ZipFile(path) as z:
        return YAML(typ="safe", pure=True).load(z.read("rdf.yaml").decode())


def _repack(src: Path, dst: Path, edit=None, drop=(), add=None) -> Path:
    """A copy of the package ``src`` with its description edited, files dropped or added/replaced."""
    from ruyaml import YAML

    rdf = _rdf(src)
    if edit is not None:
        edit(rdf)
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(rdf, buf)
    add = dict(add or {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name not in drop and name not in add and name != "rdf.yaml":
                zout.writestr(name, zin.read(name))
        for name, data in add.items():
            zout.writestr(name, data)
        zout.writestr("rdf.yaml", buf.getvalue())
    return dst


# ------------------------------------------------------------------ export
def test_the_package_holds_what_the_model_zoo_needs(package, adapted):
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        card = json.loads(z.read("model_card.json"))
        readme = z.read("README.md").decode()
        x, y = np.load(io.BytesIO(z.read("test_input.npy"))), np.load(io.BytesIO(z.read("test_output.npy")))
    assert names >= {"rdf.yaml", "state_dict.pt", "torchscript.pt", "napari_bnadapt_unet.py", "test_input.npy",
                     "test_output.npy", "sample_input.tif", "sample_output.tif", "cover.png", "README.md",
                     "model_card.json", "source_statistics.safetensors", "reliability.json"}
    assert x.shape == y.shape == (1, 1, 128, 128) and x.dtype == np.uint8 and y.dtype == np.float32
    assert 0 <= y.min() and y.max() <= 1
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "BSD-3-Clause"
    assert {"doi": "10.48550/arXiv.1603.04779"}.items() <= rdf["cite"][1].items()
    assert "Stenger" in rdf["cite"][0]["text"]
    space = rdf["inputs"][0]["axes"][2]
    assert (space["scale"], space["unit"]) == (5.0, "nanometer")
    zmuv = rdf["inputs"][0]["preprocessing"][1]
    norm = adapted[0].meta["normalization"]
    assert zmuv["id"] == "fixed_zero_mean_unit_variance"
    assert zmuv["kwargs"]["mean"] == pytest.approx(norm["low"] + norm["mean"] * (norm["high"] - norm["low"]), rel=1e-12)
    assert card["adaptation"]["source_model"] == "lucchi-pp"
    assert "## Adaptation (AdaBN)" in readme and "Reliability of the adaptation" in readme and "Validation" in readme


def test_the_scripted_network_keeps_switchable_batchnorm(package):
    import torch

    with zipfile.ZipFile(package) as z:
        net = torch.jit.load(io.BytesIO(z.read("torchscript.pt")))
    bn = net.unet.inc.bn1
    before = bn.running_mean.clone()
    bn.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 32, 32))
    assert not torch.equal(before, bn.running_mean)  # a traced graph would have frozen the flag


def test_bioimageio_spec_validates_the_package_offline(package):
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(package, perform_io_checks=True)  # file hashes checked, nothing downloaded
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    assert descr.validation_summary.status == "valid-format"


def test_bioimageio_core_model_test_passes(package):
    from bioimageio.core import test_model

    summary = test_model(package)  # both weight formats: reproduce the test output, then other input sizes
    failed = [(d.name, [e.msg[:300] for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "(pytorch_state_dict)" in names and "(torchscript)" in names


def test_bioimageio_core_predicts_what_we_predict(package, adapted):
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_description

    with zipfile.ZipFile(package) as z:
        x = np.load(io.BytesIO(z.read("test_input.npy")))
    ours = nb.predict(adapted[0], x[0, 0], device="cpu")
    descr = load_description(package)
    for weights in ("torchscript", "pytorch_state_dict"):
        pipeline = create_prediction_pipeline(descr, weight_format=weights, devices=["cpu"])
        with pipeline:
            # the whole image as it is (core's own test path): preprocessing, network, postprocessing
            whole = pipeline.predict_sample_without_blocking(create_sample_for_model(descr, inputs=x, sample_id="a"),
                                                             skip_input_padding=True, skip_output_cropping=True)
            # core's default: the image padded by the halo (symmetric), the output cropped back
            halo = pipeline.predict_sample_without_blocking(create_sample_for_model(descr, inputs=x, sample_id="b"))
        theirs = whole.members["mitochondrion_probability"].data.to_numpy()[0, 0]
        assert np.abs(theirs - ours).max() <= CORE_ATOL, (weights, np.abs(theirs - ours).max())
        # the halo only changes what the network sees at the borders: ours on the same padded image agrees
        padded = np.pad(x[0, 0], HALO, mode="symmetric")
        ref = nb.predict(adapted[0], padded, device="cpu")[HALO:-HALO, HALO:-HALO]
        theirs = halo.members["mitochondrion_probability"].data.to_numpy()[0, 0]
        assert theirs.shape == x.shape[2:] and np.abs(theirs - ref).max() <= CORE_ATOL


def test_export_never_overwrites_and_needs_the_libraries(package, adapted, monkeypatch, tmp_path):
    before = package.read_bytes()
    with pytest.raises(BNAdaptError, match="already exists"):
        nb.export_bioimageio(adapted[0], package)
    assert package.read_bytes() == before
    with pytest.raises(BNAdaptError, match="not an SPDX licence"):
        nb.export_bioimageio(adapted[0], tmp_path / "licence.zip", license="my own licence")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(BNAdaptError, match="pip install"):
        nb.export_bioimageio(adapted[0], tmp_path / "x.zip")
    with pytest.raises(BNAdaptError, match="pip install"):
        nb.load_model(package)


# ------------------------------------------------------------------ import
def test_round_trip_gives_the_same_model(package, adapted, target):
    model, _ = adapted
    back = nb.load_model(package, device="cpu")
    assert isinstance(back, nb.UNet) and back.config() == model.config()
    assert back.meta["normalization"] == model.meta["normalization"]  # exactly
    assert back.meta["pixel_size_nm"] == [5.0, 5.0]
    assert back.meta["adaptation"]["source_model"] == "lucchi-pp"
    assert set(back.meta["arrays"]) == set(model.meta["arrays"])  # the reliability check still works
    diff = np.abs(nb.predict(back, target, device="cpu") - nb.predict(model, target, device="cpu")).max()
    assert diff <= IMPORT_ATOL, diff


def test_unpacked_rdf_yaml_and_torchscript_weights(package, adapted, target, tmp_path):
    from napari_bnadapt.model.bioimageio_import import load_bioimageio_model

    with zipfile.ZipFile(package) as z:
        z.extractall(tmp_path)
    back = nb.load_model(tmp_path / "rdf.yaml", device="cpu")
    ref = nb.predict(adapted[0], target, device="cpu")
    assert np.abs(nb.predict(back, target, device="cpu") - ref).max() <= IMPORT_ATOL
    scripted = load_bioimageio_model(package, "cpu", weights="torchscript")
    assert scripted.meta["bioimageio"]["weights"] == "torchscript"
    assert scripted.meta["normalization"] == adapted[0].meta["normalization"]
    assert np.abs(nb.predict(scripted, target, device="cpu") - ref).max() <= TORCHSCRIPT_ATOL


def test_the_imported_torchscript_adapts_like_the_unet(package, adapted, target):
    """The scripted network keeps switchable BatchNorm: adapting it matches adapting the U-Net itself."""
    from napari_bnadapt.model.bioimageio_import import load_bioimageio_model

    scripted = load_bioimageio_model(package, "cpu", weights="torchscript")
    again_scripted, _ = nb.adapt(scripted, target, device="cpu")
    again_unet, _ = nb.adapt(adapted[0], target, device="cpu")
    diff = np.abs(nb.predict(again_scripted, target, device="cpu") - nb.predict(again_unet, target, device="cpu"))
    assert diff.max() <= TORCHSCRIPT_ATOL, diff.max()  # measured 5.6e-5 (lucchi-pp on a toy stack)


def test_foreign_preprocessing_and_pixel_size_are_mapped(package, tmp_path):
    def edit(rdf):
        inp = rdf["inputs"][0]
        inp["data"] = {"type": "uint16"}
        inp["preprocessing"] = [{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}}]
        for ax in inp["axes"][2:] + rdf["outputs"][0]["axes"][2:]:
            ax.update(scale=0.008, unit="micrometer")
        del rdf["config"]["napari_bnadapt"]
        rdf["attachments"] = []

    model = nb.load_model(_repack(package, tmp_path / "foreign.zip", edit=edit), device="cpu")
    from napari_bnadapt.io.stack_view import Normalization

    norm = Normalization.from_meta(model.meta["normalization"])
    x = np.array([0.0, 1000.0, 65535.0], np.float32)
    np.testing.assert_allclose(norm.apply(x), 2.0 * x - 1.0, rtol=1e-5)
    assert (norm.low, norm.high) == (0.0, 65535.0)
    assert model.meta["pixel_size_nm"] == pytest.approx([8.0, 8.0])
    assert "adaptation" not in model.meta  # the card comes from our packages only


def test_preprocessing_steps_map_onto_the_normalisation():
    from napari_bnadapt.model.bioimageio_common import (
        affine_to_normalization,
        normalization_to_preprocessing,
        preprocessing_to_affine,
    )

    norm = {"mode": "fixed", "low": 10.0, "high": 4000.0, "mean": 0.3, "std": 0.2}
    gain, offset, notes = preprocessing_to_affine(normalization_to_preprocessing(norm))
    back = affine_to_normalization(gain, offset, 10.0, 4000.0)
    assert not notes and all(back[k] == pytest.approx(norm[k], rel=1e-12) for k in ("mean", "std"))
    steps = [{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": 1.0}},
             {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": [3.0], "std": [4.0]}}]
    assert preprocessing_to_affine(steps)[:2] == (0.5, (1.0 - 3.0) / 4.0)  # composed, one-channel lists
    gain, offset, notes = preprocessing_to_affine([{"id": "scale_range", "kwargs": {"max_percentile": 99.8}}])
    assert (gain, offset) == (1.0, 0.0) and "intensity_range='auto'" in notes[0]
    assert "zero_mean_unit_variance" in preprocessing_to_affine([{"id": "zero_mean_unit_variance"}])[2][0]
    with pytest.raises(ModelFileError, match="no equivalent"):
        preprocessing_to_affine([{"id": "custom", "kwargs": {}}])
    with pytest.raises(ModelFileError, match="one value per channel"):
        preprocessing_to_affine([{"id": "scale_linear", "kwargs": {"gain": [1.0, 2.0], "axis": "channel"}}])


# ------------------------------------------------------------------ refusals
def test_malformed_zip(package, tmp_path):
    bad = tmp_path / "cut.zip"
    bad.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="not a valid zip"):
        nb.load_model(bad)


def test_zip_without_description_is_a_foreign_format(tmp_path):
    foreign = tmp_path / "weights.zip"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("model.pth", b"not a bioimage.io package")
    with pytest.raises(ModelFileError, match="no rdf.yaml or bioimageio.yaml"):
        nb.load_model(foreign)


def test_missing_weights_file(package, tmp_path):
    pkg = _repack(package, tmp_path / "missing.zip", drop={"state_dict.pt"})
    with pytest.raises(ModelFileError, match="'state_dict.pt' named in the description is missing"):
        nb.load_model(pkg)


def test_altered_weights_fail_the_sha256(package, tmp_path):
    with zipfile.ZipFile(package) as z:
        data = bytearray(z.read("state_dict.pt"))
    data[-100] ^= 0xFF
    pkg = _repack(package, tmp_path / "altered.zip", add={"state_dict.pt": bytes(data)})
    with pytest.raises(ModelFileError, match="does not match the sha256"):
        nb.load_model(pkg)


def test_weights_in_other_formats_only(package, tmp_path):
    def edit(rdf):
        rdf["weights"] = {"onnx": {"source": "model.onnx", "sha256": hashlib.sha256(b"onnx").hexdigest(),
                                   "opset_version": 17}}

    pkg = _repack(package, tmp_path / "onnx.zip", edit=edit, add={"model.onnx": b"onnx"},
                  drop={"state_dict.pt", "torchscript.pt"})
    with pytest.raises(ModelFileError, match="weights in onnx only"):
        nb.load_model(pkg)


def test_invalid_description(package, tmp_path):
    pkg = _repack(package, tmp_path / "invalid.zip", edit=lambda rdf: rdf.pop("inputs"))
    with pytest.raises(ModelFileError, match="not a valid bioimage.io model description"):
        nb.load_model(pkg)


def _evil_package(package: Path, dst: Path, marker: Path, *, keep_torchscript: bool, library: bool = False) -> Path:
    """Our package with the state dict's architecture replaced by a foreign source file that, if it were
    ever imported, would write ``marker``."""
    source = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n"
              "import torch\n\nclass EvilNet(torch.nn.Module):\n    pass\n").encode()

    def edit(rdf):
        weights = rdf["weights"]
        if library:
            weights["pytorch_state_dict"]["architecture"] = {"import_from": "os", "callable": "system",
                                                             "kwargs": {"command": f"touch {marker}"}}
        else:
            weights["pytorch_state_dict"]["architecture"] = {
                "source": "evil.py", "sha256": hashlib.sha256(source).hexdigest(), "callable": "EvilNet",
                "kwargs": {"depth": 4}}
        if not keep_torchscript:
            del weights["torchscript"]

    return _repack(package, dst, edit=edit, add={"evil.py": source})


@pytest.mark.parametrize("library", [False, True], ids=["source-file", "library-callable"])
def test_foreign_architecture_is_refused_and_never_run(package, tmp_path, library):
    marker = tmp_path / "executed.txt"
    pkg = _evil_package(package, tmp_path / "evil.zip", marker, keep_torchscript=False, library=library)
    with pytest.raises(ModelFileError) as err:
        nb.load_model(pkg)
    msg = str(err.value)
    assert "never runs Python code" in msg and "If you trust" in msg and "weights_only=True" in msg
    assert "EvilNet" in msg or "system" in msg
    assert not marker.exists()


def test_foreign_architecture_with_torchscript_uses_the_torchscript(package, tmp_path):
    marker = tmp_path / "executed.txt"
    pkg = _evil_package(package, tmp_path / "evil-ts.zip", marker, keep_torchscript=True)
    model = nb.load_model(pkg, device="cpu")
    assert model.meta["bioimageio"]["weights"] == "torchscript"
    assert not marker.exists()


# ------------------------------------------------------------------ the widget's save
def test_widget_saves_a_package_with_the_reliability_report(adapted, tmp_path, monkeypatch):
    import napari_bnadapt.gui.adapt_widget as widget
    from types import SimpleNamespace

    model, report = adapted
    said = []
    fake = SimpleNamespace(adapted_model=model, last_result=SimpleNamespace(model=model, reliability=report),
                           runner=SimpleNamespace(say=lambda msg, error=False: said.append((msg, error))))
    saved = widget.AdaptSegmentWidget.save_adapted_model(fake, tmp_path / "a.zip")
    assert saved == tmp_path / "a.zip" and not said[-1][1]
    assert "reliability.json" in zipfile.ZipFile(saved).namelist()
    assert widget.AdaptSegmentWidget.save_adapted_model(fake, tmp_path / "a.zip") is None  # never overwrites
    assert "already exists" in said[-1][0] and said[-1][1]

    # the dialog offers both formats; the chosen filter decides the suffix of a bare name
    from qtpy.QtWidgets import QFileDialog

    calls = []
    fake = SimpleNamespace(native=None, save_adapted_model=lambda path, overwrite, **kw: calls.append((path, overwrite)))
    for chosen, expected in [("bioimage.io package (*.zip)", ".zip"), ("napari-bnadapt model (*.safetensors)",
                                                                       ".safetensors")]:
        def dialog(parent, title, name, filters, _chosen=chosen):
            assert "*.safetensors" in filters and "*.zip" in filters
            return str(tmp_path / "bare"), _chosen

        monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog)
        widget.AdaptSegmentWidget._save_dialog(fake)
        assert calls[-1] == (str(tmp_path / "bare") + expected, False)
