"""Segmentation throughput of the bundled models against this machine's own fp32 matmul FLOP rate.

Run: python benchmarks/bench_cpu_throughput.py [--models toy-perlin lucchi-pp] [--repeats 5]

Measures, in one run on the same threads:

1. the machine's fp32 matmul rate: ``torch.mm`` of two 2048 x 2048 float32 matrices
   (median of ``--repeats`` x 10 products), in GFLOP/s;
2. each model's convolution FLOPs per pixel (2 x multiply-adds of every Conv2d /
   ConvTranspose2d, counted by forward hooks on a 256 x 256 input; BatchNorm, ReLU,
   pooling and upsampling are not counted: they are memory work, not FLOPs);
3. the network's forward throughput on batches of 2 tiles of 1024 x 1024 (the
   engine's default batch) for several ways of running it:
   ``plain`` (eval + inference_mode), ``channels-last``, ``folded`` (BatchNorm folded
   into the convolutions), ``folded+cl`` (both: what ``predict`` uses), and
   ``jit-frozen`` (``torch.jit.freeze`` + ``optimize_for_inference`` of the folded copy);
4. end-to-end ``nb.segment`` on a 8 x 1024 x 1024 uint8 stack (reading, normalising,
   tiling, blending and thresholding included).

Reports Mpixel/s, GFLOP/s and the share of the matmul rate. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import header, write  # noqa: E402


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    """Median fp32 ``torch.mm`` rate (GFLOP/s) of n x n matrices."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        rates.append(10 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


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
    import torch

    from napari_bnadapt.fusion import fold_batchnorm

    plain = model.eval()
    cl = __import__("copy").deepcopy(model).eval().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    folded_cl = fold_batchnorm(model).to(memory_format=torch.channels_last)
    out = {"plain": (plain, False), "channels-last": (cl, True), "folded": (folded, False),
           "folded+cl": (folded_cl, True)}
    try:
        with torch.inference_mode(False), torch.no_grad():
            jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(fold_batchnorm(model))))
        out["jit-frozen"] = (jit, False)
    except Exception as exc:  # noqa: BLE001  (TorchScript is deprecated; report, don't fail)
        print(f"jit-frozen unavailable: {exc}", file=sys.stderr)
    return out


def forward_rate(module, channels_last: bool, repeats: int, batch: int = 2, size: int = 1024) -> float:
    """Median Mpixel/s of forward passes on ``batch`` tiles of ``size`` x ``size``."""
    import torch

    x = torch.randn(batch, 1, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        module(x)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            ts.append(time.perf_counter() - t)
    return batch * size * size / statistics.median(ts) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["toy-perlin", "lucchi-pp"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import numpy as np
    import torch

    import napari_bnadapt as nb

    lines = [header("segmentation throughput vs the machine's fp32 matmul rate (CPU)")]
    mm = matmul_gflops(args.repeats)
    lines.append(f"fp32 matmul (torch.mm 2048^2, {torch.get_num_threads()} threads): median {mm:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    stack = rng.integers(60, 200, size=(8, 1024, 1024), dtype=np.uint8)
    for name in args.models:
        if name not in nb.list_models():
            lines.append(f"\n{name}: not installed, skipped")
            continue
        model = nb.load_model(name, device="cpu")
        fpp = conv_flops_per_pixel(model)
        lines.append(f"\nmodel {name}: width {model.width}, bilinear {model.bilinear}, "
                     f"{fpp / 1e3:.1f} kFLOP per pixel (convolutions)")
        lines.append(f"  {'forward, 2 x 1024^2':<26}{'Mpixel/s':>10}{'GFLOP/s':>10}{'of matmul':>11}")
        for vname, (module, cl) in variants(model).items():
            rate = forward_rate(module, cl, args.repeats)
            lines.append(f"  {vname:<26}{rate:>10.2f}{rate * fpp / 1e3:>10.1f}{rate * fpp / 1e3 / mm:>10.0%}")
        ts = []
        for _ in range(max(1, args.repeats // 2)):
            t = time.perf_counter()
            nb.segment(model, stack, device="cpu")
            ts.append(time.perf_counter() - t)
        rate = stack.size / statistics.median(ts) / 1e6
        lines.append(f"  {'nb.segment 8 x 1024^2':<26}{rate:>10.2f}{rate * fpp / 1e3:>10.1f}{rate * fpp / 1e3 / mm:>10.0%}"
                     f"   (end to end, median of {len(ts)})")
    write("bench_cpu_throughput", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
