"""Long operations as generators: they yield progress, and their last item is the result.

Convention (as in stardist-napari): a long core function has a generator twin
``*_iter`` that yields :class:`Progress` items and finally one :class:`Result`
holding the return value. The GUI runs the generator in a napari thread worker
(cancellation takes effect at the next yield); scripts and tests call the plain
function, which runs the generator to its end with :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress step.

    Attributes
    ----------
    stage : str
        What is being done, in words ("adapting BatchNorm", "segmenting").
    done : int
        Units of work done so far in this stage.
    total : int
        Units of work of this stage (0 when unknown).
    """

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Result(Generic[T]):
    """The final item of a long-operation generator: its return value."""

    value: T


ProgressGen = Generator["Progress | Result[T]", None, None]


def run_to_end(
    gen: Iterator[Progress | Result[T]],
    callback: Callable[[Progress], Any] | None = None,
) -> T:
    """Run a long-operation generator to its end and return its result.

    Parameters
    ----------
    gen : iterator of Progress or Result
        A generator made by one of the ``*_iter`` functions.
    callback : callable, optional
        Called with every :class:`Progress` item (e.g. to drive a progress bar).

    Returns
    -------
    object
        The value carried by the generator's final :class:`Result`.
    """
    result: Result[T] | None = None
    for item in gen:
        if isinstance(item, Result):
            result = item
        elif callback is not None:
            callback(item)
    if result is None:
        raise RuntimeError("the operation ended without a result")
    return result.value


def tqdm_callback(desc: str | None = None, disable: bool = False) -> Callable[[Progress], None]:
    """Return a progress callback that draws tqdm bars, one per stage (for the CLI)."""
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None, "stage": None}

    def _cb(p: Progress) -> None:
        if p.stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=p.total or None, desc=desc or p.stage, disable=disable, leave=True)
            state["stage"] = p.stage
        bar = state["bar"]
        bar.n = p.done
        if p.total and bar.total != p.total:
            bar.total = p.total
        bar.refresh()
        if p.total and p.done >= p.total:
            bar.close()
            state["bar"], state["stage"] = None, None

    return _cb
