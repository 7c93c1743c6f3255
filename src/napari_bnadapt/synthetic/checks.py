"""The generator's constants, argument checks, seeding, and the clipping warning."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

from ..errors import BNAdaptError

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


# pixels per chunk (a chunk of 256 images at 64 x 64): bounds memory and
# keeps the working set in cache; fixed, so results do not depend on n.
_CHUNK_PIXELS = 1 << 20


SeedLike = Union[None, int, np.integer, np.random.SeedSequence, np.random.Generator]


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
