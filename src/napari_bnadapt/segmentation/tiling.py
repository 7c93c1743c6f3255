"""Tile geometry, torch-free: tile starts, balanced tile grids, blending ramps, and the per-slice tiler."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import BNAdaptError
from ..model.layout import SIZE_MULTIPLE


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` (tiles stay inside when length >= tile)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Side and start offsets of the fewest equal tiles of at most ``tile`` px covering ``length``.

    Neighbours overlap by at least ``overlap`` px and the tiles stay inside the
    image; the side is a multiple of 16. A length that fits in one tile gives one
    tile of the length rounded up to 16 (the caller pads).
    """
    if length <= tile:
        return min(tile, _ceil_to(length, SIZE_MULTIPLE)), [0]
    n = -(-(length - overlap) // (tile - overlap))
    side = min(tile, _ceil_to(-(-(length + (n - 1) * overlap) // n), SIZE_MULTIPLE))
    return side, [i * (length - side) // (n - 1) for i in range(n)]


def _ramp(n: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    w = np.ones(n, np.float32)
    if overlap > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap, dtype=np.float32) + 0.5) / overlap)
        if left:
            w[:overlap] = r
        if right:
            w[-overlap:] = r[::-1]
    return w


class _SliceTiler:
    """Tile geometry shared by all slices of one stack."""

    def __init__(self, height: int, width: int, tile_size: int, overlap: int) -> None:
        if tile_size % SIZE_MULTIPLE or tile_size < SIZE_MULTIPLE:
            raise BNAdaptError(f"tile_size must be a positive multiple of {SIZE_MULTIPLE}, not {tile_size}")
        if not 0 <= overlap < tile_size // 2:
            raise BNAdaptError(f"overlap must be between 0 and half the tile size ({tile_size // 2}), not {overlap}")
        self.h, self.w = height, width
        # a slice smaller than a tile is padded up to the next multiple of 16
        self.th, self.ys = tile_grid(height, tile_size, overlap)
        self.tw, self.xs = tile_grid(width, tile_size, overlap)
        #: blending weight of each tile, None where a slice is a single tile (weight 1)
        self.weights: dict[tuple[int, int], np.ndarray] | None = None
        #: 1 / (sum of the weights) over the slice, the same for every slice
        self.inv_total: np.ndarray | None = None
        if self.per_slice > 1:
            self.weights = {}
            total = np.zeros((height, width), np.float32)
            for i, y in enumerate(self.ys):
                for j, x in enumerate(self.xs):
                    wy = _ramp(self.th, overlap, i > 0, i < len(self.ys) - 1)
                    wx = _ramp(self.tw, overlap, j > 0, j < len(self.xs) - 1)
                    self.weights[(y, x)] = wgt = np.outer(wy, wx)
                    total[y : y + self.th, x : x + self.tw] += wgt[: height - y, : width - x]
            self.inv_total = 1.0 / total

    @property
    def per_slice(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self, img: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (y, x, tile) for a normalised 2D slice; small slices are reflect-padded."""
        ph, pw = max(0, self.th - img.shape[0]), max(0, self.tw - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
        for y in self.ys:
            for x in self.xs:
                yield y, x, img[y : y + self.th, x : x + self.tw]
