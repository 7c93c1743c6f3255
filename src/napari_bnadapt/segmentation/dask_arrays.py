"""Segmenting dask arrays chunk by chunk, on whatever dask scheduler is active (a cluster too).

The network works slice by slice, so the only "halo" a chunk needs is the rest of its slices:
the array is rechunked to whole (Y, X) slices (any number of slices per chunk) and every chunk is
segmented on its own. The result is therefore the same as segmenting the whole array in memory,
and it stays a lazy dask array until it is computed or stored (e.g. ``to_zarr``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack, resolve_normalization
from ..model.files import default_meta


def _whole_slices(array: Any, slices_per_chunk: int | None) -> Any:
    if array.ndim != 3:
        raise BNAdaptError(f"expected a (Z, Y, X) dask array, got {array.ndim} dimensions")
    z = array.chunks[0][0] if slices_per_chunk is None else int(slices_per_chunk)
    return array.rechunk({0: max(1, z), 1: -1, 2: -1})


def _fixed_intensity(model: Any, array: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn ``intensity_range="auto"`` into numbers once for the whole stack (chunks must agree)."""
    if isinstance(kwargs.get("intensity_range"), str):

        meta = getattr(model, "meta", None) or default_meta(model)
        norm = resolve_normalization(check_stack(array), meta["normalization"], kwargs["intensity_range"])
        kwargs = {**kwargs, "intensity_range": (norm.in_low, norm.in_high)}
    return kwargs


def predict_dask(model: Any, array: Any, *, slices_per_chunk: int | None = None, **kwargs: Any) -> Any:
    """Lazy foreground probability of a (Z, Y, X) dask array.

    Parameters
    ----------
    model : UNet
        Sent to the workers with each task graph (a few MB).
    array : dask.array.Array
        The stack; its chunks are turned into whole slices.
    slices_per_chunk : int or None
        Slices per task (default: the array's own Z chunking).
    **kwargs
        As for :func:`napari_bnadapt.predict` (``tile_size``, ``device``, ``intensity_range``...);
        ``intensity_range="auto"`` is resolved once on a sample of the whole stack.

    Returns
    -------
    dask.array.Array
        float32 probabilities, same shape, chunked by whole slices.
    """
    from .predict import predict

    src = _whole_slices(array, slices_per_chunk)
    kwargs = _fixed_intensity(model, array, kwargs)
    return src.map_blocks(lambda block: predict(model, np.asarray(block), **kwargs), dtype=np.float32)


def segment_dask(
    model: Any, array: Any, threshold: float = 0.5, *, slices_per_chunk: int | None = None, **kwargs: Any
) -> Any:
    """Lazy semantic labels (uint8, 1 = mitochondrion) of a (Z, Y, X) dask array; see :func:`predict_dask`."""
    from .predict import segment

    src = _whole_slices(array, slices_per_chunk)
    kwargs = _fixed_intensity(model, array, kwargs)
    return src.map_blocks(lambda block: segment(model, np.asarray(block), threshold, **kwargs), dtype=np.uint8)
