"""``LazyStack``: a stack decoded one plane at a time, and slice-numbering helpers."""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from .stack_info import _import_optional

_DIGITS = re.compile(r"([0-9]+)")


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders '2.tif' before '10.tif' (text order puts '10' first).

    Numbers are compared by value, the rest case-insensitively; the name itself
    breaks ties so the order is always the same.
    """
    parts = _DIGITS.split(name.lower())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _ranges(numbers: Sequence[int]) -> str:
    """[4, 7, 8, 9] -> '4, 7-9'."""
    out: list[str] = []
    nums = sorted(numbers)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}–{nums[j]}")
        i = j + 1
    if len(out) > 12:
        out = out[:12] + [f"… ({len(nums)} in all)"]
    return ", ".join(out)


def _numbering_notes(names: Sequence[str]) -> list[str]:
    """Notes on how slice files were ordered; raises on duplicate numbers.

    ``names`` is already in natural order.
    """
    notes: list[str] = []
    stems = [os.path.splitext(n)[0] for n in names]
    split = [_DIGITS.split(s) for s in stems]
    templates = {tuple(p[0::2]) for p in split}
    if len(templates) > 1:
        examples = ", ".join(names[:3])
        notes.append(
            f"The slice file names do not follow one pattern (e.g. {examples}); they were put in "
            "natural order (numbers by value). Check that the slice order is right."
        )
        return notes
    numbers = [[int(x) for x in p[1::2]] for p in split]
    if not numbers or not numbers[0]:
        notes.append("The slice file names contain no numbers; they were put in alphabetical order.")
        return notes
    columns = list(zip(*numbers))
    varying = [i for i, c in enumerate(columns) if len(set(c)) > 1]
    if not varying:
        return notes
    if len(varying) > 1:
        notes.append(
            "The slice file names differ in more than one number; they were ordered by each number "
            f"in turn (first: {names[0]}, last: {names[-1]})."
        )
        return notes
    col = [c[varying[0]] for c in numbers]
    seen: dict[int, str] = {}
    for n, name in zip(col, names):
        if n in seen:
            raise BNAdaptError(
                f"Two slice files have the same number {n}: '{seen[n]}' and '{name}'. "
                "The slice order is ambiguous; remove or rename one of them."
            )
        seen[n] = name
    raw = [p[2 * varying[0] + 1] for p in split]
    if len({len(r) for r in raw}) > 1:
        notes.append(
            f"Slice numbers are not (consistently) zero-padded ({names[0]} … {names[-1]}); the slices "
            "were put in numeric order (2 before 10), not text order."
        )
    lo, hi = min(col), max(col)
    missing = sorted(set(range(lo, hi + 1)) - set(col))
    if missing:
        word = "number" if len(missing) == 1 else "numbers"
        notes.append(
            f"Slice {word} {_ranges(missing)} {'is' if len(missing) == 1 else 'are'} missing from the "
            f"files (numbered {lo} to {hi}): the stack has {len(col)} slices, and slices on either side "
            "of a gap are now adjacent. Check that no files were lost when copying."
        )
    return notes


def _is_int(k: object) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


class LazyStack:
    """A read-only, array-like stack of planes decoded on demand.

    ``LazyStack`` looks like a NumPy array (``shape``, ``dtype``, ``ndim``,
    ``arr[i]``, ``arr[a:b, y0:y1]``, ``numpy.asarray(arr)``): indexing decodes
    only the planes (files or TIFF pages) it returns and gives a NumPy array.
    :meth:`lazy_slice` (used by :func:`crop_and_downsample`) returns another
    ``LazyStack`` without reading anything. ``to_dask()`` wraps it for dask.

    Args:
        read_plane: ``read_plane(i) -> ndarray`` decodes source plane ``i``.
        n_planes: number of planes (first axis).
        plane_shape: shape of one decoded plane.
        dtype: dtype of a decoded plane.
        label: shown in repr and in error messages.
    """

    def __init__(
        self,
        read_plane: Callable[[int], np.ndarray],
        n_planes: int,
        plane_shape: tuple[int, ...],
        dtype: np.dtype | str | type,
        *,
        label: str = "",
        _index: np.ndarray | None = None,
        _plane_key: tuple[slice, ...] | None = None,
    ) -> None:
        self._read_plane = read_plane
        self._full_plane_shape = tuple(int(s) for s in plane_shape)
        self._index = np.arange(n_planes, dtype=np.intp) if _index is None else np.asarray(_index, np.intp)
        self._plane_key = _plane_key or tuple(slice(0, n, 1) for n in self._full_plane_shape)
        self.dtype = np.dtype(dtype)
        self.label = label
        plane = tuple(len(range(*k.indices(n))) for k, n in zip(self._plane_key, self._full_plane_shape))
        self.shape: tuple[int, ...] = (len(self._index), *plane)

    # numpy-ish attributes
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self.dtype}, source={self.label!r})"

    # reading
    def _plane(self, i: int) -> np.ndarray:
        src = int(self._index[i])
        plane = np.asarray(self._read_plane(src))
        if plane.shape != self._full_plane_shape:
            raise BNAdaptError(
                f"Plane {src} of {self.label or 'the stack'} has shape {plane.shape}, but "
                f"{self._full_plane_shape} was expected. Was the file changed after it was opened?"
            )
        if plane.dtype != self.dtype:
            if plane.dtype.kind == self.dtype.kind and plane.dtype.itemsize == self.dtype.itemsize:
                plane = plane.astype(self.dtype)  # byte order only
            else:
                raise BNAdaptError(
                    f"Plane {src} of {self.label or 'the stack'} is {plane.dtype}, but {self.dtype} "
                    "was expected. Was the file changed after it was opened?"
                )
        return plane[self._plane_key]

    def _normalise_key(self, key: Any) -> tuple:
        if not isinstance(key, tuple):
            key = (key,)
        n_ell = sum(1 for k in key if k is Ellipsis)
        if n_ell > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ell:
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = self.ndim - (len(key) - 1)
            key = key[:i] + (slice(None),) * fill + key[i + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices: stack is {self.ndim}-dimensional, {len(key)} were given")
        return key

    def __getitem__(self, key: Any) -> np.ndarray:
        if key is None or (isinstance(key, tuple) and any(k is None for k in key)):
            return np.asarray(self)[key]  # newaxis: rare, not worth optimising
        key = self._normalise_key(key)
        if not key:
            key = (slice(None),)
        k0, rest = key[0], key[1:]
        n = self.shape[0]
        basic_rest = all(isinstance(k, slice) or _is_int(k) for k in rest)
        if _is_int(k0):
            i = operator.index(k0)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for a stack of {n} planes")
            plane = self._plane(i % n)
            return plane[rest] if rest else plane
        if isinstance(k0, slice):
            positions: Sequence[int] = range(*k0.indices(n))
            inverse = None
        else:
            wanted = np.arange(n)[np.asarray(k0)]  # validates bounds, bools, ...
            uniq, inverse = np.unique(wanted, return_inverse=True)
            positions = [int(u) for u in uniq]
            inverse = inverse.reshape(wanted.shape)
        if not positions:
            empty = np.empty((0, *self.shape[1:]), self.dtype)
            return empty[(slice(None) if inverse is None else inverse, *rest)]
        if inverse is None and basic_rest:
            return np.stack([self._plane(p)[rest] for p in positions])
        sub = np.stack([self._plane(p) for p in positions])
        return sub[(slice(None) if inverse is None else inverse, *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def astype(self, dtype: Any) -> np.ndarray:
        """Read everything and convert (like ``numpy.asarray(stack).astype(dtype)``)."""
        return np.asarray(self).astype(dtype)

    def lazy_slice(self, key: Sequence[slice]) -> LazyStack:
        """A view for ``key`` (slices with positive steps only); reads nothing."""
        key = tuple(key) + (slice(None),) * (self.ndim - len(tuple(key)))
        if len(key) != self.ndim or not all(isinstance(k, slice) for k in key):
            raise TypeError("lazy_slice takes one slice per axis")
        for k in key:
            if k.step is not None and k.step <= 0:
                raise ValueError("lazy_slice needs positive steps")
        index = self._index[key[0]]
        plane_key = []
        for old, new, full in zip(self._plane_key, key[1:], self._full_plane_shape):
            sub = range(*old.indices(full))[new]
            plane_key.append(slice(sub.start, sub.stop, sub.step))
        return LazyStack(
            self._read_plane,
            len(self._index),
            self._full_plane_shape,
            self.dtype,
            label=self.label,
            _index=index,
            _plane_key=tuple(plane_key),
        )

    def to_dask(self) -> Any:
        """A dask array with one chunk per plane (needs dask)."""
        da = _import_optional("dask.array", "stacks as dask arrays")
        return da.from_array(self, chunks=(1, *self.shape[1:]), asarray=True, name=False, meta=np.empty((0,) * self.ndim, self.dtype))


def _native_or_lazy(mm: np.memmap, lazy: bool, label: str) -> tuple[Any, str]:
    """The memmap itself, or (big-endian files) planes converted to native byte order on read."""
    native = mm.dtype.newbyteorder("=")
    if not lazy:
        return np.array(mm, dtype=native), "in-memory"
    if mm.dtype.isnative or mm.dtype.itemsize == 1:
        return mm, "memmap"
    if mm.ndim < 3:
        return np.array(mm, dtype=native), "in-memory"

    def read_plane(i: int, _mm: np.memmap = mm) -> np.ndarray:
        return np.asarray(_mm[i], dtype=native)

    return LazyStack(read_plane, mm.shape[0], mm.shape[1:], native, label=label), "lazy-pages"


def _undecodable(p: Path, exc: BaseException, page: int | None = None) -> BNAdaptError:
    where = f"page {page + 1} of '{p.name}'" if page is not None else f"'{p.name}'"
    return BNAdaptError(
        f"The image data of {where} cannot be decoded ({exc}). The file is damaged; copy it "
        "again, or open it in Fiji and save it as a new TIFF."
    )


def _truncated(p: Path, needed: int, size: int) -> BNAdaptError:
    return BNAdaptError(
        f"'{p.name}' is truncated: it should hold {needed:,} bytes of image data but the file has "
        f"only {size:,} bytes. It was probably not copied completely; copy it again."
    )
