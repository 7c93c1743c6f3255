"""How far the BatchNorm statistics of a crop of the training data lie from the model's: the guard's content floor.

The guard (:func:`~napari_bnadapt.adabn.need.adaptation_needed`) keeps the source statistics when a
target differs from them by no more than two halves of the target differ from each other. On a small
stack, whose patches cover all of it, that half-sample floor is tiny, smaller than the differences
between REGIONS of one volume: a crop with fewer mitochondria, or more membrane, than the training
data as a whole has other feature statistics although it was imaged alike. So the guard almost never
found a small crop "like the training data", and AdaBN then re-centred the features to the crop's
content (``em-generalist-2`` on 3 x 256 x 256 crops of its own Lucchi++ test slices: 0.92 -> 0.49 IoU
on one, ``benchmarks/bench_small_crops.py``).

The content floor is what that variation amounts to, measured once on the training data and stored
in the model file: random crops of the training volume(s) at a few sizes (:data:`CONTENT_FLOOR_CROPS`,
counted on the model's pixel grid), each adapted as a user's stack would be (the workflow's defaults),
each compared with the model's reference statistics (:mod:`~napari_bnadapt.adabn.references`: the
running statistics of a model trained on one volume; each training volume's own for a model trained on
several). Per layer, the floor is the median over the crops of the mean shift (and of the contrast
change), scaled by one factor: the :data:`CONTENT_FLOOR_QUANTILE` quantile over the crops of their largest
ratio to those medians, over all layers and both measures. A crop of the training data then passes every
layer at once with that probability; a quantile taken per layer would not do that (a crop passes one layer
with probability 0.9, but all 36 tests far less often: the first version, per-layer 0.9 quantiles, still
called 3 of 5 crops of `em-generalist-2`'s own Lucchi++ test slices "needed", by 1.1-1.6 times the floor
in one layer). When asked (``adaptation_needed(..., content_floor=True)``; an option, off by default:
docs/real-data.md), a target whose every layer lies within the floor of crops of its size (or within the
half-sample floor and the contrast limit, whichever is larger) is as close to the training data as crops of
the training data are, and the guard keeps the source statistics; only where the image's pixel size is
known, since the floor is measured on the model's pixel grid.

Only for a model trained with random grey-value curves (:func:`grey_values_randomised`). On a small crop a
change of grey values moves the first layers' statistics no more than the crop's content does: for
``lucchi-pp``, trained with flips and rotations only, an offset of +0.04 on a 3 x 256 x 256 crop lies within
the content spread (an earlier prototype with per-layer floors: ratio 0.94, the crop as it is 0.79), and
AdaBN is what turns it from 0.25 into 0.77 IoU.
A model trained on random gamma, gain and offset has learned to shrug such changes off, so for it a shift
within the content floor is harmless (``em-generalist-2``: AdaBN costs it 0.04-0.06 on such crops whether
shifted or not).

Between the measured sizes the floor is interpolated in log voxel count; below the smallest, the
smallest's is used; above the largest it decays like ``sqrt(n_largest / n)`` (a larger stack averages
more regions), so on large volumes the guard is what it was. Per layer, because grey-value shifts move
the first layers and content moves the deep ones: the floor of a deep layer does not hide a shift of
the input's grey values.

Stored as ``model.meta["content_floor"]`` (plain JSON, a few hundred numbers). Measured for the bundled
EM models by ``python scripts/train_em_models.py --content-floor FILE``; for any model with
:func:`measure_content_floor`. A model without one is judged by the half-sample floor alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result, forward_as, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

    from ..model.unet import UNet
    from .references import Comparison

#: Format version of ``meta["content_floor"]``.
CONTENT_FLOOR_VERSION = 1
#: (slices, side in pixels of the model's grid) of the crops it is measured on: 65 k to 4.2 M voxels,
#: the largest the size of AdaBN's default sample (64 patches of 256 x 256).
CONTENT_FLOOR_CROPS = ((1, 256), (3, 256), (6, 512), (16, 512))
#: Random crops per size and volume.
CONTENT_FLOOR_COUNT = 12
#: The quantile over the crops that the floor is (per layer).
CONTENT_FLOOR_QUANTILE = 0.9


@dataclass
class ContentFloor:
    """The content floor of one reference (a model's running statistics, or one training volume's).

    Attributes
    ----------
    reference : str
        The reference's name (:func:`~napari_bnadapt.adabn.references.references`).
    n_voxels : list of int
        Voxels of each measured crop size on the model's grid, ascending.
    shift, std_change : dict of str to list of float
        Per BatchNorm layer, the floor of the mean shift and of the contrast change at each size.
    """

    reference: str
    n_voxels: list[int]
    shift: dict[str, list[float]]
    std_change: dict[str, list[float]]

    def at(self, n_voxels: int) -> tuple[dict[str, float], dict[str, float]]:
        """Per layer, the (mean shift, contrast change) floor of a stack of ``n_voxels`` voxels (module docstring)."""
        if n_voxels < 1:
            raise BNAdaptError(f"n_voxels must be positive, not {n_voxels}")
        logs = np.log(np.asarray(self.n_voxels, dtype=float))
        n = math.log(n_voxels)
        decay = math.sqrt(self.n_voxels[-1] / n_voxels) if n_voxels > self.n_voxels[-1] else 1.0

        def one(values: list[float]) -> float:
            return float(np.interp(n, logs, np.asarray(values, dtype=float))) * decay

        return ({k: one(v) for k, v in self.shift.items()}, {k: one(v) for k, v in self.std_change.items()})


def read_content_floor(model: Any) -> dict[str, ContentFloor]:
    """The content floors stored with ``model``, by reference name (empty when it has none).

    Raises
    ------
    BNAdaptError
        They were written by a newer version, or do not name the model's BatchNorm layers.
    """
    from ..model.card import card_section
    from ..model.foreign import batchnorm_layers

    card = card_section(model, "content_floor", "references", CONTENT_FLOOR_VERSION, "the content floor")
    if card is None:
        return {}
    layers = {name for name, _ in batchnorm_layers(model)}
    out = {}
    for entry in card["references"]:
        sizes = [int(n) for n in entry["n_voxels"]]
        floor = ContentFloor(str(entry["reference"]), sizes,
                             {k: [float(x) for x in v] for k, v in entry["shift"].items()},
                             {k: [float(x) for x in v] for k, v in entry["std_change"].items()})
        if set(floor.shift) != layers or set(floor.std_change) != layers or any(
                len(v) != len(sizes) for v in (*floor.shift.values(), *floor.std_change.values())):
            raise BNAdaptError(f"the model file's content floor of {floor.reference!r} does not match its BatchNorm "
                               "layers: measure it again with measure_content_floor")
        out[floor.reference] = floor
    return out


def _floors(crops: list[Comparison], quantile: float) -> dict[str, tuple[float, float]]:
    """Per layer, the (mean shift, contrast change) floor of one crop size: each layer's median over the crops,
    times the ``quantile`` over the crops of the largest ratio to those medians (over layers and both measures),
    so that a crop passes all layers at once with probability ``quantile`` (not each layer on its own)."""
    layers = list(crops[0].shifts)
    s = np.array([[c.shifts[k] for k in layers] for c in crops])
    v = np.array([[c.std_changes[k] for k in layers] for c in crops])
    ms, mv = np.maximum(np.median(s, axis=0), 1e-9), np.maximum(np.median(v, axis=0), 1e-9)
    worst = np.maximum((s / ms).max(axis=1), (v / mv).max(axis=1))
    scale = float(np.quantile(worst, quantile))
    return {k: (float(ms[i] * scale), float(mv[i] * scale)) for i, k in enumerate(layers)}


def grey_values_randomised(model: Any) -> bool:
    """True when the model's card records training with random grey-value curves (gamma, gain or offset drawn
    with a positive probability: ``meta["training"]["recipe"]["augmentation"]``,
    :mod:`~napari_bnadapt.model.augment`)."""
    meta = getattr(model, "meta", None)
    recipe = ((meta or {}).get("training") or {}).get("recipe") or {} if isinstance(meta, dict) else {}
    aug = recipe.get("augmentation") if isinstance(recipe, dict) else None
    if not isinstance(aug, dict) or not float(aug.get("p_grey", 0.0)) > 0.0:
        return False
    neutral = {"gamma": 1.0, "gain": 1.0, "offset": 0.0}
    return any(isinstance(aug.get(k), (list, tuple)) and any(float(v) != n for v in aug[k]) for k, n in neutral.items())


def measure_content_floor(
    model: UNet,
    volumes: Mapping[str, ArrayLike],
    *,
    pixel_sizes_nm: Mapping[str, tuple[float, float] | None] | None = None,
    crops: Sequence[tuple[int, int]] = CONTENT_FLOOR_CROPS,
    n_crops: int = CONTENT_FLOOR_COUNT,
    quantile: float = CONTENT_FLOOR_QUANTILE,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    in_place: bool = False,
) -> UNet:
    """Measure and store how far AdaBN's statistics of crops of the training data lie from the model's.

    Parameters
    ----------
    model : UNet
        A model trained on ``volumes`` with random grey-value curves (:func:`grey_values_randomised`; its
        weights are not changed). Trained on several volumes: it must
        carry their statistics first (:func:`~napari_bnadapt.adabn.volumes.measure_volume_statistics`,
        the same labels); each volume's crops are compared with that volume's statistics.
    volumes : mapping of str to array-like
        Volume label -> its (unaugmented) training images, (Y, X) or (Z, Y, X); only the crops are read.
        One volume for a model trained on one (its crops are compared with the running statistics).
    pixel_sizes_nm : mapping of str to (float, float) or None, default None
        Each volume's pixel size in nm: crops are cut to ``crops``' sizes on the model's grid and
        adapted at the model's pixel size, as a target would be. Missing: as it is.
    crops : sequence of (int, int), default CONTENT_FLOOR_CROPS
        (slices, side) of the crop sizes, on the model's grid (cut smaller where a volume is smaller).
    n_crops : int, default CONTENT_FLOOR_COUNT
        Random crops per size and volume (at least 2).
    quantile : float, default CONTENT_FLOOR_QUANTILE
        The share of the crops of the training data that lie within the floor in every layer at once (the
        quantile of the one factor that scales the per-layer medians, module docstring).
    seed : int, default 0
        Seeds the crop positions.
    device, intensity_range
        As for :func:`~napari_bnadapt.adabn.adaptation.adapt`.
    in_place : bool, default False
        Store in ``model`` itself; else in a copy (the given model is not changed).

    Returns
    -------
    UNet
        The model with ``meta["content_floor"]`` (replacing any earlier one).
    """
    return run_to_end(measure_content_floor_iter(
        model, volumes, pixel_sizes_nm=pixel_sizes_nm, crops=crops, n_crops=n_crops, quantile=quantile, seed=seed,
        device=device, intensity_range=intensity_range, in_place=in_place))


@shares_docstring(measure_content_floor)
def measure_content_floor_iter(
    model: UNet,
    volumes: Mapping[str, ArrayLike],
    *,
    pixel_sizes_nm: Mapping[str, tuple[float, float] | None] | None = None,
    crops: Sequence[tuple[int, int]] = CONTENT_FLOOR_CROPS,
    n_crops: int = CONTENT_FLOOR_COUNT,
    quantile: float = CONTENT_FLOOR_QUANTILE,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    in_place: bool = False,
) -> Iterator[Progress | Result[UNet]]:
    from .adaptation import adapt_iter
    from .references import SOURCE_REFERENCE, bn_statistics, compare, references, volume_reference

    if n_crops < 2 or not 0.0 < quantile <= 1.0 or not crops:
        raise BNAdaptError(f"need crop sizes, n_crops >= 2 and 0 < quantile <= 1 (got {len(crops)} sizes, n_crops "
                           f"{n_crops}, quantile {quantile})")
    if not grey_values_randomised(model):
        raise BNAdaptError(
            "this model was trained without random grey-value curves (its card records none): a change of grey values "
            "it cannot handle may move its statistics no more than a crop's content does (lucchi-pp: an offset of "
            "+0.04 on a 3 x 256 x 256 crop, which AdaBN turns from 0.25 into 0.77 IoU), so the guard must not keep its "
            "source statistics on that ground; a content floor is for models trained with grey-value randomisation")
    refs = dict(references(model))
    if len(refs) > 1:
        wanted = {label: volume_reference(label) for label in volumes}
        missing = [r for r in wanted.values() if r not in refs]
        if missing or len(wanted) != len(refs) - 1:
            raise BNAdaptError(f"this model carries the statistics of {sorted(refs)[1:]}; give exactly those volumes "
                               f"(by the same labels), not {sorted(volumes)}")
    elif len(volumes) != 1:
        raise BNAdaptError(f"a model without training-volume statistics is compared through its running statistics, "
                           f"which describe one volume: give one, not {len(volumes)} (for several, measure their "
                           "statistics first: measure_volume_statistics)")
    else:
        wanted = {label: SOURCE_REFERENCE for label in volumes}
    from ..io.resample import model_pixel_size

    model_nm = model_pixel_size(model)
    rng = np.random.default_rng(seed)
    total = len(volumes) * len(crops) * n_crops
    entries, done = [], 0
    for label, images in volumes.items():
        ref = refs[wanted[label]]
        vol = images if getattr(images, "ndim", np.ndim(images)) == 3 else np.asarray(images)[None]
        px = (pixel_sizes_nm or {}).get(label)
        scale = [m / p for m, p in zip(model_nm, px)] if (px and model_nm) else [1.0, 1.0]
        sizes, shift, std = [], {}, {}
        for depth, side in crops:
            box = (min(depth, vol.shape[0]), *(min(round(side * s), n) for s, n in zip(scale, vol.shape[1:])))
            per_crop = []
            for _ in range(n_crops):
                z, y, x = (int(rng.integers(0, n - b + 1)) for n, b in zip(vol.shape, box))
                crop = np.asarray(vol[z:z + box[0], y:y + box[1], x:x + box[2]])
                adapted, report = yield from forward_as(adapt_iter(
                    model, crop, device=device, seed=seed, intensity_range=intensity_range, pixel_size_nm=px),
                    "content floor", done, total)
                per_crop.append(compare(ref, bn_statistics(adapted)))
                done += 1
            sizes.append(int(report.stack_voxels))
            for name, (layer_shift, layer_std) in _floors(per_crop, quantile).items():
                shift.setdefault(name, []).append(layer_shift)
                std.setdefault(name, []).append(layer_std)
        order = np.argsort(sizes)
        entries.append({"reference": wanted[label], "volume": str(label), "n_voxels": [sizes[i] for i in order],
                        "shift": {k: [v[i] for i in order] for k, v in shift.items()},
                        "std_change": {k: [v[i] for i in order] for k, v in std.items()}})
    out = model if in_place else copy.deepcopy(model)
    if getattr(out, "meta", None) is None:
        out.meta = {}
    out.meta["content_floor"] = {
        "version": CONTENT_FLOOR_VERSION, "quantile": quantile, "n_crops": n_crops,
        "crops": [list(c) for c in crops], "seed": seed, "references": entries,
        "note": "per layer, how far AdaBN's statistics of crops of the training data lie from the reference; asked to, "
                "the guard keeps the source model for a target within it (napari_bnadapt.adabn.content_floor)",
    }
    yield Result(out)
