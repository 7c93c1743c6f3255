"""The slice-by-slice inference loop: tile defaults for CPU and GPU, batching, blending, and the
out-of-memory back-off (halve the tile, down to ``MIN_TILE``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import StackView
from ..model.device import get_device, model_on
from ..model.foreign import (
    check_declared_channels,
    forward_error,
    is_project_unet,
    output_to_foreground,
)
from ..model.layout import SIZE_MULTIPLE
from ..progress import Progress
from .allocator import MMAP_THRESHOLD
from .fusion import inference_copy
from .tiling import _SliceTiler

#: Default tile side on GPUs: a 1024 x 1024 slice is one tile (no overlap work), bigger slices are tiled.
DEFAULT_TILE = 1024


#: Largest tile side on CPUs. Tiles of 384-640 px run 1.3-1.7x faster per pixel than
#: whole 1024 x 1024 slices (``benchmarks/bench_cpu_throughput.py``), whose activations
#: no longer fit in the blocks glibc reuses (:mod:`napari_bnadapt.segmentation.allocator`) nor in the
#: caches; 576 cuts a 1024 x 1024 slice into 2 x 2 tiles of 544 px.
CPU_TILE = 576


#: With ``batch_size=None``, tiles are batched up to this many pixels per forward pass
#: on GPUs (2 tiles of 1024 x 1024, or 32 of 256 x 256), which bounds memory whatever the tile size.
PIXELS_PER_BATCH = 2 * 1024 * 1024


#: The same on CPUs: one tile of :data:`CPU_TILE` (or several smaller ones).
CPU_PIXELS_PER_BATCH = CPU_TILE * CPU_TILE


def cpu_defaults(width: int) -> tuple[int, int]:
    """(largest tile side, pixels per forward pass) for a CPU and a U-Net of ``width`` channels.

    At most :data:`CPU_TILE` and :data:`CPU_PIXELS_PER_BATCH`, smaller for wide
    networks, so that a full-resolution activation (pixels x width float32) stays
    within the blocks glibc reuses (:data:`napari_bnadapt.segmentation.allocator.MMAP_THRESHOLD`);
    never below 256 px.
    """
    pixels = min(CPU_PIXELS_PER_BATCH, MMAP_THRESHOLD // (4 * max(1, width)))
    side = int(pixels**0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return max(256, min(CPU_TILE, side)), max(256 * 256, pixels)


#: The out-of-memory back-off never goes below tiles of this side (pixels).
MIN_TILE = 128


class _OutOfMemory(Exception):
    """Raised inside the engine when a forward pass of ``n`` tiles ran out of memory (device or host)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.n = n


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(exc, MemoryError) or (oom and isinstance(exc, oom)):
        return True
    msg = str(exc).lower()
    # cuDNN / cuBLAS report a failed workspace allocation in their own words
    words = ("out of memory", "can't allocate memory", "alloc_failed", "not_enough_workspace")
    return isinstance(exc, RuntimeError) and any(w in msg for w in words)


def iter_slice_probabilities(
    model: Any,
    view: StackView,
    norm: Any,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: Any = "auto",
    amp: bool | None = None,
    fused: bool = True,
) -> Iterator[Progress | tuple[int, np.ndarray]]:
    """Yield progress and ``(z, probability_slice)`` for every slice, in z order.

    Low-level engine of :func:`predict_iter` and :func:`segment_iter`. With ``fused``
    the network runs as an inference copy with BatchNorm folded into the
    convolutions, in channels-last layout (:mod:`napari_bnadapt.segmentation.fusion`: the same
    function, faster; see ``benchmarks/bench_cpu_throughput.py``). A model built elsewhere
    (:mod:`napari_bnadapt.model.foreign`) runs as it is, in eval mode; its output becomes a probability
    by :func:`~napari_bnadapt.model.foreign.output_to_foreground` (1 channel: sigmoid, 2: softmax), and
    a first batch it cannot take (not one grey input channel) ends with a sentence that says why.

    Out of memory (GPU or host), the engine backs off instead of failing: it halves
    the batch, then the tile side (down to :data:`MIN_TILE`), and carries on from the
    first slice not yet finished; only when one tile of the smallest size does not fit
    does it stop, with a message that says so.
    """
    dev = get_device(device)
    nz, h, w = view.shape3d
    if dev.type == "cpu":
        default_tile, budget = cpu_defaults(getattr(model, "width", 16))
    else:
        default_tile, budget = DEFAULT_TILE, PIXELS_PER_BATCH
    if tile_size is None:
        tile_size = default_tile
    tiler = _SliceTiler(h, w, tile_size, overlap)  # checks the settings before any work
    if batch_size is not None and batch_size < 1:
        raise BNAdaptError(f"batch_size must be at least 1, not {batch_size}")
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    z0 = 0
    yield Progress("segmenting", 0, nz)
    # inference mode is thread-local: it wraps each forward pass only, never a yield
    with model_on(model, dev) as m:
        if not is_project_unet(m):  # a model built elsewhere: the channels it declares (the first batch checks the rest)
            check_declared_channels(m)
        if fused:
            m = inference_copy(m, dev)
        while True:
            bs = batch_size or max(1, budget // (tiler.th * tiler.tw))
            # progress in tiles of the current geometry (a retry restarts at the first unfinished slice)
            total, done = nz * tiler.per_slice, z0 * tiler.per_slice
            try:
                for item in _slice_probabilities(m, view, norm, tiler, bs, dev, use_amp, fused, z0):
                    if isinstance(item, tuple):
                        z0 = item[0] + 1
                        yield item
                    else:
                        done += item
                        yield Progress("segmenting", done, total)
                return
            except _OutOfMemory as oom:
                if dev.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()
                if oom.n > 1:
                    batch_size = oom.n // 2
                elif tile_size > MIN_TILE:
                    tile_size = max(MIN_TILE, tile_size // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE)
                    tiler = _SliceTiler(h, w, tile_size, min(overlap, tile_size // 2 - 1))
                else:
                    raise BNAdaptError(
                        f"out of memory on {dev} even for one tile of {tiler.th} x {tiler.tw} pixels: close other "
                        "programs, or use another device"
                    ) from None
                yield Progress(f"out of memory on {dev}: retrying with batch {batch_size or 1}, tiles of "
                               f"{tile_size} px", z0, nz)


def _slice_probabilities(
    m: Any, view: StackView, norm: Any, tiler: _SliceTiler, batch_size: int, dev: Any, use_amp: bool, fused: bool,
    z0: int,
) -> Iterator[int | tuple[int, np.ndarray]]:
    """Probabilities of slices ``z0``... in order, and after each batch the number of tiles it held."""
    import torch

    nz, h, w = view.shape3d
    acc: dict[int, np.ndarray] = {}
    pending: dict[int, int] = {}
    batch: list[tuple[int, int, int, np.ndarray]] = []

    def run_batch() -> None:
        x = torch.from_numpy(np.stack([t for *_, t in batch])[:, None])
        try:
            if dev.type == "cuda":  # page-locked host memory: a faster, asynchronous copy to the GPU
                x = x.pin_memory().to(dev, non_blocking=True)
            else:
                x = x.to(dev)
            if fused:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(
                dev.type, enabled=use_amp, dtype=torch.bfloat16 if dev.type == "cpu" else torch.float16
            ):
                logits = m(x)
            prob = output_to_foreground(logits, tuple(x.shape)).cpu().numpy()
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise _OutOfMemory(len(batch)) from exc
            if isinstance(exc, RuntimeError) and not is_project_unet(m):  # e.g. not one input channel
                raise forward_error(exc, tuple(x.shape)) from exc
            raise
        for (z, y, xx, _), p in zip(batch, prob):
            a = acc[z]
            hh, ww = min(tiler.th, h - y), min(tiler.tw, w - xx)
            if tiler.weights is None:  # the slice is one tile
                a[...] = p[:hh, :ww]
            else:
                p *= tiler.weights[(y, xx)]
                a[y : y + hh, xx : xx + ww] += p[:hh, :ww]
            pending[z] -= 1
        batch.clear()

    for z in range(z0, nz):
        raw = view.read(z)
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise BNAdaptError(f"slice {z} of the image contains NaN or infinite values; replace them first")
        img = norm.apply(raw)
        acc[z] = np.zeros((h, w), np.float32)
        pending[z] = tiler.per_slice
        for y, x, tile in tiler.tiles(img):
            batch.append((z, y, x, tile))
            if len(batch) == batch_size:
                run_batch()
                yield batch_size
                yield from _flush(acc, pending, tiler)
    if batch:
        n = len(batch)
        run_batch()
        yield n
    yield from _flush(acc, pending, tiler)


def _flush(acc: dict[int, np.ndarray], pending: dict[int, int], tiler: _SliceTiler) -> Iterator[tuple[int, np.ndarray]]:
    for z in sorted(k for k, v in pending.items() if v == 0):
        a = acc.pop(z)
        del pending[z]
        if tiler.inv_total is not None:
            a *= tiler.inv_total
        yield z, a
