"""What the guard compares a target's BatchNorm statistics with, and how far apart two sets of statistics lie.

The references of a model are its running statistics and, for a model trained on several volumes, each
training volume's (:mod:`~napari_bnadapt.adabn.volumes`). :func:`compare` measures, per layer, the mean
over the channels of ``|mu_t - mu_s| / sigma_s`` (the mean shift) and of ``|log(sigma_t / sigma_s)|``
(the contrast change), both in the reference's terms. :mod:`~napari_bnadapt.adabn.need` decides with
them; :mod:`~napari_bnadapt.adabn.content_floor` measures how far crops of the training data lie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BNAdaptError

#: The name of the model's running statistics as a reference (``NeedVerdict.reference``).
SOURCE_REFERENCE = "running statistics"

Statistics = dict[str, tuple[Any, Any]]


def bn_statistics(model: Any) -> Statistics:
    """Per BatchNorm layer name, the float64 CPU running mean and variance of ``model``.

    Raises
    ------
    BNAdaptError
        A layer keeps no running statistics, or the model has no BatchNorm layer.
    """
    from ..model.foreign import batchnorm_layers

    out = {}
    for name, bn in batchnorm_layers(model):
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise BNAdaptError(f"the BatchNorm layer {name!r} keeps no running statistics")
        out[name] = (bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu())
    if not out:
        raise BNAdaptError("this model has no BatchNorm layers: there are no statistics to compare")
    return out


def volume_reference(label: str) -> str:
    """The reference name of one training volume's statistics, as the guard's messages give it."""
    return f"training volume {label!r}"


def references(source: Any, running: Statistics | None = None) -> list[tuple[str, Statistics]]:
    """What a target is compared with, by name: the running statistics first (``running``: already read), then
    each training volume's (models trained on several, :mod:`~napari_bnadapt.adabn.volumes`)."""
    from .volumes import read_volume_statistics

    return [(SOURCE_REFERENCE, running if running is not None else bn_statistics(source))] + [
        (volume_reference(v.label), v.statistics) for v in read_volume_statistics(source)]


@dataclass
class Comparison:
    """How far a target's statistics lie from one reference.

    Attributes
    ----------
    shift, layer : float, str
        The largest per-layer mean shift (reference sigmas) and its layer.
    std_change, std_layer : float, str
        The largest per-layer mean ``|log(sigma_t / sigma_s)|`` and its layer.
    shifts, std_changes : dict of str to float
        Every layer's.
    """

    shift: float
    layer: str
    std_change: float
    std_layer: str
    shifts: dict[str, float]
    std_changes: dict[str, float]


def compare(reference: Statistics, target: Statistics) -> Comparison:
    """Per-layer mean shift (in reference sigmas) and mean |log sigma ratio| of ``target`` against ``reference``."""
    shifts, stds = {}, {}
    for name, (ms, vs) in reference.items():
        mt, vt = target[name]
        shifts[name] = float(((mt - ms).abs() / vs.clamp_min(1e-12).sqrt()).mean())
        stds[name] = float((0.5 * (vt.clamp_min(1e-12) / vs.clamp_min(1e-12)).log()).abs().mean())
    layer, std_layer = max(shifts, key=shifts.__getitem__), max(stds, key=stds.__getitem__)
    return Comparison(shifts[layer], layer, stds[std_layer], std_layer, shifts, stds)
