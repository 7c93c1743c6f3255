"""State the plugin's widgets share, scoped so that nothing leaks between viewers or outlives a widget.

- Reliability reports are per viewer: the *Adapt & segment* widget of one viewer
  publishes to the *Reliability* panels of that viewer only, and a panel opened
  later shows the viewer's last report. What is kept is the report and the
  calibration curve's points, never a model.
- The model list is per process (it is the folder of the user's models): a
  *Train* widget that saves a model tells every open *Adapt & segment* widget to
  refresh its list.

Listeners are held through weak references: a closed widget is not kept alive
(nor the models it holds) by being registered here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class _Listeners:
    """Bound methods called back through weak references; dead ones are dropped."""

    def __init__(self) -> None:
        self._refs: list[weakref.WeakMethod] = []

    def add(self, method: Callable[..., Any]) -> None:
        self._refs.append(weakref.WeakMethod(method))

    def __len__(self) -> int:
        return sum(ref() is not None for ref in self._refs)

    def call(self, *args: Any) -> None:
        alive = []
        for ref in self._refs:
            method = ref()
            if method is None:
                continue
            try:
                method(*args)
            except RuntimeError:  # the Qt side of the widget was deleted
                continue
            alive.append(ref)
        self._refs = alive


@dataclass
class ViewerReports:
    """The reliability reports of one viewer: the last one and the panels that show them."""

    last: tuple[Any, Any] | None = None
    panels: _Listeners = field(default_factory=_Listeners)

    def publish(self, report: Any, curve: Any) -> None:
        """Show ``report`` (with its model's calibration ``curve`` or None) on this viewer's panels."""
        self.last = (report, curve)
        self.panels.call(report, curve)

    def subscribe(self, show: Callable[[Any, Any], None]) -> None:
        """Register a panel's bound method; it is shown the last report at once, if any."""
        self.panels.add(show)
        if self.last is not None:
            show(*self.last)


_REPORTS: weakref.WeakKeyDictionary[Any, ViewerReports] = weakref.WeakKeyDictionary()
_NO_VIEWER = ViewerReports()  # panels created without a viewer (tests, scripts) share nothing else
MODEL_LIST = _Listeners()


def reports_of(viewer: Any) -> ViewerReports:
    """The reliability reports of ``viewer`` (created on first use, dropped with the viewer)."""
    if viewer is None:
        return _NO_VIEWER
    # napari hands each dock widget its own PublicOnlyProxy of the viewer (a wrapt proxy):
    # key on the viewer itself, so every widget of one viewer finds the same reports
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer not in _REPORTS:
        _REPORTS[viewer] = ViewerReports()
    return _REPORTS[viewer]


def models_changed() -> None:
    """Tell the open *Adapt & segment* widgets that the list of models changed."""
    MODEL_LIST.call()
