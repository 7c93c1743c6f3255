"""One calibration case: shift a labelled stack, adapt, measure distances, signals and the true IoU."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..adabn.adaptation import adapt
from ..io.stack_view import check_stack, resolve_normalization
from ..metrics import iou
from ..model.device import get_device
from ..progress import run_to_end
from ..stats.source_statistics import model_normalization
from .assess import distance_table, measure_pair_iter
from .decision import signal_features
from .shifts import Shift


# ============================================================ measuring
@dataclass
class CalibrationCase:
    """One shifted target, measured.

    Attributes
    ----------
    shift : Shift
    split : str
        "fit" or "validation".
    iou : float
        True IoU of the ADAPTED model on the shifted images.
    iou_source_only : float
        True IoU of the source model without adaptation.
    distances, distances_source_only : dict of key to float
        ``log``-free W2^2 values keyed ``"space|normalize|form"`` (nan when not
        computable or not meaningful), adapted and unadapted.
    floors : dict of key to float
        Noise floors of ``distances``.
    features, features_source_only : dict
        :func:`~napari_bnadapt.bound.decision.signal_features`.
    seconds : float
    """

    shift: Shift
    split: str
    iou: float
    iou_source_only: float
    distances: dict[str, float]
    distances_source_only: dict[str, float]
    floors: dict[str, float]
    features: dict[str, float]
    features_source_only: dict[str, float]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shift"] = self.shift.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationCase:
        d = dict(d)
        d["shift"] = Shift(d["shift"]["family"], d["shift"]["params"])
        return cls(**d)


def _values(tab: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    vals, floors = {}, {}
    for k, d in tab.items():
        vals[k] = float(d.value) if d.meaningful and math.isfinite(d.value) else math.nan
        floors[k] = float(d.floor)
    return vals, floors


def measure_case(
    model: Any,
    stats: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    shift: Shift | None = None,
    split: str = "",
    device: Any = "cpu",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    keys: Sequence[str] | None = None,
) -> CalibrationCase:
    """Adapt ``model`` to ``images``, segment, and measure the IoU, the distances and the signals.

    Parameters
    ----------
    model : UNet
        The source model (not changed).
    stats : SourceStatistics
        Its source statistics.
    images, labels : numpy arrays
        The shifted target and its true labels.
    shift, split : stored in the case.
    device, intensity_range, n_patches, patch_size, batch_size, seed
        As in :func:`adapt` / :func:`reliability` (the same patches serve both).
    keys : sequence of str, optional
        Only these distances (``"space|normalize|form"``); default all.
    """
    from ..adabn.patches import plan_patches
    from ..segmentation.predict import segment

    t0 = time.perf_counter()
    dev = get_device(device)
    adapted, _ = adapt(model, images, device=dev, n_patches=n_patches, patch_size=patch_size,
                       batch_size=batch_size, seed=seed, intensity_range=intensity_range)
    view = check_stack(images)
    norm = resolve_normalization(view, model_normalization(model), intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    pair = run_to_end(measure_pair_iter(
        model, adapted, view, norm, plan, batch_size=batch_size, device=dev,
        full_cov_max_dim=int(stats.provenance.get("full_cov_max_dim", 256)),
    ))
    kw = {"device": dev, "intensity_range": intensity_range, "batch_size": batch_size}
    i_ad = iou(segment(adapted, images, **kw), labels)
    i_so = iou(segment(model, images, **kw), labels)
    vals, floors = _values(distance_table(stats.moments, pair.moments, keys=keys))
    vals_so, _ = _values(distance_table(stats.moments, pair.moments_source_only, keys=keys))
    return CalibrationCase(
        shift=shift or Shift("custom", {}), split=split, iou=float(i_ad), iou_source_only=float(i_so),
        distances=vals, distances_source_only=vals_so, floors=floors,
        features=signal_features(stats.signals, pair.signals),
        features_source_only=signal_features(stats.signals, pair.signals_source_only),
        seconds=time.perf_counter() - t0,
    )
