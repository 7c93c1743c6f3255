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
from typing import Any, Literal, Sequence, Union

import numpy as np

from ..errors import BNAdaptError
from .checks import (
    _CHUNK_PIXELS,
    DEFAULT_EDGE_STRENGTH,
    PERLIN_THRESHOLD,
    SAFE_MU_RANGE,
    SAFE_SIGMA_MAX,
    SHAPES,
    STYLES,
    GenerationStats,
    SeedLike,
    _check_cell,
    _check_choice,
    _check_n,
    _check_params,
    _check_shape,
    _seed_sequence,
)
from .perlin import (
    _check_volume_shape,
    _perlin_2d_from,
    _perlin_2d_params,
    _perlin_2d_width,
    _perlin_3d_draw,
    _perlin_3d_from,
)
from .shapes import (
    _DISTRACTOR_DENSITY,
    _finish_stats,
    _ramp,
    _render_shapes,
    _shape_layout,
    _shapes_width,
    _sobel_magnitude,
    _to_uint8,
)

ArrayOrScalar = Union[float, int, Sequence[float], np.ndarray]


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
