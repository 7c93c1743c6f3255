"""Helpers shared by the benchmark scripts: a header describing the machine, and result files."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def header(title: str) -> str:
    """A few lines saying what ran where and when."""
    import numpy as np

    try:
        import torch

        tv = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        tv = "torch not installed"
    return (
        f"# {title}\n"
        f"# date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}\n"
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n"
        f"# python {platform.python_version()}, numpy {np.__version__}, {tv}\n"
        f"# load average at start (other jobs share this machine): {os.getloadavg()[0]:.2f}\n"
    )


def write(name: str, text: str) -> Path:
    """Print ``text`` and save it as ``results/<name>.txt``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.txt"
    path.write_text(text)
    print(text)
    return path
