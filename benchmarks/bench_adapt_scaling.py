"""Adaptation cost vs stack size, and vs the paper's released way of adapting.

1. ``adapt`` on a 100 MiB and a 2 GiB uint8 memory-mapped TIFF (toy target, 1024 x 1024 slices):
   wall time and peak resident memory, each in a fresh process (patch sampling: the cost should
   not grow with the stack).
2. The reference way of the paper's released code on the 100 MiB stack: the whole model in train
   mode, one pass over every target slice at batch size 1, PyTorch's default momentum 0.1 (no reset),
   against ``adapt`` with its defaults, in the same run; IoU of both on the stack.

Run: python benchmarks/bench_adapt_scaling.py   (writes a 2 GiB file in a temporary folder, then deletes it)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402

SLICE = (1024, 1024)
TARGET = {"mu0": 136, "sigma0": 18, "mu1": 178, "sigma1": 18}


def make_stack(path: Path, n_slices: int) -> None:
    """A toy target stack of ``n_slices`` slices, written slice by slice (memory stays small)."""
    import tifffile

    from napari_bnadapt import synthetic

    base, _ = synthetic.generate(16, SLICE, seed=3, cell_size=32, **TARGET)
    mm = tifffile.memmap(path, shape=(n_slices, *SLICE), dtype="uint8")
    for z in range(n_slices):
        mm[z] = base[z % len(base)]
    mm.flush()
    del mm


CHILD = r"""
import json, sys, time, tifffile, napari_bnadapt as nb

def status(key):  # kB from /proc/self/status; VmHWM (peak) starts afresh at exec, unlike ru_maxrss
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

model = nb.load_model("toy-perlin", device="cpu")
images = tifffile.memmap(sys.argv[1])
before = status("VmRSS:")
t = time.perf_counter()
adapted, report = nb.adapt(model, images, device="cpu")
dt = time.perf_counter() - t
peak = status("VmHWM:")
print(json.dumps({"seconds": dt, "peak_mib": peak, "extra_mib": peak - before,
                  "voxels": report.n_voxels, "shape": list(images.shape)}))
"""


def adapt_in_child(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_adapt(model, images):
    """The released code's way: model.train(), batch size 1 over every slice, momentum 0.1, no reset."""
    import copy

    import torch

    from napari_bnadapt.io.stack_view import Normalization

    m = copy.deepcopy(model)
    norm = Normalization.from_meta(m.meta["normalization"])
    m.train()
    with torch.no_grad():
        for z in range(images.shape[0]):
            m(torch.from_numpy(norm.apply(images[z]))[None, None])
    m.eval()
    return m


def main() -> None:
    import numpy as np
    import tifffile

    import napari_bnadapt as nb
    from napari_bnadapt import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        small, big = Path(tmp) / "small.tif", Path(tmp) / "big.tif"
        make_stack(small, 100)  # 100 MiB
        make_stack(big, 2048)  # 2 GiB
        runs = {"100 MiB": [], "2 GiB": []}
        for _ in range(3):  # interleaved
            runs["100 MiB"].append(adapt_in_child(small))
            runs["2 GiB"].append(adapt_in_child(big))

        model = nb.load_model("toy-perlin", device="cpu")
        images = np.asarray(tifffile.memmap(small))
        truth = synthetic.generate(16, SLICE, seed=3, cell_size=32, **TARGET)[1]
        truth = np.stack([truth[z % 16] for z in range(images.shape[0])])
        t = time.perf_counter()
        ref = reference_adapt(model, images)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        ours, _ = nb.adapt(model, images, device="cpu")
        t_ours = time.perf_counter() - t
        sub = slice(0, 16)  # the 16 distinct slices
        iou_ref = nb.iou(nb.segment(ref, images[sub], device="cpu"), truth[sub])
        iou_ours = nb.iou(nb.segment(ours, images[sub], device="cpu"), truth[sub])

    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    lines = [header("adapt: cost vs stack size, and vs the paper's released way"),
             f"# toy target {TARGET}, slices {SLICE}; adapt defaults (64 patches of 256 px); 3 interleaved runs, medians",
             f"{'stack':>8} {'shape':>18} {'median s':>9} {'peak RSS MiB':>13} {'peak - RSS before adapt, MiB':>29}"]
    for k, v in runs.items():
        lines.append(f"{k:>8} {str(tuple(v[0]['shape'])):>18} {med[k]:>9.2f} "
                     f"{statistics.median(r['peak_mib'] for r in v):>13.0f} {statistics.median(r['extra_mib'] for r in v):>29.0f}")
    lines.append(f"time ratio 2 GiB / 100 MiB: {med['2 GiB'] / med['100 MiB']:.2f} (limit 1.5)")
    lines += ["",
              "# reference (released code): model.train(), batch 1 over all 100 slices, momentum 0.1, no reset",
              f"reference: {t_ref:.1f} s, IoU {iou_ref:.4f}",
              f"adapt:     {t_ours:.1f} s, IoU {iou_ours:.4f}",
              f"speed-up {t_ref / t_ours:.1f}x (target >= 10x); IoU difference {iou_ours - iou_ref:+.4f} (target within 0.01)"]
    write("bench_adapt_scaling", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
