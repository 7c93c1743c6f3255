"""Pixel-size checks and rescaling (AdaBN cannot fix scale)."""

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.pixel_size import mismatch_message, pixel_size_nm, size_ratio


@pytest.mark.parametrize(
    "scale, units, expected",
    [
        ((40.0, 5.0, 5.0), None, (5.0, 5.0)),
        ((1.0, 1.0, 1.0), None, None),  # napari's default scale: unknown
        ((1.0, 1.0, 1.0), ("pixel", "pixel", "pixel"), None),
        ((40.0, 10.0, 10.0), ("pixel", "pixel", "pixel"), (10.0, 10.0)),  # scale set, units left default: nm
        ((1.0, 10.0, 10.0), ("second", "second", "second"), None),
        ((0.04, 0.005, 0.005), ("micrometer", "micrometer", "micrometer"), (5.0, 5.0)),
        ((40.0, 5.0, 4.0), ("nanometer", "nanometer", "nanometer"), (5.0, 4.0)),
    ],
)
def test_pixel_size_from_layer_scale_and_units(scale, units, expected):
    got = pixel_size_nm(scale, units)
    assert got == expected if expected is None else np.allclose(got, expected)


def test_mismatch_is_reported_only_beyond_25_percent():
    assert mismatch_message((4.6, 4.6), (5.0, 5.0)) is None  # Lucchi++ vs VNC: close enough
    assert mismatch_message((6.2, 6.2), (5.0, 5.0)) is None
    assert mismatch_message(None, (5.0, 5.0)) is None and mismatch_message((5.0, 5.0), None) is None
    big = mismatch_message((10.0, 10.0), (5.0, 5.0))
    small = mismatch_message((2.0, 2.0), (5.0, 5.0))
    assert big and "smaller" in big and "2.00x" in big
    assert small and "larger" in small
    assert size_ratio((5.0, 10.0), (5.0, 5.0)) == 2.0  # the axis that differs most


def test_rescale_keeps_dtype_and_input_and_resamples():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, size=(3, 64, 96), dtype=np.uint8)
    keep = stack.copy()
    half = nb.rescale(stack, (0.5, 0.5))
    assert half.shape == (3, 32, 48) and half.dtype == np.uint8
    np.testing.assert_array_equal(stack, keep)
    # a smooth ramp is resampled to the same ramp at the new grid (linear interpolation)
    ramp = np.tile(np.arange(64, dtype=np.float32), (2, 64, 1))
    up = nb.rescale(ramp, (1.0, 2.0))
    assert up.shape == (2, 64, 128)
    centres = (np.arange(128) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[0, 0, 2:-2], centres[2:-2], atol=1e-4)
    assert nb.rescale(stack[0], (2.0, 2.0)).shape == (128, 192)  # 2D in, 2D out
    with pytest.raises(BNAdaptError, match="between"):
        nb.rescale(stack, (0.0, 1.0))
