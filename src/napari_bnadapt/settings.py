"""Every environment switch of napari-bnadapt, read in this one module.

All of them start with ``BNADAPT_``. Each is read when it is needed (not at import), so
setting it before the first use in a process is enough, and tests can change it.

=====================  ====================  ==========================  ==========================================
variable               values                default (unset or empty)    effect
=====================  ====================  ==========================  ==========================================
``BNADAPT_MODEL_DIR``  a folder path (``~``  ``~/.napari-bnadapt/models`` folder of the user's own models: listed by
                       is expanded)                                      ``list_models``, loadable by name, where the
                                                                         training widget saves
``BNADAPT_MALLOC``     ``tuned`` or          ``default``                 ``tuned``: on the first CPU computation, raise
                       ``default``                                       glibc's mmap threshold to 32 MiB and trim
                                                                         threshold to 512 MiB (``mallopt``; Linux/glibc
                                                                         only). Process-wide: it changes ``malloc`` for
                                                                         napari and every plugin in the process.
                                                                         ``default``: leave glibc's allocator alone.
=====================  ====================  ==========================  ==========================================

Values are case-insensitive and surrounding blanks are ignored. An unknown value of
``BNADAPT_MALLOC`` does not stop a computation: it falls back to the default and a
:class:`RuntimeWarning` names the variable and its accepted values.

The allocator default was chosen by ``benchmarks/bench_allocator_napari.py``
(``benchmarks/results/bench_allocator_napari.txt``): in napari, where adapting and
segmenting run in a worker thread, the tuning saved 4 % of the CPU time of a run of
16 x 1024 x 1024 and left napari 58 MiB (8 %) larger after it, so it is off unless asked
for. Segmenting on the main thread of a script (``benchmarks/bench_cpu_throughput.py``)
it made ``nb.segment`` 1.4-1.6x faster: set ``BNADAPT_MALLOC=tuned`` there. The
``bnadapt`` command line owns its process and segments on its main thread, so it sets
``BNADAPT_MALLOC=tuned`` for itself unless the variable is already set.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["MALLOC_VALUES", "PREFIX", "SWITCHES", "malloc_tuning", "model_dir"]

#: The prefix of every environment variable this package reads.
PREFIX = "BNADAPT_"
#: Every switch: name -> one-line description (the table above is the full documentation).
SWITCHES: dict[str, str] = {
    f"{PREFIX}MODEL_DIR": "folder of the user's own models (default ~/.napari-bnadapt/models)",
    f"{PREFIX}MALLOC": "'default' (the default: glibc left alone) or 'tuned': glibc allocator tuning, process-wide",
}
#: Accepted values of ``BNADAPT_MALLOC``: value -> whether glibc's allocator is tuned.
MALLOC_VALUES: dict[str, bool] = {"tuned": True, "default": False}
_MALLOC_DEFAULT = "default"


def _read(name: str) -> str | None:
    """The stripped value of switch ``name``; None when unset or blank."""
    assert name in SWITCHES, name
    value = os.environ.get(name, "").strip()
    return value or None


def model_dir() -> Path | None:
    """``$BNADAPT_MODEL_DIR`` as a path (``~`` expanded), or None when unset or empty."""
    value = _read(f"{PREFIX}MODEL_DIR")
    return Path(value).expanduser() if value else None


def malloc_tuning() -> bool:
    """Whether ``BNADAPT_MALLOC`` asks for glibc's allocator to be tuned (``tuned``; the default is ``default``).

    An unknown value falls back to the default, with a :class:`RuntimeWarning`.
    """
    name = f"{PREFIX}MALLOC"
    value = (_read(name) or _MALLOC_DEFAULT).lower()
    if value not in MALLOC_VALUES:
        warnings.warn(
            f"{name}={os.environ[name]!r} is not one of {', '.join(MALLOC_VALUES)}; "
            f"using the default, {_MALLOC_DEFAULT!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        value = _MALLOC_DEFAULT
    return MALLOC_VALUES[value]
