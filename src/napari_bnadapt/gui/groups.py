"""Titled groups for the dock widgets: the steps a biologist takes, each in a framed box, labels aligned.

A widget built with :func:`framed_groups` reads top to bottom as its steps (e.g. image, model, run,
result): each step is a magicgui :class:`~magicgui.widgets.Container` of labelled rows, framed in a
``QGroupBox`` that carries the step's title. :func:`align_label_columns` then gives every row of every
group (nested containers included) one label column as wide as the widest label as napari draws it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from magicgui.widgets import Container
from qtpy.QtWidgets import QGroupBox, QVBoxLayout

#: Title of the box a widget's advanced settings are folded into (shown by its "show advanced settings").
ADVANCED = "Advanced settings"


def framed_groups(parent: Container, groups: Sequence[tuple[str, Container]]) -> dict[str, QGroupBox]:
    """Add ``groups`` to ``parent`` (a container without labels), each framed in a box titled with its name.

    The groups stay magicgui children of ``parent`` (``reset_choices`` and the like reach their
    widgets); only their place in the layout is taken by the box around them.

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
    boxes = {}
    for title, group in groups:
        box = QGroupBox(title)
        layout.replaceWidget(group.native, box)
        inner = QVBoxLayout(box)
        inner.setContentsMargins(4, 8, 4, 4)
        group.native.layout().setContentsMargins(0, 0, 0, 0)
        inner.addWidget(group.native)
        boxes[title] = box
    return boxes


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
