"""CPU time of ``adapt`` and segmentation throughput of the bundled model on a 20 x 1024 x 1024 stack.

Run: python benchmarks/bench_adapt_segment.py [--model toy-perlin] [--repeats 3]
The stack is the brightness-shifted toy target (synthetic, 8-bit), so IoU is reported too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt import synthetic  # noqa: E402

SHAPE = (20, 1024, 1024)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="toy-perlin")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    images, truth = synthetic.generate(SHAPE[0], SHAPE[1:], seed=5, cell_size=32, mu0=136, sigma0=18, mu1=178, sigma1=18)
    model = nb.load_model(args.model, device=args.device)
    t_adapt, t_seg = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        adapted, report = nb.adapt(model, images, device=args.device)
        t_adapt.append(time.perf_counter() - t)
        t = time.perf_counter()
        labels = nb.segment(adapted, images, device=args.device)
        t_seg.append(time.perf_counter() - t)
    before = nb.iou(nb.segment(model, images[:4], device=args.device), truth[:4])
    vox = images.size
    lines = [
        header(f"adapt + segment, model {args.model!r}, {args.device}"),
        f"# stack {SHAPE} uint8 (brightness-shifted toy target, mu0/mu1 = 136/178); {args.repeats} repeats, medians",
        f"adapt:   median {statistics.median(t_adapt):.2f} s  (all: {', '.join(f'{t:.2f}' for t in t_adapt)}); "
        f"{report.n_patches} patches of {report.patch_size[0]} px = {report.n_voxels:,} voxels, converged={report.converged}",
        f"segment: median {statistics.median(t_seg):.1f} s  (all: {', '.join(f'{t:.1f}' for t in t_seg)}) "
        f"= {vox / statistics.median(t_seg) / 1e6:.2f} Mvoxel/s",
        f"IoU source-only (first 4 slices) {before:.3f}; adapted {nb.iou(labels, truth):.3f}",
    ]
    write(f"bench_adapt_segment_{args.device}", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
