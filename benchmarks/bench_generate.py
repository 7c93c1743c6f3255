"""Benchmark: vectorised toy-data generator vs a per-image reference.

Times ``napari_bnadapt.synthetic.generator.generate(10_000)`` (64 x 64 Perlin pairs)
against a straightforward per-image implementation written below, the way
the thesis generated its data (one image at a time: a 96 x 96 Perlin field
with a 3 x 3 lattice built with numpy, a random 64 x 64 crop, threshold,
two normal noise draws). The reference is timed on fewer images
(``--ref-images``, default 500) and scaled linearly to 10,000, which is
fair because its cost per image is constant. Both run in the same process,
interleaved repeat by repeat so background load hits both alike; medians
are reported.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_generate.py [--repeats 5] [--ref-images 500]

The table is printed and written to ``benchmarks/results/bench_generate.txt``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from napari_bnadapt import synthetic  # noqa: E402

N = 10_000
SHAPE = (64, 64)
PARAMS = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}


# ---------------------------------------------------------------- reference


def _fade(t):
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def reference_perlin_field(rng, size=96, res=3):
    """One size x size Perlin field on a res x res lattice, numpy per image."""
    cell = size // res
    angles = 2 * np.pi * rng.random((res + 1, res + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (res+1, res+1, 2)
    pos = np.arange(size) / cell
    yy, xx = np.meshgrid(pos, pos, indexing="ij")
    iy, ix = yy.astype(int), xx.astype(int)
    fy, fx = yy - iy, xx - ix

    def corner(a, b):
        g = grads[iy + a, ix + b]  # per-pixel gradient of that corner
        return g[..., 0] * (fx - b) + g[..., 1] * (fy - a)

    ux, uy = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def reference_generate(n, mu0=96, sigma0=18, mu1=138, sigma1=18, seed=0, size=64):
    """Per-image generator: loop over images, as in the thesis."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    big = size * 3 // 2
    for k in range(n):
        field = reference_perlin_field(rng, big, 3)
        oy, ox = rng.integers(0, big - size, size=2)
        mask = np.abs(field[oy:oy + size, ox:ox + size]) > 0.4
        fg = rng.normal(mu1, sigma1, (size, size))
        bg = rng.normal(mu0, sigma0, (size, size))
        img = np.where(mask, fg, bg)
        images[k] = np.clip(np.rint(img), 0, 255)
        masks[k] = mask
    return images, masks


# ---------------------------------------------------------------- timing


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu n/a"


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-images", type=int, default=500)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_generate.txt")
    args = ap.parse_args(argv)
    warnings.simplefilter("error", synthetic.ClippingWarning)

    # warm-up (imports, allocator, BLAS threads)
    synthetic.generate(300, seed=0)
    reference_generate(20, seed=0)

    vec_t, ref_t = [], []
    fg_vec = fg_ref = None
    for r in range(args.repeats):
        t, (_, m) = _time(lambda: synthetic.generate(N, SHAPE, seed=r, **PARAMS))
        vec_t.append(t)
        fg_vec = m.mean()
        t, (_, m) = _time(lambda: reference_generate(args.ref_images, seed=r, **PARAMS))
        ref_t.append(t)
        fg_ref = m.mean()
    vec_med = statistics.median(vec_t)
    ref_med = statistics.median(ref_t)
    scale = N / args.ref_images
    ref_scaled = ref_med * scale
    speedup = ref_scaled / vec_med

    extra = []
    for label, fn in [
        ("generate(10000, shapes='circles')", lambda: synthetic.generate(N, seed=1, shapes="circles")),
        ("generate(10000, shapes='triangles')", lambda: synthetic.generate(N, seed=1, shapes="triangles")),
        ("generate(10000, style='gradient')", lambda: synthetic.generate(N, seed=1, style="gradient")),
        ("generate(10000, style='edges')", lambda: synthetic.generate(N, seed=1, style="edges")),
        ("generate_volume((16, 256, 256))", lambda: synthetic.generate_volume((16, 256, 256), seed=1)),
        ("generate_volume((32, 256, 256))", lambda: synthetic.generate_volume((32, 256, 256), seed=1)),
    ]:
        times = [_time(fn)[0] for _ in range(3)]
        extra.append((label, statistics.median(times)))

    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "n/a"
    lines = [
        "napari-bnadapt: toy-data generator benchmark (benchmarks/bench_generate.py)",
        f"date        : {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"machine     : {platform.platform()} | {platform.machine()} | {_cpu_name()}",
        f"cpu count   : {os.cpu_count()} | load average at the end (1/5/15 min): {load}",
        f"python      : {platform.python_version()} | numpy {np.__version__}",
        f"workload    : {N} image/mask pairs, {SHAPE[0]}x{SHAPE[1]}, Perlin, (mu0, sigma0, mu1, sigma1) = (96, 18, 138, 18)",
        f"repeats     : {args.repeats} (median reported; vectorised and reference interleaved)",
        f"reference   : per-image loop, timed on {args.ref_images} images and scaled x{scale:g} to {N}",
        "",
        f"{'implementation':<44}{'median s':>10}{'min s':>10}{'max s':>10}",
        f"{'vectorised generate(10000)':<44}{vec_med:>10.3f}{min(vec_t):>10.3f}{max(vec_t):>10.3f}",
        f"{f'reference, {args.ref_images} images (measured)':<44}{ref_med:>10.3f}{min(ref_t):>10.3f}{max(ref_t):>10.3f}",
        f"{'reference, scaled to 10000':<44}{ref_scaled:>10.3f}{min(ref_t) * scale:>10.3f}{max(ref_t) * scale:>10.3f}",
        "",
        f"speed-up (median reference scaled / median vectorised): {speedup:.1f}x  (target >= 20x)",
        f"thesis reference: about 40 s for 10000 images -> {40.0 / vec_med:.0f}x",
        f"foreground fraction, last repeat: vectorised {fg_vec:.3f}, reference {fg_ref:.3f} (thesis ~0.21)",
        "",
        f"{'other workloads (median of 3)':<44}{'median s':>10}",
    ]
    lines += [f"{label:<44}{t:>10.3f}" for label, t in extra]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return speedup


if __name__ == "__main__":
    main()
