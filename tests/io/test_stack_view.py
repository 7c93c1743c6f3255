"""Bad input gets a clear message and changes nothing."""

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError


@pytest.fixture(scope="module")
def img():
    from napari_bnadapt import synthetic

    return synthetic.generate(2, (64, 64), seed=3)[0]


@pytest.mark.parametrize("fn", ["segment", "adapt"])
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 64, 64), np.uint8), "empty"),
        (np.zeros((64, 64, 3), np.uint8), "colour"),
        (np.zeros((2, 3, 64, 64), np.uint8), "dimensions"),
        (np.zeros((2, 8, 8), np.uint8), "at least 16"),
        (np.zeros((2, 64, 64), bool), "data type"),
    ],
)
def test_bad_arrays(toy_model, fn, bad, message):
    with pytest.raises(BNAdaptError, match=message):
        getattr(nb, fn)(toy_model, bad)


@pytest.mark.parametrize("fn", ["segment", "adapt"])
def test_nan_and_inf(toy_model, img, fn):
    for v in (np.nan, np.inf):
        x = img.astype(np.float32)
        x[0, 5, 5] = v
        keep = x.copy()
        with pytest.raises(BNAdaptError, match="NaN or infinite"):
            getattr(nb, fn)(toy_model, x)
        np.testing.assert_array_equal(x, keep)


def test_float_01_needs_a_range(toy_model, img):
    x = img.astype(np.float32) / 255
    with pytest.raises(BNAdaptError, match="0..1"):
        nb.segment(toy_model, x)
    np.testing.assert_array_equal(
        nb.segment(toy_model, x, intensity_range=(0, 1)), nb.segment(toy_model, img)
    )


def test_16bit(toy_model, img):
    x16 = img.astype(np.uint16) * 257  # 8-bit data stretched to 16 bits
    with pytest.raises(BNAdaptError, match="16-bit data"):
        nb.segment(toy_model, x16)
    # same grey levels after mapping (up to float rounding at the threshold)
    assert (nb.segment(toy_model, x16, intensity_range=(0, 65535)) == nb.segment(toy_model, img)).mean() > 0.999
    # "auto" maps the 0.5 and 99.5 percentiles (docs/method.md); here every slice is sampled
    auto = nb.segment(toy_model, x16, intensity_range="auto")
    lo, hi = np.percentile(x16, [0.5, 99.5])
    np.testing.assert_array_equal(auto, nb.segment(toy_model, x16, intensity_range=(float(lo), float(hi))))
    assert (auto != nb.segment(toy_model, x16, intensity_range=(0, 65535))).any()  # really another mapping
    # 16-bit data that stays in 0..255 is accepted as is
    np.testing.assert_array_equal(nb.segment(toy_model, img.astype(np.uint16)), nb.segment(toy_model, img))


def test_constant_image_auto_range(toy_model):
    with pytest.raises(BNAdaptError, match="constant"):
        nb.segment(toy_model, np.full((32, 32), 7, np.uint16), intensity_range="auto")


def test_list_input_and_wrong_type(toy_model, img):
    assert nb.segment(toy_model, img[0].tolist()).shape == (64, 64)
    with pytest.raises(BNAdaptError, match="must be an array"):
        nb.segment(toy_model, "not an image")
