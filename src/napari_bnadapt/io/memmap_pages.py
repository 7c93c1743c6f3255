"""Reading memory-mapped stacks without keeping what was read resident.

Pages of a memory-mapped file that a process has touched count in its resident
memory until the kernel needs them back; on a machine with free memory it never
does, so reading a 2 GiB ``tifffile.memmap`` stack once makes the process 2 GiB
"bigger". :func:`read_released` copies the requested part and then tells the
kernel (``madvise(MADV_DONTNEED)``) that this process no longer needs those
pages: they leave its resident set, stay in the page cache, and are read again
if touched again. Only SHARED mappings (numpy modes ``"r"`` and ``"r+"``) are
released: in a private (``"c"``) mapping that would discard the caller's edits.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

_MADV_DONTNEED = 4
_libc = None


def _madvise() -> object | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            fn = lib.madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def release(view: np.ndarray) -> bool:
    """Drop the pages under ``view`` (a contiguous part of a shared memory map) from the resident set.

    Returns True when the kernel was asked, False when not possible here (not Linux,
    not a shared memmap, not contiguous). Never changes any data.
    """
    if not sys.platform.startswith("linux") or not isinstance(view, np.memmap):
        return False
    if getattr(view, "mode", None) not in ("r", "r+", "readonly", "readwrite") or not view.flags.c_contiguous:
        return False
    fn = _madvise()
    if fn is None or view.nbytes == 0:
        return False
    page = mmap.PAGESIZE
    start = view.ctypes.data
    end = start + view.nbytes
    # whole pages only: a partial page at either end may hold a neighbour's data that is still wanted
    a, b = -(-start // page) * page, end // page * page
    if b <= a:
        return False
    return fn(ctypes.c_void_p(a), ctypes.c_size_t(b - a), _MADV_DONTNEED) == 0


def read_released(data: np.ndarray, index: tuple) -> np.ndarray:
    """``np.array(data[index])`` (a copy), releasing the mapped pages it came from when ``data`` is a memmap."""
    view = data[index]
    out = np.array(view)
    if isinstance(view, np.memmap):
        release(view)
    return out
