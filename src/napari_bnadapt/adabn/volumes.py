"""The BatchNorm statistics of each training volume of a model trained on several: the guard's references.

A model trained on several volumes (``em-generalist-2``: Lucchi++ and VNC) saw batches that mixed
them, so its running statistics describe the MIXTURE: their variances hold the spread between the
volumes' means. A target from one of those volumes then differs from the running statistics by much
more than its own noise floor (``em-generalist-2`` on Lucchi++ test slices: contrast change 0.375
against the limit 0.1), :func:`~napari_bnadapt.adabn.need.adaptation_needed` called it "needed", and
AdaBN replaced the mixture statistics the network was trained with by those of one volume: 0.860 ->
0.845 IoU there (``benchmarks/bench_real_generalisation.py``).

The remedy: the model file also carries, for each training volume, the statistics AdaBN estimates on
that volume (the same estimator, patches and seed as on a target, so the comparison is like for like).
The guard then compares the target with each of them as well as with the running statistics: a
target within the noise floor of any one is "like training volume X", and the source model is kept
(measured on ``em-generalist-2``: Lucchi++ test slices against the Lucchi++ reference, shift 0.20 of the
floor and contrast change 0.031; against the VNC one 0.94 and 0.63).

Stored as ``model.meta["volume_statistics"]`` (version, one entry per volume: label, pixel size, how
it was measured) and float64 arrays ``volume_statistics.<i>.<layer>.mean`` / ``.var`` in
``model.meta["arrays"]``, which :func:`~napari_bnadapt.model.files.save_model` writes as tensors.
:func:`~napari_bnadapt.model.training.train` measures them for every model trained on several
volumes; :func:`measure_volume_statistics` adds them to a model trained elsewhere.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..progress import Progress, Result, forward, run_to_end, shares_docstring

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike

    from ..model.unet import UNet

#: Format version of ``meta["volume_statistics"]``.
VOLUME_STATS_VERSION = 1
#: Prefix of the arrays in ``meta["arrays"]``.
VOLUME_ARRAY_PREFIX = "volume_statistics."
#: Un-augmented crops per volume that training measures them on (AdaBN's default budget: 64 of 256 x 256).
VOLUME_STATISTICS_CROPS = 64


@dataclass
class VolumeReference:
    """One training volume's BatchNorm statistics.

    Attributes
    ----------
    label : str
        The volume's name, as the guard's message gives it.
    statistics : dict of str to (torch.Tensor, torch.Tensor)
        Per BatchNorm layer name, the float64 mean and variance AdaBN estimated on the volume.
    """

    label: str
    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _key(index: int, layer: str, field: str) -> str:
    return f"{VOLUME_ARRAY_PREFIX}{index}.{layer}.{field}"


def read_volume_statistics(model: Any) -> list[VolumeReference]:
    """The training-volume statistics stored with ``model`` (an empty list when it has none).

    Raises
    ------
    BNAdaptError
        They were written by a newer version, or do not match the model's BatchNorm layers.
    """
    import torch

    from ..model.card import card_section
    from ..model.foreign import batchnorm_layers

    card = card_section(model, "volume_statistics", "volumes", VOLUME_STATS_VERSION,
                        "the training-volume statistics")
    if card is None:
        return []
    arrays = model.meta.get("arrays", {})
    layers = [(name, bn.num_features) for name, bn in batchnorm_layers(model)]
    out = []
    for i, vol in enumerate(card["volumes"]):
        stats = {}
        for name, channels in layers:
            pair = [arrays.get(_key(i, name, f)) for f in ("mean", "var")]
            if any(a is None or tuple(getattr(a, "shape", ())) != (channels,) for a in pair):
                raise BNAdaptError(f"the model file's statistics of training volume {vol.get('label', i)!r} do not "
                                   f"match its BatchNorm layer {name!r}: measure them again with "
                                   "measure_volume_statistics")
            stats[name] = tuple(torch.as_tensor(a).double().cpu() for a in pair)
        out.append(VolumeReference(str(vol.get("label", f"volume {i}")), stats))
    return out


def measure_volume_statistics(
    model: UNet,
    volumes: Mapping[str, ArrayLike],
    *,
    pixel_sizes_nm: Mapping[str, tuple[float, float] | None] | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    in_place: bool = False,
) -> UNet:
    """Measure and store the BatchNorm statistics AdaBN finds on each of a model's training volumes.

    Parameters
    ----------
    model : UNet
        A model trained on all of ``volumes`` (weights are not changed).
    volumes : mapping of str to array-like
        Volume label -> its (unaugmented) training images, (Y, X) or (Z, Y, X); only sampled patches
        are read. Two or more: with one, the running statistics already describe it.
    pixel_sizes_nm : mapping of str to (float, float) or None, default None
        Each volume's pixel size in nm, so its patches are drawn at the model's pixel size as a
        target's would be (:func:`~napari_bnadapt.adabn.adaptation.adapt`). Missing: as it is.
    n_patches, patch_size, batch_size, seed, device, intensity_range
        As for :func:`~napari_bnadapt.adabn.adaptation.adapt` (the defaults are the workflow's).
    in_place : bool, default False
        Store in ``model`` itself; else in a copy (the given model is not changed).

    Returns
    -------
    UNet
        The model with ``meta["volume_statistics"]`` and its arrays (replacing any earlier ones).
    """
    return run_to_end(measure_volume_statistics_iter(
        model, volumes, pixel_sizes_nm=pixel_sizes_nm, n_patches=n_patches, patch_size=patch_size,
        batch_size=batch_size, seed=seed, device=device, intensity_range=intensity_range, in_place=in_place))


@shares_docstring(measure_volume_statistics)
def measure_volume_statistics_iter(
    model: UNet,
    volumes: Mapping[str, ArrayLike],
    *,
    pixel_sizes_nm: Mapping[str, tuple[float, float] | None] | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    in_place: bool = False,
) -> Iterator[Progress | Result[UNet]]:
    from ..model.foreign import batchnorm_layers
    from .adaptation import adapt_iter

    if len(volumes) < 2:
        raise BNAdaptError(f"training-volume statistics need two or more volumes, not {len(volumes)}: with one, the "
                           "model's running statistics already describe it")
    unknown = set(pixel_sizes_nm or {}) - set(volumes)
    if unknown:
        raise BNAdaptError(f"pixel sizes given for volumes that are not listed: {sorted(unknown)}")
    out = model if in_place else copy.deepcopy(model)
    meta = getattr(out, "meta", None)
    if meta is None:
        out.meta = meta = {}
    arrays = {k: v for k, v in meta.get("arrays", {}).items() if not k.startswith(VOLUME_ARRAY_PREFIX)}
    entries = []
    for i, (label, images) in enumerate(volumes.items()):
        px = (pixel_sizes_nm or {}).get(label)
        adapted, report = yield from forward(adapt_iter(
            model, images, device=device, n_patches=n_patches, patch_size=patch_size, batch_size=batch_size,
            seed=seed, intensity_range=intensity_range, pixel_size_nm=px))
        for name, bn in batchnorm_layers(adapted):  # float64, on the CPU (references.bn_statistics would import back)
            arrays[_key(i, name, "mean")] = bn.running_mean.detach().double().cpu().numpy()
            arrays[_key(i, name, "var")] = bn.running_var.detach().double().cpu().numpy()
        entries.append({"label": str(label), "pixel_size_nm": list(px) if px else None,
                        "n_patches": report.n_patches, "patch_size": list(report.patch_size), "seed": seed,
                        "estimator": report.mode, "drift": report.drift if math.isfinite(report.drift) else None})
    meta["arrays"] = arrays
    meta["volume_statistics"] = {
        "version": VOLUME_STATS_VERSION, "volumes": entries,
        "note": "AdaBN's estimate on each training volume; the guard keeps the source model for a target within "
                "the noise floor of any of them (napari_bnadapt.adabn.volumes)",
    }
    yield Result(out)
