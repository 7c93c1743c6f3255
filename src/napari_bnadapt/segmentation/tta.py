"""Test-time augmentation (TTA): the foreground probability averaged over flipped and rotated views.

EM images have no preferred orientation, so the segmentation of a slice should not depend on
how the slice is turned. A network is not exactly equivariant (its tiles, pooling grid and
learned filters break the symmetry), and averaging its predictions over the views of the
dihedral group D4 (the 4 rotations by 90 degrees, each with and without a flip) removes part of
its errors at no training cost: each view is segmented by :func:`~.predict.predict_iter` (the
same tiling, batching and out-of-memory back-off), turned back, and averaged. ``transforms``
picks the views:

``8`` (default)
    The whole group D4: rotations by 0, 90, 180, 270 degrees, each with and without a flip of X.
    A rotation by 90 degrees swaps Y and X; a non-square slice is segmented in its turned shape.
``4``
    The flips only: identity, flip X, flip Y, both (= rotation by 180 degrees). The shape of the
    slice never changes; half the cost of 8.
``2``
    Identity and flip X.
``1``
    No augmentation: exactly :func:`~.predict.predict`.

Measured with ``transforms=4`` on real EM data (6 slices each): the ``lucchi-pp`` model on Lucchi++
(in-domain) IoU 0.883 -> 0.890, adapted to VNC (Lucchi++ -> VNC, AdaBN) 0.455 -> 0.488; on the toy
stacks, where the IoU is already 0.98, +0.001 to +0.002.

The cost is ``transforms`` times that of :func:`~.predict.predict`. Memory stays bounded: each view
is read and turned one slice at a time (:class:`_TurnedStack`), and each turned-back probability
slice is added into the output straight away (:class:`_Accumulator`), which then holds the average.
The grey-value mapping is decided once, on the untouched stack, so that every view is normalised
alike (``intensity_range="auto"`` would otherwise read percentiles per view).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.resample import model_grid
from ..io.stack_view import StackView, check_stack, resolve_normalization
from ..model.files import default_meta
from ..model.foreign import card_of
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from .predict import allocate_output, predict_iter

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: The number of views :func:`predict_tta` accepts, and what they are (module docstring).
TRANSFORM_COUNTS = (1, 2, 4, 8)

#: One view: (number of counter-clockwise quarter turns k, flip X first). The image is flipped, then turned.
View = tuple[int, bool]


def dihedral_views(transforms: int) -> list[View]:
    """The views averaged for ``transforms`` = 1, 2, 4 or 8 (see the module docstring).

    Parameters
    ----------
    transforms : int
        1 (identity), 2 (identity, flip X), 4 (the flips: identity, flip X, flip Y, both) or 8
        (all of D4: four rotations, each with and without a flip).

    Returns
    -------
    list of (int, bool)
        ``(k, flip)``: flip X when ``flip``, then rotate by ``k`` quarter turns (``np.rot90``).
    """
    if transforms == 1:
        return [(0, False)]
    if transforms == 2:
        return [(0, False), (0, True)]
    if transforms == 4:  # flip Y = flip X then a half turn; both flips = a half turn
        return [(0, False), (0, True), (2, True), (2, False)]
    if transforms == 8:
        return [(k, f) for f in (False, True) for k in range(4)]
    raise BNAdaptError(f"transforms must be one of {', '.join(map(str, TRANSFORM_COUNTS))}, not {transforms!r}")


def turn(plane: np.ndarray, view: View) -> np.ndarray:
    """Apply ``view`` to the last two axes of ``plane`` (flip X, then ``k`` quarter turns)."""
    k, flip = view
    out = plane[..., ::-1] if flip else plane
    return np.rot90(out, k, axes=(-2, -1))


def turn_back(plane: np.ndarray, view: View) -> np.ndarray:
    """Undo :func:`turn`: ``turn_back(turn(a, v), v) == a``."""
    k, flip = view
    out = np.rot90(plane, -k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def _turned_shape(shape: tuple[int, ...], view: View) -> tuple[int, ...]:
    return (*shape[:-2], shape[-1], shape[-2]) if view[0] % 2 else tuple(shape)


class _TurnedStack:
    """A lazy view of a stack with every slice turned by ``view``: read one slice at a time.

    Enough of an array (``shape``, ``dtype``, ``ndim``, indexing by a slice number and
    Y/X slices) for :func:`~napari_bnadapt.io.stack_view.check_stack` and the inference engine.
    """

    def __init__(self, view: StackView, turned: View) -> None:
        self._view = view
        self._turned = turned
        self.shape = _turned_shape(tuple(int(s) for s in view.data.shape), turned)
        self.dtype = view.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if self._view.is_2d:
            plane = turn(self._view.read(0), self._turned)
            return np.ascontiguousarray(plane[key])
        z, rest = key[0], key[1:]
        if isinstance(z, (int, np.integer)):
            return np.ascontiguousarray(turn(self._view.read(int(z)), self._turned)[rest])
        zs = range(self.shape[0])[z]
        return np.stack([turn(self._view.read(i), self._turned)[rest] for i in zs])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # a whole read, only if asked
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


class _Accumulator:
    """The ``out`` given to :func:`~.predict.predict_iter` for one view: turns each slice back, adds it up."""

    def __init__(self, target: Any, turned: View, is_2d: bool) -> None:
        self._target = target
        self._turned = turned
        self._is_2d = is_2d
        self.shape = _turned_shape(tuple(int(s) for s in target.shape), turned)
        self.dtype = np.dtype(np.float32)

    def __setitem__(self, key: Any, prob: np.ndarray) -> None:
        back = turn_back(np.asarray(prob, np.float32), self._turned)
        if self._is_2d:
            self._target[...] = np.asarray(self._target[...]) + back
        else:
            z = int(key)
            self._target[z] = np.asarray(self._target[z]) + back


def _zero(out: Any, shape: tuple[int, ...], nz: int, is_2d: bool) -> Any:
    if out is None:
        return allocate_output(None, shape, np.float32)
    out = allocate_output(out, shape, np.float32)
    if is_2d:
        out[...] = 0
    else:
        for z in range(nz):
            out[z] = 0
    return out


def predict_tta(
    model: UNet,
    images: ArrayLike | Image,
    *,
    transforms: int = 8,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> np.ndarray | ArrayLike:
    """Foreground probability averaged over flipped and rotated views of every slice.

    Every view is segmented by :func:`~napari_bnadapt.segmentation.predict.predict`, turned back
    and averaged (module docstring). The model is not changed.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        A source or adapted model, or one built elsewhere (see :func:`predict`); not changed.
    images : array-like or napari Image layer
        A (Y, X) image or (Z, Y, X) stack, read one slice at a time (once per view).
    transforms : {8, 4, 2, 1}, default 8
        8: the 4 rotations by 90 degrees, each with and without a flip (D4); 4: the flips only
        (identity, flip X, flip Y, both); 2: identity and flip X; 1: plain :func:`predict`.
        The cost grows in proportion.
    tile_size, overlap, batch_size, device, amp
        As in :func:`predict`, for every view.
    intensity_range : (float, float), "auto" or None, default None
        As in :func:`predict`; decided once on the untouched stack and used for every view.
    out : array-like or None, default None
        Preallocated float32 array of the input's shape (e.g. a zarr array) to accumulate the
        average into (it is zeroed first); None: a new numpy array.
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm, as in :func:`predict`: decided once (one warning at
        most) and passed to every view (y and x swapped for the quarter turns).

    Returns
    -------
    numpy.ndarray (or ``out``)
        float32 probabilities in [0, 1], same shape as ``images``: the mean over the views.
    """
    return run_to_end(predict_tta_iter(
        model, images, transforms=transforms, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        device=device, intensity_range=intensity_range, amp=amp, out=out, pixel_size_nm=pixel_size_nm,
    ))


@shares_docstring(predict_tta)
def predict_tta_iter(
    model: UNet,
    images: ArrayLike | Image,
    *,
    transforms: int = 8,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    out: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> Iterator[Progress | Result[np.ndarray | ArrayLike]]:
    views = dihedral_views(transforms)
    view = check_stack(images)
    meta = card_of(model) or default_meta(model)
    norm = resolve_normalization(view, meta["normalization"], intensity_range)
    fixed = (norm.in_low, norm.in_high)  # the same mapping for every view
    px = model_grid(model, images, pixel_size_nm).pass_on()  # decided (and said) once, for every view
    shape = tuple(int(s) for s in view.data.shape)
    nz = view.shape3d[0]
    if len(views) == 1:  # exactly predict (and its out= semantics)
        result = yield from forward(predict_iter(
            model, view.data, tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device,
            intensity_range=fixed, amp=amp, out=out, pixel_size_nm=px))
        yield Result(result)
        return
    result = _zero(out, shape, nz, view.is_2d)
    stage = f"segmenting {len(views)} views (test-time augmentation)"
    yield Progress(stage, 0, len(views) * nz)
    for i, turned in enumerate(views):
        acc = _Accumulator(result, turned, view.is_2d)
        gen = predict_iter(model, _TurnedStack(view, turned), tile_size=tile_size, overlap=overlap,
                           batch_size=batch_size, device=device, intensity_range=fixed, amp=amp, out=acc,
                           pixel_size_nm=px if px is None or turned[0] % 2 == 0 else (px[1], px[0]))
        yield from forward(_rescaled(gen, stage, i, len(views)))
    scale = np.float32(1.0 / len(views))
    if view.is_2d:
        result[...] = np.asarray(result[...]) * scale
    else:
        for z in range(nz):
            result[z] = np.asarray(result[z]) * scale
    yield Progress(stage, len(views) * nz, len(views) * nz)
    yield Result(result)


def _rescaled(gen: Iterator[Progress | Result[Any]], stage: str, i: int, n: int) -> Iterator[Progress | Result[Any]]:
    """Progress of view ``i`` of ``n`` as part of the whole run (other stages, e.g. back-off notes, pass as they are)."""
    for item in gen:
        if isinstance(item, Progress) and item.stage == "segmenting" and item.total:
            yield Progress(stage, i * item.total + item.done, n * item.total)
        else:
            yield item


def segment_tta(
    model: UNet,
    images: ArrayLike | Image,
    threshold: float = 0.5,
    *,
    transforms: int = 8,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    amp: bool | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
) -> np.ndarray:
    """Semantic labels (uint8, 1 = mitochondrion) from the test-time-augmented probability.

    Parameters
    ----------
    model : UNet or torch.nn.Module
        Not changed.
    images : array-like or napari Image layer
        (Y, X) image or (Z, Y, X) stack.
    threshold : float, default 0.5
        Probability above which a pixel is foreground, in (0, 1).
    transforms : {8, 4, 2, 1}, default 8
        The views averaged (see :func:`predict_tta`).
    tile_size, overlap, batch_size, device, intensity_range, amp, pixel_size_nm
        As in :func:`predict_tta`.

    Returns
    -------
    numpy.ndarray
        uint8 labels of the shape of ``images``.
    """
    from .labels import check_threshold

    check_threshold(threshold)
    prob = predict_tta(model, images, transforms=transforms, tile_size=tile_size, overlap=overlap,
                       batch_size=batch_size, device=device, intensity_range=intensity_range, amp=amp,
                       pixel_size_nm=pixel_size_nm)
    return (np.asarray(prob) > threshold).astype(np.uint8)
