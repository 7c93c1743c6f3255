"""Toy "mitochondria" images and masks (thesis chapter 4), fast and reproducible.

The generator makes pairs ``(image, mask)``: a 0/1 mask of blob-like objects
and a grey-value image in which mask pixels are drawn from
``N(mu1, sigma1)`` and background pixels from ``N(mu0, sigma0)``.
Source and target "domains" differ only in these four numbers (or in the
rendering *style*), which is what the BatchNorm-adaptation experiments need.

Everything here is pure numpy, vectorised over images (a loop runs over
chunks of about one million pixels only, to bound memory), and seeded:
the same ``seed`` gives bit-identical output.

Main entry points
-----------------
generate
    A batch of 2D image/mask pairs (Perlin blobs, circles or triangles;
    ``"noise"``, ``"gradient"`` or ``"edges"`` rendering).
generate_volume
    A 3D stack whose consecutive slices are coherent (3D Perlin noise).
draw_parameters
    Random ``(mu0, sigma0, mu1, sigma1)`` inside the non-clipping range
    (the thesis' "random" dataset).
perlin_2d, perlin_3d
    The underlying gradient noise, in ``[-1, 1]``.

Perlin noise, the translation correction and the threshold
----------------------------------------------------------
The noise is classic gradient noise: random unit gradients on a lattice,
dot products with the offset to each corner, blended with the quintic fade
``6t^5 - 15t^4 + 10t^3``. It is zero at every lattice node, so a fixed
64 x 64 window with a 2 x 2 lattice would never put an object on those
pixels. As in the thesis, each image is therefore a 64 x 64 window, at a
random integer offset in ``[0, 32)`` per axis, of a 96 x 96 field with a
3 x 3 lattice (in general: lattice cell = shape / 2, field = 1.5 x shape).
The mask is ``|noise| > 0.4`` (both lobes), which covers about 21 % of the
pixels (standard deviation about 8 % between images).

Implementation note: with the pixel positions fixed per axis, Perlin noise
is a sum of products of a per-row factor, a lattice value and a per-column
factor, so a whole image is ``L @ R`` with ``L`` of shape (H, 2k) and ``R``
of shape (2k, W) (k = lattice nodes per axis). Only the window is evaluated,
never the 1.5x field; the result is identical to cropping the field.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence, Union

import numpy as np

from .errors import BNAdaptError

__all__ = [
    "CLIP_WARN_FRACTION",
    "PERLIN_THRESHOLD",
    "SAFE_MU_RANGE",
    "SAFE_SIGMA_MAX",
    "SHAPES",
    "STYLES",
    "ClippingWarning",
    "GenerationStats",
    "draw_parameters",
    "generate",
    "generate_volume",
    "perlin_2d",
    "perlin_3d",
]

#: ``|noise| > PERLIN_THRESHOLD`` is foreground (noise scaled to [-1, 1]).
PERLIN_THRESHOLD: float = 0.4
#: Means inside this range (grey values) and sigmas up to SAFE_SIGMA_MAX
#: keep the clipped fraction below 2 %.
SAFE_MU_RANGE: tuple[int, int] = (64, 192)
#: Largest "safe" standard deviation (grey values), see SAFE_MU_RANGE.
SAFE_SIGMA_MAX: int = 30
#: A ClippingWarning is issued when more than this fraction of pixels clip.
CLIP_WARN_FRACTION: float = 0.02
#: Object kinds accepted by ``generate(shapes=...)``.
SHAPES: tuple[str, ...] = ("perlin", "circles", "triangles")
#: Renderings accepted by ``generate(style=...)``.
STYLES: tuple[str, ...] = ("noise", "gradient", "edges")
#: Smallest image side (pixels) accepted.
MIN_SIDE: int = 16
#: Default rim brightness (grey values) of the "edges" style.
DEFAULT_EDGE_STRENGTH: float = 64.0

# 2D gradient noise with unit gradients lies in [-sqrt(1/2), sqrt(1/2)];
# sqrt(2) maps it to [-1, 1], the scale the 0.4 threshold refers to.
_SCALE_2D = math.sqrt(2.0)
# 3D noise is less spread out (std 0.19 vs 0.305 for the scaled 2D noise);
# 1.6 matches the spreads, so the same 0.4 threshold gives ~20 % foreground.
_SCALE_3D = 1.6
# pixels per chunk (a chunk of 256 images at 64 x 64): bounds memory and
# keeps the working set in cache; fixed, so results do not depend on n.
_CHUNK_PIXELS = 1 << 20

SeedLike = Union[None, int, np.integer, np.random.SeedSequence, np.random.Generator]
ArrayOrScalar = Union[float, int, Sequence[float], np.ndarray]


class ClippingWarning(UserWarning):
    """More than 2 % of the generated pixels fell outside [0, 255] and were clipped.

    Clipping piles pixels up at 0 or 255, so the per-class statistics are no
    longer the requested normal distributions. Keep the means within
    ``SAFE_MU_RANGE`` (64..192) and the sigmas at most ``SAFE_SIGMA_MAX`` (30).
    """


@dataclass(frozen=True)
class GenerationStats:
    """Summary of one ``generate`` / ``generate_volume`` call.

    Attributes
    ----------
    n_pixels : int
        Number of image pixels (voxels) generated.
    foreground_fraction : float
        Fraction of mask pixels equal to 1.
    clipped_fraction : float
        Fraction of pixels whose rounded value was outside [0, 255] and
        was clipped (``clipped_low_fraction + clipped_high_fraction``).
    clipped_low_fraction : float
        Fraction clipped up to 0.
    clipped_high_fraction : float
        Fraction clipped down to 255.
    """

    n_pixels: int
    foreground_fraction: float
    clipped_fraction: float
    clipped_low_fraction: float
    clipped_high_fraction: float

    def as_dict(self) -> dict[str, float]:
        """Return the statistics as a plain ``dict``."""
        return asdict(self)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_n(n: Any) -> int:
    if not _is_int(n) or n < 1:
        raise BNAdaptError(f"The number of images must be a whole number of at least 1; got {n!r}.")
    return int(n)


def _check_shape(shape: Any, ndim: int, name: str = "shape", min_side: int = MIN_SIDE) -> tuple[int, ...]:
    if _is_int(shape) and ndim == 2:
        shape = (shape, shape)
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or len(dims) != ndim or not all(_is_int(d) for d in dims):
        raise BNAdaptError(f"{name} must be {ndim} whole numbers (pixels), e.g. "
                           f"{(64, 64) if ndim == 2 else (16, 256, 256)}; got {shape!r}.")
    dims = tuple(int(d) for d in dims)
    if min(dims) < min_side:
        raise BNAdaptError(f"{name} {dims} is too small: every side must be at least {min_side} pixels.")
    return dims


def _check_params(n: int, **params: Any) -> dict[str, np.ndarray]:
    """Validate mu0/sigma0/mu1/sigma1 (scalars or length-n sequences) -> float arrays (n,)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, (str, bytes, bool, np.bool_)):
            raise BNAdaptError(f"{name} must be a number (grey value); got {value!r}.")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise BNAdaptError(f"{name} must be a number (grey value); got {value!r}.") from None
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        elif arr.shape != (n,):
            raise BNAdaptError(f"{name} must be one number or one number per image ({n}); "
                               f"got an array of shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise BNAdaptError(f"{name} must be a finite number; got {value!r}.")
        if name.startswith("sigma") and np.any(arr < 0):
            raise BNAdaptError(f"{name} is a standard deviation and cannot be negative; got {value!r}.")
        out[name] = arr
    return out


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BNAdaptError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}.")
    return value


def _check_cell(cell: Any, shape: tuple[int, ...]) -> tuple[float, ...]:
    ndim = len(shape)
    if cell is None:
        return tuple(s / 2.0 for s in shape)
    if isinstance(cell, numbers.Real) and not isinstance(cell, (bool, np.bool_)):
        cell = (cell,) * ndim
    try:
        vals = tuple(float(c) for c in cell)
    except (TypeError, ValueError):
        raise BNAdaptError(f"cell_size must be a number of pixels or {ndim} of them; got {cell!r}.") from None
    if len(vals) != ndim or not all(math.isfinite(c) and c >= 2.0 for c in vals):
        raise BNAdaptError(f"cell_size must be {ndim} finite numbers of at least 2 pixels; got {cell!r}.")
    return vals


def _seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    """The root SeedSequence for ``seed`` (what ``np.random.default_rng(seed)`` would use)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        # advance the caller's generator, so repeated calls differ
        return np.random.SeedSequence(seed.integers(0, 2**63, size=4).tolist())
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise BNAdaptError(f"seed must be None, a non-negative whole number or a numpy Generator; got {seed!r}.")
    return np.random.SeedSequence(None if seed is None else int(seed))


# --------------------------------------------------------------------------
# Perlin noise
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# circles and triangles
# --------------------------------------------------------------------------

# Object sizes, as fractions of the reference length ref = 2 * cell (= the
# image side by default). Each image is a window onto an endless plane of
# randomly placed objects: centres are uniform over the image plus a margin of
# the largest object extent, so the border cuts objects no more often than
# anywhere else and the foreground fraction does not depend on the image size.
_CIRCLE_RADIUS = (0.08, 0.20)
_TRIANGLE_RADIUS = (0.15, 0.37)  # circumradius
_TRI_JITTER = 0.45  # radians of random vertex-angle jitter (< pi/3 keeps vertex order)
# mean area of the jittered triangle with unit circumradius (radius factors
# uniform in [0.7, 1]); Monte Carlo, 2e6 samples (equilateral: 1.299)
_TRIANGLE_UNIT_AREA = 0.8769
_COVERAGE = 0.21  # target foreground fraction, like the Perlin masks
_COUNT_SPREAD = 0.5  # per-image object count uniform in mean * [1 - s, 1 + s]
_DISTRACTOR_DENSITY = 0.5  # distractors, relative to the labelled objects


def _mean_square(lo: float, hi: float) -> float:
    """E[x^2] for x uniform in [lo, hi]."""
    return (hi**3 - lo**3) / (3.0 * (hi - lo))


_MEAN_AREA = {  # in units of ref^2
    "circles": math.pi * _mean_square(*_CIRCLE_RADIUS),
    "triangles": _TRIANGLE_UNIT_AREA * _mean_square(*_TRIANGLE_RADIUS),
}
_MAX_EXTENT = {"circles": _CIRCLE_RADIUS[1], "triangles": _TRIANGLE_RADIUS[1]}


def _shape_layout(kind: str, shape: tuple[int, int], cell: tuple[float, float],
                  density: float = 1.0) -> tuple[int, int, float, float]:
    """(min count, max count, reference length, margin) of circles/triangles."""
    ref = 2.0 * min(cell)
    margin = _MAX_EXTENT[kind] * ref
    box = (shape[0] + 2.0 * margin) * (shape[1] + 2.0 * margin)
    # Boolean model: coverage = 1 - exp(-objects per pixel * mean object area)
    mean = density * -math.log(1.0 - _COVERAGE) * box / (_MEAN_AREA[kind] * ref * ref)
    lo = int(round((1.0 - _COUNT_SPREAD) * mean))
    hi = max(lo, 1, int(round((1.0 + _COUNT_SPREAD) * mean)))
    return lo, hi, ref, margin


def _shapes_width(kind: str, k: int) -> int:
    # count + per object: centre (2) + size (1) [+ rotation 1 + jitter 3 + radius factor 3]
    return 1 + k * (3 if kind == "circles" else 10)


def _object_geometry(kind: str, per: np.ndarray, ref: float, margin: float,
                     shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Geometry of objects from their uniforms ``per`` (..., width): circles or triangles."""
    h, w = shape
    cy = per[..., 0] * (h + 2.0 * margin) - margin
    cx = per[..., 1] * (w + 2.0 * margin) - margin
    if kind == "circles":
        r = (_CIRCLE_RADIUS[0] + per[..., 2] * (_CIRCLE_RADIUS[1] - _CIRCLE_RADIUS[0])) * ref
        return {"cy": cy, "cx": cx, "r": r}
    # triangles: three vertices at angles rot + 2*pi*j/3 + jitter, radii R * [0.7, 1]
    big_r = (_TRIANGLE_RADIUS[0] + per[..., 2] * (_TRIANGLE_RADIUS[1] - _TRIANGLE_RADIUS[0])) * ref
    rot = per[..., 3] * 2.0 * math.pi
    ang = (rot[..., None] + np.arange(3) * (2.0 * math.pi / 3.0)
           + (per[..., 4:7] * 2.0 - 1.0) * _TRI_JITTER)  # counter-clockwise
    rad = big_r[..., None] * (0.7 + 0.3 * per[..., 7:10])
    return {"vy": cy[..., None] + rad * np.sin(ang), "vx": cx[..., None] + rad * np.cos(ang)}


def _inside(kind: str, geo: dict[str, np.ndarray], yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Inside test for a batch of objects (b,) on pixel centres yy (H,) / xx (W,) -> bool (b, H, W).

    Works separably: every test is (per-row term) op (per-column term).
    """
    yy = yy.astype(np.float32)
    xx = xx.astype(np.float32)
    if kind == "circles":
        ddy = (yy[None, :] - geo["cy"][:, None].astype(np.float32)) ** 2
        ddx = (xx[None, :] - geo["cx"][:, None].astype(np.float32)) ** 2
        r2 = (geo["r"] ** 2).astype(np.float32)
        # dy^2 + dx^2 <= r^2  <=>  dy^2 <= r^2 - dx^2 (one broadcast comparison)
        return ddy[:, :, None] <= (r2[:, None] - ddx)[:, None, :]
    vy, vx = geo["vy"], geo["vx"]
    inside = None
    for j in range(3):
        j1 = (j + 1) % 3
        # edge function, >= 0 on the inner side of edge j -> j1 for CCW vertices
        a = (vx[:, j1] - vx[:, j]).astype(np.float32)
        c = (vy[:, j1] - vy[:, j]).astype(np.float32)
        ey = a[:, None] * (yy[None, :] - vy[:, j, None].astype(np.float32))  # (b, H)
        ex = c[:, None] * (xx[None, :] - vx[:, j, None].astype(np.float32))  # (b, W)
        half = ey[:, :, None] >= ex[:, None, :]
        inside = half if inside is None else (inside & half)
    return inside


# up to this many object slots, loop over slots vectorised over images;
# beyond (large images with small objects), rasterise each object in its box
_MAX_SLOTS_DENSE = 32


def _render_shapes(kind: str, u: np.ndarray, lo: int, hi: int, ref: float, margin: float,
                   shape: tuple[int, int], dense: bool | None = None) -> np.ndarray:
    """Filled circles or triangles from per-image uniforms ``u`` -> bool (b, H, W).

    ``u[:, 0]`` sets the count in [lo, hi]; ``u[:, 1:]`` holds ``hi`` slots of
    per-object uniforms. Memory stays O(b * H * W) whatever the count.
    """
    b = u.shape[0]
    h, w = shape
    count = lo + np.minimum(np.floor(u[:, 0] * (hi - lo + 1)), hi - lo).astype(np.intp)
    per = u[:, 1:].reshape(b, hi, -1)
    geo = _object_geometry(kind, per, ref, margin, shape)
    if kind == "circles":
        y0, y1 = geo["cy"] - geo["r"], geo["cy"] + geo["r"]
        x0, x1 = geo["cx"] - geo["r"], geo["cx"] + geo["r"]
    else:
        y0, y1 = geo["vy"].min(-1), geo["vy"].max(-1)
        x0, x1 = geo["vx"].min(-1), geo["vx"].max(-1)
    # bounding boxes in pixel indices (pixel i has its centre at i + 0.5)
    r0 = np.clip(np.floor(y0 - 0.5), 0, h).astype(np.intp)
    r1 = np.clip(np.ceil(y1 - 0.5) + 1, 0, h).astype(np.intp)
    c0 = np.clip(np.floor(x0 - 0.5), 0, w).astype(np.intp)
    c1 = np.clip(np.ceil(x1 - 0.5) + 1, 0, w).astype(np.intp)
    use = (np.arange(hi)[None, :] < count[:, None]) & (r0 < r1) & (c0 < c1)
    yy = np.arange(h) + 0.5
    xx = np.arange(w) + 0.5
    out = np.zeros((b, h, w), dtype=bool)
    if dense is None:
        dense = hi <= _MAX_SLOTS_DENSE
    if dense:  # loop over object slots, vectorised over images
        for k in range(hi):
            idx = np.nonzero(use[:, k])[0]
            if idx.size:
                out[idx] |= _inside(kind, {key: v[idx, k] for key, v in geo.items()}, yy, xx)
        return out
    # sparse: one object at a time, only inside its bounding box
    for i, k in zip(*np.nonzero(use)):
        ys, xs = slice(r0[i, k], r1[i, k]), slice(c0[i, k], c1[i, k])
        one = {key: v[i:i + 1, k] for key, v in geo.items()}
        out[i, ys, xs] |= _inside(kind, one, yy[ys], xx[xs])[0]
    return out


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------


def _sobel_magnitude(m: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a (b, H, W) 0/1 map, per image, scaled to [0, 1]."""
    p = np.pad(m.astype(np.float32), ((0, 0), (1, 1), (1, 1)), mode="edge")
    # smoothing [1, 2, 1] across, difference [-1, 0, 1] along
    sy = p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]
    gy = sy[:, 2:, :] - sy[:, :-2, :]
    sx = p[:, :-2, :] + 2.0 * p[:, 1:-1, :] + p[:, 2:, :]
    gx = sx[:, :, 2:] - sx[:, :, :-2]
    mag = np.sqrt(gy * gy + gx * gx) * 0.25  # a 0 -> 1 step gives 4
    return np.minimum(mag, 1.0, out=mag)


def _ramp(u: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear ramps with random direction, zero mean and unit std over the image: (b, H, W)."""
    h, w = shape
    theta = u * 2.0 * math.pi
    cos, sin = np.cos(theta), np.sin(theta)
    var = cos**2 * (h * h - 1) / 12.0 + sin**2 * (w * w - 1) / 12.0
    inv = 1.0 / np.sqrt(var)
    ry = ((np.arange(h) - (h - 1) / 2.0)[None, :] * (cos * inv)[:, None]).astype(np.float32)
    rx = ((np.arange(w) - (w - 1) / 2.0)[None, :] * (sin * inv)[:, None]).astype(np.float32)
    return ry[:, :, None] + rx[:, None, :]


def _to_uint8(img: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """Round half to even, count and clip to [0, 255], store in ``out``; returns (n_low, n_high)."""
    np.rint(img, out=img)
    low = int(np.count_nonzero(img < 0.0))
    high = int(np.count_nonzero(img > 255.0))
    np.clip(img, 0.0, 255.0, out=img)
    out[...] = img  # exact: integral values in [0, 255]
    return low, high


def _finish_stats(n_pixels: int, n_fg: int, low: int, high: int, stacklevel: int) -> GenerationStats:
    stats = GenerationStats(
        n_pixels=n_pixels,
        foreground_fraction=n_fg / n_pixels,
        clipped_fraction=(low + high) / n_pixels,
        clipped_low_fraction=low / n_pixels,
        clipped_high_fraction=high / n_pixels,
    )
    if stats.clipped_fraction > CLIP_WARN_FRACTION:
        warnings.warn(
            f"{100 * stats.clipped_fraction:.1f} % of the generated pixels were clipped to [0, 255] "
            f"({100 * stats.clipped_low_fraction:.1f} % at 0, {100 * stats.clipped_high_fraction:.1f} % at 255); "
            f"the grey values no longer follow the requested normal distributions. Keep the means within "
            f"{SAFE_MU_RANGE[0]}..{SAFE_MU_RANGE[1]} and the sigmas at most {SAFE_SIGMA_MAX}.",
            ClippingWarning,
            stacklevel=stacklevel,
        )
    return stats


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def draw_parameters(seed: SeedLike = None, n: int | None = None, *, min_distance: float = 24.0,
                    mu_range: tuple[int, int] = SAFE_MU_RANGE,
                    sigma_range: tuple[int, int] = (6, SAFE_SIGMA_MAX)) -> dict[str, Any]:
    """Draw random ``(mu0, sigma0, mu1, sigma1)`` inside the non-clipping range.

    This is the thesis' experiment #3 "random" dataset: all four parameters
    are random. Use it as ``generate(n, **draw_parameters(seed))`` for one
    random domain, or ``generate(n, **draw_parameters(seed, n))`` for
    different parameters in every image.

    Parameters
    ----------
    seed : int, numpy Generator or SeedSequence, optional
        Seed; the same seed gives the same draw.
    n : int, optional
        If given, draw ``n`` parameter sets and return arrays of length ``n``.
    min_distance : float, default 24
        Minimum ``|mu1 - mu0|`` (grey values), so that the classes are
        distinguishable (24 is the smallest distance of the thesis' 1-800 grid).
        Either class may be the brighter one.
    mu_range : (int, int), default (64, 192)
        Inclusive range of the means (grey values).
    sigma_range : (int, int), default (6, 30)
        Inclusive range of the standard deviations (grey values).

    Returns
    -------
    dict
        ``{"mu0", "sigma0", "mu1", "sigma1"}``: whole numbers drawn uniformly
        (Python ints, or int arrays of length ``n``).
    """
    if not isinstance(min_distance, numbers.Real) or isinstance(min_distance, (bool, np.bool_)):
        raise BNAdaptError(f"min_distance must be a number (grey values); got {min_distance!r}.")
    lo, hi = (int(v) for v in mu_range)
    slo, shi = (int(v) for v in sigma_range)
    if not (0 <= lo <= hi) or not (0 <= slo <= shi):
        raise BNAdaptError(f"Invalid ranges mu_range={mu_range!r}, sigma_range={sigma_range!r}.")
    if not (0 <= min_distance <= hi - lo):
        raise BNAdaptError(f"min_distance must be between 0 and {hi - lo} (the width of mu_range); "
                           f"got {min_distance!r}.")
    count = 1 if n is None else _check_n(n)
    rng = np.random.default_rng(_seed_sequence(seed))
    mu0 = rng.integers(lo, hi, size=count, endpoint=True)
    mu1 = rng.integers(lo, hi, size=count, endpoint=True)
    bad = np.abs(mu1 - mu0) < min_distance
    while np.any(bad):  # rejection sampling; accepts at least ~1/3 of draws in the default range
        mu1[bad] = rng.integers(lo, hi, size=int(bad.sum()), endpoint=True)
        bad = np.abs(mu1 - mu0) < min_distance
    sig = rng.integers(slo, shi, size=(count, 2), endpoint=True)
    out = {"mu0": mu0, "sigma0": sig[:, 0], "mu1": mu1, "sigma1": sig[:, 1]}
    if n is None:
        return {k: int(v[0]) for k, v in out.items()}
    return out


def generate(
    n: int,
    shape: Sequence[int] = (64, 64),
    mu0: ArrayOrScalar = 96,
    sigma0: ArrayOrScalar = 18,
    mu1: ArrayOrScalar = 138,
    sigma1: ArrayOrScalar = 18,
    seed: SeedLike = None,
    *,
    shapes: Literal["perlin", "circles", "triangles"] = "perlin",
    style: Literal["noise", "gradient", "edges"] = "noise",
    return_stats: bool = False,
    cell_size: float | Sequence[float] | None = None,
    distractors: bool = False,
    edge_strength: float = DEFAULT_EDGE_STRENGTH,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, GenerationStats]:
    """Generate toy mitochondria images and their masks.

    Parameters
    ----------
    n : int
        Number of image/mask pairs (>= 1).
    shape : (int, int) or int, default (64, 64)
        Image size (H, W) in pixels; each side >= 16.
    mu0, sigma0 : float or array of n floats, default 96, 18
        Mean and standard deviation (grey values, 0..255 scale) of the
        background class. Arrays give every image its own value.
    mu1, sigma1 : float or array of n floats, default 138, 18
        Mean and standard deviation (grey values) of the object class.
        ``64 <= mu <= 192`` and ``sigma <= 30`` keep clipping below 2 %.
    seed : int, numpy Generator or SeedSequence, optional
        Seed (``numpy.random.default_rng`` semantics). The same seed gives
        identical output; also, the first m images of ``generate(n, seed=s)``
        do not depend on ``n``. ``None``: fresh randomness.
    shapes : {"perlin", "circles", "triangles"}, default "perlin"
        Objects of the mask. ``"perlin"``: ``|Perlin noise| > 0.4`` blobs with
        the thesis' random-crop translation correction (about 21 +- 8 %
        foreground). ``"circles"`` / ``"triangles"``: filled circles (radius
        8-20 % of ``2 * cell_size``, i.e. of the image side by default) or
        triangles (circumradius 15-37 %, random rotation, vertex angles
        jittered by up to 0.45 rad and radii by up to 30 %), as in the
        thesis' triangles-and-circles experiment. Objects may overlap; each
        image is a window onto an endless plane of them (centres uniform over
        the image plus a margin), so the border cuts them as often as
        anywhere and the foreground fraction is about 21 % whatever the image
        size (per-image spread about 10 % at 64 x 64). The object count per
        image varies by +-50 % around its mean (4 to 11 circles or 6 to 17
        triangles at 64 x 64, some only partly visible).
    style : {"noise", "gradient", "edges"}, default "noise"
        How the image is rendered from the mask:

        ``"noise"``
            Each pixel ~ ``N(mu1, sigma1)`` on the mask, ``N(mu0, sigma0)``
            elsewhere (independent pixels).
        ``"gradient"``
            No pixel noise: the objects and the background are each filled
            with a smooth linear ramp of random direction (independent for
            the two classes and for every image), mean ``mu1`` resp. ``mu0``
            and standard deviation over the image ``sigma1`` resp. ``sigma0``
            (thesis experiment #3 "gradient").
        ``"edges"``
            The ``"noise"`` image plus ``edge_strength`` times the Sobel
            gradient magnitude of the mask (scaled to [0, 1]), so object
            borders carry a 2-pixel bright (or, for a negative
            ``edge_strength``, dark) rim (thesis experiment #3 "edges").
    return_stats : bool, default False
        Also return a :class:`GenerationStats`.
    cell_size : float or (float, float), optional
        Object scale: the Perlin lattice cell in pixels (default ``shape / 2``,
        the thesis' 2 x 2 lattice). For circles/triangles, sizes are relative
        to ``2 * cell_size`` and the object count scales with the image area
        in units of ``(2 * cell_size)**2``. Use e.g. ``cell_size=32`` for
        256 x 256 images with objects the size of those in 64 x 64 images.
    distractors : bool, default False
        Circles/triangles only: also draw objects of the *other* kind (at
        half the density) with the object intensities but *not* in the mask,
        so the task needs shape recognition (the thesis' "shape recognition
        on top of shape detection"; our reading of it). Where a labelled
        object and a distractor overlap, the pixel is labelled.
    edge_strength : float, default 64
        Rim brightness (grey values) of the ``"edges"`` style.

    Returns
    -------
    images : ndarray of uint8, shape (n, H, W)
        The rendered images, rounded to the nearest integer (not truncated)
        and clipped to [0, 255].
    masks : ndarray of uint8, shape (n, H, W)
        0 = background, 1 = object.
    stats : GenerationStats
        Only with ``return_stats=True``.

    Raises
    ------
    BNAdaptError
        For invalid parameters.

    Warns
    -----
    ClippingWarning
        If more than 2 % of the pixels were clipped to 0 or 255.

    Notes
    -----
    Fully vectorised over images (chunks of about 1 M pixels): 10,000
    64 x 64 Perlin pairs take about 0.7 s on a small 2-core machine, most
    of it drawing the normal noise (the thesis' per-image generator took
    about 40 s; see ``benchmarks/bench_generate.py``). The masks equal
    ``np.abs(perlin_2d(n, shape, seed=seed)) > 0.4`` for the same seed.
    """
    n = _check_n(n)
    shape = _check_shape(shape, 2)
    params = _check_params(n, mu0=mu0, sigma0=sigma0, mu1=mu1, sigma1=sigma1)
    shapes = _check_choice(shapes, SHAPES, "shapes")
    style = _check_choice(style, STYLES, "style")
    cell = _check_cell(cell_size, shape)
    if not isinstance(distractors, (bool, np.bool_)):
        raise BNAdaptError(f"distractors must be True or False; got {distractors!r}.")
    if distractors and shapes == "perlin":
        raise BNAdaptError("distractors=True needs shapes='circles' or 'triangles'.")
    if not isinstance(edge_strength, numbers.Real) or not math.isfinite(edge_strength):
        raise BNAdaptError(f"edge_strength must be a finite number (grey values); got {edge_strength!r}.")

    h, w = shape
    # per-image parameters: one row of uniforms per image (prefix-stable in n)
    if shapes == "perlin":
        width = _perlin_2d_width(shape, cell)
    else:
        lo, hi, ref, margin = _shape_layout(shapes, shape, cell)
        other = "triangles" if shapes == "circles" else "circles"
        dlo, dhi, _, dmargin = _shape_layout(other, shape, cell, _DISTRACTOR_DENSITY)
        width = _shapes_width(shapes, hi) + (_shapes_width(other, dhi) if distractors else 0)
    if style == "gradient":
        width += 2
    ss_params, ss_noise = _seed_sequence(seed).spawn(2)
    u_all = np.random.default_rng(ss_params).random((n, width))

    chunk = max(1, _CHUNK_PIXELS // (h * w))
    n_chunks = -(-n // chunk)
    noise_seeds = ss_noise.spawn(n_chunks) if style != "gradient" else [None] * n_chunks
    images = np.empty((n, h, w), dtype=np.uint8)
    masks = np.empty((n, h, w), dtype=np.uint8)
    low = high = n_fg = 0
    for ci in range(n_chunks):
        s, e = ci * chunk, min(n, (ci + 1) * chunk)
        u = u_all[s:e]
        # ---- mask (and the "bright" map, which includes distractors)
        if shapes == "perlin":
            offsets, angles = _perlin_2d_params(u, shape, cell)
            noise = _perlin_2d_from(angles, offsets, shape, cell)
            mask = np.abs(noise, out=noise) > PERLIN_THRESHOLD
            bright = mask
        else:
            wl = _shapes_width(shapes, hi)
            mask = _render_shapes(shapes, u[:, :wl], lo, hi, ref, margin, shape)
            bright = mask
            if distractors:
                wd = _shapes_width(other, dhi)
                dist = _render_shapes(other, u[:, wl:wl + wd], dlo, dhi, ref, dmargin, shape)
                bright = mask | dist
        masks[s:e] = mask
        n_fg += int(np.count_nonzero(mask))

        m0 = params["mu0"][s:e, None, None].astype(np.float32)
        m1 = params["mu1"][s:e, None, None].astype(np.float32)
        s0 = params["sigma0"][s:e, None, None].astype(np.float32)
        s1 = params["sigma1"][s:e, None, None].astype(np.float32)
        # ---- image
        # blend with a float copy of the map (much faster than np.where with
        # broadcast per-image parameters); in-place to limit passes over memory
        mf = bright.astype(np.float32)
        if style == "gradient":
            img = _ramp(u[:, -2], shape)
            img *= s0
            img += m0
            obj = _ramp(u[:, -1], shape)
            obj *= s1
            obj += m1
            obj -= img
            obj *= mf
            img += obj
        else:
            img = np.random.default_rng(noise_seeds[ci]).standard_normal((e - s, h, w), dtype=np.float32)
            sd = mf * (s1 - s0)
            sd += s0
            img *= sd
            mf *= m1 - m0
            mf += m0
            img += mf
            if style == "edges":
                img += np.float32(edge_strength) * _sobel_magnitude(bright)
        lo_c, hi_c = _to_uint8(img, images[s:e])
        low += lo_c
        high += hi_c

    stats = _finish_stats(n * h * w, n_fg, low, high, stacklevel=3)
    if return_stats:
        return images, masks, stats
    return images, masks


def generate_volume(
    shape: Sequence[int] = (16, 256, 256),
    mu0: float = 96,
    sigma0: float = 18,
    mu1: float = 138,
    sigma1: float = 18,
    seed: SeedLike = None,
    *,
    cell_size: float | Sequence[float] = (16, 32, 32),
    return_stats: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, GenerationStats]:
    """Generate a 3D toy mitochondria stack whose slices are coherent.

    The mask is ``|3D Perlin noise| > 0.4`` (random unit 3D gradients,
    quintic fade, random integer offset in ``[0, ceil(cell))`` per axis),
    so an object continues over neighbouring slices; the image is
    ``N(mu1, sigma1)`` on the mask and ``N(mu0, sigma0)`` elsewhere, rounded
    and clipped to [0, 255] like :func:`generate`.

    Parameters
    ----------
    shape : (int, int, int), default (16, 256, 256)
        Volume size (Z, Y, X) in voxels; Z >= 2, Y and X >= 16.
    mu0, sigma0 : float, default 96, 18
        Background mean and standard deviation (grey values).
    mu1, sigma1 : float, default 138, 18
        Object mean and standard deviation (grey values).
    seed : int, numpy Generator or SeedSequence, optional
        Seed; the same seed gives an identical volume.
    cell_size : float or (float, float, float), default (16, 32, 32)
        Lattice cell size in voxels along (Z, Y, X). 32 px in-plane gives
        objects the size of those in the default 64 x 64 images; 16 along Z
        makes objects about half as deep as wide, and the masks of adjacent
        slices overlap with an IoU of about 0.8 (0.6 for 8, 0.9 for 32).
    return_stats : bool, default False
        Also return a :class:`GenerationStats`.

    Returns
    -------
    volume : ndarray of uint8, shape (Z, Y, X)
    mask : ndarray of uint8, shape (Z, Y, X), values 0/1
    stats : GenerationStats
        Only with ``return_stats=True``.

    Raises
    ------
    BNAdaptError
        For invalid parameters.

    Warns
    -----
    ClippingWarning
        If more than 2 % of the voxels were clipped to 0 or 255.
    """
    shape = _check_volume_shape(shape)
    p = _check_params(1, mu0=mu0, sigma0=sigma0, mu1=mu1, sigma1=sigma1)
    cell = _check_cell(cell_size, shape)
    ss_params, ss_noise = _seed_sequence(seed).spawn(2)
    grad, offsets = _perlin_3d_draw(np.random.default_rng(ss_params), shape, cell)
    noise = _perlin_3d_from(grad, offsets, shape, cell)
    mask = np.abs(noise, out=noise) > PERLIN_THRESHOLD
    z = np.random.default_rng(ss_noise).standard_normal(shape, dtype=np.float32)
    img = np.where(mask,
                   np.float32(p["mu1"][0]) + np.float32(p["sigma1"][0]) * z,
                   np.float32(p["mu0"][0]) + np.float32(p["sigma0"][0]) * z)
    volume = np.empty(shape, dtype=np.uint8)
    low, high = _to_uint8(img, volume)
    mask_u8 = mask.astype(np.uint8)
    stats = _finish_stats(volume.size, int(np.count_nonzero(mask)), low, high, stacklevel=3)
    if return_stats:
        return volume, mask_u8, stats
    return volume, mask_u8
