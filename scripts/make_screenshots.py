"""Screenshots of the napari window for the docs (run under a display, e.g. xvfb-run -a).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PLUGIN = "napari-bnadapt"


def _settle(app, seconds: float = 1.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    import os
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    os.environ["BNADAPT_MODEL_DIR"] = tempfile.mkdtemp()  # the demo training must not touch your models

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    out = p.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-bnadapt")
    viewer.window.resize(1500, 1900)  # tall enough to show both docks unscrolled (they scroll on a short screen)
    app = QApplication.instance()
    viewer.open_sample(PLUGIN, "toy_brightness_target")
    viewer.layers["toy target (brighter) truth"].visible = False
    _d, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    w.image.value = viewer.layers["toy target (brighter)"]
    w.truth.value = viewer.layers["toy target (brighter) truth"]
    _settle(app)
    viewer.screenshot(str(out / "adapt_before.png"), canvas_only=False, flash=False)

    _d2, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    w.start(adapt=True)
    while w.runner.running:
        _settle(app, 0.2)
    _settle(app)
    viewer.screenshot(str(out / "adapt_after.png"), canvas_only=False, flash=False)
    panel_img = panel.grab()
    panel_img.save(str(out / "reliability_panel.png"))

    viewer.layers.clear()
    viewer.window.remove_dock_widget("all")  # the train widget on its own, at its natural height
    viewer.open_sample(PLUGIN, "toy_source")
    _d3, t = viewer.window.add_plugin_dock_widget(PLUGIN, "Train a source model", tabify=False)
    _settle(app)
    t.native.grab().save(str(out / "train_widget.png"))
    t.image.value, t.labels_layer.value = viewer.layers["toy source"], viewer.layers["toy source truth"]
    t.model_name.value, t.net_width.value, t.steps.value = "screenshot-demo", 8, 100
    t.start()
    while t.runner.running:
        _settle(app, 0.2)
    _settle(app)
    t.native.grab().save(str(out / "train_widget_after.png"))
    print(f"screenshots in {out}: {w.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
