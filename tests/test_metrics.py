import numpy as np
import pytest

from napari_bnadapt import dice, iou
from napari_bnadapt.errors import BNAdaptError


def test_iou_dice_pooled():
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros((2, 4, 4), np.uint8)
    a[0, :2] = 1  # 8 px
    b[0, :1] = 1  # 4 px, inside a
    b[1, :1] = 3  # 4 px, instance label counts as foreground
    assert iou(a, b) == pytest.approx(4 / 12)
    assert dice(a, b) == pytest.approx(8 / 16)
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_shape_mismatch():
    with pytest.raises(BNAdaptError, match="shape"):
        iou(np.zeros((4, 4)), np.zeros((4, 5)))
