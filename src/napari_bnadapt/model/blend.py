"""Weight-space blends of a model and its fine-tuned copy (WiSE-FT, Wortsman et al. 2022).

A model fine-tuned from another (e.g. ``lucchi-pp`` fine-tuned with the EM domain randomisation) usually
stays in the same basin of the loss, so the straight line between the two sets of weights holds models that
trade the first one's in-domain quality against the second one's robustness, often keeping most of both.
:func:`blend_models` makes the model at ``weight`` along that line; nothing is trained and neither model is
changed.

What is measured with a model's weights (its source statistics, trust calibration, training-volume
statistics, content floor) does not hold for the blend and is left out of its card; the blend's BatchNorm
running statistics are either the same mix of both models' (``statistics_images=None``) or, better for the
in-domain case, estimated again on un-augmented training images (AdaBN on them: cumulative, float64 moments).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .unet import UNet

#: card entries that hold for a blend as for the fine-tuned model it is made from (the training data, the
#: input it reads, its size); everything else in a card was measured with the weights, or is the file's
_KEPT = ("architecture", "normalization", "pixel_size_nm", "description", "objects", "training")


def _name(model: Any) -> str:
    return (getattr(model, "meta", None) or {}).get("name") or "a model without a name"


def _check_pair(base: Any, tuned: Any) -> None:
    """Refuse two models whose weights cannot be mixed, or that read their input differently."""
    a, b = base.state_dict(), tuned.state_dict()
    if a.keys() != b.keys():
        raise BNAdaptError(f"{_name(base)} and {_name(tuned)} are different networks (their layers differ): "
                           "only a model and a copy of it fine-tuned elsewhere can be blended")
    shapes = [k for k in a if a[k].shape != b[k].shape]
    if shapes:
        raise BNAdaptError(f"{_name(base)} and {_name(tuned)} have layers of different sizes ({shapes[0]}: "
                           f"{tuple(a[shapes[0]].shape)} and {tuple(b[shapes[0]].shape)}): they cannot be blended")
    ma, mb = getattr(base, "meta", None) or {}, getattr(tuned, "meta", None) or {}
    for key, what in (("normalization", "scale their grey values"), ("pixel_size_nm", "were trained at pixel sizes")):
        if ma.get(key) is not None and mb.get(key) is not None and ma[key] != mb[key]:
            raise BNAdaptError(f"{_name(base)} and {_name(tuned)} {what} differently ({ma[key]} and {mb[key]}): "
                               "a blend of them would read its input as neither does")


def blend_models(
    base: UNet,
    tuned: UNet,
    weight: float,
    *,
    name: str | None = None,
    statistics_images: ArrayLike | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    intensity_range: tuple[float, float] | str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> UNet:
    """The model ``(1 - weight) * base + weight * tuned``, every weight mixed in float64.

    Parameters
    ----------
    base, tuned : UNet
        Two models of one architecture, ``tuned`` fine-tuned from ``base`` (a blend of two models trained
        apart lies off both basins and is usually worse than either; the card records whether ``tuned``'s
        says it started from ``base``). Neither is changed.
    weight : float
        Where on the line, in [0, 1]: 0 is ``base``, 1 is ``tuned``. WiSE-FT's untuned default is 0.5.
    name : str or None
        The blend's name in its card (default ``"<tuned>-blend-<percent>"``).
    statistics_images : array-like or None
        Un-augmented training images (Y, X) or (Z, Y, X) on which the blend's BatchNorm running statistics
        are estimated again (AdaBN, :func:`napari_bnadapt.adapt`, 64 patches of 256 px or the whole stack
        when small); None: the same mix of both models' running statistics.
    pixel_size_nm : (float, float) or None
        The pixel size of ``statistics_images`` (resampled to the model's, as everywhere).
    intensity_range : (float, float), "auto" or None
        How the grey values of ``statistics_images`` map to the model's range (as in :func:`napari_bnadapt.adapt`;
        needed for 16-bit or float images outside 0..255).
    device : str, default "cpu"
        Where the statistics are estimated; the blend is returned on the CPU.
    seed : int, default 0
        Seeds the patches the statistics are estimated on.

    Returns
    -------
    UNet
        A new model in eval mode; its card keeps ``tuned``'s training record (without its scores),
        architecture, input normalisation, pixel size and training object sizes, and says under ``"blend"``
        how it was made.
        Source statistics, trust calibration and the guard's references are not carried over: measure them
        again for the blend (:func:`napari_bnadapt.compute_source_statistics`, ...).

    Raises
    ------
    BNAdaptError
        ``weight`` outside [0, 1]; the two are different networks, or read their input differently.
    """
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise BNAdaptError(f"the blend weight must be a number from 0 (the base model) to 1 (the fine-tuned one), "
                           f"not {weight!r}")
    _check_pair(base, tuned)
    a, b = base.state_dict(), tuned.state_dict()
    mixed = {k: ((1.0 - weight) * a[k].detach().cpu().double() + weight * b[k].detach().cpu().double()).to(a[k].dtype)
             if a[k].is_floating_point() else b[k].detach().cpu().clone() for k in a}
    blend = copy.deepcopy(tuned).cpu()
    blend.load_state_dict(mixed)
    blend.eval()
    meta_tuned = getattr(tuned, "meta", None) or {}
    blend.meta = copy.deepcopy({k: meta_tuned[k] for k in _KEPT if k in meta_tuned})
    if isinstance(blend.meta.get("training"), dict):  # the fine-tuned model's scores are not the blend's
        blend.meta["training"]["metrics"] = {}
    blend.meta["name"] = name or f"{_name(tuned)}-blend-{round(100 * weight)}"
    record: dict[str, Any] = {
        "base": _name(base), "tuned": _name(tuned), "weight": float(weight),
        "method": "weights mixed linearly in float64 (WiSE-FT, Wortsman et al. 2022)",
        "tuned_started_from_base": (meta_tuned.get("training") or {}).get("init") == _name(base),
        "running_statistics": "the same mix of both models'",
    }
    if statistics_images is not None:
        from ..adabn.adaptation import adapt

        estimated, report = adapt(blend, statistics_images, device=device, seed=seed, pixel_size_nm=pixel_size_nm,
                                  intensity_range=intensity_range)
        blend.load_state_dict({k: v.detach().cpu() for k, v in estimated.state_dict().items()})
        record["running_statistics"] = (f"estimated again on {report.n_patches} patches of un-augmented training "
                                        "images (AdaBN, cumulative)")
    blend.meta["blend"] = record
    return blend
