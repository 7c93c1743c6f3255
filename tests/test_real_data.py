"""Real EM data (../shared/data/real): I/O, and AdaBN with the bundled EM models on the real pair.

The volumes read with the right shapes and dtypes; the bundled ``lucchi-pp`` model,
adapted to a crop of the VNC volume (another lab, species and microscope), does not
lose IoU and gets a reliability report with a computed bound; the toy model runs end
to end on real EM too (its numbers mean nothing there). Skipped when the data folder
is absent (the data is never committed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import state_bytes

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LUCCHI = REAL / "lucchi_pp_fibsem"
VNC = REAL / "vnc_drosophila_sstem"
#: docs/real-data.md: lucchi-pp adapted to the 512 x 512 crop of VNC slices 14-19 at 4.6 nm (measured 0.486)
CROP_IOU = 0.486
#: what a rerun on another machine or software may move it by (seeded patches; float summation order)
CROP_TOLERANCE = 0.03
#: docs/models.md: the default EM model (em-generalist-2) adapted to held-out crops at their pixel size
#: (measured: the VNC crop above 0.871, a 6 x 512 x 512 crop of Lucchi++ test slices 10-15 0.852)
DEFAULT_MODEL_CROP_IOU = {"VNC": 0.871, "Lucchi++": 0.852}

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real():
    if not (LUCCHI / "train_image.tif").exists() or not (VNC / "image.tif").exists():
        pytest.skip(f"real EM data not found under {REAL}")
    return REAL


@pytest.mark.parametrize(
    "rel, shape",
    [
        ("lucchi_pp_fibsem/train_image.tif", (42, 768, 1024)),
        ("lucchi_pp_fibsem/test_image.tif", (42, 768, 1024)),
        ("vnc_drosophila_sstem/image.tif", (20, 1024, 1024)),
    ],
)
def test_read_stack_real_volumes(real, rel, shape):
    from napari_bnadapt import read_stack

    arr, info = read_stack(real / rel)  # lazy: nothing is read beyond what is indexed
    assert tuple(arr.shape) == shape
    assert arr.dtype == np.uint8
    crop = np.asarray(arr[0, :64, :64])
    assert crop.dtype == np.uint8 and crop.shape == (64, 64)
    assert crop.std() > 1.0  # real EM texture, not an empty or constant slice


@pytest.mark.parametrize(
    "rel, shape",
    [
        ("lucchi_pp_fibsem/train_labels.tif", (42, 768, 1024)),
        ("vnc_drosophila_sstem/labels.tif", (20, 1024, 1024)),
    ],
)
def test_real_labels_are_binary(real, rel, shape):
    import tifffile

    with tifffile.TiffFile(real / rel) as tf:
        assert tuple(tf.series[0].shape) == shape
        first = tf.pages[0].asarray()
    assert first.dtype == np.uint8
    assert set(np.unique(first).tolist()) <= {0, 1}
    assert 0.0 < first.mean() < 0.5  # some mitochondria, mostly background


def test_adapt_and_reliability_on_real_vnc_crop(real, toy_model, one_torch_thread):
    import tifffile

    import napari_bnadapt as nb

    images = np.ascontiguousarray(tifffile.memmap(VNC / "image.tif")[:4, 384:640, 384:640])
    assert images.dtype == np.uint8 and images.shape == (4, 256, 256)
    before = state_bytes(toy_model)
    adapted, report = nb.adapt(toy_model, images, device="cpu")
    assert report.n_patches > 0 and np.isfinite(report.drift)
    assert report.layers  # per-layer shifts were measured
    rel = nb.reliability(toy_model, adapted, images, device="cpu")
    # the toy model's numbers mean nothing on real EM, but the verdict must follow the documented rule
    # from its bound (docs/reliability.md: reliable >= 0.8, unreliable < 0.5 or gated); measured: 0.63, uncertain
    assert rel.sentence and rel.iou_lower_bound is not None and 0.0 <= rel.iou_lower_bound <= 1.0
    expected = ("unreliable" if rel.gate_failures or rel.iou_lower_bound < 0.5
                else "reliable" if rel.iou_lower_bound >= 0.8 else "uncertain")
    assert rel.verdict == expected, (rel.verdict, rel.iou_lower_bound, rel.gate_failures)
    assert [d.name for d in rel.distances if not np.isfinite(d.value)] == ["ls4"]  # 128 channels: under-sampled
    seg = nb.segment(adapted, images, device="cpu")
    assert seg.shape == images.shape
    assert state_bytes(toy_model) == before  # the source model is never changed


def test_adabn_on_the_real_pair_does_not_lower_iou_and_the_bound_is_computed(real, one_torch_thread):
    import tifffile

    import napari_bnadapt as nb

    assert "lucchi-pp" in nb.list_models(), "the bundled lucchi-pp model is missing from the package"
    model = nb.load_model("lucchi-pp", device="cpu")
    before = state_bytes(model)
    # VNC held-out slices 14-19 (the VNC model never trained on them), a 512 x 512 crop of each
    images = np.ascontiguousarray(tifffile.memmap(VNC / "image.tif", mode="r")[14:20, 256:768, 256:768])
    truth = tifffile.imread(VNC / "labels.tif")[14:20, 256:768, 256:768] > 0
    source_only = nb.iou(nb.segment(model, images, device="cpu"), truth)
    adapted, report = nb.adapt(model, images, device="cpu")
    adapted_iou = nb.iou(nb.segment(adapted, images, device="cpu"), truth)
    # docs/real-data.md, whole slices: 0.053 -> 0.455; on this crop measured 0.002 -> 0.441
    assert source_only < 0.1, source_only
    assert adapted_iou >= 0.42 and adapted_iou > source_only + 0.3, (source_only, adapted_iou)
    assert report.n_patches > 0
    rel = nb.reliability(model, adapted, images, device="cpu")
    # before issue 15 the report promised IoU >= 0.70 ("uncertain") here while the truth is 0.441 on this
    # crop. lucchi-pp's W2 calibration is now rejected (its distance won a tie), and the trust witnesses
    # either abstain or state a bound that holds (tests/test_real_trust.py pins the verdict itself)
    assert rel.verdict != "reliable"
    assert rel.iou_lower_bound is None or rel.iou_lower_bound <= adapted_iou, (rel.iou_lower_bound, adapted_iou)
    assert state_bytes(model) == before


def test_lucchi_model_adapted_to_a_vnc_crop_at_its_pixel_size_keeps_the_documented_iou(real, one_torch_thread):
    """The cross-lab direction of docs/real-data.md ('The regression test'), at the VNC's stated 4.6 nm.

    A regression of the bundled ``lucchi-pp`` model, of AdaBN, or of the pixel-size resampling shows here.
    """
    import tifffile

    import napari_bnadapt as nb

    model = nb.load_model("lucchi-pp", device="cpu")
    before = state_bytes(model)
    images = np.ascontiguousarray(tifffile.memmap(VNC / "image.tif", mode="r")[14:20, 256:768, 256:768])
    truth = tifffile.imread(VNC / "labels.tif")[14:20, 256:768, 256:768] > 0
    adapted, report = nb.adapt(model, images, device="cpu", pixel_size_nm=(4.6, 4.6))
    assert report.zoom is not None
    labels = nb.segment(adapted, images, device="cpu", pixel_size_nm=(4.6, 4.6))
    assert labels.shape == images.shape  # on the input's own grid
    measured = nb.iou(labels, truth)
    # docs/real-data.md reports CROP_IOU for this crop; a drop of more than the tolerance fails CI
    assert measured >= CROP_IOU - CROP_TOLERANCE, measured
    assert state_bytes(model) == before


def test_the_lucchi_model_smooths_the_sharper_vnc_crop_and_leaves_lucchi_alone(real, one_torch_thread):
    """docs/real-data.md ('Smoothing the target'): ssTEM slices look sharper than FIB-SEM to ``lucchi-pp``'s
    first layer, so the label-free choice blurs them; its own volume's test slices it leaves as they are."""
    import tifffile

    import napari_bnadapt as nb
    from napari_bnadapt.adabn.smoothing import choose_smoothing

    model = nb.load_model("lucchi-pp", device="cpu")
    vnc = np.ascontiguousarray(tifffile.memmap(VNC / "image.tif", mode="r")[14:20, 256:768, 256:768])
    lucchi = np.ascontiguousarray(tifffile.memmap(LUCCHI / "test_image.tif", mode="r")[::14, 128:640, 256:768])
    sharp = choose_smoothing(model, vnc, device="cpu", pixel_size_nm=(4.6, 4.6))
    same = choose_smoothing(model, lucchi, device="cpu", pixel_size_nm=(5.0, 5.0))
    assert sharp.sigma >= 1.5 and sharp.distances[0] > sharp.distances[-1], sharp.reason
    assert same.sigma == 0.0, same.reason


def test_default_em_model_adapted_to_held_out_crops_keeps_the_documented_iou(real, one_torch_thread):
    """The default EM model of the CLI and the widget on held-out crops of both volumes (docs/models.md).

    Both are in-domain for the generalist (it trained on other slices of both volumes): a regression of the
    bundled default, of AdaBN or of the resampling to its 5 nm shows here.
    """
    import tifffile

    import napari_bnadapt as nb
    from napari_bnadapt.model.files import DEFAULT_EM_MODEL

    model = nb.load_model(DEFAULT_EM_MODEL, device="cpu")
    before = state_bytes(model)
    crops = {
        "VNC": (VNC / "image.tif", VNC / "labels.tif", np.s_[14:20, 256:768, 256:768], (4.6, 4.6)),
        "Lucchi++": (LUCCHI / "test_image.tif", LUCCHI / "test_labels.tif", np.s_[10:16, 128:640, 256:768], (5.0, 5.0)),
    }
    for name, (image_file, label_file, crop, pixel_size) in crops.items():
        images = np.ascontiguousarray(tifffile.memmap(image_file, mode="r")[crop])
        truth = tifffile.imread(label_file)[crop] > 0
        adapted, _ = nb.adapt(model, images, device="cpu", pixel_size_nm=pixel_size, seed=0)
        measured = nb.iou(nb.segment(adapted, images, device="cpu", pixel_size_nm=pixel_size), truth)
        assert measured >= DEFAULT_MODEL_CROP_IOU[name] - CROP_TOLERANCE, (name, measured)
    assert state_bytes(model) == before
