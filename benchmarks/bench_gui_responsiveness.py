"""GUI responsiveness while the Adapt & segment widget works on a 20 x 1024 x 1024 stack (CPU).

A 10 ms QTimer ticks on the GUI thread during the whole run; the longest gap between ticks says
how long napari was frozen. Run under a display (xvfb-run on a headless machine):

    xvfb-run -a python benchmarks/bench_gui_responsiveness.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402

SHAPE = (20, 1024, 1024)


def main() -> None:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_bnadapt import synthetic

    images, truth = synthetic.generate(SHAPE[0], SHAPE[1:], seed=5, cell_size=32, mu0=136, sigma0=18, mu1=178, sigma1=18)
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(images, name="target", contrast_limits=(0, 255))
    viewer.add_labels(truth, name="truth")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-bnadapt", "Adapt & segment")
    w.image.value = layer
    w.truth.value = viewer.layers["truth"]
    w.device.value = "cpu"
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    for _ in range(20):
        app.processEvents()
    timer.start()
    t0 = time.perf_counter()
    w.start(adapt=True)
    while w.runner.running:
        app.processEvents()
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    gaps_ms = sorted(g * 1000 for g in gaps)
    p99 = gaps_ms[int(0.99 * (len(gaps_ms) - 1))]
    lines = [
        header("GUI responsiveness during Adapt & segment (CPU)"),
        f"# stack {SHAPE} uint8 toy target, ground truth given (IoU before and after: two segmentations + adaptation)",
        f"run time {elapsed:.1f} s; {len(ticks)} ticks of a 10 ms QTimer on the GUI thread",
        f"gap between ticks: median {statistics.median(gaps_ms):.1f} ms, 99th percentile {p99:.1f} ms, "
        f"longest {gaps_ms[-1]:.1f} ms (limit 200 ms): {'PASS' if gaps_ms[-1] < 200 else 'FAIL'}",
        f"status: {w.status.value}",
    ]
    write("bench_gui_responsiveness", "\n".join(lines) + "\n")
    viewer.close()


if __name__ == "__main__":
    main()
