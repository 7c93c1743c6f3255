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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.resample import ModelGrid, model_grid
from ..io.stack_view import Normalization, StackView, check_stack, resolve_normalization
from ..model.files import default_meta
from ..model.foreign import card_of
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from .engine import iter_slice_probabilities
from .labels import check_threshold, label_objects

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet


def _prepare(
    model: UNet, images: ArrayLike | Image, intensity_range: tuple[float, float] | str | None,
    pixel_size_nm: tuple[float, float] | None,
) -> tuple[StackView, Normalization, ModelGrid]:
    view = check_stack(images)
    meta = card_of(model) or default_meta(model)
    norm = resolve_normalization(view, meta["normalization"], intensity_range)
    grid = model_grid(model, images, pixel_size_nm)
    grid.shape_yx(*view.shape3d[1:])  # too small on the model's grid: say so before any work
    return view, norm, grid


def _input_grid_slices(
    model: UNet, view: StackView, norm: Normalization, grid: ModelGrid, engine: dict[str, Any]
) -> Iterator[Progress | tuple[Any, np.ndarray]]:
    """Progress, and ``(index into the output, probability slice on the input's grid)`` for every slice."""
    shape_yx = view.shape3d[1:]
    for item in iter_slice_probabilities(model, grid.view(view), norm, **engine):
        if isinstance(item, Progress):
            yield item
        else:
            z, prob = item
            yield (Ellipsis if view.is_2d else z), grid.to_input(prob, shape_yx)


def allocate_output(out: ArrayLike | None, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray | ArrayLike:
    """``out`` when it has ``shape`` (a clear error when not), or a new zeroed array."""
    if out is None:
        return np.zeros(shape, dtype)
    if tuple(out.shape) != shape:
        raise BNAdaptError(f"the output array has shape {tuple(out.shape)}, expected {shape}")
    return out


def predict(
    model: UNet,
    images: ArrayLike | Image,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> np.ndarray | ArrayLike:
    """Foreground (mitochondrion) probability of every pixel.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        A source or adapted model (see :func:`load_model`, :func:`adapt`). It is
        not changed; when ``device`` differs from the model's, a copy is used. A model
        built elsewhere (any ``nn.Module`` or TorchScript module with one grey input channel
        and 1 or 2 output channels, :mod:`napari_bnadapt.model.foreign`) runs as it is.
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
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        How to map grey values to the model's range; see
        :func:`napari_bnadapt.io.stack_view.resolve_normalization`. None requires data
        already in the model's range (8-bit for the bundled models; [0, 1] for a model
        built elsewhere without a card, where ``(lo, hi)`` maps ``lo`` -> 0, ``hi`` -> 1).
    amp : bool or None, default None
        Mixed precision (float16 on CUDA); None = on for CUDA, off elsewhere.
    out : array-like or None, default None
        Preallocated float32 array of the input's shape (e.g. a zarr array) to
        write into; None: a new numpy array.
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm (None: a napari layer's scale and units, else
        unknown). When it and the model's training pixel size (``model.meta["pixel_size_nm"]``)
        differ by more than :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE` (2 %), every
        slice is resampled (linear) to the model's pixel size for the network, and its probabilities
        back to the image's grid (:mod:`napari_bnadapt.io.resample`): the result has the input's
        shape, and ``tile_size`` / ``overlap`` count pixels of the model's grid. Either one unknown:
        runs as it is, and a :class:`~napari_bnadapt.io.resample.PixelSizeWarning` says so once.

    Returns
    -------
    numpy.ndarray (or ``out``)
        float32 probabilities in [0, 1], same shape as ``images``.
    """
    return run_to_end(predict_iter(
        model, images, tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device,
        intensity_range=intensity_range, amp=amp, out=out, pixel_size_nm=pixel_size_nm,
    ))


@shares_docstring(predict)
def predict_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[np.ndarray | ArrayLike]]:
    view, norm, grid = _prepare(model, images, intensity_range, pixel_size_nm)
    result = allocate_output(out, tuple(view.data.shape), np.float32)
    engine = dict(tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device, amp=amp)
    for item in _input_grid_slices(model, view, norm, grid, engine):
        if isinstance(item, Progress):
            yield item
        else:
            result[item[0]] = item[1]
    yield Result(result)


def segment(
    model: UNet,
    images: ArrayLike | Image,
    threshold: float = 0.5,
    instances: bool = False,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> np.ndarray | ArrayLike:
    """Segment mitochondria: threshold the foreground probability.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        A source or adapted model, or one built elsewhere (see :func:`predict`); not changed.
    images : array-like or napari Image layer
        (Y, X) image or (Z, Y, X) stack, read one slice at a time.
    threshold : float, default 0.5
        Probability above which a pixel is foreground, in (0, 1).
    instances : bool, default False
        False: semantic labels (uint8, 1 = mitochondrion). True: one label per
        connected object (uint32; 3D connectivity in stacks).
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
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        How to map grey values to the model's range; see
        :func:`napari_bnadapt.io.stack_view.resolve_normalization`. None requires data
        already in the model's range (8-bit for the bundled models).
    amp : bool or None, default None
        Mixed precision (float16 on CUDA); None = on for CUDA, off elsewhere.
    out : array-like or None, default None
        Preallocated array of the input's shape (uint8, or uint32 with ``instances``)
        to write the labels into; None: a new numpy array.
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm (None: a napari layer's scale and units, else
        unknown). When it and the model's training pixel size (``model.meta["pixel_size_nm"]``)
        differ by more than :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE` (2 %), every
        slice is resampled (linear) to the model's pixel size for the network, and its probabilities
        back to the image's grid, where they are thresholded (:mod:`napari_bnadapt.io.resample`):
        the labels have the input's shape, and ``tile_size`` / ``overlap`` count pixels of the
        model's grid. Either one unknown:
        runs as it is, and a :class:`~napari_bnadapt.io.resample.PixelSizeWarning` says so once.

    Returns
    -------
    numpy.ndarray (or ``out``)
        Labels of the same shape as ``images``.
    """
    return run_to_end(segment_iter(
        model, images, threshold, instances, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, intensity_range=intensity_range, amp=amp, out=out, pixel_size_nm=pixel_size_nm,
    ))


@shares_docstring(segment)
def segment_iter(
    model: UNet,
    images: ArrayLike | Image,
    threshold: float = 0.5,
    instances: bool = False,
    *,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[np.ndarray | ArrayLike]]:
    check_threshold(threshold)
    view, norm, grid = _prepare(model, images, intensity_range, pixel_size_nm)
    labels = allocate_output(None if instances else out, tuple(view.data.shape), np.uint8)
    engine = dict(tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device, amp=amp)
    for item in _input_grid_slices(model, view, norm, grid, engine):
        if isinstance(item, Progress):
            yield item
        else:
            labels[item[0]] = (item[1] > threshold).astype(np.uint8)
    if instances:
        labels = yield from forward(label_objects(labels, allocate_output(out, labels.shape, np.uint32)))
    yield Result(labels)
