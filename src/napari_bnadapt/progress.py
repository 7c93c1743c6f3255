"""Long operations as generators: they yield progress, and their last item is the result.

Convention (as in stardist-napari): a long core function has a generator twin
``*_iter`` that yields :class:`Progress` items and finally one :class:`Result`
holding the return value. The GUI runs the generator in a napari thread worker
(cancellation takes effect at the next yield); scripts and tests call the plain
function, which runs the generator to its end with :func:`run_to_end`.

A generator that runs another one passes its progress on and takes its result with
``value = yield from forward(other_iter(...))``. The two twins share one docstring,
written on the plain function; :func:`shares_docstring` gives it to the generator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


def forward(gen: Iterable[Progress | Result[T]]) -> Generator[Progress, None, T]:
    """Pass on the progress of a long-operation generator and return its result.

    ``value = yield from forward(adapt_iter(...))`` inside another generator
    yields every :class:`Progress` item of ``adapt_iter`` and binds ``value`` to
    the value of its final :class:`Result` (the generator is run to its end).

    Parameters
    ----------
    gen : iterable of Progress or Result
        A generator made by one of the ``*_iter`` functions.

    Returns
    -------
    object
        The value carried by the generator's final :class:`Result`.

    Raises
    ------
    RuntimeError
        The generator ended without a :class:`Result`.
    """
    result: Result[T] | None = None
    for item in gen:
        if isinstance(item, Result):
            result = item
        else:
            yield item
    if result is None:
        raise RuntimeError("the operation ended without a result")
    return result.value


def forward_as(gen: Iterable[Progress | Result[T]], stage: str, done: int, total: int) -> Generator[Progress, None, T]:
    """Like :func:`forward`, but every progress item of the inner operation is reported as step ``done``
    of ``total`` of ``stage`` (an inner pass of a larger one: the bar stays on the outer count)."""
    return (yield from forward(Progress(stage, done, total) if isinstance(item, Progress) else item for item in gen))


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
    steps = forward(gen)
    while True:
        try:
            item = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(item)


# ------------------------------------------------------------------ docstrings
def _is_underline(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and set(s) == {"-"}


def _section(lines: list[str], name: str) -> tuple[int, int] | None:
    """Start (header line) and end (exclusive) of the numpydoc section ``name``, or None."""
    for i in range(len(lines) - 1):
        if lines[i].strip() == name and _is_underline(lines[i + 1]):
            end = i + 2
            while end < len(lines) and not (end + 1 < len(lines) and lines[end].strip()
                                            and _is_underline(lines[end + 1])):
                end += 1
            return i, end
    return None


def generator_docstring(doc: str, name: str) -> str:
    """The docstring of the generator twin of the function ``name`` documented by ``doc``.

    The same text, after one line saying what the generator yields, with the
    ``Returns`` section turned into a ``Yields`` section: Progress items, then a
    Result whose value is what ``name`` returns.
    """
    lines = inspect.cleandoc(doc).splitlines()
    where = _section(lines, "Returns")
    if where is None:
        raise ValueError(f"the docstring of {name} has no Returns section to share")
    start, end = where
    returned = lines[start + 2:end]
    while returned and not returned[-1].strip():
        returned.pop()
    yields = [
        "Yields",
        "------",
        "Progress",
        "    Progress of the work, stage by stage (:class:`~napari_bnadapt.progress.Progress`).",
        "Result",
        "    The last item: a :class:`~napari_bnadapt.progress.Result` whose ``value`` is what",
        f"    :func:`{name}` returns:",
        "",
        *[f"    {line}" if line.strip() else "" for line in returned],
        "",
    ]
    head = (f"Generator form of :func:`{name}`: yields Progress items, finally a Result holding "
            f"what :func:`{name}` returns.")
    body = lines[:start] + yields + lines[end:]
    while body and not body[-1].strip():
        body.pop()
    return "\n".join([head, "", *body]) + "\n"


def shares_docstring(source: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator: give a ``*_iter`` generator the docstring of its blocking twin ``source``.

    The docstring is written once, on ``source`` (the function most users call);
    the generator gets the same text with the ``Returns`` section turned into
    ``Yields`` (see :func:`generator_docstring`). The decorated function must not
    have a docstring of its own.
    """
    def decorate(func: F) -> F:
        if func.__doc__:
            raise TypeError(f"{func.__qualname__} shares the docstring of {source.__qualname__}: give it none")
        if not source.__doc__:
            raise TypeError(f"{source.__qualname__} has no docstring to share")
        func.__doc__ = generator_docstring(source.__doc__, source.__name__)
        return func

    return decorate


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
