"""Segmenting stacks: slice-wise 2D inference, tiled with overlap and smooth blending.

Every slice is cut into the fewest equal tiles of at most ``tile_size`` pixels
(multiples of 16; 576 px on CPUs, whole slices on GPUs) that overlap by at
least ``overlap`` pixels; tiles from several slices go through the network
in batches; overlapping predictions are blended with weights that ramp down
smoothly towards a tile edge that has a neighbour (and stay 1 at the image
border), so no seams appear. A slice that fits in one tile is padded (reflect)
to a multiple of 16 and gives exactly the untiled result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import BNAdaptError
from .images import StackView, check_stack, resolve_normalization
from .progress import Progress, Result, run_to_end
from .unet import SIZE_MULTIPLE

#: Default tile side on GPUs: a 1024 x 1024 slice is one tile (no overlap work), bigger slices are tiled.
DEFAULT_TILE = 1024
#: Largest tile side on CPUs. Tiles of 384-640 px run 1.3-1.7x faster per pixel than
#: whole 1024 x 1024 slices (``benchmarks/bench_cpu_throughput.py``), whose activations
#: no longer fit in the blocks glibc reuses (:mod:`napari_bnadapt.allocator`) nor in the
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
    within the blocks glibc reuses (:data:`napari_bnadapt.allocator.MMAP_THRESHOLD`);
    never below 256 px.
    """
    from .allocator import MMAP_THRESHOLD

    pixels = min(CPU_PIXELS_PER_BATCH, MMAP_THRESHOLD // (4 * max(1, width)))
    side = int(pixels**0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return max(256, min(CPU_TILE, side)), max(256 * 256, pixels)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` (tiles stay inside when length >= tile)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Side and start offsets of the fewest equal tiles of at most ``tile`` px covering ``length``.

    Neighbours overlap by at least ``overlap`` px and the tiles stay inside the
    image; the side is a multiple of 16. A length that fits in one tile gives one
    tile of the length rounded up to 16 (the caller pads).
    """
    if length <= tile:
        return min(tile, _ceil_to(length, SIZE_MULTIPLE)), [0]
    n = -(-(length - overlap) // (tile - overlap))
    side = min(tile, _ceil_to(-(-(length + (n - 1) * overlap) // n), SIZE_MULTIPLE))
    return side, [i * (length - side) // (n - 1) for i in range(n)]


def _ramp(n: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    w = np.ones(n, np.float32)
    if overlap > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap, dtype=np.float32) + 0.5) / overlap)
        if left:
            w[:overlap] = r
        if right:
            w[-overlap:] = r[::-1]
    return w


class _SliceTiler:
    """Tile geometry shared by all slices of one stack."""

    def __init__(self, height: int, width: int, tile_size: int, overlap: int) -> None:
        if tile_size % SIZE_MULTIPLE or tile_size < SIZE_MULTIPLE:
            raise BNAdaptError(f"tile_size must be a positive multiple of {SIZE_MULTIPLE}, not {tile_size}")
        if not 0 <= overlap < tile_size // 2:
            raise BNAdaptError(f"overlap must be between 0 and half the tile size ({tile_size // 2}), not {overlap}")
        self.h, self.w = height, width
        # a slice smaller than a tile is padded up to the next multiple of 16
        self.th, self.ys = tile_grid(height, tile_size, overlap)
        self.tw, self.xs = tile_grid(width, tile_size, overlap)
        #: blending weight of each tile, None where a slice is a single tile (weight 1)
        self.weights: dict[tuple[int, int], np.ndarray] | None = None
        #: 1 / (sum of the weights) over the slice, the same for every slice
        self.inv_total: np.ndarray | None = None
        if self.per_slice > 1:
            self.weights = {}
            total = np.zeros((height, width), np.float32)
            for i, y in enumerate(self.ys):
                for j, x in enumerate(self.xs):
                    wy = _ramp(self.th, overlap, i > 0, i < len(self.ys) - 1)
                    wx = _ramp(self.tw, overlap, j > 0, j < len(self.xs) - 1)
                    self.weights[(y, x)] = wgt = np.outer(wy, wx)
                    total[y : y + self.th, x : x + self.tw] += wgt[: height - y, : width - x]
            self.inv_total = 1.0 / total

    @property
    def per_slice(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self, img: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (y, x, tile) for a normalised 2D slice; small slices are reflect-padded."""
        ph, pw = max(0, self.th - img.shape[0]), max(0, self.tw - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
        for y in self.ys:
            for x in self.xs:
                yield y, x, img[y : y + self.th, x : x + self.tw]


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
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


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
    convolutions, in channels-last layout (:mod:`napari_bnadapt.fusion`: the same
    function, faster; see ``benchmarks/bench_cpu_throughput.py``).

    Out of memory (GPU or host), the engine backs off instead of failing: it halves
    the batch, then the tile side (down to :data:`MIN_TILE`), and carries on from the
    first slice not yet finished; only when one tile of the smallest size does not fit
    does it stop, with a message that says so.
    """
    from .device import get_device, model_on

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
        if fused:
            from .fusion import inference_copy

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
        if dev.type == "cuda":  # page-locked host memory: a faster, asynchronous copy to the GPU
            x = x.pin_memory().to(dev, non_blocking=True)
        else:
            x = x.to(dev)
        if fused:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(), torch.autocast(
                dev.type, enabled=use_amp, dtype=torch.bfloat16 if dev.type == "cpu" else torch.float16
            ):
                logits = m(x)
            prob = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise _OutOfMemory(len(batch)) from exc
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


def _prepare(model: Any, images: Any, intensity_range: Any) -> tuple[StackView, Any]:
    from .modelfile import default_meta

    view = check_stack(images)
    meta = getattr(model, "meta", None) or default_meta(model)
    return view, resolve_normalization(view, meta["normalization"], intensity_range)


def _allocate(out: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    if out is None:
        return np.zeros(shape, dtype)
    if tuple(out.shape) != shape:
        raise BNAdaptError(f"the output array has shape {tuple(out.shape)}, expected {shape}")
    return out


def predict_iter(
    model: Any,
    images: Any,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: Any = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: Any = None,
) -> Iterator[Progress | Result[Any]]:
    """Generator form of :func:`predict`: yields :class:`Progress`, finally a :class:`Result`."""
    view, norm = _prepare(model, images, intensity_range)
    result = _allocate(out, tuple(view.data.shape), np.float32)
    for item in iter_slice_probabilities(
        model, view, norm, tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device, amp=amp
    ):
        if isinstance(item, Progress):
            yield item
        else:
            z, prob = item
            if view.is_2d:
                result[...] = prob
            else:
                result[z] = prob
    yield Result(result)


def predict(model: Any, images: Any, **kwargs: Any) -> Any:
    """Foreground (mitochondrion) probability of every pixel.

    Parameters
    ----------
    model : UNet
        A source or adapted model (see :func:`load_model`, :func:`adapt`). It is
        not changed; when ``device`` differs from the model's, a copy is used.
    images : array-like or napari Image layer
        A (Y, X) image or (Z, Y, X) stack (numpy, ``tifffile.memmap``, zarr,
        dask): read one slice at a time.
    tile_size : int or None, default None
        Largest tile side in pixels (multiple of 16); a slice is cut into the fewest
        equal tiles of at most this side. None: :func:`cpu_defaults` on CPUs (576
        for the bundled models), where such tiles run 1.3-1.4x faster than whole
        1024 px slices, :data:`DEFAULT_TILE` (1024) on GPUs.
    overlap : int, default 64
        Overlap of neighbouring tiles in pixels, blended smoothly.
    batch_size : int or None, default None
        Tiles per forward pass; None: as many as fit in :func:`cpu_defaults` pixels
        on CPUs (one 576 px tile), :data:`PIXELS_PER_BATCH` on GPUs.
    device : str, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None
        How to map grey values to the model's range; see
        :func:`napari_bnadapt.images.resolve_normalization`. None requires data
        already in the model's range (8-bit for the bundled models).
    amp : bool or None, default None
        Mixed precision (float16 on CUDA); None = on for CUDA, off elsewhere.
    out : array-like, optional
        Preallocated float32 array of the input's shape (e.g. a zarr array) to
        write into; by default a new numpy array.

    Returns
    -------
    numpy.ndarray (or ``out``)
        float32 probabilities in [0, 1], same shape as ``images``.
    """
    return run_to_end(predict_iter(model, images, **kwargs))


def segment_iter(
    model: Any,
    images: Any,
    threshold: float = 0.5,
    instances: bool = False,
    *,
    out: Any = None,
    **kwargs: Any,
) -> Iterator[Progress | Result[Any]]:
    """Generator form of :func:`segment`: yields :class:`Progress`, finally a :class:`Result`."""
    if not 0.0 < threshold < 1.0:
        raise BNAdaptError(f"threshold must be between 0 and 1, not {threshold}")
    view, norm = _prepare(model, images, kwargs.pop("intensity_range", None))
    labels = _allocate(None if instances else out, tuple(view.data.shape), np.uint8)
    for item in iter_slice_probabilities(model, view, norm, **kwargs):
        if isinstance(item, Progress):
            yield item
        else:
            z, prob = item
            mask = (prob > threshold).astype(np.uint8)
            if view.is_2d:
                labels[...] = mask
            else:
                labels[z] = mask
    if instances:
        from scipy import ndimage

        yield Progress("labelling objects", 0, 1)
        inst = _allocate(out, labels.shape, np.uint32)
        inst[...], _ = ndimage.label(labels, output=np.uint32)
        yield Progress("labelling objects", 1, 1)
        labels = inst
    yield Result(labels)


def segment(model: Any, images: Any, threshold: float = 0.5, instances: bool = False, **kwargs: Any) -> Any:
    """Segment mitochondria: threshold the foreground probability.

    Parameters
    ----------
    model : UNet
        A source or adapted model; not changed.
    images : array-like or napari Image layer
        (Y, X) image or (Z, Y, X) stack.
    threshold : float, default 0.5
        Probability above which a pixel is foreground.
    instances : bool, default False
        False: semantic labels (uint8, 1 = mitochondrion). True: one label per
        connected object (uint32; 3D connectivity in stacks).
    **kwargs
        ``tile_size``, ``overlap``, ``batch_size``, ``device``,
        ``intensity_range``, ``amp``, ``out``: as in :func:`predict`.

    Returns
    -------
    numpy.ndarray (or ``out``)
        Labels of the same shape as ``images``.
    """
    return run_to_end(segment_iter(model, images, threshold, instances, **kwargs))
