"""Circles and triangles (with distractor objects) rendered as toy masks, and the 8-bit conversion
shared by every generator style."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .checks import (
    CLIP_WARN_FRACTION,
    SAFE_MU_RANGE,
    SAFE_SIGMA_MAX,
    ClippingWarning,
    GenerationStats,
)

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
