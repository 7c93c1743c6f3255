"""Is adaptation needed at all? The shift of the BatchNorm statistics against their noise floor.

AdaBN replaces the source statistics with estimates from a sample of the target. When the target
comes from the training domain, those estimates differ from the source's only by sampling noise
(which patches were drawn) and by what the training-time running averages got wrong, and using them
can cost a little: on other slices of Lucchi++ the in-domain IoU went from 0.886 to 0.879.
:func:`adaptation_needed` tells the two situations apart, and :func:`mix_statistics` makes the
adaptation harmless when it is not needed.

The test. For every BatchNorm layer, the shift is the mean over the channels of
``|mu_target - mu_source| / sigma_source`` (the ``mean_shift`` of
:class:`~napari_bnadapt.adabn.adaptation.LayerShift`); the measured shift is the largest over the
layers. The noise floor is how far the statistics move when a different sample of the SAME target is
used: :func:`~napari_bnadapt.adabn.adaptation.adapt` pools the first half of its patches on its own
and reports ``drift``, the largest (over the layers) mean ``|mu_half - mu_all| / sigma_source``.
Since ``mu_all`` is the average of the two halves, ``|mu_half1 - mu_half2| = 2 |mu_half1 - mu_all|``:
the floor is ``2 * drift``, how much two halves of the target differ from each other. Adaptation is
needed when the source differs from the target by more than that (``shift > margin * floor``,
``margin = 1``): the source is then farther from the target than the target is from itself. For a
source whose statistics come from a sample as large as either half, the expected in-domain ratio is
about 0.9; the source's training sample is usually much larger, which brings it to about 0.5
(measured with the toy model on three in-domain stacks: 0.37-0.46; a brightness shift of +4 grey
values gave 2.3-3.4, of +40 gave 25-36).

Patches of one stack are not independent samples of a domain (neighbouring slices look alike), so
the half-sample floor is a within-stack floor: it asks whether the source differs from the target
more than parts of the target differ among themselves. Without a half-sample estimate (``drift``
NaN: the EMA estimator with a single update), the floor falls back to the one of ``n_patches``
independent samples per half: ``2 * sqrt(2 / (pi * n_patches))`` in source sigmas (the expected
``|N(0, 4/n)|``), which treats a patch as one sample (conservative).

The standard deviations enter through a fixed limit instead of a floor (their half-sample drift
is not reported, and in-domain they are biased anyway: a network's running variance, PyTorch's
average of per-batch variances, leaves out the variance between batches that the pooled AdaBN
estimate keeps): adaptation is also needed when the mean over channels of
``|log(sigma_t / sigma_s)|`` exceeds :data:`STD_CHANGE_LIMIT` in any layer. Blur is the case that
needs it: it shrinks the feature variances while barely moving their means. Measured
(``benchmarks/bench_real_generalisation.py`` targets, 64 patches): in-domain 0.024-0.048 (toy model
on two stacks, ``lucchi-pp`` on Lucchi++ test slices, ``vnc`` on VNC test slices); ``lucchi-pp`` on
blurred and striped Lucchi++ slices 0.184 (AdaBN: IoU 0.61 -> 0.91, while the mean test alone said
"not needed"), ``vnc`` on the same for VNC 0.47, cross-lab 0.62-0.75. The limit was set after that
blur case was seen; it has not been validated on data it was not chosen on.

A model trained on several volumes has running statistics of their mixture, which no single volume
matches (``em-generalist-2`` on Lucchi++ test slices: contrast change 0.375, so "needed", and AdaBN
cost 0.860 -> 0.845). Such a model carries each training volume's statistics
(:mod:`~napari_bnadapt.adabn.volumes`); the two tests run against each of them too, and a target
that passes both against any one is not adapted (the verdict names the volume).

On a small stack the half-sample floor is smaller than the differences between regions of one volume
(a crop with fewer mitochondria has other statistics, though imaged alike). A model trained with random
grey-value curves may carry a content floor (:mod:`~napari_bnadapt.adabn.content_floor`): per layer, how
far crops of its training data of a given size lie from each reference. Against such a reference a
layer passes when its shift is within the larger of ``margin`` times the half-sample floor and the
content floor at the stack's size, and its contrast change within the larger of the limit and its
content floor (``NeedVerdict.by_content_floor`` says when only the content floor kept the source).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from .references import SOURCE_REFERENCE, Comparison, Statistics, bn_statistics, compare, references

if TYPE_CHECKING:
    from ..model.unet import UNet
    from .adaptation import AdaptReport

#: Adaptation counts as needed when the shift exceeds this multiple of the half-sample floor.
DEFAULT_MARGIN = 1.0
#: ... or when a layer's standard deviations changed by more than this (mean |log sigma_t / sigma_s|;
#: module docstring: in-domain 0.024-0.048, blur 0.18, cross-lab 0.6-0.75).
STD_CHANGE_LIMIT = 0.1


@dataclass
class NeedVerdict:
    """The answer of :func:`adaptation_needed`.

    Attributes
    ----------
    needed : bool
        True when the target's BatchNorm statistics differ from the source's by more than
        ``margin`` times the noise floor.
    shift : float
        The largest per-layer mean shift, in source standard deviations.
    layer : str
        The layer where it was measured.
    floor : float
        The noise floor, in source standard deviations (see the module docstring).
    floor_from : str
        "half-sample drift" (from the adaptation report) or "patch count" (the fallback).
    ratio : float
        ``shift / floor``.
    margin : float
    std_change : float
        Largest per-layer mean ``|log(sigma_t / sigma_s)|`` (reported, not tested).
    weight : float
        The weight of the adapted statistics :func:`apply_verdict` uses: 1 when needed, 0 when not.
    message : str
        One sentence for the user.
    layers : dict of str to float
        The mean shift of every layer.
    reference : str
        What the target was compared with: :data:`SOURCE_REFERENCE` (the model's running
        statistics), or ``"training volume 'NAME'"`` when it matched the statistics of one training
        volume of a model trained on several (:mod:`~napari_bnadapt.adabn.volumes`).
    by_content_floor : bool
        True when the source was kept only because every layer lies within the reference's content floor
        (how far crops of the training data of the target's size lie, :mod:`~napari_bnadapt.adabn.content_floor`),
        not within the half-sample floor and the contrast limit.
    """

    needed: bool
    shift: float
    layer: str
    floor: float
    floor_from: str
    ratio: float
    margin: float
    std_change: float
    weight: float
    message: str
    layers: dict[str, float] = field(default_factory=dict)
    reference: str = SOURCE_REFERENCE
    by_content_floor: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    def __str__(self) -> str:
        return self.message


def _paired(source: Any, adapted: Any) -> tuple[Statistics, Statistics]:
    s, t = bn_statistics(source), bn_statistics(adapted)
    if s.keys() != t.keys() or any(s[k][0].shape != t[k][0].shape for k in s):
        raise BNAdaptError("the two models have different BatchNorm layers: the adapted model must be a copy of "
                           "the source model")
    return s, t


def _report_value(report: Any, key: str) -> Any:
    if report is None:
        return None
    if isinstance(report, dict):
        return report.get(key)
    return getattr(report, key, None)


def _find_report(adapted: Any) -> Any:
    meta = getattr(adapted, "meta", None)
    if isinstance(meta, dict) and isinstance(meta.get("adaptation"), dict):
        return meta["adaptation"].get("report")
    return None


def patch_count_floor(n_patches: int) -> float:
    """The fallback floor: expected ``|mu_half1 - mu_half2|`` in sigmas, a patch counting as one sample.

    Two halves of ``n_patches / 2`` independent samples each differ by ``N(0, 4 / n_patches)``
    sigmas, whose expected absolute value is ``2 * sqrt(2 / (pi * n_patches))``.
    """
    if n_patches < 2:
        raise BNAdaptError(f"the noise floor needs at least 2 patches, not {n_patches}")
    return 2.0 * math.sqrt(2.0 / (math.pi * n_patches))


def adaptation_needed(
    source: UNet,
    adapted: UNet,
    report: AdaptReport | dict[str, Any] | None = None,
    *,
    n_patches: int | None = None,
    margin: float = DEFAULT_MARGIN,
    content_floor: bool = False,
) -> NeedVerdict:
    """Decide whether the target differs from the source by more than sampling noise explains.

    Compares the BatchNorm running statistics of the source model and of its AdaBN-adapted copy
    (module docstring), and, for a model trained on several volumes, the adapted statistics with each
    training volume's stored in the source model (:mod:`~napari_bnadapt.adabn.volumes`): within the
    floor of any one of them, adaptation is not needed. Reads only the models' buffers and card: no
    data, no forward pass.

    Parameters
    ----------
    source : UNet or torch.nn.Module
        The source model.
    adapted : UNet or torch.nn.Module
        Its copy adapted by :func:`adapt`.
    report : AdaptReport or dict or None, default None
        The adaptation report (or its ``to_dict()``); its ``drift`` gives the noise floor. None: the
        report stored in ``adapted.meta["adaptation"]``, if any.
    n_patches : int or None, default None
        Number of target patches used, for the fallback floor when no finite ``drift`` is known
        (default: the report's ``n_patches``).
    margin : float, default 1.0
        Needed when the shift exceeds ``margin`` times the floor.
    content_floor : bool, default False
        Also allow, per layer, for how far crops of the training data of the stack's size lie from each
        reference, where the model carries that (:mod:`~napari_bnadapt.adabn.content_floor`; module
        docstring). An option: on small crops of its own volumes it keeps the default model's source
        statistics where AdaBN would cost it, but on a small stack it also hides inverted contrast
        (docs/real-data.md). Used only where both the image's and the model's pixel sizes are known (the
        floor is measured on the model's pixel grid); else the verdict says it was not used.

    Returns
    -------
    NeedVerdict
    """
    if not margin > 0:
        raise BNAdaptError(f"margin must be positive, not {margin}")
    s, t = _paired(source, adapted)
    report = report if report is not None else _find_report(adapted)
    drift = _report_value(report, "drift")
    if drift is not None and math.isfinite(float(drift)) and float(drift) > 0:
        floor, floor_from = 2.0 * float(drift), "half-sample drift"
    else:
        n = n_patches if n_patches is not None else _report_value(report, "n_patches")
        if n is None:
            raise BNAdaptError("no noise floor: give the adaptation report (its drift) or the number of patches used")
        floor, floor_from = patch_count_floor(int(n)), "patch count"
    from .content_floor import read_content_floor

    floors = read_content_floor(source) if content_floor else {}
    unknown_grid = bool(floors) and not _pixel_sizes_known(source, adapted)
    if unknown_grid:  # the floor was measured on the model's pixel grid; this stack's grid is not known
        floors = {}
    n_voxels = _report_value(report, "stack_voxels") or _report_value(report, "n_voxels")
    compared = [(name, compare(ref, t)) for name, ref in references(source, s)]
    judged = [(name, c, _excess(c, margin * floor, floors.get(name), n_voxels)) for name, c in compared]
    matches = [(name, c, e) for name, c, e in judged if max(e) <= 1.0]
    needed = not matches
    reference, c, (over_shift, over_std) = min(matches, key=lambda m: m[1].shift) if matches else judged[0]
    ratio = c.shift / floor
    by_content = not needed and not (ratio <= margin and c.std_change <= STD_CHANGE_LIMIT)
    if needed and over_shift <= 1.0:
        message = (f"the image differs from the model's training data: its feature contrast changed by "
                   f"{math.expm1(c.std_change):.0%} in {c.std_layer} (limit {math.expm1(STD_CHANGE_LIMIT):.0%}), "
                   "though the means moved no more than two halves of the image differ; the adapted statistics "
                   "are used")
    elif needed:
        message = (f"the image differs from the model's training data: its statistics moved by {c.shift:.2f} source "
                   f"sigma in {c.layer}, {ratio:.1f}x the {floor:.3f} that two halves of the image differ by; "
                   "the adapted statistics are used")
    else:
        like = "the model's training data" if reference == SOURCE_REFERENCE else f"the model's {reference}"
        within = ("no farther than crops of that size of the training data lie from it" if by_content
                  else f"within the {floor:.3f} that two halves of the image differ by")
        message = (f"the image already matches {like}: adaptation changed nothing that matters (largest shift "
                   f"{c.shift:.3f} source sigma in {c.layer}, {within}; contrast change "
                   f"{math.expm1(c.std_change):.0%}); the source model's statistics are kept")
    if unknown_grid:
        message += ("; the content floor was not used: it is measured at the model's pixel size, and the image's is "
                    "unknown")
    return NeedVerdict(needed=needed, shift=c.shift, layer=c.layer, floor=floor, floor_from=floor_from, ratio=ratio,
                       margin=float(margin), std_change=c.std_change, weight=1.0 if needed else 0.0,
                       message=message, layers=c.shifts, reference=reference, by_content_floor=by_content)


def _pixel_sizes_known(source: Any, adapted: Any) -> bool:
    """Whether the adapted statistics were drawn at the model's pixel size: both pixel sizes known (the adapted
    card's target entry, :func:`~napari_bnadapt.adabn.adaptation.adapt`, and the source's card)."""
    from ..io.resample import model_pixel_size

    meta = getattr(adapted, "meta", None)
    adaptation = meta.get("adaptation") if isinstance(meta, dict) else None
    target = adaptation.get("target") if isinstance(adaptation, dict) else None
    return bool(isinstance(target, dict) and target.get("pixel_size_nm")) and model_pixel_size(source) is not None


def _excess(c: Comparison, shift_floor: float, content: Any, n_voxels: int | None) -> tuple[float, float]:
    """How far ``c`` goes beyond what is allowed, as the largest per-layer ratios (mean shift, contrast change):
    at most 1 where it is like the reference. Allowed per layer: the larger of ``shift_floor`` (the half-sample
    floor times the margin) and the reference's content floor at ``n_voxels`` (``content``, a
    :class:`~napari_bnadapt.adabn.content_floor.ContentFloor`, or None), and the larger of
    :data:`STD_CHANGE_LIMIT` and its contrast-change floor."""
    cs, cv = content.at(int(n_voxels)) if content is not None and n_voxels else ({}, {})
    shift = max(v / max(shift_floor, cs.get(k, 0.0)) for k, v in c.shifts.items())
    std = max(v / max(STD_CHANGE_LIMIT, cv.get(k, 0.0)) for k, v in c.std_changes.items())
    return shift, std


def mix_statistics(source: UNet, adapted: UNet, weight: float | Mapping[str, float]) -> UNet:
    """A copy of ``adapted`` whose BatchNorm statistics are a mixture of the source's and the adapted ones.

    With ``w = weight`` (per layer, when ``weight`` maps layer names to weights): ``mu = (1 - w) mu_s + w mu_t`` and
    ``var = (1 - w) var_s + w var_t + w (1 - w) (mu_t - mu_s)^2``. That is the mean and variance of
    the mixture distribution "source with probability 1 - w, target with probability w": the last
    term is the spread between the two means, which a plain average of the variances would drop
    (the same trap as averaging per-batch variances, docs/method.md). ``weight = 0`` gives exactly the
    source statistics, ``1`` exactly the adapted ones. Only running means and variances differ from
    ``adapted``; neither model is changed.

    Parameters
    ----------
    source : UNet or torch.nn.Module
        The source model.
    adapted : UNet or torch.nn.Module
        Its adapted copy (same weights, other BatchNorm statistics).
    weight : float or mapping of str to float
        Weight of the adapted statistics, in [0, 1]; or one weight per BatchNorm layer name (every
        layer named; see :func:`~napari_bnadapt.model.foreign.batchnorm_layers`), e.g. 0 for layers
        that keep the source statistics (partial AdaBN, ``benchmarks/bench_adabn_depth.py``).

    Returns
    -------
    UNet or torch.nn.Module
        The mixed copy; its card records the weight (``meta["adaptation"]["mixed_with_source"]``).
    """
    import torch

    from ..model.foreign import batchnorm_layers, copy_model
    from .estimators import set_statistics

    s, _ = _paired(source, adapted)
    weights = _layer_weights(weight, list(s))
    _check_same_weights(source, adapted)
    out = copy_model(adapted)
    with torch.no_grad():
        for name, bn in batchnorm_layers(out):
            w = weights[name]
            ms, vs = s[name]
            mt, vt = bn.running_mean.detach().double().cpu(), bn.running_var.detach().double().cpu()
            if w == 0.0:
                mean, var = ms, vs
            elif w == 1.0:
                mean, var = mt, vt
            else:
                mean = (1 - w) * ms + w * mt
                var = (1 - w) * vs + w * vt + w * (1 - w) * (mt - ms) ** 2
            set_statistics(bn, mean, var)
    meta = getattr(out, "meta", None)
    if isinstance(meta, dict):
        meta = copy.deepcopy(meta)
        meta.setdefault("adaptation", {})
        if isinstance(meta["adaptation"], dict):
            meta["adaptation"]["mixed_with_source"] = {"weight": float(weight) if not isinstance(weight, Mapping)
                                                       else dict(weights)}
        out.meta = meta
    return out


def _layer_weights(weight: float | Mapping[str, float], names: list[str]) -> dict[str, float]:
    """One weight in [0, 1] per BatchNorm layer, from a single weight or a complete mapping."""
    if not isinstance(weight, Mapping):
        weight = dict.fromkeys(names, weight)
    missing, unknown = set(names) - set(weight), set(weight) - set(names)
    if missing or unknown:
        found = (("missing", missing), ("unknown", unknown))
        raise BNAdaptError("the weights must name every BatchNorm layer of the model and no other: "
                           + "; ".join(f"{what} {sorted(v)[:3]}" for what, v in found if v))
    for name, w in weight.items():
        if not 0.0 <= float(w) <= 1.0:
            raise BNAdaptError(f"weight must be between 0 and 1, not {w}" + (f" ({name})" if len(names) > 1 else ""))
    return {n: float(weight[n]) for n in names}


def _check_same_weights(source: Any, adapted: Any) -> None:
    """Refuse two models that differ in anything but BatchNorm statistics (not a source and its copy)."""
    import torch

    a, b = source.state_dict(), adapted.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    keys = [k for k in a if not k.endswith(stats)]
    if set(keys) != {k for k in b if not k.endswith(stats)} or any(
        a[k].shape != b[k].shape or not torch.equal(a[k].cpu(), b[k].cpu()) for k in keys
    ):
        raise BNAdaptError("the two models differ in more than their BatchNorm statistics: the adapted model "
                           "must be the source model adapted by AdaBN (no training, no entropy step)")


def apply_verdict(source: UNet, adapted: UNet, verdict: NeedVerdict) -> UNet:
    """The model to use: the adapted copy when adaptation is needed, else the source statistics.

    Parameters
    ----------
    source, adapted : UNet or torch.nn.Module
        The source model and its adapted copy.
    verdict : NeedVerdict
        From :func:`adaptation_needed`.

    Returns
    -------
    UNet or torch.nn.Module
        ``adapted`` itself when ``verdict.needed``; else :func:`mix_statistics` with ``verdict.weight``
        (0: the source statistics, in a copy that keeps the adapted card and records the verdict).
    """
    if verdict.needed:
        return adapted
    out = mix_statistics(source, adapted, verdict.weight)
    if isinstance(getattr(out, "meta", None), dict) and isinstance(out.meta.get("adaptation"), dict):
        out.meta["adaptation"]["need"] = verdict.to_dict()
    return out
