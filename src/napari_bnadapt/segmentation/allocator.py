"""Keep glibc from handing memory back to the kernel between forward passes on the CPU.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, the
activations of a forward pass (tens of MiB each) are either ``mmap``-ed and
unmapped every time, or carved from the heap top, which is trimmed back to the
kernel when they are freed. Either way every forward pass faults its working set
in again, page by page: on the 2-core benchmark machine that cost 35-45 % of the
segmentation time (1.5 million page faults for 24 Mpixel; ``benchmarks/
bench_cpu_throughput.py``). Raising the mmap and trim thresholds makes glibc reuse
the freed memory instead; the peak resident memory changes little, but after a run
the process keeps up to that peak instead of returning it.

This is process-wide: ``mallopt`` changes ``malloc`` for napari and every other
plugin in the process, not only for this package. So it is off by default and
applied only when the environment variable ``BNADAPT_MALLOC`` is ``tuned`` (read
through :func:`napari_bnadapt.settings.malloc_tuning`): once per process, on Linux
with glibc only, when the first CPU computation is about to start
(:func:`napari_bnadapt.model.device.get_device`). It pays on the main thread of a
script (``nb.segment`` 1.4-1.6x faster); in napari, where the widget adapts and
segments in a worker thread, it saved 4 % of the CPU time and left napari 58 MiB
larger after a run (``benchmarks/bench_allocator_napari.py``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from .. import settings

#: Largest block glibc then serves from its heap instead of a fresh mmap (its maximum on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the heap top kept for reuse instead of being returned to the kernel.
TRIM_THRESHOLD = 512 * 2**20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_state: dict[str, bool] = {}


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None off Linux/glibc or when it cannot be loaded."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; True when they are (or were already) raised.

    The first call decides, for the whole process: it does nothing, and returns False,
    off Linux/glibc or unless ``BNADAPT_MALLOC`` is ``tuned``
    (:func:`napari_bnadapt.settings.malloc_tuning`); later calls return that first answer.
    """
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    if settings.malloc_tuning():
        mallopt = _glibc_mallopt()
        if mallopt is not None:
            tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["tuned"] = tuned
    return tuned
