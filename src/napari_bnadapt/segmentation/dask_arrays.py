"""Segmenting dask arrays chunk by chunk, on whatever dask scheduler is active (a cluster too).

The network works slice by slice, so the only "halo" a chunk needs is the rest of its slices:
the array is rechunked to whole (Y, X) slices (any number of slices per chunk) and every chunk is
segmented on its own. The result is therefore the same as segmenting the whole array in memory,
and it stays a lazy dask array until it is computed or stored (e.g. ``to_zarr``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, resolve_normalization
from ..model.files import default_meta

if TYPE_CHECKING:
    import dask.array as da
    import torch

    from ..model.unet import UNet


def _whole_slices(array: da.Array, slices_per_chunk: int | None) -> da.Array:
    if array.ndim != 3:
        raise BNAdaptError(f"expected a (Z, Y, X) dask array, got {array.ndim} dimensions")
    z = array.chunks[0][0] if slices_per_chunk is None else int(slices_per_chunk)
    return array.rechunk({0: max(1, z), 1: -1, 2: -1})


def _fixed_intensity(
    model: UNet, array: da.Array, intensity_range: tuple[float, float] | str | None
) -> tuple[float, float] | None:
    """Turn ``intensity_range="auto"`` into numbers once for the whole stack (chunks must agree)."""
    if isinstance(intensity_range, str):
        meta = getattr(model, "meta", None) or default_meta(model)
        norm = resolve_normalization(check_stack(array), meta["normalization"], intensity_range)
        return (norm.in_low, norm.in_high)
    return intensity_range


def predict_dask(
    model: UNet,
    array: da.Array,
    *,
    slices_per_chunk: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
) -> da.Array:
    """Lazy foreground probability of a (Z, Y, X) dask array.

    Parameters
    ----------
    model : UNet
        Sent to the workers with each task graph (a few MB); not changed.
    array : dask.array.Array
        The (Z, Y, X) stack; its chunks are turned into whole (Y, X) slices.
    slices_per_chunk : int or None, default None
        Slices per task; None: the array's own Z chunking.
    tile_size : int or None, default None
        Largest tile side in pixels, as in :func:`napari_bnadapt.predict`.
    overlap : int, default 64
        Overlap of neighbouring tiles in pixels, as in :func:`napari_bnadapt.predict`.
    batch_size : int or None, default None
        Tiles per forward pass, as in :func:`napari_bnadapt.predict`.
    device : str or torch.device, default "auto"
        Where each worker computes, as in :func:`napari_bnadapt.predict`.
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`napari_bnadapt.predict`; ``"auto"`` is
        resolved once on a sample of the whole stack, so that all chunks agree.
    amp : bool or None, default None
        Mixed precision (float16 on CUDA); None = on for CUDA, off elsewhere.

    Returns
    -------
    dask.array.Array
        float32 probabilities in [0, 1], same shape, chunked by whole slices.
    """
    from .predict import predict

    src = _whole_slices(array, slices_per_chunk)
    fixed = _fixed_intensity(model, array, intensity_range)

    def block_probability(block: np.ndarray) -> np.ndarray:
        return predict(model, np.asarray(block), tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                       device=device, intensity_range=fixed, amp=amp)

    return src.map_blocks(block_probability, dtype=np.float32)


def segment_dask(
    model: UNet,
    array: da.Array,
    threshold: float = 0.5,
    *,
    slices_per_chunk: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
) -> da.Array:
    """Lazy semantic labels (uint8, 1 = mitochondrion) of a (Z, Y, X) dask array.

    Every chunk of whole slices is segmented on its own (:func:`napari_bnadapt.segment`),
    so the result equals segmenting the whole array in memory.

    Parameters
    ----------
    model : UNet
        Sent to the workers with each task graph (a few MB); not changed.
    array : dask.array.Array
        The (Z, Y, X) stack; its chunks are turned into whole (Y, X) slices.
    threshold : float, default 0.5
        Probability above which a pixel is foreground, in (0, 1).
    slices_per_chunk : int or None, default None
        Slices per task; None: the array's own Z chunking.
    tile_size : int or None, default None
        Largest tile side in pixels, as in :func:`napari_bnadapt.predict`.
    overlap : int, default 64
        Overlap of neighbouring tiles in pixels, as in :func:`napari_bnadapt.predict`.
    batch_size : int or None, default None
        Tiles per forward pass, as in :func:`napari_bnadapt.predict`.
    device : str or torch.device, default "auto"
        Where each worker computes, as in :func:`napari_bnadapt.predict`.
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`napari_bnadapt.predict`; ``"auto"`` is
        resolved once on a sample of the whole stack, so that all chunks agree.
    amp : bool or None, default None
        Mixed precision (float16 on CUDA); None = on for CUDA, off elsewhere.

    Returns
    -------
    dask.array.Array
        uint8 labels, same shape, chunked by whole slices.
    """
    from .predict import segment

    src = _whole_slices(array, slices_per_chunk)
    fixed = _fixed_intensity(model, array, intensity_range)

    def block_labels(block: np.ndarray) -> np.ndarray:
        return segment(model, np.asarray(block), threshold, tile_size=tile_size, overlap=overlap,
                       batch_size=batch_size, device=device, intensity_range=fixed, amp=amp)

    return src.map_blocks(block_labels, dtype=np.uint8)
