"""Peak memory of segmenting a 2 GiB uint8 memory-mapped stack into a zarr store on disk.

Run: python benchmarks/bench_segment_memory.py [--slices 2048]

Writes a 2048 x 1024 x 1024 uint8 TIFF (2 GiB, toy target) in a temporary folder, then in a
fresh process: imports torch, loads the bundled ``toy-perlin`` model and adapts it to the stack
(AdaBN, 64 patches), and segments the whole stack opened with ``tifffile.memmap`` into a
zarr array on disk (chunks of one slice). Reports the footprint (RSS with torch and the model
loaded, before adapting), the peak resident memory while segmenting (VmHWM, reset after
adapting through ``/proc/self/clear_refs``) and that peak above the footprint, the time and
the throughput; checks that 4 slices of the zarr output equal an in-memory segmentation of
the same slices. Target: < 1 GiB above the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402
from bench_adapt_scaling import make_stack  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np, tifffile, zarr
import torch  # noqa: F401  (part of the footprint)
import napari_bnadapt as nb

def status(key):  # MiB from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

images = tifffile.memmap(sys.argv[1], mode="r")
source = nb.load_model("toy-perlin", device="cpu")
footprint = status("VmRSS:")  # the process with torch and the model
model, _ = nb.adapt(source, images, device="cpu")  # 64 patches
after_adapt, adapt_peak = status("VmRSS:"), status("VmHWM:")
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS: the peak of segmenting alone
    f.write("5")
out = zarr.open(sys.argv[2], mode="w", shape=images.shape, chunks=(1, *images.shape[1:]), dtype="uint8")
t = time.perf_counter()
nb.segment(model, images, device="cpu", out=out)
dt = time.perf_counter() - t
peak = status("VmHWM:")
idx = [0, 1, images.shape[0] // 2, images.shape[0] - 1]
same = all(np.array_equal(out[i], nb.segment(model, np.asarray(images[i]), device="cpu")) for i in idx)
print(json.dumps({"seconds": dt, "footprint_mib": footprint, "peak_mib": peak, "extra_mib": peak - footprint,
                  "after_adapt_mib": after_adapt, "adapt_peak_mib": adapt_peak,
                  "rss_end_mib": status("VmRSS:"), "shape": list(images.shape), "same_as_in_memory": same,
                  "foreground": float(np.mean(out[images.shape[0] // 2]))}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=2048, help="1024 x 1024 slices (2048 = 2 GiB)")
    args = p.parse_args()
    os.environ.setdefault("BNADAPT_MALLOC", "tuned")  # as the CLI runs (the measured child inherits it)
    with tempfile.TemporaryDirectory() as tmp:
        stack, store = Path(tmp) / "big.tif", Path(tmp) / "labels.zarr"
        make_stack(stack, args.slices)
        res = subprocess.run([sys.executable, "-c", CHILD, str(stack), str(store)], check=True,
                             capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
    gib = args.slices * 1024 * 1024 / 2**30
    vox = args.slices * 1024 * 1024
    lines = [
        header("segment: peak memory on a memory-mapped stack, output to zarr on disk"),
        f"# stack {tuple(r['shape'])} uint8 = {gib:.2f} GiB (tifffile.memmap, mode 'r'), model toy-perlin, "
        "output zarr (chunks 1 x 1024 x 1024)",
        f"footprint with torch and the model loaded: {r['footprint_mib']:.0f} MiB",
        f"adapting (64 patches): peak {r['adapt_peak_mib']:.0f} MiB, RSS after {r['after_adapt_mib']:.0f} MiB "
        "(allocator: BNADAPT_MALLOC={})".format(os.environ.get("BNADAPT_MALLOC", "default")),
        f"peak RSS while segmenting (VmHWM reset after adapting): {r['peak_mib']:.0f} MiB",
        f"peak above the footprint:        {r['extra_mib']:.0f} MiB (target < 1024 MiB)",
        f"RSS at the end:                  {r['rss_end_mib']:.0f} MiB",
        f"time {r['seconds']:.0f} s = {vox / r['seconds'] / 1e6:.2f} Mvoxel/s",
        f"zarr output equals in-memory segmentation on 4 slices: {r['same_as_in_memory']}; "
        f"foreground share of the middle slice {r['foreground']:.3f}",
    ]
    write("bench_segment_memory", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
