"""GPU check: the CUDA code paths of napari-bnadapt against the CPU, in a few minutes.

Run from the repository root on a machine with a CUDA GPU (needs only numpy, torch and the
package's core modules: no napari, dask, zarr or h5py):

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out PATH] [--models toy-perlin,lucchi-pp] [--repeats 3]

Checks (each PASS, FAIL or SKIPPED; the criteria are printed beside the figures):

1. CPU reference   adapt + segment the toy brightness-shifted sample on the CPU (always runs).
2. CUDA vs CPU     adapt + segment on CUDA in strict float32 (TF32 off) against the CPU: IoU,
                   label agreement, max |probability difference|, BatchNorm statistics; the same
                   with PyTorch's default TF32 convolutions; timings (median, synchronised).
3. mixed precision ``amp=True`` (float16 autocast on CUDA) against float32: BatchNorm statistics
                   stay float32 and unchanged, IoU / probability differences, throughput.
4. pinned memory   host -> device copies with and without page-locked memory, and what the
                   engine does (``segmentation/engine.py``).
5. OOM back-off    a real CUDA out-of-memory error, forced by capping this process's GPU memory
                   (``torch.cuda.set_per_process_memory_fraction``): ``segment`` must back off to
                   smaller batches / tiles, finish, and give the labels of an unconstrained run.

Without a CUDA device only check 1 runs; the others are reported as SKIPPED, and the results are
written only where ``--out`` says (``benchmarks/results/gpu_check.txt`` is the default only when
CUDA ran). Exit code: 0 when every check that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import random
import re
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import napari_bnadapt as nb
from napari_bnadapt.model.unet import batchnorm_layers
from napari_bnadapt.progress import Progress, Result
from napari_bnadapt.segmentation import engine

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check.txt"
SEED = 0
#: the bundled model trained on the toy source domain: the one whose IoU on the toy target means something
TOY_MODEL = "toy-perlin"
#: adapted IoU of toy-perlin on the toy brightness target (8 x 256 x 256) on the CPU: 0.984
MIN_TOY_IOU = 0.95
#: slices of 1024 x 1024 in the throughput / transfer stack (CUDA only)
TIMING_SLICES = 16
#: side of the slices (and of the one tile asked for) in the out-of-memory check: twice the GPU default tile
OOM_SIDE = 2048


# --------------------------------------------------------------------------- helpers


@dataclass
class Check:
    """One check: its figures, the criteria it was judged by, and PASS / FAIL / SKIPPED."""

    title: str
    status: str = "PASS"
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(f"  {text}")
        print(f"  {text}", flush=True)

    def figure(self, label: str, value: Any) -> None:
        self.say(f"{label:<56} {value}")

    def require(self, ok: bool, criterion: str) -> None:
        """Record a pass criterion; one that does not hold fails the check."""
        self.say(f"[{'ok' if ok else 'FAILED'}] {criterion}")
        if not ok:
            self.status = "FAIL"

    def skip(self, why: str) -> "Check":
        self.status = "SKIPPED"
        self.say(f"SKIPPED: {why}")
        return self


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def cuda_present() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda_present():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, warmup: bool = False) -> tuple[Any, float]:
    """(last result, median seconds) of ``repeats`` calls, synchronised with the GPU around each."""
    if warmup:
        fn()
    times = []
    out = None
    for _ in range(max(1, repeats)):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


@contextmanager
def tf32_convolutions(enabled: bool) -> Iterator[None]:
    """cuDNN convolutions in TF32 (PyTorch's default on Ampere and newer) or in strict float32."""
    with warnings.catch_warnings():  # newer torch versions nudge towards a newer flag; this one still works
        warnings.simplefilter("ignore")
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32 = old


def label_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(IoU of the two label maps, number of pixels where they differ)."""
    return nb.iou(a, b), int(np.count_nonzero((a > 0) != (b > 0)))


def bn_stats_difference(a: Any, b: Any) -> tuple[float, float]:
    """Largest |mean_a - mean_b| / sigma_a and |var_a - var_b| / var_a over all BatchNorm channels."""
    dmean = dvar = 0.0
    lb = dict(batchnorm_layers(b))
    for name, bn in batchnorm_layers(a):
        ma, va = bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu()
        mb, vb = lb[name].running_mean.detach().double().cpu(), lb[name].running_var.detach().double().cpu()
        dmean = max(dmean, float(((ma - mb).abs() / (va + bn.eps).sqrt()).max()))
        dvar = max(dvar, float(((va - vb).abs() / va.clamp_min(1e-12)).max()))
    return dmean, dvar


def bn_state(model: Any) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": getattr(bn, k).detach().clone()
            for n, bn in batchnorm_layers(model) for k in ("running_mean", "running_var")}


def mvox(n_voxels: int, seconds: float) -> str:
    return f"{seconds:.3f} s ({n_voxels / seconds / 1e6:.1f} Mvoxel/s)"


# --------------------------------------------------------------------------- the checks


def check_cpu_reference(models: list[str], images: np.ndarray, truth: np.ndarray, repeats: int
                        ) -> tuple[Check, dict[str, dict[str, Any]]]:
    """1. Adapt and segment on the CPU: the reference the CUDA results are compared with."""
    c = Check("1. CPU reference: adapt + segment on the CPU")
    c.say(f"sample: nb.sample_data.toy_brightness_target() {images.shape} {images.dtype}; "
          f"torch {torch.get_num_threads()} CPU threads; median of {repeats}")
    refs: dict[str, dict[str, Any]] = {}
    for name in models:
        source = nb.load_model(name, device="cpu")
        (adapted, report), t_adapt = timed(lambda: nb.adapt(source, images, device="cpu", seed=SEED), repeats)
        labels, t_seg = timed(lambda: nb.segment(adapted, images, device="cpu"), repeats)
        iou_src = nb.iou(nb.segment(source, images, device="cpu"), truth)
        iou = nb.iou(labels, truth)
        refs[name] = {"source": source, "adapted": adapted, "labels": labels, "iou": iou,
                      "t_adapt": t_adapt, "t_seg": t_seg}
        c.figure(f"{name}: source-only IoU vs truth (CPU)", f"{iou_src:.4f}")
        c.figure(f"{name}: adapted IoU vs truth (CPU)", f"{iou:.4f}")
        c.figure(f"{name}: adapt time (CPU)", f"{t_adapt:.2f} s ({report.n_patches} patches, "
                                              f"converged={report.converged})")
        c.figure(f"{name}: segment time (CPU)", mvox(images.size, t_seg))
        if name == TOY_MODEL:
            c.require(iou >= MIN_TOY_IOU, f"{name} adapted IoU vs truth >= {MIN_TOY_IOU}")
        else:
            c.say(f"({name} is not trained on the toy domain: its IoU here is reported, not judged)")
    return c, refs


def check_cuda_vs_cpu(models: list[str], images: np.ndarray, truth: np.ndarray, refs: dict[str, dict[str, Any]],
                      repeats: int, adapted_cuda: dict[str, Any]) -> Check:
    """2. Adapt and segment on CUDA against the CPU reference (strict float32, then PyTorch's default TF32).

    Fills ``adapted_cuda`` (model name -> the model adapted on CUDA in strict float32) for checks 3 and 5.
    """
    c = Check("2. CUDA vs CPU: adapt + segment")
    if not cuda_present():
        return c.skip("no CUDA device is present")
    n = images.size
    for name in models:
        ref = refs[name]
        source = ref["source"]
        prob_cpu = nb.predict(ref["adapted"], images, device="cpu")
        with tf32_convolutions(False):
            (adapted, _), t_adapt = timed(lambda: nb.adapt(source, images, device="cuda", seed=SEED), repeats,
                                          warmup=True)
            labels, t_seg = timed(lambda: nb.segment(adapted, images, device="cuda", amp=False), repeats, warmup=True)
            prob = nb.predict(adapted, images, device="cuda", amp=False)
        adapted_cuda[name] = adapted
        iou = nb.iou(labels, truth)
        agree, differ = label_agreement(labels, ref["labels"])
        dprob = float(np.abs(prob - prob_cpu).max())
        dmean, dvar = bn_stats_difference(ref["adapted"], adapted)
        c.say(f"-- {name}, strict float32 (cudnn.allow_tf32 = False, amp=False)")
        c.figure(f"{name}: adapted IoU vs truth  CPU / CUDA", f"{ref['iou']:.4f} / {iou:.4f}")
        c.figure(f"{name}: IoU of CPU vs CUDA labels", f"{agree:.6f} ({differ} of {n} pixels differ)")
        c.figure(f"{name}: max |p_CUDA - p_CPU|", f"{dprob:.2e}")
        c.figure(f"{name}: BN stats CPU vs CUDA: max |d mean| / sigma", f"{dmean:.2e}")
        c.figure(f"{name}: BN stats CPU vs CUDA: max |d var| / var", f"{dvar:.2e}")
        c.figure(f"{name}: adapt time  CPU / CUDA", f"{ref['t_adapt']:.3f} s / {t_adapt:.3f} s "
                                                   f"({ref['t_adapt'] / t_adapt:.1f}x)")
        c.figure(f"{name}: segment time  CPU / CUDA", f"{ref['t_seg']:.3f} s / {t_seg:.3f} s "
                                                     f"({ref['t_seg'] / t_seg:.1f}x; small stack: overheads dominate)")
        c.require(dprob <= 1e-3, f"{name}: max |p_CUDA - p_CPU| <= 1e-3")
        c.require(differ <= 1e-4 * n, f"{name}: CPU and CUDA labels differ in <= 0.01 % of pixels")
        c.require(dmean <= 1e-3 and dvar <= 1e-3,
                  f"{name}: BN statistics CPU vs CUDA within 1e-3 (sigma, relative var)")
        if name == TOY_MODEL:
            c.require(iou >= MIN_TOY_IOU, f"{name}: CUDA adapted IoU vs truth >= {MIN_TOY_IOU}")

        # what users get by default: cuDNN convolutions in TF32 (10-bit mantissa) on Ampere and newer
        with tf32_convolutions(True):
            adapted_tf32, _ = nb.adapt(source, images, device="cuda", seed=SEED)
            prob_tf32 = nb.predict(adapted_tf32, images, device="cuda", amp=False)
        dmean32, dvar32 = bn_stats_difference(ref["adapted"], adapted_tf32)
        _, differ32 = label_agreement(prob_tf32 > 0.5, ref["labels"])
        c.say(f"-- {name}, PyTorch defaults (cudnn.allow_tf32 = True, amp=False)")
        c.figure(f"{name}: max |p_CUDA - p_CPU| (TF32)", f"{float(np.abs(prob_tf32 - prob_cpu).max()):.2e}")
        c.figure(f"{name}: pixels whose label differs (TF32)", f"{differ32} of {n}")
        c.figure(f"{name}: BN stats max |d mean| / sigma, |d var| / var (TF32)", f"{dmean32:.2e}, {dvar32:.2e}")
        c.require(differ32 <= 1e-3 * n and dmean32 <= 2e-2 and dvar32 <= 4e-2,
                  f"{name}: TF32 labels differ in <= 0.1 % of pixels, BN stats within 0.02 sigma / 4 % var")
    return c


def check_amp(adapted_cuda: dict[str, Any], images: np.ndarray, truth: np.ndarray, timing: np.ndarray | None,
              repeats: int) -> Check:
    """3. Mixed precision: float16 autocast on CUDA against float32 (TF32 off)."""
    c = Check("3. mixed precision (amp) on CUDA")
    if not cuda_present():
        return c.skip("no CUDA device is present")
    if not adapted_cuda:
        c.require(False, "a model adapted on CUDA (check 2 made none)")
        return c
    src = inspect.getsource(engine._slice_probabilities)
    c.say("engine: amp=None means on for CUDA; autocast float16 on CUDA (bfloat16 on CPU); the network is the "
          "BN-folded inference copy, so amp never touches the model's BatchNorm statistics"
          if "autocast" in src else "engine: no torch.autocast found in _slice_probabilities (read engine.py)")
    n = images.size
    for name, adapted in adapted_cuda.items():
        before = bn_state(adapted)
        with tf32_convolutions(False):
            prob32 = nb.predict(adapted, images, device="cuda", amp=False)
        prob16 = nb.predict(adapted, images, device="cuda", amp=True)
        prob_default = nb.predict(adapted, images, device="cuda")
        after = bn_state(adapted)
        dtypes = sorted({str(t.dtype) for t in after.values()})
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        agree, differ = label_agreement(prob16 > 0.5, prob32 > 0.5)
        dprob = np.abs(prob16 - prob32)
        iou32, iou16 = nb.iou(prob32 > 0.5, truth), nb.iou(prob16 > 0.5, truth)
        c.figure(f"{name}: BN running_mean / running_var dtypes", ", ".join(dtypes))
        c.figure(f"{name}: IoU vs truth  float32 / amp", f"{iou32:.4f} / {iou16:.4f}")
        c.figure(f"{name}: IoU of amp vs float32 labels", f"{agree:.6f} ({differ} of {n} pixels differ)")
        c.figure(f"{name}: |p_amp - p_float32|  max / mean", f"{float(dprob.max()):.2e} / {float(dprob.mean()):.2e}")
        c.require(dtypes == ["torch.float32"], f"{name}: BN statistics are float32")
        c.require(unchanged, f"{name}: amp inference left the BN statistics unchanged")
        d_none_amp = float(np.abs(prob_default - prob16).max())
        d_none_32 = float(np.abs(prob_default - prob32).max())
        c.figure(f"{name}: amp=None: max |p - p_amp| / max |p - p_float32|", f"{d_none_amp:.2e} / {d_none_32:.2e}")
        c.require(d_none_amp <= 1e-6 or d_none_amp <= 0.1 * d_none_32,
                  f"{name}: amp=None on CUDA runs in mixed precision (gives the amp=True result)")
        c.require(differ <= 1e-3 * n and float(dprob.max()) <= 0.05,
                  f"{name}: amp labels differ in <= 0.1 % of pixels, max |dp| <= 0.05")
        if name == TOY_MODEL:
            c.require(abs(iou16 - iou32) <= 0.002, f"{name}: amp IoU vs truth within 0.002 of float32")
        if timing is not None:
            with tf32_convolutions(False):
                _, t32 = timed(lambda: nb.segment(adapted, timing, device="cuda", amp=False), repeats, warmup=True)
            _, t_tf32 = timed(lambda: nb.segment(adapted, timing, device="cuda", amp=False), repeats, warmup=True)
            _, t16 = timed(lambda: nb.segment(adapted, timing, device="cuda", amp=True), repeats, warmup=True)
            c.figure(f"{name}: segment {timing.shape}  float32", mvox(timing.size, t32))
            c.figure(f"{name}: segment {timing.shape}  TF32 (default)", mvox(timing.size, t_tf32))
            c.figure(f"{name}: segment {timing.shape}  amp", f"{mvox(timing.size, t16)}, {t32 / t16:.2f}x float32")
    return c


def check_pinned_transfer(timing: np.ndarray | None, repeats: int) -> Check:
    """4. Host -> device copies from pageable and from page-locked (pinned) memory."""
    c = Check("4. pinned-memory host -> device transfer")
    if not cuda_present() or timing is None:
        return c.skip("no CUDA device is present")
    src = inspect.getsource(engine._slice_probabilities)
    pins = "pin_memory()" in src
    c.say("engine: " + ("pins every batch: x.pin_memory().to(dev, non_blocking=True), a fresh page-locked copy per "
                        "forward pass (the forward pass and .cpu() that follow wait for it anyway)"
                        if pins else "does not pin host memory (a plain .to(device))"))
    h, w = timing.shape[1:]
    per_batch = max(1, engine.PIXELS_PER_BATCH // (h * w))
    reps = max(5, repeats)
    for label, nslices in (("engine batch", per_batch), ("whole stack", timing.shape[0])):
        host = torch.from_numpy(timing[:nslices, None].astype(np.float32))
        mib = host.numel() * 4 / 2**20
        pinned = host.pin_memory()
        dev, t_pageable = timed(lambda: host.to("cuda"), reps, warmup=True)
        dev_p, t_pinned = timed(lambda pinned=pinned: pinned.to("cuda", non_blocking=True), reps, warmup=True)
        _, t_pin = timed(lambda: host.pin_memory(), reps, warmup=True)
        dev_e, t_engine = timed(lambda: host.pin_memory().to("cuda", non_blocking=True), reps, warmup=True)
        exact = all(torch.equal(d.cpu(), host) for d in (dev, dev_p, dev_e))
        c.say(f"-- {label}: {tuple(host.shape)} float32 = {mib:.0f} MiB, median of {reps} after a warm-up "
              "(PyTorch's caching host allocator then reuses the page-locked block)")
        c.figure("pageable .to('cuda')", f"{t_pageable * 1e3:.2f} ms ({mib / 1024 / t_pageable:.1f} GiB/s)")
        c.figure("already pinned .to('cuda', non_blocking=True)",
                 f"{t_pinned * 1e3:.2f} ms ({mib / 1024 / t_pinned:.1f} GiB/s)")
        c.figure("pin_memory() alone", f"{t_pin * 1e3:.2f} ms")
        c.figure("pin_memory() + copy (the engine's way)",
                 f"{t_engine * 1e3:.2f} ms ({mib / 1024 / t_engine:.1f} GiB/s)")
        c.say(f"=> the engine's per-batch pinning is {'FASTER' if t_engine < t_pageable else 'SLOWER'} than a plain "
              f"pageable copy here ({t_pageable / t_engine:.2f}x)")
        c.require(exact, f"{label}: every copy arrived bit-exact")
        del dev, dev_p, dev_e, pinned
    torch.cuda.empty_cache()
    return c


def _segment_collecting(model: Any, images: np.ndarray, **kwargs: Any) -> tuple[Any, list[str]]:
    """nb.segment_iter run to its end: (labels, the out-of-memory progress messages)."""
    labels, messages = None, []
    for item in nb.segment_iter(model, images, device="cuda", **kwargs):
        if isinstance(item, Result):
            labels = item.value
        elif isinstance(item, Progress) and "out of memory" in item.stage:
            messages.append(item.stage)
    return labels, messages


def _peak_memory(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """(result, peak allocated, peak reserved bytes) of ``fn`` on the GPU."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    sync()
    return out, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def check_oom_backoff(adapted_cuda: dict[str, Any]) -> Check:
    """5. A real CUDA out-of-memory error: segment backs off to smaller batches / tiles and still finishes.

    Slices of OOM_SIDE px segmented as one tile of that side, under a cap on this process's GPU memory
    that leaves room for tiles of half the side but not for the whole one.
    """
    c = Check("5. out-of-memory back-off on the GPU")
    if not cuda_present():
        return c.skip("no CUDA device is present")
    if TOY_MODEL not in adapted_cuda:
        c.require(False, f"{TOY_MODEL} adapted on CUDA (check 2 made none)")
        return c
    model = adapted_cuda[TOY_MODEL]
    stack, _ = nb.sample_data.toy_brightness_target(shape=(2, OOM_SIDE, OOM_SIDE))
    big, half = OOM_SIDE, OOM_SIDE // 2
    c.say(f"stack {stack.shape}, tile_size={big}; engine: PIXELS_PER_BATCH {engine.PIXELS_PER_BATCH}, "
          f"MIN_TILE {engine.MIN_TILE}; on OOM it halves the batch, then the tile side")
    # unconstrained runs: the reference labels, and the memory each geometry needs
    ref, alloc_big, res_big = _peak_memory(lambda: nb.segment(model, stack, device="cuda", tile_size=big))
    _, alloc_half, res_half = _peak_memory(lambda: nb.segment(model, stack, device="cuda", tile_size=half,
                                                              batch_size=1))
    total = torch.cuda.get_device_properties(0).total_memory
    # room for tiles of half the side, not for one whole tile (the allocator frees its cache before it
    # gives up, so what must not fit is what a whole tile really holds: its peak allocation)
    cap = (res_half + alloc_big) // 2
    c.figure(f"peak allocated / reserved: tile {big} (default batch)",
             f"{alloc_big / 2**20:.0f} / {res_big / 2**20:.0f} MiB")
    c.figure(f"peak allocated / reserved: tile {half}, batch 1",
             f"{alloc_half / 2**20:.0f} / {res_half / 2**20:.0f} MiB")
    c.figure("cap (set_per_process_memory_fraction)", f"{cap / 2**20:.0f} MiB = {cap / total:.2e} of "
                                                      f"{total / 2**30:.1f} GiB")
    if not alloc_big > 1.2 * res_half:
        c.require(False, f"tiles of {half} px need clearly less memory than one of {big} px (else no cap fits between)")
        return c
    error = None
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        t = time.perf_counter()
        labels, messages = _segment_collecting(model, stack, tile_size=big)
        t_capped = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        labels, messages, t_capped = None, [], float("nan")
        error = f"{type(exc).__name__}: {exc}"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    for m in messages:
        c.say(f"engine: {m}")
    c.require(bool(messages), "the cap forced at least one out-of-memory back-off")
    c.require(error is None, "segment finished under the cap" + (f" (it raised {error})" if error else ""))
    if labels is None:
        return c
    c.figure("segment time under the cap (with retries)", f"{t_capped:.2f} s")
    # the geometry the engine settled on: "retrying with batch B, tiles of T px" (the last message)
    found = re.findall(r"batch (\d+), tiles of (\d+) px", messages[-1]) if messages else []
    batch, tile = (int(found[0][0]), int(found[0][1])) if found else (None, big)
    same_geom = nb.segment(model, stack, device="cuda", tile_size=tile, batch_size=batch)
    _, differ = label_agreement(labels, same_geom)
    agree_default, differ_default = label_agreement(labels, ref)
    c.figure(f"pixels differing from an unconstrained run (batch {batch}, tile {tile})", f"{differ} of {stack.size}")
    c.figure(f"IoU vs the same call without the cap (tile {big})", f"{agree_default:.6f} ({differ_default} pixels)")
    c.require(differ <= 1e-5 * stack.size, "labels equal those of an unconstrained run with the same tiles")
    c.require(agree_default >= 0.99, "labels agree with the same call without the cap (IoU >= 0.99)")
    c.say(f"memory cap lifted (fraction 1.0); {torch.cuda.memory_reserved() / 2**20:.0f} MiB reserved now")
    return c


# --------------------------------------------------------------------------- main


def machine_header(has_cuda: bool) -> list[str]:
    lines = [
        "# napari-bnadapt GPU check (benchmarks/gpu_check.py)",
        f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"# python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"napari-bnadapt {nb.__version__}",
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads",
    ]
    if has_cuda:
        p = torch.cuda.get_device_properties(0)
        lines.append(f"# device: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.1f} GiB, "
                     f"compute capability {p.major}.{p.minor}; CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}")
    else:
        lines.append("# device: none: no CUDA device is present (torch.cuda.is_available() is False); "
                     "the CUDA parts are SKIPPED")
    return lines


def run_checks(check: Callable[..., Any], *args: Any, title: str) -> Any:
    """Run one check; an unexpected exception fails it (with its message) instead of ending the script."""
    print(f"\n== {title}", flush=True)
    try:
        return check(*args)
    except Exception as exc:  # noqa: BLE001
        c = Check(title)
        c.say("".join(traceback.format_exception_only(type(exc), exc)).strip())
        c.require(False, "the check ran to its end")
        return c


def main(argv: list[str] | None = None) -> int:
    has_cuda = cuda_present()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help=f"results file (default: {DEFAULT_OUT} when CUDA ran; without CUDA nothing is written "
                        "unless --out is given)")
    p.add_argument("--models", default=f"{TOY_MODEL},lucchi-pp" if has_cuda else TOY_MODEL,
                   help="bundled models to check, comma-separated (default: toy-perlin,lucchi-pp with CUDA, "
                        "toy-perlin without)")
    p.add_argument("--repeats", type=int, default=3 if has_cuda else 1,
                   help="timing repeats, median reported (default 3 with CUDA, 1 without)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    t_start = time.perf_counter()
    seed_everything()
    header = machine_header(has_cuda)
    print("\n".join(header), flush=True)
    images, truth = nb.sample_data.toy_brightness_target()
    timing = None
    if has_cuda:  # a bigger stack for throughput, transfers and the OOM check
        timing, _ = nb.sample_data.toy_brightness_target(shape=(TIMING_SLICES, 1024, 1024))

    checks: list[Check] = []
    title = "1. CPU reference: adapt + segment on the CPU"
    out = run_checks(check_cpu_reference, models, images, truth, args.repeats, title=title)
    c1, refs = out if isinstance(out, tuple) else (out, {})
    checks.append(c1)
    adapted_cuda: dict[str, Any] = {}
    checks.append(run_checks(check_cuda_vs_cpu, [m for m in models if m in refs], images, truth, refs, args.repeats,
                             adapted_cuda, title="2. CUDA vs CPU: adapt + segment"))
    checks.append(run_checks(check_amp, adapted_cuda, images, truth, timing, args.repeats,
                             title="3. mixed precision (amp) on CUDA"))
    checks.append(run_checks(check_pinned_transfer, timing, args.repeats,
                             title="4. pinned-memory host -> device transfer"))
    checks.append(run_checks(check_oom_backoff, adapted_cuda, title="5. out-of-memory back-off on the GPU"))

    ran = [c for c in checks if c.status != "SKIPPED"]
    ok = all(c.status == "PASS" for c in ran)
    summary = ["", "== summary"] + [f"  {c.status:<8} {c.title}" for c in checks]
    if not has_cuda:
        summary.append("  CUDA parts SKIPPED: no CUDA device is present; only the CPU part ran")
    summary.append(f"  overall: {'PASS' if ok else 'FAIL'} ({sum(c.status == 'PASS' for c in ran)} of {len(ran)} "
                   f"checks that ran passed) in {time.perf_counter() - t_start:.0f} s")
    print("\n".join(summary), flush=True)

    out_path = args.out if args.out is not None else (DEFAULT_OUT if has_cuda else None)
    if out_path is None:
        print(f"results not written: no CUDA device (pass --out PATH to save a CPU-only run; {DEFAULT_OUT} is kept "
              "for GPU results)")
    else:
        body = [*header, ""]
        for c in checks:
            body += [f"== {c.title}: {c.status}", *c.lines, ""]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("\n".join(body + summary[1:]) + "\n")
        print(f"results written to {out_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
