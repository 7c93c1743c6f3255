"""read_stack: the same small volume written in every format reads back identical.

Every writer below stores a (12, 20, 24) volume whose slices are all different,
with voxel size z=30 nm, y=6 nm, x=5 nm (anisotropic so that a swapped axis
shows), and slice folders use unpadded names 1.tif ... 12.tif, where text order
(1, 10, 11, 12, 2, ...) differs from the true order.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.crop import crop_and_downsample
from napari_bnadapt.io.detect import detect_format
from napari_bnadapt.io.lazy_stack import LazyStack, natural_sort_key
from napari_bnadapt.io.read import read_stack
from napari_bnadapt.io.stack_info import AmbiguousDatasetError, StackInfo
from napari_bnadapt.io.units import unit_to_nm

VOXEL = (30.0, 6.0, 5.0)  # z, y, x in nm
SHAPE = (12, 20, 24)
DTYPES = [np.uint8, np.uint16, np.float32]


def make_volume(dtype=np.uint16, shape=SHAPE, seed=0) -> np.ndarray:
    """A volume whose every slice differs (slice index encoded in the values)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        vol = rng.normal(size=shape).astype(dtype) * 1000
        vol += np.arange(shape[0], dtype=dtype)[:, None, None] * 1e4
        return vol
    hi = np.iinfo(dtype).max
    vol = rng.integers(0, hi, size=shape, endpoint=True).astype(dtype)
    vol[:, 0, 0] = np.arange(shape[0]) * (hi // shape[0])  # a marker per slice
    return vol


def assert_voxel(info: StackInfo, expected) -> None:
    assert info.voxel_size_nm is not None, info
    got = [np.nan if v is None else v for v in info.voxel_size_nm]
    exp = [np.nan if v is None else v for v in expected]
    np.testing.assert_allclose(got, exp, rtol=1e-5)


def assert_same(arr, vol) -> None:
    got = np.asarray(arr)
    assert got.shape == vol.shape
    assert got.dtype == vol.dtype, (got.dtype, vol.dtype)
    np.testing.assert_array_equal(got, vol)


# ---------------------------------------------------------------- writers


def write_imagej(path, vol, voxel=VOXEL):
    z, y, x = (v / 1000 for v in voxel)  # µm
    tifffile.imwrite(
        path, vol, imagej=True, resolution=(1 / x, 1 / y),
        metadata={"spacing": z, "unit": "um", "axes": "ZYX"},
    )


def write_ome(path, vol, voxel=VOXEL, **kw):
    z, y, x = voxel
    tifffile.imwrite(
        path, vol, ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": x, "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": y / 1000, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": z * 10, "PhysicalSizeZUnit": "Å",
        },
        **kw,
    )


def write_slices_tiff(folder: Path, vol, voxel=VOXEL, names=None):
    folder.mkdir(exist_ok=True)
    names = names or [f"{i + 1}.tif" for i in range(len(vol))]
    _, y, x = voxel
    for name, sl in zip(names, vol):
        # pixels per centimetre
        tifffile.imwrite(folder / name, sl, resolution=(1e7 / x, 1e7 / y), resolutionunit="CENTIMETER")
    return names


def write_slices_png(folder: Path, vol, voxel=VOXEL):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    _, y, x = voxel
    for i, sl in enumerate(vol):
        Image.fromarray(sl).save(folder / f"slice_{i + 1}.png", dpi=(0.0254 / (x * 1e-9), 0.0254 / (y * 1e-9)))


def write_mrc(path, vol, voxel=VOXEL):
    import mrcfile

    z, y, x = voxel
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = (x * 10, y * 10, z * 10)  # Å, x y z order


def write_h5(path, datasets: dict, attrs: dict | None = None):
    import h5py

    with h5py.File(path, "w") as f:
        for name, vol in datasets.items():
            d = f.create_dataset(name, data=vol, chunks=(1, *vol.shape[1:]))
            for k, v in (attrs or {}).items():
                d.attrs[k] = v


def write_ome_zarr(path, vol, voxel=VOXEL, version="0.4"):
    import zarr

    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    a0 = g.create_array("s0", shape=vol.shape, dtype=vol.dtype, chunks=(1, *vol.shape[1:]))
    a0[:] = vol
    a1 = g.create_array("s1", shape=(vol.shape[0], vol.shape[1] // 2, vol.shape[2] // 2), dtype=vol.dtype)
    a1[:] = vol[:, ::2, ::2]
    z, y, x = voxel
    ms = {
        "axes": [
            {"name": "z", "type": "space", "unit": "nanometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "angstrom"},
        ],
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [z, y / 1000, x * 10]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [z, 2 * y / 1000, 2 * x * 10]}]},
        ],
    }
    if version == "0.4":
        ms["version"] = "0.4"
        g.attrs["multiscales"] = [ms]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}


# ---------------------------------------------------------------- every format, every dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_imagej_tiff(tmp_path, dtype):
    vol = make_volume(dtype)
    write_imagej(tmp_path / "v.tif", vol)
    arr, info = read_stack(tmp_path / "v.tif")
    assert isinstance(arr, np.memmap), "an uncompressed TIFF must be memory-mapped"
    assert_same(arr, vol)
    assert info.source_format == "imagej-tiff"
    assert info.axes == "ZYX" and info.shape == SHAPE and info.dtype == vol.dtype
    assert_voxel(info, VOXEL)
    assert info.scale == pytest.approx(VOXEL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ome_tiff_units(tmp_path, dtype):
    vol = make_volume(dtype)
    write_ome(tmp_path / "v.ome.tif", vol)
    arr, info = read_stack(tmp_path / "v.ome.tif")
    assert_same(arr, vol)
    assert info.source_format == "ome-tiff"
    assert_voxel(info, VOXEL)  # nm, µm and Å all converted


def test_ome_bigtiff_compressed(tmp_path):
    vol = make_volume(np.uint16)
    write_ome(tmp_path / "v.ome.tif", vol, bigtiff=True, compression="zlib")
    arr, info = read_stack(tmp_path / "v.ome.tif")
    assert isinstance(arr, LazyStack)
    assert_same(arr, vol)
    assert_voxel(info, VOXEL)
    assert any("BigTIFF" in n for n in info.notes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bigtiff_resolution_tags(tmp_path, dtype):
    vol = make_volume(dtype)
    _, y, x = VOXEL
    tifffile.imwrite(tmp_path / "v.tif", vol, bigtiff=True, resolution=(1e7 / x, 1e7 / y), resolutionunit="CENTIMETER")
    arr, info = read_stack(tmp_path / "v.tif")
    assert isinstance(arr, np.memmap)
    assert_same(arr, vol)
    assert info.source_format == "bigtiff"
    assert info.axes == "ZYX"
    assert_voxel(info, (None, y, x))  # plain TIFF tags know nothing of Z
    assert info.scale == pytest.approx((1.0, y, x))
    assert any("slice thickness" in n for n in info.notes)


def test_plain_multipage_tiff_without_metadata(tmp_path):
    vol = make_volume(np.uint8)
    tifffile.imwrite(tmp_path / "v.tiff", vol)  # tifffile writes resolution 1/1, unit NONE
    arr, info = read_stack(tmp_path / "v.tiff")
    assert_same(arr, vol)
    assert info.voxel_size_nm is None
    assert info.scale == (1.0, 1.0, 1.0)


def test_72dpi_default_is_not_a_pixel_size(tmp_path):
    vol = make_volume(np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", vol, resolution=(72, 72), resolutionunit="INCH")
    _, info = read_stack(tmp_path / "v.tif")
    assert info.voxel_size_nm is None
    assert any("72 dpi" in n for n in info.notes)


def test_compressed_tiff_is_lazy_per_page(tmp_path):
    vol = make_volume(np.uint16)
    write_imagej(tmp_path / "v.tif", vol)
    tifffile.imwrite(tmp_path / "c.tif", vol, compression="zlib")
    arr, info = read_stack(tmp_path / "c.tif")
    assert isinstance(arr, LazyStack) and info.storage == "lazy-pages"
    np.testing.assert_array_equal(arr[3], vol[3])
    np.testing.assert_array_equal(arr[2:9:3, 5:, ::2], vol[2:9:3, 5:, ::2])
    assert_same(arr, vol)


def test_compressed_tiled_2d_tiff(tmp_path):
    img = make_volume(np.uint16, shape=(1, 64, 80))[0]
    tifffile.imwrite(tmp_path / "t.tif", img, compression="zlib", tile=(32, 32))
    arr, info = read_stack(tmp_path / "t.tif")
    assert info.axes == "YX" and info.storage == "zarr"
    assert_same(arr[...], img)


def test_lazy_false_gives_numpy(tmp_path):
    vol = make_volume(np.float32)
    write_imagej(tmp_path / "v.tif", vol)
    arr, info = read_stack(tmp_path / "v.tif", lazy=False)
    assert type(arr) is np.ndarray and info.storage == "in-memory"
    assert_same(arr, vol)


def test_big_endian_tiff_reads_native(tmp_path):
    vol = make_volume(np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", vol, byteorder=">")
    arr, info = read_stack(tmp_path / "be.tif")
    assert np.dtype(arr.dtype).isnative and info.dtype == np.dtype(np.uint16)
    np.testing.assert_array_equal(np.asarray(arr), vol)


# ---------------------------------------------------------------- folders of slices


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_slice_folder_natural_order(tmp_path, dtype):
    vol = make_volume(dtype)
    write_slices_tiff(tmp_path / "slices", vol)
    (tmp_path / "slices" / "notes.txt").write_text("acquired on the Helios")
    arr, info = read_stack(tmp_path / "slices")
    assert isinstance(arr, LazyStack)
    assert info.source_format == "tiff-slices" and info.axes == "ZYX"
    assert info.files[:4] == ("1.tif", "2.tif", "3.tif", "4.tif") and info.files[-1] == "12.tif"
    assert_same(arr, vol)  # text order would put 10, 11, 12 after 1
    assert_voxel(info, (None, VOXEL[1], VOXEL[2]))
    assert any("zero-padded" in n for n in info.notes)
    assert any("notes.txt" in n for n in info.notes)


def test_slice_folder_reads_no_pixels_to_open(tmp_path, monkeypatch):
    import napari_bnadapt.io.slices as sio

    vol = make_volume(np.uint16)
    write_slices_tiff(tmp_path / "s", vol)
    decoded: list[str] = []
    real = sio._read_tiff_slice
    monkeypatch.setattr(sio, "_read_tiff_slice", lambda p: decoded.append(p.name) or real(p))
    arr, _ = read_stack(tmp_path / "s")
    assert decoded == []
    np.testing.assert_array_equal(arr[10], vol[10])
    assert decoded == ["11.tif"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_slice_folder(tmp_path, dtype):
    vol = make_volume(dtype)
    write_slices_png(tmp_path / "png", vol)
    arr, info = read_stack(tmp_path / "png")
    assert info.source_format == "png-slices"
    assert info.files[-1] == "slice_12.png"
    assert_same(arr, vol)
    assert_voxel(info, (None, VOXEL[1], VOXEL[2]))  # from the pHYs chunk


def test_rgb_png_slices(tmp_path):
    from PIL import Image

    rgb = make_volume(np.uint8, shape=(3, 20, 24, 3))
    (tmp_path / "rgb").mkdir()
    for i, sl in enumerate(rgb):
        Image.fromarray(sl).save(tmp_path / "rgb" / f"{i}.png")
    arr, info = read_stack(tmp_path / "rgb")
    assert info.axes == "ZYXS"
    assert_same(arr, rgb)


def test_single_png(tmp_path):
    from PIL import Image

    img = make_volume(np.uint16)[0]
    Image.fromarray(img).save(tmp_path / "one.png")
    arr, info = read_stack(tmp_path / "one.png")
    assert info.axes == "YX" and info.source_format == "png"
    assert_same(arr, img)


def test_gaps_in_numbering_are_reported(tmp_path):
    vol = make_volume(np.uint8, shape=(10, 20, 24))
    names = [f"img_{i}.tif" for i in (1, 2, 3, 5, 6, 8, 9, 10, 11, 12)]
    write_slices_tiff(tmp_path / "gaps", vol, names=names)
    arr, info = read_stack(tmp_path / "gaps")
    assert_same(arr, vol)
    gap_notes = [n for n in info.notes if "missing" in n]
    assert gap_notes and "4, 7" in gap_notes[0], info.notes


def test_padded_names_need_no_note(tmp_path):
    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "p", vol, names=[f"z{i:04d}.tif" for i in range(12)])
    arr, info = read_stack(tmp_path / "p")
    assert_same(arr, vol)
    assert not any("zero-padded" in n or "missing" in n for n in info.notes)


def test_natural_sort_key():
    names = ["10.tif", "2.tif", "1.tif", "img_B.tif", "img_a.tif", "1_10.tif", "1_9.tif"]
    assert sorted(names, key=natural_sort_key) == [
        "1.tif", "1_9.tif", "1_10.tif", "2.tif", "10.tif", "img_a.tif", "img_B.tif",
    ]


# ---------------------------------------------------------------- MRC, HDF5, zarr


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_mrc(tmp_path, dtype):
    vol = make_volume(dtype) if dtype != np.int16 else make_volume(np.uint16).astype(np.int16)
    for ext in (".mrc", ".rec"):
        write_mrc(tmp_path / f"v{ext}", vol)
        arr, info = read_stack(tmp_path / f"v{ext}")
        assert isinstance(arr, np.memmap)
        assert_same(arr, vol)
        assert info.source_format == "mrc" and info.axes == "ZYX"
        assert_voxel(info, VOXEL)  # header is in Å, x y z order


def test_mrc_uint8_is_widened_by_mrcfile_but_values_kept(tmp_path):
    vol = make_volume(np.uint8)
    write_mrc(tmp_path / "v.mrc", vol)  # mrcfile stores uint8 as mode 6 (uint16)
    arr, _ = read_stack(tmp_path / "v.mrc")
    np.testing.assert_array_equal(np.asarray(arr), vol)


def test_mrc_imod_unsigned_bytes(tmp_path):
    vol = make_volume(np.uint8)
    write_mrc(tmp_path / "v.mrc", vol.view(np.int8))  # mode 0
    raw = bytearray((tmp_path / "v.mrc").read_bytes())
    raw[152:160] = struct.pack("<ii", 1146047817, 0)  # IMOD stamp, flags: bytes unsigned
    (tmp_path / "imod.mrc").write_bytes(bytes(raw))
    arr, info = read_stack(tmp_path / "imod.mrc")
    assert_same(arr, vol)
    arr, info = read_stack(tmp_path / "v.mrc")  # no IMOD stamp: MRC2014 says signed
    assert info.dtype == np.int8


def test_mrc_without_voxel_size(tmp_path):
    import mrcfile

    vol = make_volume(np.float32)
    with mrcfile.new(tmp_path / "v.map") as mrc:
        mrc.set_data(vol)
    arr, info = read_stack(tmp_path / "v.map")
    assert_same(arr, vol)
    assert info.voxel_size_nm is None and info.scale == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hdf5_single_dataset(tmp_path, dtype):
    vol = make_volume(dtype)
    write_h5(tmp_path / "v.h5", {"volumes/raw": vol}, {"element_size_um": [v / 1000 for v in VOXEL]})
    arr, info = read_stack(tmp_path / "v.h5")
    assert_same(arr, vol)
    assert info.source_format == "hdf5" and info.dataset == "volumes/raw"
    assert_voxel(info, VOXEL)


def test_hdf5_cremi_resolution_and_ambiguity(tmp_path):
    vol = make_volume(np.uint8)
    labels = (vol > 128).astype(np.uint64)
    write_h5(tmp_path / "c.hdf5", {"volumes/raw": vol, "volumes/labels/clefts": labels}, {"resolution": list(VOXEL)})
    with pytest.raises(AmbiguousDatasetError) as exc:
        read_stack(tmp_path / "c.hdf5")
    names = [c[0] for c in exc.value.choices]
    assert names == ["volumes/labels/clefts", "volumes/raw"] or sorted(names) == sorted(["volumes/raw", "volumes/labels/clefts"])
    assert "volumes/raw" in str(exc.value) and "volumes/labels/clefts" in str(exc.value)
    arr, info = read_stack(tmp_path / "c.hdf5", dataset="volumes/raw")
    assert_same(arr, vol)
    assert_voxel(info, VOXEL)
    arr, _ = read_stack(tmp_path / "c.hdf5", dataset="/volumes/labels/clefts")
    assert_same(arr, labels)
    with pytest.raises(BNAdaptError, match="no dataset 'nope'"):
        read_stack(tmp_path / "c.hdf5", dataset="nope")


def test_hdf5_voxel_size_without_unit_is_unknown(tmp_path):
    vol = make_volume(np.uint8)
    write_h5(tmp_path / "v.h5", {"raw": vol}, {"voxel_size": [30, 6, 5]})
    _, info = read_stack(tmp_path / "v.h5")
    assert info.voxel_size_nm is None
    assert any("no unit" in n for n in info.notes)
    write_h5(tmp_path / "w.h5", {"raw": vol}, {"voxel_size": [0.03, 0.006, 0.005], "unit": "micrometer"})
    _, info = read_stack(tmp_path / "w.h5")
    assert_voxel(info, VOXEL)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr(tmp_path, version):
    vol = make_volume(np.uint16)
    write_ome_zarr(tmp_path / "v.ome.zarr", vol, version=version)
    arr, info = read_stack(tmp_path / "v.ome.zarr")
    assert info.source_format == "ome-zarr" and info.dataset == "s0" and info.axes == "ZYX"
    assert_same(arr[...], vol)
    assert_voxel(info, VOXEL)  # nanometer, micrometer and angstrom axes
    assert any("resolution levels" in n for n in info.notes)


def test_plain_zarr_array_and_group(tmp_path):
    import zarr

    vol = make_volume(np.float32)
    a = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=vol.shape, dtype=vol.dtype, chunks=(2, 20, 24))
    a[:] = vol
    a.attrs["resolution"] = list(VOXEL)
    arr, info = read_stack(tmp_path / "a.zarr")
    assert info.source_format == "zarr"
    assert_same(arr[...], vol)
    assert_voxel(info, VOXEL)

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=vol.shape, dtype=vol.dtype)[:] = vol
    g.create_array("mask", shape=vol.shape, dtype=np.uint8)[:] = 1
    with pytest.raises(AmbiguousDatasetError) as exc:
        read_stack(tmp_path / "g.zarr")
    assert sorted(c[0] for c in exc.value.choices) == ["mask", "raw"]
    arr, info = read_stack(tmp_path / "g.zarr", dataset="raw")
    assert_same(arr[...], vol)
    assert info.dataset == "raw"


def test_voxel_size_override(tmp_path):
    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "s", vol)
    _, info = read_stack(tmp_path / "s", voxel_size_nm=(40, 6, 5))
    assert_voxel(info, (40, 6, 5))
    _, info = read_stack(tmp_path / "s", voxel_size_nm=8)
    assert_voxel(info, (8, 8, 8))
    with pytest.raises(BNAdaptError, match="one number or as 3 numbers"):
        read_stack(tmp_path / "s", voxel_size_nm=(1, 2))
    with pytest.raises(BNAdaptError, match="positive"):
        read_stack(tmp_path / "s", voxel_size_nm=-1)


def test_unit_conversion_table():
    assert unit_to_nm("nm") == 1
    for u in ("um", "µm", "μm", "micron", "micrometer", "\\u00B5m", "MICRON"):
        assert unit_to_nm(u) == 1000, u
    for u in ("Å", "Å", "A", "angstrom"):
        assert unit_to_nm(u) == pytest.approx(0.1), u
    assert unit_to_nm("cm") == 1e7 and unit_to_nm("inch") == 2.54e7 and unit_to_nm("mm") == 1e6
    for u in ("pixel", "", None, "furlong"):
        assert unit_to_nm(u) is None


# ---------------------------------------------------------------- crop and downsample


def _sources(tmp_path):
    vol = make_volume(np.uint16)
    write_imagej(tmp_path / "v.tif", vol)
    write_slices_tiff(tmp_path / "s", vol)
    tifffile.imwrite(tmp_path / "c.tif", vol, compression="zlib", resolution=(1e7 / 5, 1e7 / 6), resolutionunit="CENTIMETER")
    write_h5(tmp_path / "v.h5", {"raw": vol}, {"resolution": list(VOXEL)})
    write_ome_zarr(tmp_path / "v.zarr", vol)
    return vol, [tmp_path / "v.tif", tmp_path / "s", tmp_path / "c.tif", tmp_path / "v.h5", tmp_path / "v.zarr"]


def test_crop_and_downsample_every_array_type(tmp_path):
    vol, paths = _sources(tmp_path)
    for p in paths:
        arr, info = read_stack(p)
        sub, sinfo = crop_and_downsample(arr, z=(2, 11), y=(3, 19), x=slice(1, None), factor=2, info=info)
        expected = vol[2:11:2, 3:19:2, 1::2]
        assert tuple(sub.shape) == expected.shape == sinfo.shape, p
        np.testing.assert_array_equal(np.asarray(sub), expected, err_msg=str(p))
        assert sinfo.voxel_size_nm[1:] == pytest.approx((12.0, 10.0)), p
        assert sinfo.region == (slice(2, 11, 2), slice(3, 18, 2), slice(1, 24, 2))
        # crop of a crop composes in file coordinates
        sub2, s2 = crop_and_downsample(sub, z=(1, 3), factor=(1, 1, 2), info=sinfo)
        np.testing.assert_array_equal(np.asarray(sub2), expected[1:3, :, ::2])
        np.testing.assert_array_equal(np.asarray(sub2), vol[s2.region])
        assert s2.region[0] == slice(4, 7, 2) and s2.region[2] == slice(1, 22, 4)


def test_crop_is_lazy(tmp_path, monkeypatch):
    import napari_bnadapt.io.slices as sio

    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "s", vol)
    arr, info = read_stack(tmp_path / "s")
    decoded: list[str] = []
    real = sio._read_tiff_slice
    monkeypatch.setattr(sio, "_read_tiff_slice", lambda p: decoded.append(p.name) or real(p))
    sub = crop_and_downsample(arr, z=(0, 12), factor=4)
    assert isinstance(sub, LazyStack) and decoded == []
    np.testing.assert_array_equal(np.asarray(sub), vol[::4, ::4, ::4])
    assert decoded == ["1.tif", "5.tif", "9.tif"]


def test_crop_errors():
    vol = np.zeros((4, 5, 6))
    with pytest.raises(BNAdaptError, match="selects nothing"):
        crop_and_downsample(vol, z=(10, 20))
    with pytest.raises(BNAdaptError, match="factor"):
        crop_and_downsample(vol, factor=0)
    with pytest.raises(BNAdaptError, match="step must be positive"):
        crop_and_downsample(vol, x=slice(None, None, -1))
    with pytest.raises(BNAdaptError, match="no z axis"):
        crop_and_downsample(vol[0], z=(0, 1))


# ---------------------------------------------------------------- LazyStack semantics


def test_lazystack_indexing_matches_numpy():
    ref = np.arange(7 * 5 * 4, dtype=np.int32).reshape(7, 5, 4)
    st = LazyStack(lambda i: ref[i].copy(), 7, (5, 4), ref.dtype)
    keys = [
        3, -1, slice(None), slice(1, 6, 2), slice(None, None, -2), (2, 1), (2, 1, 3), (slice(2, 5), 0),
        Ellipsis, (Ellipsis, 1), (1, Ellipsis), [4, 0, 4], np.array([True, False] * 3 + [True]),
        (slice(0, 3), [0, 2]), ([1, 2], [0, 1]), (slice(0, 0),), (np.int64(2), slice(None, None, 2)),
        (None, 1),
    ]
    for k in keys:
        np.testing.assert_array_equal(st[k], ref[k], err_msg=repr(k))
    np.testing.assert_array_equal(np.asarray(st), ref)
    with pytest.raises(IndexError):
        st[7]
    with pytest.raises(IndexError):
        st[0, 0, 0, 0]
    view = st.lazy_slice((slice(1, 7, 2), slice(1, None), slice(None, None, 3)))
    np.testing.assert_array_equal(np.asarray(view), ref[1:7:2, 1:, ::3])
    np.testing.assert_array_equal(view[1:, 2], ref[1:7:2, 1:, ::3][1:, 2])


def test_lazystack_to_dask():
    ref = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    st = LazyStack(lambda i: ref[i], 3, (4, 5), ref.dtype)
    np.testing.assert_array_equal(st.to_dask()[1:, ::2].compute(), ref[1:, ::2])


# ---------------------------------------------------------------- bad input


def test_nonexistent_path_suggests_close_names(tmp_path):
    write_imagej(tmp_path / "stack_01.tif", make_volume(np.uint8))
    with pytest.raises(BNAdaptError, match="does not exist") as exc:
        read_stack(tmp_path / "stack_1.tif")
    assert "stack_01.tif" in str(exc.value)
    with pytest.raises(BNAdaptError, match="does not exist"):
        read_stack(tmp_path / "no" / "such" / "file.tif")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BNAdaptError, match="contains no image slices.*empty"):
        read_stack(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    write_mrc(tmp_path / "other" / "vol.mrc", make_volume(np.float32))
    with pytest.raises(BNAdaptError, match="choose that file instead"):
        read_stack(tmp_path / "other")


def test_mixed_slice_sizes(tmp_path):
    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "m", vol)
    tifffile.imwrite(tmp_path / "m" / "13.tif", np.zeros((30, 24), np.uint8))
    with pytest.raises(BNAdaptError, match="same size") as exc:
        read_stack(tmp_path / "m")
    msg = str(exc.value)
    assert "12 files are 20 × 24" in msg and "13.tif" in msg and "30 × 24" in msg


def test_mixed_slice_dtypes(tmp_path):
    vol = make_volume(np.uint16)
    write_slices_tiff(tmp_path / "m", vol)
    tifffile.imwrite(tmp_path / "m" / "5.tif", vol[4].astype(np.uint8))
    with pytest.raises(BNAdaptError, match="same bit depth") as exc:
        read_stack(tmp_path / "m")
    assert "5.tif" in str(exc.value) and "8-bit" in str(exc.value) and "16-bit" in str(exc.value)


def test_mixed_png_and_tiff(tmp_path):
    from PIL import Image

    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "m", vol)
    Image.fromarray(vol[0]).save(tmp_path / "m" / "label.png")
    with pytest.raises(BNAdaptError, match="both TIFF .12. and PNG .1."):
        read_stack(tmp_path / "m")


def test_duplicate_slice_numbers(tmp_path):
    vol = make_volume(np.uint8, shape=(3, 20, 24))
    write_slices_tiff(tmp_path / "d", vol, names=["1.tif", "01.tif", "2.tif"])
    with pytest.raises(BNAdaptError, match="same number 1"):
        read_stack(tmp_path / "d")


def test_multipage_file_in_slice_folder(tmp_path):
    vol = make_volume(np.uint8)
    write_slices_tiff(tmp_path / "s", vol)
    tifffile.imwrite(tmp_path / "s" / "13.tif", vol[:2])
    with pytest.raises(BNAdaptError, match="not one 2-D slice"):
        read_stack(tmp_path / "s")


def test_truncated_uncompressed_tiff(tmp_path):
    vol = make_volume(np.uint16)
    for name, writer in (("ij.tif", write_imagej), ("plain.tif", lambda p, v: tifffile.imwrite(p, v))):
        writer(tmp_path / name, vol)
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(raw[: len(raw) // 2])
        with pytest.raises(BNAdaptError, match="truncated|damaged|not completely|not a readable") as exc:
            read_stack(tmp_path / f"cut_{name}")
        assert "copy" in str(exc.value)


def test_truncated_compressed_tiff(tmp_path):
    vol = make_volume(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", vol, compression="zlib")
    raw = (tmp_path / "c.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(BNAdaptError, match="truncated|damaged|not a readable|Could not read"):
        read_stack(tmp_path / "cut.tif")


def test_corrupted_compressed_data(tmp_path):
    vol = make_volume(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", vol, compression="zlib")
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        off, n = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    raw = bytearray((tmp_path / "c.tif").read_bytes())
    raw[off : off + n] = b"\xff" * n  # same size, garbage zlib stream in page 1
    (tmp_path / "bad.tif").write_bytes(bytes(raw))
    for lazy in (True, False):
        with pytest.raises(BNAdaptError, match="cannot be decoded"):
            read_stack(tmp_path / "bad.tif", lazy=lazy)


def test_garbage_with_known_extensions(tmp_path):
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for ext, pattern in ((".tif", "not a readable TIFF"), (".mrc", "not a readable MRC"), (".h5", "not a readable HDF5")):
        (tmp_path / f"junk{ext}").write_bytes(junk)
        with pytest.raises(BNAdaptError, match=pattern):
            read_stack(tmp_path / f"junk{ext}")
        # MRC has no reliable magic: a .mrc name is taken at its word, anything else is declined
        assert detect_format(tmp_path / f"junk{ext}") == ("mrc" if ext == ".mrc" else None)


@pytest.mark.parametrize("kind", ["tif", "png"])
def test_truncated_slice_file_fails_at_open(tmp_path, kind):
    vol = make_volume(np.uint16)
    if kind == "tif":
        write_slices_tiff(tmp_path / "s", vol)
        victim = tmp_path / "s" / "7.tif"
    else:
        write_slices_png(tmp_path / "s", vol)
        victim = tmp_path / "s" / "slice_7.png"
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(BNAdaptError, match="truncated") as exc:
        read_stack(tmp_path / "s")
    assert victim.name in str(exc.value)


def test_truncated_mrc(tmp_path):
    write_mrc(tmp_path / "v.mrc", make_volume(np.float32))
    raw = (tmp_path / "v.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(BNAdaptError, match="truncated"):
        read_stack(tmp_path / "cut.mrc")


def test_empty_file(tmp_path):
    (tmp_path / "zero.tif").write_bytes(b"")
    with pytest.raises(BNAdaptError, match="empty .0 bytes"):
        read_stack(tmp_path / "zero.tif")


def test_unknown_extension(tmp_path):
    (tmp_path / "vol.xyz").write_bytes(b"hello world" * 100)
    with pytest.raises(BNAdaptError, match="not a file type napari-bnadapt can read") as exc:
        read_stack(tmp_path / "vol.xyz")
    assert "Fiji" in str(exc.value)
    assert detect_format(tmp_path / "vol.xyz") is None


def test_misnamed_tiff_is_sniffed(tmp_path):
    vol = make_volume(np.uint8)
    write_imagej(tmp_path / "vol.dat", vol)
    arr, info = read_stack(tmp_path / "vol.dat")
    assert_same(arr, vol)
    assert any("'.dat'" in n for n in info.notes)


def test_dataset_for_a_tiff_is_an_error(tmp_path):
    write_imagej(tmp_path / "v.tif", make_volume(np.uint8))
    with pytest.raises(BNAdaptError, match="only for HDF5"):
        read_stack(tmp_path / "v.tif", dataset="raw")


def test_errors_are_valueerrors_for_callers():
    assert issubclass(BNAdaptError, ValueError) and issubclass(AmbiguousDatasetError, BNAdaptError)


def test_detect_format(tmp_path):
    vol = make_volume(np.uint8)
    write_imagej(tmp_path / "v.tif", vol)
    write_slices_tiff(tmp_path / "s", vol)
    (tmp_path / "e").mkdir()
    assert detect_format(tmp_path / "v.tif") == "tiff"
    assert detect_format(tmp_path / "s") == "folder"
    assert detect_format(tmp_path / "e") is None
    assert detect_format(tmp_path / "missing.tif") is None


def test_core_module_imports_no_gui_or_optional_libs():
    code = (
        "import sys, napari_bnadapt.io.read, napari_bnadapt.gui.reader\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'torch', 'h5py', 'zarr', 'dask', 'mrcfile', 'PIL')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_public_api_from_package():
    """napari_bnadapt.read_stack is the issue's entry point (lazy export in __init__)."""
    import napari_bnadapt
    from napari_bnadapt.io import crop, read, stack_info

    assert napari_bnadapt.read_stack is read.read_stack
    assert napari_bnadapt.StackInfo is stack_info.StackInfo
    assert napari_bnadapt.AmbiguousDatasetError is stack_info.AmbiguousDatasetError
    assert napari_bnadapt.crop_and_downsample is crop.crop_and_downsample
    for name in ("read_stack", "StackInfo", "crop_and_downsample", "AmbiguousDatasetError"):
        assert name in napari_bnadapt.__all__
