"""``bnadapt demo``: napari with the toy source and a shifted target, the one-click adaptation running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.files import DEMO_MODEL

PLUGIN = "napari-bnadapt"


def build_demo_viewer(show: bool = True) -> tuple[Any, Any]:
    """Open napari with the toy source and the brighter target, dock the widget, start the run.

    Returns
    -------
    (napari.Viewer, AdaptSegmentWidget)
    """
    import napari

    viewer = napari.Viewer(title="napari-bnadapt demo", show=show)
    viewer.window.resize(1500, 950)
    viewer.open_sample(PLUGIN, "toy_source")
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    viewer.layers["toy source"].visible = False
    viewer.layers["toy source truth"].visible = False
    viewer.layers["toy target (brighter) truth"].visible = False
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability", tabify=True)
    widget.image.value = viewer.layers["toy target (brighter)"]
    widget.truth.value = viewer.layers["toy target (brighter) truth"]
    widget.model.value = DEMO_MODEL
    widget.start(adapt=True)
    return viewer, widget


def run_gui_demo(screenshot: str | Path | None = None, timeout_s: float = 600.0) -> int:
    """Run the demo; with ``screenshot``, save the window once the run is over and quit."""
    import napari
    from qtpy.QtCore import QTimer

    viewer, widget = build_demo_viewer(show=True)
    if screenshot is not None:
        path = Path(screenshot)
        state = {"waited": 0.0}

        def poll() -> None:
            state["waited"] += 0.5
            if widget.runner.running and state["waited"] < timeout_s:
                QTimer.singleShot(500, poll)
                return
            viewer.screenshot(str(path), canvas_only=False, flash=False)
            print(f"saved a screenshot to {path}; {widget.status.value}")
            viewer.close()

        QTimer.singleShot(1000, poll)
    napari.run()
    return 0
