"""Sampling patches from a stack, so the cost of adaptation does not grow with the stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import StackView
from ..model.layout import SIZE_MULTIPLE
from ..segmentation.tiling import tile_starts

#: Default voxel budget of adaptation: 64 patches of 256 x 256.
DEFAULT_BUDGET_VOXELS = 64 * 256 * 256


@dataclass(frozen=True)
class PatchPlan:
    """Where the patches come from.

    Attributes
    ----------
    corners : list of (z, y, x)
        Top-left corner of every patch, sorted by z (memory-mapped stacks are read in order).
    height, width : int
        Patch size in pixels (multiples of 16).
    exhaustive : bool
        True when the patches cover the whole stack (small stacks), False when sampled at random.
    """

    corners: list[tuple[int, int, int]]
    height: int
    width: int
    exhaustive: bool

    @property
    def n_voxels(self) -> int:
        return len(self.corners) * self.height * self.width


def _floor16(n: int) -> int:
    return max(SIZE_MULTIPLE, n // SIZE_MULTIPLE * SIZE_MULTIPLE)


def plan_patches(
    shape3d: tuple[int, int, int],
    n_patches: int | None = None,
    patch_size: int = 256,
    seed: int = 0,
) -> PatchPlan:
    """Choose the patches that adaptation will read.

    Parameters
    ----------
    shape3d : (int, int, int)
        Stack shape (Z, Y, X).
    n_patches : int or None, default None
        Number of random patches. None: the whole stack when it holds no more
        than :data:`DEFAULT_BUDGET_VOXELS` voxels, else that budget in random patches.
    patch_size : int, default 256
        Patch side in pixels; rounded down to a multiple of 16 and to the slice size.
    seed : int, default 0
        Seed of the random positions (same seed, same patches).

    Returns
    -------
    PatchPlan
    """
    nz, h, w = shape3d
    if patch_size < SIZE_MULTIPLE:
        raise BNAdaptError(f"patch_size must be at least {SIZE_MULTIPLE} pixels, not {patch_size}")
    if n_patches is not None and n_patches < 1:
        raise BNAdaptError(f"n_patches must be at least 1, not {n_patches}")
    ph, pw = _floor16(min(patch_size, h)), _floor16(min(patch_size, w))
    if n_patches is None and nz * h * w <= DEFAULT_BUDGET_VOXELS:
        corners = [(z, y, x) for z in range(nz) for y in tile_starts(h, ph, 0) for x in tile_starts(w, pw, 0)]
        return PatchPlan(corners, ph, pw, exhaustive=True)
    if n_patches is None:
        n_patches = max(1, DEFAULT_BUDGET_VOXELS // (ph * pw))
    rng = np.random.default_rng(seed)
    zs = rng.integers(0, nz, n_patches)
    ys = rng.integers(0, h - ph + 1, n_patches)
    xs = rng.integers(0, w - pw + 1, n_patches)
    corners = sorted(zip(zs.tolist(), ys.tolist(), xs.tolist()))
    return PatchPlan(corners, ph, pw, exhaustive=False)


def iter_patch_batches(view: StackView, plan: PatchPlan, normalize, batch_size: int) -> Iterator[np.ndarray]:
    """Yield float32 batches (B, 1, H, W) of normalised patches, reading only the patches."""
    if batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    buf: list[np.ndarray] = []
    for z, y, x in plan.corners:
        raw = view.read(z, slice(y, y + plan.height), slice(x, x + plan.width))
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise BNAdaptError(f"slice {z} of the image contains NaN or infinite values; replace them first")
        buf.append(normalize(raw))
        if len(buf) == batch_size:
            yield np.stack(buf)[:, None]
            buf = []
    if buf:
        yield np.stack(buf)[:, None]
