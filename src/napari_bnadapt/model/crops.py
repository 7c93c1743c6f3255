"""Training crops from one or several labelled volumes, at the model's pixel size, augmented.

A source model may be trained on several volumes (Lucchi++ and VNC: other labs,
microscopes, pixel sizes and image shapes). Each :class:`TrainingVolume` holds one
checked stack, its labels, its own grey-value mapping and its pixel size; crops are
cut at a zoom that brings it to the model's pixel size (times the augmentation's
scale jitter), then randomised (:mod:`napari_bnadapt.model.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.pixel_size import zoom_slice
from ..io.stack_view import Normalization, StackView
from .augment import Augmentation


@dataclass
class TrainingVolume:
    """One labelled volume of a training set.

    Attributes
    ----------
    view, labels : StackView
        The checked image stack and its labels (same shape).
    norm : Normalization
        Its grey-value mapping to the model's input (its own ``in_low``/``in_high``).
    zoom : float
        Its pixel size over the model's (> 1: its pixels are larger, so crops are enlarged).
    train, val : numpy.ndarray
        Slice indices of its training and validation slices.
    """

    view: StackView
    labels: StackView
    norm: Normalization
    zoom: float
    train: np.ndarray
    val: np.ndarray

    def crop(self, z: int, side: tuple[int, int], aug: Augmentation,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random (standardised image, 0/1 label) crop of slice ``z``, ``side`` pixels at the model's pixel size."""
        nz, h, w = self.view.shape3d
        ph, pw = side
        zoom = self.zoom * aug.draw_zoom(rng)
        # the region to read, in the volume's pixels; a region larger than the slice caps the zoom
        rh, rw = min(h, max(1, round(ph / zoom))), min(w, max(1, round(pw / zoom)))
        y0, x0 = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        region = (z, slice(y0, y0 + rh), slice(x0, x0 + rw))
        x01 = self.to01(self.view.read(*region))
        lab = (self.labels.read(*region) > 0).astype(np.float32)
        if (rh, rw) != (ph, pw):
            from scipy.ndimage import zoom as resample

            f = (ph / rh, pw / rw)
            x01 = resample(x01, f, order=1, mode="reflect", grid_mode=True)[:ph, :pw]  # image edges mirrored
            lab = zoom_slice(lab, (ph, pw), order=1)
        x01 = aug.grey(x01, rng)
        image, label = aug.geometry(x01, lab > 0.5, rng)
        n = self.norm
        return (np.ascontiguousarray((image - np.float32(n.mean)) / np.float32(n.std)),
                np.ascontiguousarray(label).astype(np.int64))

    def to01(self, raw: np.ndarray) -> np.ndarray:
        """Raw grey values to the 0..1 range of the model's training range (float32)."""
        n = self.norm
        return (raw.astype(np.float32) - np.float32(n.in_low)) / np.float32(n.in_high - n.in_low)


def crop_batch(volumes: list[TrainingVolume], weights: np.ndarray, side: tuple[int, int], batch_size: int,
               aug: Augmentation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` crops, each from a volume drawn with probability ``weights``: (B, 1, H, W), (B, H, W)."""
    if len(volumes) == 1:  # the draws of the single-volume recipe, so its models stay reproducible
        picks, zs = np.zeros(batch_size, int), volumes[0].train[rng.integers(0, len(volumes[0].train), batch_size)]
    else:
        picks = rng.choice(len(volumes), size=batch_size, p=weights)
        zs = np.array([volumes[int(v)].train[rng.integers(len(volumes[int(v)].train))] for v in picks])
    pairs = [volumes[int(v)].crop(int(z), side, aug, rng) for v, z in zip(picks, zs)]
    return np.stack([p[0] for p in pairs])[:, None], np.stack([p[1] for p in pairs])


def volume_weights(volumes: list[TrainingVolume]) -> np.ndarray:
    """Draw probabilities: proportional to the square root of each volume's training area.

    Plain proportional weights would let one large volume drown a small one from
    another lab; equal weights would over-fit a tiny one. The square root sits between.
    """
    area = np.array([len(v.train) * v.view.shape3d[1] * v.view.shape3d[2] / v.zoom**2 for v in volumes], float)
    w = np.sqrt(area)
    return w / w.sum()


def statistics_stack(volumes: list[TrainingVolume], side: int, n: int, seed: int, only: int | None = None) -> np.ndarray:
    """``n`` un-augmented crops (of ``side`` px, at the model's pixel size) in the model's raw range, for source
    statistics: from the volumes drawn as in training, or from volume number ``only`` alone."""
    rng = np.random.default_rng(seed)
    plain = Augmentation.off()
    picks = rng.choice(len(volumes), size=n, p=volume_weights(volumes)) if only is None else np.full(n, only)
    crops = []
    for v in picks:
        vol = volumes[int(v)]
        x, _ = vol.crop(int(rng.choice(vol.train)), (side, side), plain, rng)
        n_ = vol.norm
        crops.append((x * n_.std + n_.mean) * (n_.high - n_.low) + n_.low)
    return np.stack(crops).astype(np.float32)


def as_list(x: Any) -> list[Any]:
    """A list or tuple of stacks (arrays or layers) as a list; anything else, one stack, as a one-element list."""
    several = isinstance(x, (list, tuple)) and len(x) > 0 and all(hasattr(e, "shape") or hasattr(e, "data") for e in x)
    return list(x) if several else [x]
