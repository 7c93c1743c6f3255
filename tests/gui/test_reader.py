"""npe2 reader: accepts what read_stack reads, declines everything else, sets the scale."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import yaml
import zarr

from napari_bnadapt.gui.reader import get_reader, layer_data, read_layers
from napari_bnadapt.io.read import read_stack
from napari_bnadapt.io.stack_info import StackInfo

VOXEL = (30.0, 6.0, 5.0)

# The contributions block of napari.yaml (kept here so the test checks exactly what is documented).
MANIFEST_CONTRIBUTIONS = """
contributions:
  commands:
    - id: {name}.read_stack
      title: Open an EM stack (TIFF, MRC, HDF5, zarr, folder of slices)
      python_name: napari_bnadapt.gui.reader:get_reader
  readers:
    - command: {name}.read_stack
      accepts_directories: true
      filename_patterns:
        - "*.tif"
        - "*.tiff"
        - "*.btf"
        - "*.mrc"
        - "*.rec"
        - "*.map"
        - "*.mrcs"
        - "*.st"
        - "*.ali"
        - "*.h5"
        - "*.hdf5"
        - "*.hdf"
        - "*.zarr"
        - "*.png"
"""


def volume(dtype=np.uint16, shape=(12, 20, 24)) -> np.ndarray:
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 200, size=shape).astype(dtype)
    vol[:, 0, 0] = np.arange(shape[0])
    return vol


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """One small stack per format, all with voxel size (30, 6, 5) nm where the format can say so."""
    vol = volume()
    out: dict[str, Path] = {}
    z, y, x = (v / 1000 for v in VOXEL)
    out["imagej"] = tmp_path / "stack.tif"
    tifffile.imwrite(out["imagej"], vol, imagej=True, resolution=(1 / x, 1 / y), metadata={"spacing": z, "unit": "um", "axes": "ZYX"})
    out["ome"] = tmp_path / "stack.ome.tiff"
    tifffile.imwrite(out["ome"], vol, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 5, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 6, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 30, "PhysicalSizeZUnit": "nm"})
    out["folder"] = tmp_path / "slices"
    out["folder"].mkdir()
    for i, sl in enumerate(vol):
        tifffile.imwrite(out["folder"] / f"{i + 1}.tif", sl, resolution=(1e7 / 5, 1e7 / 6), resolutionunit="CENTIMETER")
    out["mrc"] = tmp_path / "stack.mrc"
    with mrcfile.new(out["mrc"]) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = (50, 60, 300)
    out["h5"] = tmp_path / "stack.h5"
    with h5py.File(out["h5"], "w") as f:
        f.create_dataset("raw", data=vol).attrs["resolution"] = list(VOXEL)
    out["h5two"] = tmp_path / "two.hdf5"
    with h5py.File(out["h5two"], "w") as f:
        f.create_dataset("raw", data=vol).attrs["resolution"] = list(VOXEL)
        f.create_dataset("labels", data=(vol > 100).astype(np.uint8))
    out["zarr"] = tmp_path / "stack.ome.zarr"
    g = zarr.open_group(str(out["zarr"]), mode="w", zarr_format=2)
    g.create_array("0", shape=vol.shape, dtype=vol.dtype)[:] = vol
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(VOXEL)}]}],
    }]
    return out


def test_reader_accepts_every_format(files):
    for kind, path in files.items():
        assert callable(get_reader(str(path))), kind
        assert callable(get_reader(path)), kind  # Path objects too


def test_reader_layers_have_scale_and_metadata(files):
    vol = volume()
    for kind, path in files.items():
        if kind == "h5two":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layers = get_reader(str(path))(str(path))
        assert len(layers) == 1, kind
        data, kw, layer_type = layers[0]
        assert layer_type == "image"
        np.testing.assert_array_equal(np.asarray(data[...]), vol, err_msg=kind)
        expected = (1.0, 6.0, 5.0) if kind == "folder" else VOXEL
        assert kw["scale"] == pytest.approx(expected), kind
        assert kw["axis_labels"] == ("z", "y", "x")
        assert kw["units"] == (("pixel",) if kind == "folder" else ("nm",)) + ("nm", "nm")
        md = kw["metadata"]
        assert isinstance(md["stack_info"], StackInfo)
        assert md["source_format"] == md["stack_info"].source_format
        assert md["path"] == str(path)
        assert kw["name"] in ("stack", "slices", "stack [raw]", "stack [0]"), kw["name"]


def recorded(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [str(w.message) for w in caught]


def test_notes_become_warnings(files):
    _, msgs = recorded(read_layers, str(files["folder"]))
    assert any("slice thickness" in m for m in msgs)
    assert any("zero-padded" in m for m in msgs)


def test_several_datasets_give_several_layers(files):
    layers, msgs = recorded(read_layers, str(files["h5two"]))
    assert any("2 image volumes" in m for m in msgs)
    names = sorted(kw["name"] for _, kw, _ in layers)
    assert names == ["two [labels]", "two [raw]"]


def test_reader_declines(tmp_path, files):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "vol.xyz").write_bytes(b"\x00" * 2048)
    (tmp_path / "junk.tif").write_bytes(os.urandom(2048))
    (tmp_path / "junk.h5").write_bytes(os.urandom(2048))
    (tmp_path / "zero.tif").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a")
    for p in ("notes.txt", "vol.xyz", "junk.tif", "junk.h5", "zero.tif", "empty", "texts", "missing.tif"):
        assert get_reader(str(tmp_path / p)) is None, p
    assert get_reader([str(files["imagej"]), str(tmp_path / "vol.xyz")]) is None
    assert get_reader([]) is None
    assert get_reader(12345) is None  # nonsense input: still no exception


def test_reader_accepts_several_paths(files):
    paths = [str(files["imagej"]), str(files["ome"])]
    reader = get_reader(paths)
    assert callable(reader)
    assert len(reader(paths)) == 2


def test_rgb_layer(tmp_path):
    from PIL import Image

    (tmp_path / "rgb").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 9, 3), i * 10, np.uint8)).save(tmp_path / "rgb" / f"{i}.png")
    arr, info = read_stack(tmp_path / "rgb")
    data, kw, _ = layer_data(arr, info)
    assert kw["rgb"] is True and len(kw["scale"]) == 3 and kw["axis_labels"] == ("z", "y", "x")


def test_layers_build_napari_images(files):
    """Each layer tuple is accepted by napari's Image layer (no window needed)."""
    import napari

    assert set(files) == {"imagej", "ome", "folder", "mrc", "h5", "h5two", "zarr"}  # every format is tried
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, path in files.items():
            for data, kw, layer_type in read_layers(str(path)):
                layer = napari.layers.Image(data, **kw)
                assert tuple(layer.scale) == pytest.approx(kw["scale"]), kind
                assert layer.metadata["stack_info"].shape == tuple(data.shape)


def test_manifest_snippet_is_valid():
    import npe2

    body = {"name": "napari-bnadapt", "display_name": "BN adapt"}
    body.update(yaml.safe_load(MANIFEST_CONTRIBUTIONS.format(name="napari-bnadapt")))
    mf = npe2.PluginManifest(**body)
    reader = mf.contributions.readers[0]
    assert reader.accepts_directories
    from napari_bnadapt.gui.reader import READER_SUFFIXES

    assert sorted(p[1:] for p in reader.filename_patterns) == sorted(READER_SUFFIXES)
    cmd = mf.contributions.commands[0]
    assert cmd.python_name == "napari_bnadapt.gui.reader:get_reader"


def test_packaged_manifest_declares_the_reader():
    """The packaged napari.yaml routes files and folders to this reader."""
    path = Path(__file__).parents[2] / "src" / "napari_bnadapt" / "napari.yaml"
    assert path.is_file(), "the packaged manifest src/napari_bnadapt/napari.yaml is missing"
    mf = yaml.safe_load(path.read_text())
    contrib = mf.get("contributions") or {}
    readers = contrib.get("readers") or []
    assert readers, "napari.yaml declares no reader"
    cmds = {c["id"]: c for c in contrib.get("commands", [])}
    ours = [r for r in readers if cmds.get(r["command"], {}).get("python_name") == "napari_bnadapt.gui.reader:get_reader"]
    assert ours, "napari.yaml declares no reader pointing at napari_bnadapt.gui.reader:get_reader"
    assert ours[0].get("accepts_directories") is True
    for pat in ("*.tif", "*.tiff", "*.mrc", "*.rec", "*.map", "*.h5", "*.hdf5", "*.zarr"):
        assert pat in ours[0]["filename_patterns"], pat


@pytest.mark.gui
def test_viewer_open_sets_scale(files, monkeypatch):
    """File > Open / drag-and-drop route: viewer.open(path, plugin=...) through npe2 and the INSTALLED manifest.

    Runs under xvfb in CI (README); no fallback to a test-only manifest: the packaged one must work.
    """
    import napari
    import npe2

    name = "napari-bnadapt"
    viewer = napari.Viewer(show=False)
    pm = npe2.PluginManager.instance()
    assert pm.get_command(f"{name}.read_stack").python_name == "napari_bnadapt.gui.reader:get_reader"
    try:
        for kind in ("imagej", "folder"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layers = viewer.open(str(files[kind]), plugin=name)
            assert len(layers) == 1
            expected = (1.0, 6.0, 5.0) if kind == "folder" else VOXEL
            assert tuple(layers[0].scale) == pytest.approx(expected)
            assert layers[0].data.shape == (12, 20, 24)
    finally:
        viewer.close()
