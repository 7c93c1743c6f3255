import numpy as np
import pytest
import torch

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.stack_view import Normalization
from napari_bnadapt.progress import Progress
from napari_bnadapt.segmentation.engine import cpu_defaults
from napari_bnadapt.segmentation.tiling import tile_grid, tile_starts


def _direct(model, img):
    """Untiled reference: the whole (reflect-padded) slice through the network at once."""
    norm = Normalization.from_meta(model.meta["normalization"])
    h, w = img.shape
    ph, pw = -h % 16, -w % 16
    x = np.pad(norm.apply(img), ((0, ph), (0, pw)), mode="reflect")
    with torch.no_grad():
        p = torch.softmax(model.eval()(torch.from_numpy(x)[None, None]), 1)[0, 1].numpy()
    return p[:h, :w]


@pytest.fixture(scope="module")
def toy_image():
    from napari_bnadapt import synthetic

    return synthetic.generate(1, (200, 232), seed=5)[0][0]


def test_single_tile_equals_untiled(toy_model, toy_image):
    p = nb.predict(toy_model, toy_image, tile_size=256, device="cpu")
    assert p.shape == toy_image.shape and p.dtype == np.float32
    np.testing.assert_allclose(p, _direct(toy_model, toy_image), atol=1e-5)


def test_tiled_blends_without_seams(toy_model, toy_image):
    whole = _direct(toy_model, toy_image)
    tiled = nb.predict(toy_model, toy_image, tile_size=96, overlap=32, batch_size=3, device="cpu")
    # measured: mean difference 0.0005, 99.96 % of the pixels on the same side of 0.5
    assert np.abs(tiled - whole).mean() < 0.002
    assert ((tiled > 0.5) == (whole > 0.5)).mean() > 0.999


def test_tile_starts_cover_everything():
    for length, tile, ov in [(100, 32, 8), (32, 32, 8), (33, 32, 8), (1000, 512, 64)]:
        starts = tile_starts(length, tile, ov)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and starts[-1] + tile == max(length, tile)


@pytest.mark.parametrize("length, tile, ov, n", [(1024, 576, 64, 2), (1024, 512, 64, 3), (768, 576, 64, 2),
                                                 (100, 576, 64, 1), (4000, 1024, 64, 5), (577, 576, 64, 2)])
def test_tile_grid_is_balanced_and_covers_everything(length, tile, ov, n):
    side, starts = tile_grid(length, tile, ov)
    assert len(starts) == n and side % 16 == 0 and side <= tile
    if n == 1:
        assert starts == [0] and side >= length
        return
    assert starts[0] == 0 and starts[-1] + side == length  # inside the image, to its far edge
    assert all(a + side - b >= ov for a, b in zip(starts, starts[1:]))  # neighbours overlap enough
    if n > 1:  # the fewest tiles: one fewer could not cover the length with that overlap
        assert (n - 1) * tile - (n - 2) * ov < length


def test_cpu_defaults_keep_a_full_resolution_activation_within_32_mib():
    assert cpu_defaults(8) == cpu_defaults(16) == (576, 576 * 576)  # the bundled models
    side, pixels = cpu_defaults(64)  # the papers' width
    assert side == 352 and pixels * 64 * 4 <= 32 * 2**20
    assert cpu_defaults(4096)[0] == 256  # never below 256 px


def test_stack_2d_and_one_slice_shapes(toy_model, source_stack):
    images, truth = source_stack
    lab = nb.segment(toy_model, images[:5], device="cpu")
    assert lab.shape == (5, 64, 64) and lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    assert nb.iou(lab, truth[:5]) >= 0.97  # in domain (docs/models.md: 0.983; measured 0.981)
    one = nb.segment(toy_model, images[:1], device="cpu")
    assert one.shape == (1, 64, 64)
    np.testing.assert_array_equal(one[0], nb.segment(toy_model, images[0], device="cpu"))


def test_instances(toy_model, source_stack):
    """One label per connected object (3D connectivity in a stack) over exactly the semantic foreground."""
    from scipy import ndimage

    images = source_stack[0][:4]
    inst = nb.segment(toy_model, images, instances=True, device="cpu")
    sem = nb.segment(toy_model, images, device="cpu")
    assert inst.dtype == np.uint32 and inst.shape == sem.shape
    np.testing.assert_array_equal(inst > 0, sem > 0)
    ref, n = ndimage.label(sem)  # face connectivity in 3D
    assert n == 12  # measured: 16 objects in the 4 slices, 12 once connected through z
    assert sorted(np.unique(inst)) == list(range(n + 1))  # labels 1..n, no gaps
    # the same partition: every object of one labelling is exactly one object of the other
    pairs = set(zip(inst[sem > 0].tolist(), ref[sem > 0].tolist()))
    assert len(pairs) == n


def test_memmap_input(tmp_path, toy_model, source_stack):
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, source_stack[0][:6])
    mm = tifffile.memmap(path)
    np.testing.assert_array_equal(nb.segment(toy_model, mm, device="cpu"), nb.segment(toy_model, source_stack[0][:6], device="cpu"))


def test_sizes_not_multiple_of_16(toy_model):
    from napari_bnadapt import synthetic

    img = synthetic.generate(1, (37, 53), seed=1)[0]
    p = nb.predict(toy_model, img, device="cpu")
    assert p.shape == (1, 37, 53)
    np.testing.assert_allclose(p[0], _direct(toy_model, img[0]), atol=1e-5)  # reflect-padded, then cropped


def test_unavailable_device_is_a_clear_error(toy_model, toy_image):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BNAdaptError, match="no CUDA GPU"):
        nb.predict(toy_model, toy_image, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(toy_model, toy_image):
    cpu = nb.predict(toy_model, toy_image, device="cpu")
    gpu = nb.predict(toy_model, toy_image, device="cuda", amp=False)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    assert next(toy_model.parameters()).device.type == "cpu"  # the caller's model did not move


def test_bad_threshold(toy_model, toy_image):
    with pytest.raises(BNAdaptError, match="threshold"):
        nb.segment(toy_model, toy_image, threshold=1.5)


def test_zarr_and_dask_inputs_and_zarr_output(tmp_path, toy_model, source_stack):
    """Lazy inputs are read slice by slice; the result can go straight into a zarr array."""
    import dask.array as da
    import zarr

    images = source_stack[0][:6]
    expected = nb.segment(toy_model, images, device="cpu")
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=images.shape, chunks=(1, 64, 64), dtype="u1")
    z[:] = images
    np.testing.assert_array_equal(nb.segment(toy_model, z, device="cpu"), expected)
    lazy = da.from_array(images, chunks=(2, 64, 64))
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=images.shape, chunks=(1, 64, 64), dtype="u1")
    assert nb.segment(toy_model, lazy, device="cpu", out=out) is out
    np.testing.assert_array_equal(out[:], expected)
    adapted, report = nb.adapt(toy_model, lazy, device="cpu")
    assert report.n_voxels == images.size


class _Picky(torch.nn.Module):
    """A model that runs out of memory for batches > 1 or tiles wider than ``max_side`` (as a small GPU would)."""

    def __init__(self, inner, max_side):
        super().__init__()
        self.inner, self.max_side, self.meta, self.calls = inner, max_side, inner.meta, []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        if x.shape[0] > 1 or x.shape[-1] > self.max_side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_backs_off_to_smaller_batches_then_tiles(toy_model):
    rng = np.random.default_rng(0)
    stack = rng.integers(60, 200, size=(3, 512, 512), dtype=np.uint8)
    picky = _Picky(toy_model, max_side=256)
    items = list(nb.predict_iter(picky, stack, device="cpu", tile_size=512, batch_size=3))
    got = items[-1].value
    stages = [i.stage for i in items if isinstance(i, Progress)]
    assert any("out of memory" in s and "tiles of 256" in s for s in stages)
    batches = [c[0] for c in picky.calls]
    assert batches[:3] == [3, 1, 1] and picky.calls[-1] == (1, 1, 224, 224)  # 3 tiles, 1, then tiles of <= 256 (3 x 3 of 224)
    ref = nb.predict(toy_model, stack, device="cpu", tile_size=256, batch_size=1)
    np.testing.assert_allclose(got, ref, atol=1e-5)  # the same tiling as asked for directly


def test_out_of_memory_for_the_smallest_tile_is_a_clear_message(toy_model):
    picky = _Picky(toy_model, max_side=64)
    with pytest.raises(BNAdaptError, match="out of memory on cpu even for one tile of 128 x 128"):
        nb.predict(picky, np.full((1, 300, 300), 120, np.uint8), device="cpu")


# ------------------------------------------------------------------ pixel size
@pytest.fixture(scope="module")
def coarse_stack():
    """Toy images at twice the model's pixel size (10 nm for a 5 nm model): objects half as large."""
    from napari_bnadapt import synthetic

    images, _ = synthetic.generate(3, (64, 80), seed=31)
    return nb.rescale(images, (0.5, 0.5))


def test_predict_at_another_pixel_size_runs_on_the_model_grid_and_returns_the_input_grid(toy_model_5nm, coarse_stack):
    import warnings

    from napari_bnadapt.io.pixel_size import zoom_slice
    from napari_bnadapt.io.resample import PixelSizeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelSizeWarning)  # both pixel sizes known: nothing to warn about
        prob = nb.predict(toy_model_5nm, coarse_stack, device="cpu", pixel_size_nm=(10.0, 10.0))
    assert prob.shape == coarse_stack.shape == (3, 32, 40) and prob.dtype == np.float32
    # the reference, by hand: each slice up to 5 nm, the network there, the probability back down
    up = np.stack([zoom_slice(s, (64, 80)) for s in coarse_stack])
    on_model_grid = nb.predict(toy_model_5nm, up, device="cpu", pixel_size_nm=(5.0, 5.0))
    back = np.stack([np.clip(zoom_slice(p, (32, 40)), 0, 1) for p in on_model_grid])
    np.testing.assert_allclose(prob, back, atol=1e-6)
    as_is = nb.predict(toy_model_5nm, coarse_stack, device="cpu", pixel_size_nm=(5.0, 5.0))
    assert np.abs(prob - as_is).max() > 0.1  # resampling changed what the network saw
    # labels: the resampled-back probability, thresholded on the input's grid
    labels = nb.segment(toy_model_5nm, coarse_stack, device="cpu", pixel_size_nm=(10.0, 10.0))
    np.testing.assert_array_equal(labels, (prob > 0.5).astype(np.uint8))
    # out= is written slice by slice on the input's grid; 2D in, 2D out
    out = np.full(coarse_stack.shape, -1.0, np.float32)
    assert nb.predict(toy_model_5nm, coarse_stack, device="cpu", pixel_size_nm=(10.0, 10.0), out=out) is out
    np.testing.assert_allclose(out, prob, atol=1e-6)
    flat = nb.segment(toy_model_5nm, coarse_stack[1], device="cpu", pixel_size_nm=(10.0, 10.0))
    np.testing.assert_array_equal(flat, labels[1])


def test_equal_or_nearly_equal_pixel_sizes_do_not_resample(toy_model, toy_model_5nm, coarse_stack):
    plain = nb.predict(toy_model, coarse_stack, device="cpu")  # nothing known: runs as it is
    for px in [(5.0, 5.0), (5.05, 4.95)]:  # within RESAMPLE_TOLERANCE (2 %)
        np.testing.assert_array_equal(nb.predict(toy_model_5nm, coarse_stack, device="cpu", pixel_size_nm=px), plain)


def test_unknown_pixel_size_warns_once_and_runs_as_is(toy_model, toy_model_5nm, coarse_stack):
    import warnings

    from napari_bnadapt.io.resample import PixelSizeWarning

    plain = nb.segment(toy_model, coarse_stack, device="cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        labels = nb.segment(toy_model_5nm, coarse_stack, device="cpu")
    said = [w for w in seen if issubclass(w.category, PixelSizeWarning)]
    assert len(said) == 1 and "pixel size is unknown" in str(said[0].message)
    np.testing.assert_array_equal(labels, plain)


def test_too_small_at_the_model_pixel_size_is_refused_before_any_work(toy_model_5nm):
    with pytest.raises(BNAdaptError, match="at the model's 5 x 5 nm pixel size"):
        nb.predict(toy_model_5nm, np.zeros((40, 40), np.uint8), device="cpu", pixel_size_nm=(1.0, 1.0))
