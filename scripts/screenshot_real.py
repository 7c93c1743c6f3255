"""Screenshots of the plugin on real EM for docs/real-data.md (needs ../shared/data/real and a display).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_real.py [--out docs/images]

1. ``real_vnc_adapted.png``: the VNC held-out slices (loaded with the plugin's loader, voxel size
   50 x 4.6 x 4.6 nm), the bundled ``lucchi-pp`` model adapted and segmented in one click, with
   the ground truth chosen so the status line shows the IoU before and after.
2. ``pixel_size_warning.png``: the same stack loaded with 2x downsampling (9.2 nm pixels): the
   widget says the pixel size does not match the model's 5 nm and offers to rescale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from em_data import DATA, RECIPES  # noqa: E402
from make_screenshots import PLUGIN, _settle  # noqa: E402


def main() -> None:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    out = p.parse_args().out
    vnc = DATA / RECIPES["vnc"]["folder"]
    viewer = napari.Viewer(title="napari-bnadapt: Lucchi++ model on VNC")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    _d, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt & segment")
    w.loader.crop.value = "14:20, :, :"
    image = w.loader.load(vnc / "image.tif")
    w.loader.voxel.value = "50 4.6 4.6"  # what the user types (the file does not record it), then Enter
    w.loader.apply_voxel_size(image)
    truth = tifffile.imread(vnc / "labels.tif")[14:20]
    viewer.add_labels(truth, name="VNC truth", scale=image.scale, visible=False)
    w.reset_choices()
    w.image.value = image
    w.model.value = "lucchi-pp"
    w.truth.value = viewer.layers["VNC truth"]
    w.check_pixel_size()
    w.start(adapt=True)
    while w.runner.running:
        _settle(app, 0.2)
    _settle(app)
    viewer.dims.set_current_step(0, 2)
    viewer.reset_view()
    _settle(app)
    viewer.screenshot(str(out / "real_vnc_adapted.png"), canvas_only=False, flash=False)
    print(w.status.value)

    w.loader.downsample.value = 2
    small = w.loader.load(vnc / "image.tif")
    w.loader.voxel.value = "100 9.2 9.2"
    w.loader.apply_voxel_size(small)
    w.image.value = small
    w.check_pixel_size()
    _settle(app)
    w.native.grab().save(str(out / "pixel_size_warning.png"))
    print(w.scale_note.value)
    viewer.close()


if __name__ == "__main__":
    main()
