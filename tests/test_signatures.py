"""The public API: real signatures, one docstring per blocking function / generator pair, ``yield from``."""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import pytest

import napari_bnadapt as nb
from napari_bnadapt.progress import (
    Progress,
    Result,
    forward,
    generator_docstring,
    run_to_end,
    shares_docstring,
)

#: Public callables that may take ``**kwargs``, and why.
VAR_KEYWORD_ALLOWED = {
    "add_result": "forwards the rest to napari's viewer.add_labels / add_image, and says so",
}
#: Public callables whose docstring does not name every parameter yet, and why (kept honest below).
UNDOCUMENTED_PARAMETERS_ALLOWED = {
    "dice": "metrics.dice documents pred / truth by reference to iou; outside this change",
}
#: Blocking function / generator twins outside ``nb.__all__`` that follow the same convention.
EXTRA_PAIRS = [
    ("napari_bnadapt.stats.source_statistics", "compute_source_statistics"),
    ("napari_bnadapt.bound.assess", "supervised_distances"),
]


def _public_callables() -> dict[str, object]:
    out = {}
    for name in nb.__all__:
        if name.startswith("_") or name in nb._SUBMODULES:
            continue
        obj = getattr(nb, name)
        if callable(obj) and not inspect.isclass(obj):
            out[name] = obj
    return out


def _pairs() -> list[tuple[object, object]]:
    pairs = [(getattr(nb, n), getattr(nb, f"{n}_iter")) for n in nb.__all__ if f"{n}_iter" in nb.__all__]
    for module, name in EXTRA_PAIRS:
        mod = importlib.import_module(module)
        pairs.append((getattr(mod, name), getattr(mod, f"{name}_iter")))
    return pairs


def _undocumented(func: object) -> list[str]:
    doc = inspect.getdoc(func) or ""
    return [p for p in inspect.signature(func).parameters if not re.search(rf"\b{re.escape(p)}\b", doc)]


def _section(doc: str, name: str) -> str:
    """The text of one numpydoc section (header excluded), up to the next section."""
    m = re.search(rf"^{name}\n-+\n(.*?)(?=^\S[^\n]*\n-{{3,}}\n|\Z)", doc, flags=re.S | re.M)
    assert m is not None, f"no {name} section"
    return m.group(1).rstrip()


PUBLIC = _public_callables()
PAIRS = _pairs()


def test_the_public_callables_are_found():
    for name in ("adapt", "adapt_iter", "predict", "segment", "train", "reliability", "calibrate", "calibrate_iter",
                 "compute_source_statistics", "predict_dask", "segment_dask", "run_to_end"):
        assert name in PUBLIC
    names = {blocking.__name__ for blocking, _ in PAIRS}
    assert names >= {"adapt", "predict", "segment", "train", "reliability", "calibrate",
                     "compute_source_statistics", "supervised_distances"}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_var_keyword_arguments(name):
    params = inspect.signature(PUBLIC[name]).parameters.values()
    var_kw = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    if name in VAR_KEYWORD_ALLOWED:
        assert var_kw, f"{name} no longer takes **kwargs: drop it from VAR_KEYWORD_ALLOWED"
    else:
        assert not var_kw, f"{name} takes **{var_kw[0]}: give it an explicit signature"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_parameter_is_documented(name):
    missing = _undocumented(PUBLIC[name])
    if name in UNDOCUMENTED_PARAMETERS_ALLOWED:
        assert missing, f"{name} now documents every parameter: drop it from UNDOCUMENTED_PARAMETERS_ALLOWED"
    else:
        assert not missing, f"the docstring of {name} does not mention {missing}"


@pytest.mark.parametrize("blocking,generator", PAIRS, ids=[b.__name__ for b, _ in PAIRS])
def test_twins_share_signature_and_docstring(blocking, generator):
    sb, sg = inspect.signature(blocking), inspect.signature(generator)
    assert list(sb.parameters) == list(sg.parameters), "the generator must take exactly the same parameters"
    for pb, pg in zip(sb.parameters.values(), sg.parameters.values()):
        assert (pb.kind, pb.default, pb.annotation) == (pg.kind, pg.default, pg.annotation), pb.name
    assert inspect.isgeneratorfunction(generator) and not inspect.isgeneratorfunction(blocking)
    db, dg = inspect.getdoc(blocking), inspect.getdoc(generator)
    # one docstring, written on the blocking function
    assert dg == inspect.cleandoc(generator_docstring(blocking.__doc__, blocking.__name__))
    assert _section(db, "Parameters") == _section(dg, "Parameters")
    assert db.splitlines()[0] in dg
    yields = _section(dg, "Yields")
    assert "Progress" in yields and "Result" in yields and f":func:`{blocking.__name__}` returns" in yields
    assert _section(db, "Returns") in yields.replace("\n    ", "\n")
    assert "\nReturns\n" not in dg and "\nYields\n" not in db


def test_shares_docstring_refuses_a_second_docstring():
    def blocking(x: int) -> int:
        """Double.

        Parameters
        ----------
        x : int
            A number.

        Returns
        -------
        int
            Twice ``x``.
        """
        return 2 * x

    with pytest.raises(TypeError, match="give it none"):

        @shares_docstring(blocking)
        def blocking_iter(x: int):
            """Another text."""
            yield Result(2 * x)

    @shares_docstring(blocking)
    def double_iter(x: int):
        yield Result(2 * x)

    assert double_iter.__doc__.startswith("Generator form of :func:`blocking`")
    assert "Yields\n------" in double_iter.__doc__ and "Twice ``x``." in double_iter.__doc__


# ------------------------------------------------------------------ yield from
def _inner(n: int):
    for i in range(n):
        yield Progress("inner", i + 1, n)
    yield Result(n * 10)


def _outer(n: int):
    yield Progress("outer", 0, 1)
    a = yield from forward(_inner(n))
    b = yield from forward(_inner(a // 10 + 1))
    yield Progress("outer", 1, 1)
    yield Result((a, b))


def test_yield_from_forward_ends_with_a_result():
    items = list(_outer(3))
    assert all(isinstance(i, Progress) for i in items[:-1])
    assert isinstance(items[-1], Result) and items[-1].value == (30, 40)
    assert [i.stage for i in items[:-1]] == ["outer"] + ["inner"] * 7 + ["outer"]


def test_run_to_end_with_a_callback():
    seen = []
    assert run_to_end(_outer(2), seen.append) == (20, 30)
    assert len(seen) == 1 + 2 + 3 + 1 and all(isinstance(p, Progress) for p in seen)
    assert run_to_end(_outer(1)) == (10, 20)


def test_forward_without_result_raises():
    def broken():
        yield Progress("x", 0, 1)

    def outer():
        yield from forward(broken())

    with pytest.raises(RuntimeError, match="without a result"):
        run_to_end(outer())


def test_a_real_generator_through_forward(toy_model):
    images = np.full((2, 64, 64), 120, np.uint8)
    images[:, 16:40, 16:40] = 160

    def both():
        adapted, report = yield from forward(nb.adapt_iter(toy_model, images, device="cpu"))
        labels = yield from forward(nb.segment_iter(adapted, images, device="cpu"))
        yield Result((report, labels))

    seen = []
    report, labels = run_to_end(both(), seen.append)
    assert report.n_patches >= 1 and labels.shape == images.shape and labels.dtype == np.uint8
    assert {p.stage for p in seen} >= {"adapting BatchNorm"}
