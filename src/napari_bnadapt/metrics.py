"""Segmentation quality: foreground IoU and Dice, pooled over the whole volume."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BNAdaptError
from .io.stack_view import layer_data


def foreground_counts(pred: Any, truth: Any) -> tuple[int, int, int]:
    """(intersection, |pred|, |truth|) of the foreground (> 0), slice by slice for big volumes."""
    p, t = layer_data(pred, kind=None), layer_data(truth, kind=None)
    if tuple(p.shape) != tuple(t.shape):
        raise BNAdaptError(f"prediction {tuple(p.shape)} and ground truth {tuple(t.shape)} differ in shape")
    inter = np_ = nt = 0
    chunks = range(p.shape[0]) if p.ndim == 3 else [slice(None)]
    for k in chunks:
        a = np.asarray(p[k]) > 0
        b = np.asarray(t[k]) > 0
        inter += int(np.count_nonzero(a & b))
        np_ += int(np.count_nonzero(a))
        nt += int(np.count_nonzero(b))
    return inter, np_, nt


def iou(pred: Any, truth: Any) -> float:
    """Foreground intersection over union, pooled over the volume (as the literature reports it).

    Parameters
    ----------
    pred, truth : array-like or napari layers of equal shape
        Labels; every value > 0 is foreground (semantic or instance labels).

    Returns
    -------
    float
        |P & T| / |P | T| in [0, 1]; 1.0 when both are empty.
    """
    inter, a, b = foreground_counts(pred, truth)
    union = a + b - inter
    return 1.0 if union == 0 else inter / union


def dice(pred: Any, truth: Any) -> float:
    """Foreground Dice coefficient 2|P & T| / (|P| + |T|), pooled; 1.0 when both are empty."""
    inter, a, b = foreground_counts(pred, truth)
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)
