"""Random square patches from image stacks, normalised as a model's input (for the baselines' training)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import Normalization


def as_stack(images: Any, name: str = "images") -> np.ndarray:
    """A (N, H, W) float32 view of one image or a stack; clear errors for anything else."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] < 1:
        raise BNAdaptError(f"{name} must be a (Y, X) image or a (Z, Y, X) stack, not an array of shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise BNAdaptError(f"{name} must hold numbers, not {x.dtype}")
    return x


def check_patch_size(stack: np.ndarray, patch_size: int, name: str = "images") -> int:
    """The patch side: a multiple of 16 that fits every image of ``stack``."""
    if patch_size < 16 or patch_size % 16:
        raise BNAdaptError(f"patch_size must be a multiple of 16 (at least 16), not {patch_size}")
    if min(stack.shape[1:]) < patch_size:
        raise BNAdaptError(f"{name} of shape {stack.shape[1:]} are smaller than the {patch_size} px patches")
    return patch_size


class PatchSampler:
    """Draws batches of random patches (seeded) and returns them normalised as (B, 1, P, P) tensors.

    Parameters
    ----------
    images : array-like
        (N, H, W) stack (or one image), in the grey-value range of the model's card.
    patch_size : int
        Patch side (multiple of 16, at most the image side).
    normalization : Normalization
        The model's input mapping (``Normalization.from_meta(model.meta["normalization"])``).
    seed : int
        Seed of the patch positions.
    """

    def __init__(self, images: Any, patch_size: int, normalization: Normalization, seed: int) -> None:
        self.stack = as_stack(images)
        self.size = check_patch_size(self.stack, patch_size)
        self.norm = normalization
        self.rng = np.random.default_rng(seed)

    def raw(self, batch_size: int) -> np.ndarray:
        """``batch_size`` patches in the images' own grey values, float32 (B, P, P)."""
        n, h, w = self.stack.shape
        p = self.size
        out = np.empty((batch_size, p, p), np.float32)
        for i in range(batch_size):
            k = int(self.rng.integers(n))
            y0 = int(self.rng.integers(h - p + 1))
            x0 = int(self.rng.integers(w - p + 1))
            out[i] = self.stack[k, y0:y0 + p, x0:x0 + p]
        return out

    def batch(self, batch_size: int, device: Any = "cpu") -> Any:
        """``batch_size`` normalised patches as a (B, 1, P, P) float tensor on ``device``."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.norm.apply(self.raw(batch_size))[:, None])).to(device)
