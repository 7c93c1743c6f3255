"""Experiment outputs: the resumable results CSV, the config check, and the typed result."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError

CSV_NAME = "results.csv"


CONFIG_NAME = "config.json"


SUMMARY_NAME = "summary.json"


# ------------------------------------------------------------------ resumable CSV
class ResultsCSV:
    """Append-only CSV with one row per finished (source, target) pair.

    Every row is flushed and fsync'ed when written, so a crash loses at most the
    pair being computed; a half-written last line (power cut) is dropped on resume.
    """

    def __init__(self, path: Path, columns: Sequence[str], key: Sequence[str] = ("source_id", "target_id")):
        self.path = Path(path)
        self.columns = list(columns)
        self.key = tuple(key)
        self.rows: list[dict[str, str]] = []
        if self.path.exists():
            self._load()
        else:
            self._write_all([])

    def _load(self) -> None:
        text = self.path.read_text()
        if text and not text.endswith("\n"):  # an interrupted write: drop the partial line
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            self._write_all([])
            return
        if list(reader.fieldnames) != self.columns:
            raise BNAdaptError(
                f"{self.path} was written with other columns (another version or experiment); "
                "start over with resume=False (CLI: --overwrite) or choose another output folder"
            )
        self.rows = [r for r in reader if None not in r.values() and len(r) == len(self.columns)]

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in self.columns})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def done(self) -> set[tuple[str, ...]]:
        return {tuple(r[k] for k in self.key) for r in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        text = {k: _fmt(row.get(k)) for k in self.columns}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(text)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(text)

    def finalize(self, order: Callable[[dict[str, str]], Any]) -> None:
        """Rewrite the file sorted (rows arrive in completion order with several jobs)."""
        self.rows.sort(key=order)
        self._write_all(self.rows)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        # 9 significant digits: far below any effect measured here, and half the file size
        return "nan" if math.isnan(v) else format(v, ".9g")
    return str(v)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers converted to float (and ints where whole)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = v
            out.append(row)
    return out


def check_config(out: Path, config: dict[str, Any], resume: bool) -> None:
    """Start a results folder, or check that a resumed one was made with the same settings."""
    path = out / CONFIG_NAME
    if path.exists() and resume:
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
            raise BNAdaptError(
                f"the results in {out} were made with other settings ({', '.join(diff)} differ); "
                "resume with the same settings, or start over (resume=False, CLI: --overwrite), "
                "or choose another output folder"
            )
        return
    if not resume:
        for name in (CSV_NAME, SUMMARY_NAME):
            (out / name).unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")


# -------------------------------------------------------------------- the runner
@dataclass
class ExperimentResult:
    """What :func:`napari_bnadapt.experiments.run` returns.

    Attributes
    ----------
    name : str
        The experiment.
    folder : Path
        Its results folder (``results.csv``, ``summary.json``, ``config.json``, ``figures/``, ``cache/``).
    csv : Path
        The results table, one row per (source, target) pair.
    figures : list of Path
        The PNG figures.
    findings : dict
        The checked findings (see ``docs/experiments.md``).
    seconds : float
        Wall time of this call.
    computed : int
        Rows computed by this call (the others were already in the CSV).
    rows : int
        Rows in the CSV.
    scale : dict
        The scale used.
    """

    name: str
    folder: Path
    csv: Path
    figures: list[Path] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    computed: int = 0
    rows: int = 0
    scale: dict[str, Any] = field(default_factory=dict)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
