"""Forward-pass throughput of the U-Net at several widths on this machine's CPU (inference mode).

Run: python benchmarks/bench_unet_width.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402

from napari_bnadapt.model.unet import UNet, count_parameters  # noqa: E402

REPEATS = 5
BATCH, SIZE = 4, 256


def main() -> None:
    x = torch.randn(BATCH, 1, SIZE, SIZE)
    models = {(w, b): UNet(width=w, bilinear=b).eval() for w, b in [(8, False), (16, False), (16, True), (32, False), (32, True)]}
    times: dict = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(REPEATS):  # interleaved, so machine noise hits every width alike
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t)
    lines = [header("U-Net forward throughput by width (CPU, float32, inference mode)"),
             f"# input {BATCH} x 1 x {SIZE} x {SIZE}; median of {REPEATS} interleaved repeats",
             f"{'width':>5} {'upsampling':>10} {'parameters':>11} {'median s':>9} {'Mvoxel/s':>9} {'vs width 16':>11}"]
    ref = statistics.median(times[(16, False)])
    for (w, b), ts in times.items():
        med = statistics.median(ts)
        lines.append(f"{w:>5} {'bilinear' if b else 'transposed':>10} {count_parameters(models[(w, b)]):>11,} "
                     f"{med:>9.3f} {BATCH * SIZE * SIZE / med / 1e6:>9.2f} {ref / med:>10.2f}x")
    write("bench_unet_width", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
