"""2D and 3D Perlin noise (vectorised), the texture behind the toy mitochondria masks."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import BNAdaptError
from .checks import (
    MIN_SIDE,
    SeedLike,
    _check_cell,
    _check_n,
    _check_shape,
    _seed_sequence,
)

# 2D gradient noise with unit gradients lies in [-sqrt(1/2), sqrt(1/2)];
# sqrt(2) maps it to [-1, 1], the scale the 0.4 threshold refers to.
_SCALE_2D = math.sqrt(2.0)


# 3D noise is less spread out (std 0.19 vs 0.305 for the scaled 2D noise);
# 1.6 matches the spreads, so the same 0.4 threshold gives ~20 % foreground.
_SCALE_3D = 1.6


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _n_nodes(length: int, cell: float) -> int:
    """Lattice nodes needed along an axis of ``length`` pixels with offsets in [0, ceil(cell))."""
    max_pos = (length - 1 + math.ceil(cell) - 1) / cell
    return int(math.floor(max_pos)) + 2


def _axis_factors(length: int, cell: float, offsets: np.ndarray, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis interpolation matrices for a batch of offsets.

    Returns ``M`` and ``D`` of shape (b, length, nodes): ``M[p, i]`` is the fade
    weight of lattice node ``i`` at pixel ``p`` and ``D[p, i]`` that weight times
    the signed distance (in cells) from node ``i`` to pixel ``p``.
    """
    b = offsets.shape[0]
    pos = (np.arange(length, dtype=np.float64)[None, :] + offsets[:, None]) / cell
    idx = np.floor(pos).astype(np.intp)
    frac = pos - idx
    w1 = _fade(frac)
    w0 = 1.0 - w1
    m = np.zeros((b, length, nodes))
    d = np.zeros((b, length, nodes))
    bi = np.arange(b)[:, None]
    pi = np.arange(length)[None, :]
    m[bi, pi, idx] = w0
    m[bi, pi, idx + 1] = w1
    d[bi, pi, idx] = w0 * frac
    d[bi, pi, idx + 1] = w1 * (frac - 1.0)
    return m, d


def _perlin_2d_from(angles: np.ndarray, offsets: np.ndarray, shape: tuple[int, int],
                    cell: tuple[float, float]) -> np.ndarray:
    """2D Perlin noise windows from explicit lattice gradients.

    Parameters
    ----------
    angles : ndarray, shape (b, ny, nx)
        Gradient directions (radians) at the lattice nodes.
    offsets : ndarray of int, shape (b, 2)
        Window offsets (pixels) in the larger field, per image (y, x).
    shape : (int, int)
        Window size (H, W) in pixels.
    cell : (float, float)
        Lattice cell size (pixels) along y and x.

    Returns
    -------
    ndarray of float32, shape (b, H, W), values in [-1, 1].
    """
    h, w = shape
    ny, nx = angles.shape[1:]
    my, dy = _axis_factors(h, cell[0], offsets[:, 0].astype(np.float64), ny)
    mx, dx = _axis_factors(w, cell[1], offsets[:, 1].astype(np.float64), nx)
    gy = np.sin(angles)
    gx = np.cos(angles)
    # noise = Dy Gy Mx^T + My Gx Dx^T = [Dy My] @ [[Gy Mx^T], [Gx Dx^T]]
    left = np.concatenate([dy, my], axis=2).astype(np.float32)
    right = np.concatenate([gy @ mx.transpose(0, 2, 1), gx @ dx.transpose(0, 2, 1)], axis=1)
    noise = left @ (right * _SCALE_2D).astype(np.float32)
    return noise


def _perlin_2d_params(u: np.ndarray, shape: tuple[int, int], cell: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and gradient angles from per-image uniforms ``u`` (b, 2 + ny*nx)."""
    ny, nx = _n_nodes(shape[0], cell[0]), _n_nodes(shape[1], cell[1])
    hi = np.array([math.ceil(cell[0]), math.ceil(cell[1])], dtype=np.float64)
    offsets = np.minimum(np.floor(u[:, :2] * hi), hi - 1).astype(np.intp)
    angles = u[:, 2:2 + ny * nx].reshape(-1, ny, nx) * (2.0 * math.pi)
    return offsets, angles


def _perlin_2d_width(shape: tuple[int, int], cell: tuple[float, float]) -> int:
    return 2 + _n_nodes(shape[0], cell[0]) * _n_nodes(shape[1], cell[1])


def perlin_2d(n: int, shape: Sequence[int] = (64, 64), *, cell_size: float | Sequence[float] | None = None,
              seed: SeedLike = None) -> np.ndarray:
    """Batch of 2D Perlin noise images with the thesis' translation correction.

    Parameters
    ----------
    n : int
        Number of images (>= 1).
    shape : (int, int), default (64, 64)
        Image size (H, W) in pixels, each side >= 16.
    cell_size : float or (float, float), optional
        Lattice cell size in pixels (>= 2). Default ``shape / 2`` (a 2 x 2
        lattice over the image, 3 x 3 over the 1.5x field it is cut from).
    seed : int, numpy Generator or SeedSequence, optional
        Seed; the same seed gives the same noise.

    Returns
    -------
    ndarray of float32, shape (n, H, W)
        Noise in [-1, 1]; each image is a window at a random integer offset
        in ``[0, ceil(cell))`` per axis of a larger noise field.
    """
    n = _check_n(n)
    shape = _check_shape(shape, 2)
    cell = _check_cell(cell_size, shape)
    ss_params, _ = _seed_sequence(seed).spawn(2)
    u = np.random.default_rng(ss_params).random((n, _perlin_2d_width(shape, cell)))
    offsets, angles = _perlin_2d_params(u, shape, cell)
    return _perlin_2d_from(angles, offsets, shape, cell)


def _perlin_3d_from(grad: np.ndarray, offsets: np.ndarray, shape: tuple[int, int, int],
                    cell: tuple[float, float, float]) -> np.ndarray:
    """3D Perlin noise window from unit gradients ``grad`` (nz, ny, nx, 3) and offsets (3,)."""
    factors = [
        _axis_factors(length, c, np.array([float(o)]), nn)
        for length, c, o, nn in zip(shape, cell, offsets, grad.shape[:3])
    ]
    (mz, dz), (my, dy), (mx, dx) = [(m[0], d[0]) for m, d in factors]
    out = None
    for comp, (fz, fy, fx) in enumerate(((dz, my, mx), (mz, dy, mx), (mz, my, dx))):
        # contract the small lattice axes one at a time: x, then y, then z
        t = np.tensordot(grad[..., comp], fx, axes=([2], [1]))  # (nz, ny, X)
        t = np.einsum("yj,ijx->iyx", fy, t)  # (nz, Y, X)
        t = np.tensordot(fz, t, axes=([1], [0]))  # (Z, Y, X)
        out = t if out is None else out + t
    return (out * _SCALE_3D).astype(np.float32)


def _perlin_3d_draw(rng: np.random.Generator, shape: tuple[int, int, int],
                    cell: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    nodes = tuple(_n_nodes(s, c) for s, c in zip(shape, cell))
    offsets = np.array([rng.integers(0, math.ceil(c)) for c in cell])
    g = rng.standard_normal((*nodes, 3))
    norm = np.linalg.norm(g, axis=-1, keepdims=True)
    g /= np.where(norm > 0, norm, 1.0)
    return g, offsets


def perlin_3d(shape: Sequence[int] = (16, 256, 256), *, cell_size: float | Sequence[float] = (16, 32, 32),
              seed: SeedLike = None) -> np.ndarray:
    """3D Perlin noise volume (coherent from slice to slice).

    Parameters
    ----------
    shape : (int, int, int), default (16, 256, 256)
        Volume size (Z, Y, X) in voxels; Z >= 2, Y and X >= 16.
    cell_size : float or (float, float, float), default (16, 32, 32)
        Lattice cell size in voxels along (Z, Y, X), each >= 2.
    seed : int, numpy Generator or SeedSequence, optional
        Seed; the same seed gives the same volume.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Noise scaled so that ``|noise| > 0.4`` covers about 20 % of voxels,
        as in 2D. Uses random unit 3D gradients and the quintic fade.
    """
    shape = _check_volume_shape(shape)
    cell = _check_cell(cell_size, shape)
    rng = np.random.default_rng(_seed_sequence(seed).spawn(2)[0])
    grad, offsets = _perlin_3d_draw(rng, shape, cell)
    return _perlin_3d_from(grad, offsets, shape, cell)


def _check_volume_shape(shape: Any) -> tuple[int, int, int]:
    dims = _check_shape(shape, 3, min_side=1)
    if dims[0] < 2 or min(dims[1:]) < MIN_SIDE:
        raise BNAdaptError(f"shape {dims} is too small: need at least 2 slices and "
                           f"{MIN_SIDE} x {MIN_SIDE} pixels per slice.")
    return dims
