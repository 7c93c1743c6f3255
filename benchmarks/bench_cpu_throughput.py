"""Segmentation throughput of the bundled models against this machine's own fp32 matmul FLOP rate.

Run: python benchmarks/bench_cpu_throughput.py [--models toy-perlin lucchi-pp] [--repeats 5]

Measures, in one run on the same threads:

1. the machine's fp32 matmul rate, two ways, on two 2048 x 2048 float32 matrices:
   ``torch.mm`` (MKL here) and the same product run by oneDNN, the library that runs
   the convolutions (a 1 x 1 convolution of 2048 to 2048 channels over 2048 pixels).
   The shares below are of the HIGHER of the two: the rate the hardware demonstrably
   reaches (on this AMD machine MKL's sgemm reaches about half of oneDNN's);
2. each model's convolution FLOPs per pixel (2 x multiply-adds of every Conv2d /
   ConvTranspose2d, counted by forward hooks on a 256 x 256 input; BatchNorm, ReLU,
   pooling and upsampling are not counted: they are memory work, not FLOPs);
3. the network's forward throughput for several ways of running it, on the engine's
   former default batch (2 tiles of 1024 x 1024) and on its CPU default (one tile of
   544 x 544, what a 1024 x 1024 slice is cut into): ``plain`` (eval +
   inference_mode), ``channels-last``, ``folded`` (BatchNorm folded into the
   convolutions), ``folded+cl``, ``folded+cl+split`` (also the decoder's
   concatenations split into sums of convolutions: what ``predict`` uses), and
   ``jit-frozen`` (``torch.jit.freeze`` + ``optimize_for_inference`` of the folded copy);
4. the forward throughput of ``folded+cl+split`` against the tile side (one tile per
   pass): why the CPU default tile is 576 px at most;
5. end-to-end ``nb.segment`` on a 8 x 1024 x 1024 uint8 stack (reading, normalising,
   tiling, blending and thresholding included) with the default (cache-sized) tiles
   and with whole-slice tiles (``tile_size=1024``, the former default), and the share
   of pixels on which the two segmentations differ;
6. with the real data of ``../shared/data/real`` present: the Lucchi++ test IoU of
   ``lucchi-pp`` segmented both ways (tiling must not cost accuracy).

Reports Mpixel/s, GFLOP/s and the share of the matmul rate. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_gflops(repeats: int, n: int = 2048) -> dict[str, float]:
    """Median fp32 rates (GFLOP/s) of an n x n x n matrix product: ``torch.mm`` and oneDNN (a 1 x 1 convolution)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        return {"torch.mm": 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), repeats * 3) / 1e9,
                "oneDNN 1x1 conv": onednn_matmul_gflops(repeats * 3, n)}


def onednn_matmul_gflops(repeats: int, n: int = 2048) -> float:
    """Median fp32 rate (GFLOP/s) of an n x n x n product run by oneDNN (1 x 1 convolution, n pixels)."""
    import torch

    conv = torch.nn.Conv2d(n, n, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, n, n // 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return 2 * n**3 / _median_seconds(lambda: conv(x), repeats) / 1e9


def conv_flops_per_pixel(model, size: int = 256) -> float:
    """2 x multiply-adds of every convolution per input pixel (a forward pass on one size x size input)."""
    import torch
    from torch import nn

    total = [0]

    def hook(mod, _inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, nn.ConvTranspose2d):  # every input pixel meets every kernel tap once
            n_in = _inp[0].shape[-2] * _inp[0].shape[-1]
            total[0] += 2 * n_in * k * mod.in_channels * mod.out_channels // mod.groups
        else:
            total[0] += 2 * out.shape[-2] * out.shape[-1] * k * mod.in_channels * mod.out_channels // mod.groups

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, model.in_channels, size, size))
    for h in hs:
        h.remove()
    return total[0] / size**2


def variants(model):
    """name -> (module, channels_last input) for every way of running the network."""
    import copy

    import torch

    from napari_bnadapt.segmentation.fusion import fold_batchnorm, inference_copy

    plain = model.eval()
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    folded_cl = fold_batchnorm(model).to(memory_format=torch.channels_last)
    out = {"plain": (plain, False), "channels-last": (cl, True), "folded": (folded, False),
           "folded+cl": (folded_cl, True), "folded+cl+split": (inference_copy(model, "cpu"), True)}
    try:
        with torch.inference_mode(False), torch.no_grad():
            jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(fold_batchnorm(model))))
        out["jit-frozen"] = (jit, False)
    except Exception as exc:  # noqa: BLE001  (TorchScript is deprecated; report, don't fail)
        print(f"jit-frozen unavailable: {exc}", file=sys.stderr)
    return out


def forward_rate(module, channels_last: bool, repeats: int, batch: int, size: int) -> float:
    """Median Mpixel/s of forward passes on ``batch`` tiles of ``size`` x ``size``."""
    import torch

    x = torch.randn(batch, 1, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return batch * size * size / _median_seconds(lambda: module(x), repeats) / 1e6


def segment_rate(model, stack, repeats: int, **kw):
    """(Mpixel/s, labels) of end-to-end ``nb.segment`` on ``stack``; median of ``repeats``."""
    import napari_bnadapt as nb

    out = {}

    def run() -> None:
        out["labels"] = nb.segment(model, stack, device="cpu", **kw)

    return stack.size / _median_seconds(run, repeats) / 1e6, out["labels"]


def end_to_end(model, fpp: float, stack, repeats: int, **kw):
    """Median Mpixel/s of ``nb.segment``, and the median of its GFLOP/s (``fpp`` FLOP per pixel) over the
    oneDNN matmul rate measured just before each run (the two share the machine's state of the moment),
    and the labels."""
    rates, shares = [], []
    for _ in range(repeats):
        mm = onednn_matmul_gflops(5)
        rate, labels = segment_rate(model, stack, 1, **kw)
        rates.append(rate)
        shares.append(rate * fpp / 1e3 / mm)
    return statistics.median(rates), statistics.median(shares), labels


def _stack():
    return np.random.default_rng(0).integers(60, 200, size=(8, 1024, 1024), dtype=np.uint8)


def _child(name: str, repeats: int) -> None:
    """Print the end-to-end Mpixel/s of ``name`` as JSON (run with the allocator left alone).

    No matmul is timed in this process: its 16 MiB blocks would raise glibc's dynamic
    mmap threshold and so tune the allocator by accident.
    """
    import json

    import napari_bnadapt as nb

    rate, _ = segment_rate(nb.load_model(name, device="cpu"), _stack(), repeats)
    print(json.dumps({"rate": rate}))


def untuned_end_to_end(name: str, repeats: int) -> float:
    """End-to-end Mpixel/s in a fresh process with ``BNADAPT_MALLOC=default`` (glibc's defaults)."""
    import json
    import os
    import subprocess

    env = dict(os.environ, BNADAPT_MALLOC="default")
    out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(repeats)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rate"]


def real_data_lines(repeats: int) -> list[str]:
    """Lucchi++ test IoU and speed of ``lucchi-pp`` with the default tiles and whole-slice tiles."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from em_data import available, load_split

    import napari_bnadapt as nb

    if not available() or "lucchi-pp" not in nb.list_models():
        return ["\nreal data (../shared/data/real) not found: Lucchi++ IoU check skipped"]
    images, labels = load_split("lucchi", "test")
    images = np.asarray(images)
    model = nb.load_model("lucchi-pp", device="cpu")
    lines = [f"\nlucchi-pp on the Lucchi++ test slices {images.shape} (threshold 0.5)"]
    for name, kw in [("default tiles (<= 576 px)", {}), ("whole slices (tile_size=1024)", {"tile_size": 1024})]:
        rate, lab = segment_rate(model, images, max(1, repeats // 2), **kw)
        lines.append(f"  {name:<32} IoU {nb.iou(lab > 0, labels > 0):.4f}   {rate:.2f} Mpixel/s")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["toy-perlin", "lucchi-pp"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args.child, args.repeats)
    # the tuned allocator is measured here (it is off by default in the library; the CLI turns it on)
    os.environ["BNADAPT_MALLOC"] = "tuned"

    import torch

    import napari_bnadapt as nb
    from napari_bnadapt.segmentation.allocator import tune_cpu_allocator

    lines = [header("segmentation throughput vs the machine's fp32 matmul rate (CPU)")]
    lines.append(f"glibc allocator tuned (napari_bnadapt.segmentation.allocator): {tune_cpu_allocator()}")
    rates = matmul_gflops(args.repeats)
    mm = max(rates.values())
    lines.append(f"fp32 matmul 2048^3 ({torch.get_num_threads()} threads), median GFLOP/s: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + f"; reference = the higher, {mm:.1f}")
    stack = _stack()

    def row(label: str, rate: float, fpp: float, extra: str = "", share: float | None = None) -> str:
        share = rate * fpp / 1e3 / mm if share is None else share
        return f"  {label:<34}{rate:>10.2f}{rate * fpp / 1e3:>10.1f}{share:>10.0%}{extra}"

    for name in args.models:
        if name not in nb.list_models():
            lines.append(f"\n{name}: not installed, skipped")
            continue
        model = nb.load_model(name, device="cpu")
        fpp = conv_flops_per_pixel(model)
        lines.append(f"\nmodel {name}: width {model.width}, bilinear {model.bilinear}, "
                     f"{fpp / 1e3:.1f} kFLOP per pixel (convolutions)")
        lines.append(f"  {'forward':<34}{'Mpixel/s':>10}{'GFLOP/s':>10}{'of matmul':>11}")
        ways = variants(model)
        for vname, (module, cl) in ways.items():
            for batch, size in [(2, 1024), (1, 544)]:
                rate = forward_rate(module, cl, args.repeats, batch, size)
                lines.append(row(f"{vname}, {batch} x {size}^2", rate, fpp))
        fast = ways["folded+cl+split"][0]
        lines.append("  tile side (folded+cl+split, one tile per pass):")
        for size in [256, 384, 448, 512, 576, 640, 768, 1024]:
            lines.append(row(f"  {size} x {size}", forward_rate(fast, True, args.repeats, 1, size), fpp))
        lines.append("  end to end, nb.segment of 8 x 1024^2 uint8 (share: median of the ratios to a oneDNN matmul")
        lines.append(f"  rate measured just before each of {args.repeats} runs):")
        rate, share, auto = end_to_end(model, fpp, stack, args.repeats)
        lines.append(row("nb.segment, defaults", rate, fpp, share=share))
        rate, share, whole = end_to_end(model, fpp, stack, args.repeats, tile_size=1024)
        lines.append(row("nb.segment, tile_size=1024", rate, fpp, share=share,
                         extra=f"   (labels differ from the defaults' on {np.mean(auto != whole):.1e} of the pixels)"))
        rate = untuned_end_to_end(name, args.repeats)
        lines.append(row("nb.segment, glibc malloc defaults", rate, fpp,
                         extra="   (BNADAPT_MALLOC=default, fresh process; share of the reference)"))
    lines += real_data_lines(args.repeats)
    write("bench_cpu_throughput", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
