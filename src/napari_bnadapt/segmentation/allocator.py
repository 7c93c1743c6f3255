"""Keep glibc from handing memory back to the kernel between forward passes on the CPU.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, the
activations of a forward pass (tens of MiB each) are either ``mmap``-ed and
unmapped every time, or carved from the heap top, which is trimmed back to the
kernel when they are freed. Either way every forward pass faults its working set
in again, page by page: on the 2-core benchmark machine that cost 35-45 % of the
segmentation time (1.5 million page faults for 24 Mpixel; ``benchmarks/
bench_cpu_throughput.py``). Raising the mmap and trim thresholds makes glibc reuse
the freed memory instead; the peak resident memory stays the same, but after a run
the process keeps up to that peak instead of returning it.

Applied once per process, on Linux with glibc only, when a CPU forward pass is
about to start. Set the environment variable ``NAPARI_BNADAPT_MALLOC=default`` to
leave the allocator alone.
"""

from __future__ import annotations

import os
import platform

#: Largest block glibc then serves from its heap instead of a fresh mmap (its maximum on 64-bit).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the heap top kept for reuse instead of being returned to the kernel.
TRIM_THRESHOLD = 512 * 2**20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_state: dict[str, bool] = {}


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; True when they are (or were already) raised.

    Does nothing, and returns False, off Linux/glibc or when ``NAPARI_BNADAPT_MALLOC``
    is ``default``.
    """
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    if os.environ.get("NAPARI_BNADAPT_MALLOC", "").lower() != "default" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6")
            tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            tuned = False
    _state["tuned"] = tuned
    return tuned
