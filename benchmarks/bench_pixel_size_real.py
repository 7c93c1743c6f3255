"""What passing the pixel size changes on the real pair (5 nm Lucchi++ vs 4.6 nm VNC, 8 % apart).

Run: python benchmarks/bench_pixel_size_real.py

Needs ``../shared/data/real/``. The bundled ``lucchi-pp`` and ``vnc`` on the other volume's held-out
test slices (every 6th Lucchi++ test slice; VNC slices 14-19) and on the 512 x 512 VNC crop of
``tests/test_real_data.py``: source-only and AdaBN IoU without the pixel size (the network sees the
image as it is) and with it (resampled to the model's pixel size, results on the image's grid).
Writes ``benchmarks/results/bench_pixel_size_real.txt``.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import header, write  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402


def main() -> int:
    if not real_data_ready(2):
        return 2
    warnings.simplefilter("ignore")  # the unknown-pixel-size runs warn, on purpose
    t0 = time.perf_counter()
    targets = []
    for model, tgt, step in (("lucchi-pp", "vnc", 1), ("vnc", "lucchi", 6)):
        x, y = load_split(tgt, "test")
        targets.append((model, f"{RECIPES[tgt]['label']} test (every {step}. slice)" if step > 1 else
                        f"{RECIPES[tgt]['label']} test", np.asarray(x[::step]), np.asarray(y[::step]) > 0,
                        RECIPES[tgt]["pixel_size_nm"]))
    x, y = load_split("vnc", "test")
    targets.append(("lucchi-pp", "VNC crop of tests/test_real_data.py", np.ascontiguousarray(x[:, 256:768, 256:768]),
                    np.asarray(y[:, 256:768, 256:768]) > 0, RECIPES["vnc"]["pixel_size_nm"]))
    lines = ["| model | target | pixel size passed | source only | AdaBN |", "|---|---|---|---|---|"]
    for name, label, images, truth, px in targets:
        model = nb.load_model(name, device="cpu")
        for given in (None, px):
            src = nb.iou(nb.segment(model, images, device="cpu", pixel_size_nm=given), truth)
            adapted, _ = nb.adapt(model, images, device="cpu", pixel_size_nm=given)
            ada = nb.iou(nb.segment(adapted, images, device="cpu", pixel_size_nm=given), truth)
            lines.append(f"| {name} | {label} | {'no' if given is None else f'{given[0]:g} nm'} | {src:.3f} | {ada:.3f} |")
            print(lines[-1], flush=True)
    write("bench_pixel_size_real", header("The pixel size on the real pair: without and with resampling to the model's")
          + f"# wall time: {time.perf_counter() - t0:.0f} s\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
