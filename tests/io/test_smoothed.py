"""The lazily smoothed stack (io/smoothed.py) and the plane-by-plane array-like behind it (io/plane_stack.py)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.io.smoothed import SmoothedStack, smoothed
from napari_bnadapt.io.stack_view import check_stack


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_each_slice_is_blurred_when_read_and_the_data_is_never_changed(rng, dtype):
    top = 255 if dtype == np.uint8 else 4000
    x = (rng.random((3, 40, 48)) * top).astype(dtype)
    keep = x.copy()
    s = smoothed(x, (1.5, 0.75))
    assert isinstance(s, SmoothedStack) and s.shape == x.shape and s.dtype == x.dtype and len(s) == 3
    want = gaussian_filter(x[1].astype(np.float32), (1.5, 0.75), mode="reflect")
    if dtype != np.float32:
        want = np.clip(np.rint(want), 0, np.iinfo(dtype).max)
    np.testing.assert_allclose(s[1], want.astype(dtype), atol=1e-4)
    np.testing.assert_array_equal(s[0:2, 5:9, 7], np.stack([s[0][5:9, 7], s[1][5:9, 7]]))
    assert s[2].std() < x[2].astype(np.float64).std()  # smoother
    np.testing.assert_array_equal(x, keep)
    view = check_stack(s)  # every entry point takes it as an image
    assert view.shape3d == x.shape and view.read(1).dtype == x.dtype


def test_a_single_image_no_blur_and_bad_sigmas(rng):
    x = (rng.random((40, 40)) * 255).astype(np.uint8)
    s = smoothed(x, (1.0, 1.0))
    assert s.shape == (40, 40) and s.ndim == 2 and s[3:5, 3:5].shape == (2, 2)
    assert smoothed(x, (0, 0)) is x
    for bad in ((-1.0, 1.0), (float("nan"), 1.0)):
        with pytest.raises(BNAdaptError, match="finite number of pixels >= 0"):
            smoothed(x, bad)
