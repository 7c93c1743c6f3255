"""The thesis' and the paper's experiments, one call (or one command) each.

>>> from napari_bnadapt import experiments            # doctest: +SKIP
>>> res = experiments.run("brightness", jobs=2)      # doctest: +SKIP
>>> res.csv, res.figures, res.findings["offdiag_over_diag_adapted"]  # doctest: +SKIP

Experiments (:data:`EXPERIMENTS`):

``distance``   thesis #1: sigma = 50, mu1 - mu0 from 10 to 254; 10 sources x 10 targets.
``brightness`` thesis #2: sigma = 50, mu1 - mu0 = 40, mu0 from 10 to 170; 9 x 9.
``mixed``      thesis #3: 4 distance + 4 brightness + random / gradient / edges; 11 x 11.
``grid800``    thesis 1-800: one source (96, 18, 138, 18), 800 targets.
``shapes``     the 1-800 grid with triangles (labelled) and circles (distractors).
``toy-uda``    the paper's toy UDA: 2D Gaussians, Linear+BatchNorm network.
``compare``    AdaBN against TENT, ADDA (+/- momentum reset) and GLSS on toy and real pairs.

Every U-Net experiment writes ``results.csv`` (one row per (source, target)
pair: parameters, IoU without and with BatchNorm adaptation, predicted
foreground fractions, and the plain, source- and target-normalised W2^2 between
the source model on source images and the adapted model on target images in
the latent spaces ls0..ls4 and dec, each with its noise floor), ``summary.json``
(the checked findings), ``config.json`` and ``figures/*.png``. The default scale
is reduced so that each experiment takes minutes on a 2-core CPU; ``full=True``
uses the thesis' numbers. See ``docs/experiments.md``.

Runs are resumable (rows are written as they finish; trained source models are
cached in ``cache/``), reproducible (the same seed gives the same CSV, whatever
``jobs``), and ``jobs`` > 1 spreads the work over processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..progress import Progress, Result, run_to_end

if TYPE_CHECKING:  # numpy/torch stay unimported until an experiment runs (a fast CLI start)
    from .results import ExperimentResult

__all__ = ["EXPERIMENTS", "ExperimentResult", "Dataset", "UNetScale", "ToyScale", "run", "run_iter",
           "default_scale", "add_experiment_parser", "DEFAULT_OUT"]

#: Name -> one-line description.
EXPERIMENTS: dict[str, str] = {
    "distance": "thesis #1: increasing mu1 - mu0 (10 sources x 10 targets)",
    "brightness": "thesis #2: brightness shift (9 x 9)",
    "mixed": "thesis #3: distance, brightness, random, gradient, edges (11 x 11)",
    "grid800": "thesis 1-800: one source, 800 targets",
    "shapes": "thesis 1-800 with triangles (labelled) and circles (distractors)",
    "toy-uda": "paper: 2D Gaussians, Linear+BatchNorm network, relative performance vs tnW2",
    "compare": "AdaBN vs TENT, ADDA (+/- momentum reset) and GLSS on toy and real pairs",
}
#: Where results go when ``out`` is not given: ``./bnadapt-experiments/<name>``.
DEFAULT_OUT = Path("bnadapt-experiments")


def __getattr__(name: str) -> Any:
    if name in ("Dataset", "UNetScale"):
        from . import datasets

        return getattr(datasets, name)
    if name == "ExperimentResult":
        from .results import ExperimentResult

        return ExperimentResult
    if name == "ToyScale":
        from .toy_uda import ToyScale

        return ToyScale
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_name(name: str) -> str:
    if name not in EXPERIMENTS:
        raise BNAdaptError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return name


def default_scale(name: str, full: bool = False) -> Any:
    """The reduced (default) or the full (thesis/paper) scale of an experiment: a frozen dataclass."""
    _check_name(name)
    if name == "toy-uda":
        from . import toy_uda as mod
    elif name == "compare":
        from . import compare as mod  # type: ignore[no-redef]
    elif name in ("grid800", "shapes"):
        from . import grid800 as mod  # type: ignore[no-redef]
    else:
        from . import matrix as mod  # type: ignore[no-redef]
    return mod.FULL if full else mod.DEFAULT


def _spec(name: str, only: Any) -> Any:
    if name in ("grid800", "shapes"):
        from .grid800 import spec
    else:
        from .matrix import spec
    s = spec(name)
    if only is None:
        return s
    keep = set(only)
    unknown = keep - {d.id for d in s.sources} - {d.id for d in s.targets}
    if unknown:
        raise BNAdaptError(f"unknown dataset id(s) {', '.join(sorted(unknown))} for {name!r}; "
                           f"the ids are the source_id / target_id values of its CSV")
    src = tuple(d for d in s.sources if d.id in keep) or s.sources  # grid: the single source stays
    tgt = tuple(d for d in s.targets if d.id in keep)
    if not tgt:
        raise BNAdaptError(f"only={sorted(keep)} leaves no target of {name!r}")
    return dataclasses.replace(s, sources=src, targets=tgt)


def run_iter(
    name: str,
    *,
    full: bool = False,
    out: str | Path | None = None,
    jobs: int = 1,
    resume: bool = True,
    scale: dict[str, Any] | Any | None = None,
    seed: int = 0,
    only: list[str] | None = None,
    figures: bool = True,
) -> Iterator[Progress | Result[ExperimentResult]]:
    """Generator form of :func:`run`: yields :class:`~napari_bnadapt.progress.Progress`, finally the result."""
    _check_name(name)
    if not isinstance(jobs, int) or jobs < 1:
        raise BNAdaptError(f"jobs must be a whole number of at least 1, not {jobs!r}")
    base = default_scale(name, full)
    if scale is None:
        sc = base
    elif isinstance(scale, dict):
        from .datasets import apply_overrides

        sc = apply_overrides(base, scale)
    elif isinstance(scale, type(base)):
        sc = scale
    else:
        raise BNAdaptError(f"scale must be a dict of settings or a {type(base).__name__}, not {type(scale).__name__}")
    folder = Path(out) if out is not None else DEFAULT_OUT / name
    if name == "compare":
        from .compare import FAMILIES
        from .compare import run_iter as compare_run

        fams = tuple(only) if only is not None else FAMILIES  # only= names pair families here
        return compare_run(sc, folder, resume=resume, seed=seed, figures=figures, families=fams)
    if name == "toy-uda":
        from .toy_uda import run_iter as toy_run

        if only is not None:
            raise BNAdaptError("only= selects datasets of the U-Net experiments; toy-uda has none "
                               "(use scale={'n_targets': ...})")
        return toy_run(sc, folder, resume=resume, seed=seed, figures_=figures)
    from .unet_runner import run_unet_iter

    if sc.image_size % 16 or sc.image_size < 16:
        raise BNAdaptError(f"image_size must be a multiple of 16 (the U-Net halves it 4 times), not {sc.image_size}")
    return run_unet_iter(_spec(name, only), sc, folder, jobs=jobs, resume=resume, seed=seed, figures=figures)


def run(
    name: str,
    *,
    full: bool = False,
    out: str | Path | None = None,
    jobs: int = 1,
    resume: bool = True,
    scale: dict[str, Any] | Any | None = None,
    progress: Callable[[Progress], Any] | None = None,
    seed: int = 0,
    only: list[str] | None = None,
    figures: bool = True,
) -> ExperimentResult:
    """Run one experiment and write its results folder.

    Parameters
    ----------
    name : str
        One of :data:`EXPERIMENTS`: "distance", "brightness", "mixed", "grid800", "shapes", "toy-uda", "compare".
    full : bool, default False
        The thesis' (paper's) scale instead of the reduced CPU scale. Hours to days on a CPU.
    out : str or Path, optional
        Results folder (created); default ``./bnadapt-experiments/<name>``.
    jobs : int, default 1
        Worker processes (one torch thread each) for training the source models and
        evaluating the pairs. The results do not depend on it. toy-uda runs serially.
    resume : bool, default True
        Continue a run in ``out`` (pairs already in its CSV and cached source models are
        reused; the settings must match). False: start over (CSV and cached models deleted).
    scale : dict or scale dataclass, optional
        Settings that replace those of the default (or full) scale, e.g.
        ``{"n_test": 64, "width": 16}``; see :func:`default_scale` for the names.
    progress : callable, optional
        Called with every :class:`~napari_bnadapt.progress.Progress` (e.g.
        :func:`napari_bnadapt.progress.tqdm_callback`).
    seed : int, default 0
        Master seed; every dataset's images, every training and every adaptation derive from it.
    only : list of str, optional
        Restrict a U-Net experiment to these dataset ids (sources and targets; the
        single source of grid800/shapes always stays), e.g. ``["b50", "b90", "b130"]``;
        for ``compare``: pair families (``["brightness", "real"]``).
    figures : bool, default True
        Draw the PNG figures (needs matplotlib).

    Returns
    -------
    ExperimentResult
        Paths of the CSV and figures, and the findings (also in ``summary.json``).
    """
    return run_to_end(run_iter(name, full=full, out=out, jobs=jobs, resume=resume, scale=scale, seed=seed,
                               only=only, figures=figures), progress)


# ------------------------------------------------------------------------- CLI
def add_experiment_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bnadapt experiment NAME [--full] [--jobs N] [--out DIR] [--resume]`` to a subparsers object."""
    p = sub.add_parser(
        "experiment", help="rerun a thesis/paper experiment (CSV + figures)",
        description="Rerun one of the thesis' or the paper's experiments: writes results.csv, summary.json and "
                    "figures/*.png. Experiments: " + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()),
    )
    p.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help="one of: " + ", ".join(EXPERIMENTS))
    p.add_argument("--full", action="store_true", help="the thesis' scale (hours to days on a CPU); "
                                                       "default: the reduced scale (minutes)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one CPU core each (default 1)")
    p.add_argument("--out", help=f"results folder (default {DEFAULT_OUT}/NAME)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in the results folder")
    g.add_argument("--overwrite", action="store_true", help="delete earlier results in the folder and start over")
    p.add_argument("--scale", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the scale, e.g. --scale n_test=64 (repeatable)")
    p.add_argument("--only", help="comma-separated dataset ids to keep (U-Net experiments); "
                                  "compare: pair families (brightness,distance,inverted,grid800,real)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument("--no-figures", action="store_true", help="write the CSV only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)
    return p


def cmd_experiment(args: argparse.Namespace) -> int:
    """The ``bnadapt experiment`` command."""
    from .results import CONFIG_NAME, CSV_NAME

    folder = Path(args.out) if args.out else DEFAULT_OUT / args.name
    overrides: dict[str, str] = {}
    for item in args.scale:
        if "=" not in item:
            raise BNAdaptError(f"--scale takes KEY=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    started = (folder / CSV_NAME).exists() or (folder / CONFIG_NAME).exists()
    if started and not (args.resume or args.overwrite):
        raise BNAdaptError(f"{folder} already holds results; add --resume to continue that run, "
                           "--overwrite to start over, or choose another --out")
    from ..progress import tqdm_callback

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        res = run(args.name, full=args.full, out=folder, jobs=args.jobs, resume=not args.overwrite,
                  scale=overrides or None, progress=tqdm_callback(disable=args.quiet), seed=args.seed, only=only,
                  figures=not args.no_figures)
    except KeyboardInterrupt:
        print(f"bnadapt experiment: interrupted; the finished rows are kept in {folder / CSV_NAME}: "
              f"continue with --resume", file=sys.stderr)
        return 130
    print(f"{res.name}: {res.rows} rows ({res.computed} computed now) in {res.seconds:.0f} s")
    print(f"  table:   {res.csv}")
    for f in res.figures:
        print(f"  figure:  {f}")
    print(f"  summary: {res.folder / 'summary.json'}")
    return 0
