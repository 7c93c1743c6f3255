"""Screenshot of the Spot check section of the Reliability panel for docs/spot-check.md (needs a display).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_spot_check.py [--out docs/images]

With ``../shared/data/real``: a 6 x 512 x 512 crop of the VNC held-out slices (14-19, 4.6 nm), the
bundled ``lucchi-pp`` model adapted and segmented with *Adapt & segment*, then the true mitochondria of
slice 2 painted in a Labels layer and checked, with the adaptation variants compared. Without it:
the toy brighter target and the toy model. Writes ``spot_check.png`` (the window) and prints the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import DATA, RECIPES, available  # noqa: E402
from make_screenshots import PLUGIN, _settle  # noqa: E402


def main() -> None:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_bnadapt.gui.spot_check import SHOWN, SpotCheckSection

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    out = p.parse_args().out
    viewer = napari.Viewer(title="napari-bnadapt: spot check")
    viewer.window.resize(1560, 980)
    app = QApplication.instance()
    _d, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    if available():
        vnc = DATA / RECIPES["vnc"]["folder"]
        w.loader.crop.value = "14:20, 256:768, 256:768"
        image = w.loader.load(vnc / "image.tif")
        w.loader.voxel.value = "50 4.6 4.6"
        w.loader.apply_voxel_size(image)
        truth = tifffile.imread(vnc / "labels.tif")[14:20, 256:768, 256:768]
        model = "lucchi-pp"
    else:
        viewer.open_sample(PLUGIN, "toy_brightness_target")
        image = viewer.layers["toy target (brighter)"]
        truth = np.asarray(viewer.layers["toy target (brighter) truth"].data)
        viewer.layers["toy target (brighter) truth"].visible = False
        model = "toy-perlin"
    w.reset_choices()
    w.image.value = image
    w.model.value = model
    w.start(adapt=True)
    while w.runner.running:
        _settle(app, 0.2)
    _settle(app)
    viewer.layers[-1].visible = False  # the segmentation: the user looks at the image and paints
    painted = np.zeros_like(truth)
    painted[2] = truth[2]
    viewer.add_labels(painted, name="my annotation (slice 2)", scale=image.scale, opacity=0.6)
    _d, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Reliability")
    w.native.parent().hide()  # room for the panel: the Adapt & segment widget has done its part
    section = panel.findChild(SpotCheckSection)
    section.refresh()
    section.image.value = image
    section.annotation.value = viewer.layers["my annotation (slice 2)"]
    section.slices.value = SHOWN
    section.compare.value = True
    viewer.dims.set_current_step(0, 2)
    section.start()
    while section.runner.running:
        _settle(app, 0.2)
    _settle(app)
    viewer.reset_view()
    _settle(app)
    viewer.screenshot(str(out / "spot_check.png"), canvas_only=False, flash=False)
    section.grab().save(str(out / "spot_check_section.png"))
    print(section.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
