"""Helpers shared by the benchmark scripts: a header describing the machine, and result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

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


def read_partial(path: Path) -> list[dict[str, Any]]:
    """The rows an earlier run of a resumable benchmark appended to ``path`` (none when it is absent)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_em_model(name: str, models_dir: Path | None) -> Any:
    """``<models_dir>/<name>.safetensors`` when it exists, else the bundled or user model ``name``, on the CPU."""
    import napari_bnadapt as nb

    path = models_dir / f"{name}.safetensors" if models_dir else None
    return nb.load_model(path if path is not None and path.exists() else name, device="cpu")


def add_model_arguments(ap: Any, models: list[str], *, threads: int = 2, name: str | None = None,
                        models_dir: Path | None = None) -> None:
    """The options the real-data benchmarks share: ``--models``, ``--models-dir``, ``--threads`` and, given a
    default ``name``, ``--name`` (the results' file name)."""
    ap.add_argument("--models", nargs="+", default=list(models))
    ap.add_argument("--models-dir", type=Path, default=models_dir, help="look for <name>.safetensors here first")
    ap.add_argument("--threads", type=int, default=threads)
    if name is not None:
        ap.add_argument("--name", default=name, help="results/<name>.{txt,json} (and its partial file, if it keeps one)")


def save_results(name: str, text: str, result: dict[str, Any], figure: Any = None) -> None:
    """Write ``results/<name>.txt`` (and print it), ``results/<name>.json`` and, given a ``figure(result, path)``
    function, ``docs/images/<name without bench_>.png``."""
    write(name, text)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    if figure is not None:
        figure(result, Path(__file__).resolve().parents[1] / "docs" / "images" / f"{name.replace('bench_', '')}.png")
