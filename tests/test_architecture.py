"""The layout's promises: no import cycles, a core free of Qt/napari, small modules, importable modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_bnadapt"
MAX_LINES = 600
GUI_LIBS = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules imported anywhere in the file, external top-level packages imported)."""
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    internal, external = set(), set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_bnadapt"):
                    internal.add(alias.name)
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("napari_bnadapt"):
                external.add(module.split(".")[0])
                continue
            for alias in node.names:  # "from . import synthetic" imports a module
                sub = f"{module}.{alias.name}"
                internal.add(sub if sub in MODULES else module)
    internal.discard(name)
    return internal, external


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_function_level_imports():
    # a package's __init__ that re-exports its modules is not a cycle of theirs
    graph = {m: {d for d in _imports(p)[0] if not m.startswith(d + ".")} for m, p in MODULES.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_never_imports_qt_or_napari():
    offenders = {m: sorted(_imports(p)[1] & GUI_LIBS) for m, p in MODULES.items()
                 if not m.startswith("napari_bnadapt.gui") and _imports(p)[1] & GUI_LIBS}
    assert offenders == {}


def test_modules_are_small():
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert max(sizes.values()) < MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_subpackage_says_what_lives_in_it():
    for m, p in MODULES.items():
        if p.name == "__init__.py":
            assert ast.get_docstring(ast.parse(p.read_text())), f"{m} has no docstring"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_alone_in_a_fresh_interpreter(module):
    env_src = str(PKG.parent)
    code = f"import sys; sys.path.insert(0, {env_src!r}); import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_architecture_page_names_every_module():
    page = (PKG.parents[1] / "docs" / "architecture.md").read_text()
    missing = [m for m, p in MODULES.items() if p.name != "__init__.py" and f" {p.name} " not in page
               and f" {p.name}," not in page and f", {p.name} " not in page]
    assert missing == []
