"""Titled groups for the dock widgets: the steps a biologist takes, each in a framed box, labels aligned,
in a scroll area so that a tall panel scrolls on a short screen instead of growing the window.

A widget built with :func:`framed_groups` reads top to bottom as its steps (e.g. image, model, run,
result): each step is a magicgui :class:`~magicgui.widgets.Container` of labelled rows, framed in a
``QGroupBox`` that carries the step's title. :func:`align_label_columns` then gives every row of every
group (nested containers included) one label column as wide as the widest label as napari draws it.
The boxes sit in a :class:`VerticalScroll`; :func:`scrolling` gives any other panel the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from magicgui.widgets import CheckBox, Container, Widget
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

#: Title of the box a widget's advanced settings are folded into (shown by its "show advanced settings").
ADVANCED = "Advanced settings"
#: Height (px) a scrolling panel may shrink to when the window is short.
MIN_SCROLL_HEIGHT = 160


class VerticalScroll(QScrollArea):
    """A frameless vertical scroll area around ``body``: as wide as the body needs, as tall as there is room
    (``grow=False``: no taller than the body).

    napari docks a plugin widget at its minimum size; a panel taller than a laptop screen (every step
    and the advanced settings unfolded) then grows the window past the screen instead of scrolling.
    """

    def __init__(self, body: QWidget, grow: bool = True) -> None:
        super().__init__()
        if not grow:  # never taller than the body: the space left goes to the docks below
            self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(body)

    def _bar(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:
        return QSize(self.widget().minimumSizeHint().width() + self._bar(), MIN_SCROLL_HEIGHT)

    def sizeHint(self) -> QSize:
        body = self.widget()
        hint = body.sizeHint()
        height = hint.height()
        if body.hasHeightForWidth():  # wrapped sentences (the status) are taller at the width they get
            height = max(height, body.heightForWidth(max(self.viewport().width(), body.minimumSizeHint().width())))
        return QSize(hint.width() + self._bar(), height + 2 * self.frameWidth() + 8)  # 8: the boxes' bottom edge

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.updateGeometry()  # the height the body needs depends on the width


def reveal(widget: QWidget) -> None:
    """Scroll the nearest scroll area holding ``widget`` so that it is in view (a message just written there)."""
    area = widget.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is not None:
        area.ensureWidgetVisible(widget)


def scrolling(widget: QWidget, body: QWidget) -> VerticalScroll:
    """Show ``body`` inside ``widget`` through a :class:`VerticalScroll` (``widget`` must have no layout yet)."""
    area = VerticalScroll(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return area


def framed_groups(parent: Container, groups: Sequence[tuple[str, Container]]) -> dict[str, QGroupBox]:
    """Add ``groups`` to ``parent`` (a container without labels), each framed in a box titled with its name,
    the boxes in a :class:`VerticalScroll`.

    The groups stay magicgui children of ``parent`` (``reset_choices`` and the like reach their
    widgets); only their place in the layout is taken by the scroll area holding their boxes. Their
    label columns are aligned (:func:`align_label_columns`) once the widget is docked, when napari's
    style sheet sets the font.

    Parameters
    ----------
    parent : magicgui Container
        The dock widget, created with ``labels=False``.
    groups : sequence of (str, Container)
        Title and content of each group, in order.

    Returns
    -------
    dict of str to QGroupBox
        The boxes by title (to show or hide a whole group).
    """
    parent.extend([g for _, g in groups])
    layout = parent.native.layout()
    body = QWidget()
    column = QVBoxLayout(body)
    column.setContentsMargins(0, 0, 0, 0)
    boxes = {}
    for title, group in groups:
        layout.removeWidget(group.native)
        box = QGroupBox(title)
        inner = QVBoxLayout(box)
        inner.setContentsMargins(4, 8, 4, 4)
        group.native.layout().setContentsMargins(0, 0, 0, 0)
        inner.addWidget(group.native)
        column.addWidget(box)
        boxes[title] = box
    column.addStretch(1)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(VerticalScroll(body, grow=False))
    parent.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)  # the dock, too
    QTimer.singleShot(0, lambda: align_label_columns(parent))
    return boxes


def fold(toggle: CheckBox, box: QGroupBox, widgets: Sequence[Widget]) -> None:
    """Show ``box`` and its ``widgets`` only while ``toggle`` ("show advanced settings") is ticked."""

    def show(on: bool) -> None:
        for w in widgets:
            w.visible = bool(on)
        box.setVisible(bool(on))

    toggle.changed.connect(show)
    show(toggle.value)


def _rows(container: Container) -> Iterator[tuple[Any, Any]]:
    """(labelled row, its widget) for every row under ``container``, depth first."""
    for w in container:
        row = w._labeled_widget()
        if row is not None:
            yield row, w
        if isinstance(w, Container):
            yield from _rows(w)


def align_label_columns(container: Container) -> None:
    """Set the label column of every row under ``container`` to the widest label as drawn.

    magicgui sizes each container's column on its own, in the application's default font (and counts
    the hidden names of buttons and check boxes), while napari's style sheet draws labels larger and
    padded: the columns of different groups, and the longest rows' fields, fell out of line. A nested container's
    own row keeps no label, so its rows line up with those around it. Call it once the widget is
    docked (e.g. ``QTimer.singleShot(0, ...)``).
    """
    rows = [(r, isinstance(w, Container), w) for r, w in _rows(container)]
    labels = [r._label_widget.native for r, nested, _w in rows if not nested]
    if not labels:
        return
    for q in labels:
        q.ensurePolished()
    widest = max(q.sizeHint().width() for q in labels)
    for r, nested, w in rows:
        if nested:
            r._label_widget.native.setVisible(False)
            r.label_width = 0
            w.native.layout().setContentsMargins(0, 0, 0, 0)
        else:
            r.label_width = widest
