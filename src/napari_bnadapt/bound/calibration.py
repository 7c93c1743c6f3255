"""Calibrating the reliability bound: shift labelled source data, adapt, measure, fit, validate.

The finding of the thesis (docs/method.md, 'The reliability bound') is that the Wasserstein
distance between latent Gaussians gives a LOWER BOUND on the IoU of the adapted
model, not a function of it. This module turns it into a stored, validated curve:

1. **Shifts.** The labelled source data is shifted in many ways
   (:func:`toy_grid_shifts`: the thesis' 1-800 grid of class intensities plus
   inverted-contrast and faint targets; :func:`em_shifts`: brightness, contrast,
   gamma, noise, blur, inversion and combinations of real slices), each applied
   to its own random subset of the images (:func:`apply_shift`).
2. **Measure** (:func:`measure_case`): adapt the model to the shifted images,
   segment them, compute the true IoU, and the label-free quantities that the
   reliability report uses: W2 distances of every latent space (ls0..ls4, the
   decoder ``dec``, the output logits ``out``) in every normalisation and form
   against the stored source statistics, and output signals (predicted
   foreground fraction, confidence, ...), for the adapted AND the unadapted model.
3. **Split** the shifts into a fit and a held-out validation part (seeded,
   stratified by family).
4. **Gate.** A case whose predicted foreground fraction or confidence lies
   outside the range that successful fit cases span is "out of domain": no bound
   is claimed (bound 0, verdict ``unreliable``). This is what catches inverted
   contrast, which no latent distance separates (see docs/reliability.md).
5. **Fit** a monotone non-increasing lower quantile (default 5 %) of the IoU
   against ``x = log(1 + distance)`` (:func:`fit_lower_bound`) for every
   candidate distance on the in-gate fit cases, choose the candidate with the
   tightest bound at a cross-validated coverage >= the target, and refit it on
   all fit cases.
6. **Validate** on the held-out shifts: coverage (share with IoU >= bound), the
   median gap (IoU - bound) and how often each verdict was right.

:func:`calibrate` stores the result in ``model.meta["calibration"]``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import check_stack
from ..model.device import get_device
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from ..stats.source_statistics import (
    compute_source_statistics_iter,
    read_source_statistics,
)
from .cases import CalibrationCase, measure_case
from .curve import LowerBound, evaluate_bound
from .decision import decide
from .names import (
    CALIBRATION_VERSION,
    RELIABLE_AT,
    SUCCESS_IOU,
    UNRELIABLE_BELOW,
    distance_label,
    parse_key,
)
from .selection import (
    _case_distance,
    _fit,
    _in_gate,
    _verdict_table,
    _xs,
    select_candidate,
)
from .shifts import Shift, _class_stats, apply_shift, em_shifts, toy_grid_shifts

if TYPE_CHECKING:
    import torch
    from napari.layers import Image, Labels
    from numpy.typing import ArrayLike

    from ..model.unet import UNet


# ============================================================== running
@dataclass
class CalibrationRun:
    """Everything a calibration measured and decided (the model file keeps a summary).

    Attributes
    ----------
    cases : list of CalibrationCase
    table : list of dict
        Cross-validation of every (distance, gate) candidate on the fit cases.
    best : dict
        The chosen row of ``table``.
    gate : dict
        Gate ranges fitted on all fit cases.
    bound : LowerBound
        The curve fitted on all in-gate fit cases.
    fit, validation : dict
        Coverage, median gap, mean bound on the fit and the held-out cases.
    validation_by_family : dict
        The same per shift family (held-out cases).
    verdicts : dict
        Held-out counts of each verdict, with the IoU range behind it.
    calibration : dict
        What goes into ``model.meta["calibration"]``.
    """

    cases: list[CalibrationCase]
    table: list[dict[str, Any]]
    best: dict[str, Any]
    gate: dict[str, list[float]]
    bound: LowerBound
    fit: dict[str, float]
    validation: dict[str, float]
    validation_by_family: dict[str, dict[str, float]]
    verdicts: dict[str, Any]
    calibration: dict[str, Any] = field(default_factory=dict)


def split_cases(shifts: Sequence[Shift], validation_fraction: float, seed: int) -> list[str]:
    """"fit" / "validation" per shift: a seeded split, stratified by family."""
    if not 0.0 < validation_fraction < 1.0:
        raise BNAdaptError(f"validation_fraction must be in (0, 1), not {validation_fraction}")
    rng = np.random.default_rng(seed + 7919)
    out = ["fit"] * len(shifts)
    fams: dict[str, list[int]] = {}
    for i, s in enumerate(shifts):
        fams.setdefault(s.family, []).append(i)
    for fam in sorted(fams):
        idx = np.array(fams[fam])[rng.permutation(len(fams[fam]))]
        n_val = int(round(validation_fraction * len(idx)))
        for i in idx[:n_val]:
            out[int(i)] = "validation"
    return out


def _resolve_shifts(shifts: str | Sequence[Shift | dict[str, Any]], n_shifts: int | None,
                    seed: int) -> list[Shift]:
    if isinstance(shifts, str):
        if shifts == "toy-grid":
            return toy_grid_shifts(128 if n_shifts is None else n_shifts, seed)
        if shifts == "em":
            return em_shifts(96 if n_shifts is None else n_shifts, seed)
        raise BNAdaptError(f"shifts must be 'toy-grid', 'em' or a list of Shift, not {shifts!r}")
    out = [s if isinstance(s, Shift) else Shift(s["family"], s["params"]) for s in shifts]
    if len(out) < 10:
        raise BNAdaptError(f"{len(out)} shifts are too few to fit and validate a bound; give at least 10 (better 100)")
    return out


def finish_calibration(
    cases: list[CalibrationCase],
    *,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    gate_sets: Sequence[Sequence[str]] | None = None,
    reliable_at: float = RELIABLE_AT,
    unreliable_below: float = UNRELIABLE_BELOW,
    success_iou: float = SUCCESS_IOU,
    provenance: dict[str, Any] | None = None,
) -> CalibrationRun:
    """Select, fit and validate from measured cases (their ``split`` decides fit vs validation)."""
    fit_cases = [c for c in cases if c.split == "fit"]
    val_cases = [c for c in cases if c.split == "validation"]
    hold_cases = [c for c in cases if c.split == "holdout"]
    if len(fit_cases) < 10:
        raise BNAdaptError("fewer than 10 fit cases: use more shifts")
    selection = select_candidate(fit_cases, keys=keys, gate_sets=gate_sets, quantile=quantile,
                                 min_coverage=min_coverage, folds=folds, seed=seed, success_iou=success_iou)
    table, best = selection.table, selection.best
    key = best["key"]
    gate, bound = _fit(fit_cases, key, best["gate"], quantile, success_iou)
    assert bound is not None
    space, norm, form = parse_key(key)
    calibration = {
        "version": CALIBRATION_VERSION,
        "feature": {"key": key, "space": space, "normalize": norm, "form": form,
                    "x_label": f"log(1 + {distance_label(space, norm, form)})"},
        "curve": bound.to_dict(),
        "gate": gate,
        "thresholds": {"reliable": reliable_at, "unreliable": unreliable_below},
        "success_iou": success_iou,
        "floor_reference": float(np.median([c.floors.get(key, 0.0) for c in fit_cases])),
    }

    def product_bounds(cs: Sequence[CalibrationCase]) -> np.ndarray:
        out = []
        for c in cs:
            d = decide(calibration, _case_distance(c, key), c.features)
            out.append(d.bound if d.bound is not None else 0.0)
        return np.asarray(out, dtype=np.float64)

    y_fit = np.array([c.iou for c in fit_cases])
    y_val = np.array([c.iou for c in val_cases])
    fit_res = evaluate_bound(product_bounds(fit_cases), None, y_fit).to_dict()
    val_res = (evaluate_bound(product_bounds(val_cases), None, y_val) if val_cases
               else evaluate_bound([], None, [])).to_dict()
    in_gate = [c for c in val_cases if _in_gate(c, gate)]
    ig = evaluate_bound(product_bounds(in_gate), None, np.array([c.iou for c in in_gate]))
    val_res["in_gate_n"] = ig.n
    val_res["in_gate_coverage"] = ig.coverage
    val_res["in_gate_median_gap"] = ig.median_gap
    val_res["gated_n"] = len(val_cases) - len(in_gate)
    gated = [c.iou for c in val_cases if not _in_gate(c, gate)]
    val_res["gated_iou_max"] = float(max(gated)) if gated else math.nan
    by_fam = {}
    for fam in sorted({c.shift.family for c in val_cases}):
        cs = [c for c in val_cases if c.shift.family == fam]
        by_fam[fam] = evaluate_bound(product_bounds(cs), None, np.array([c.iou for c in cs])).to_dict()
    verdicts = _verdict_table(val_cases, calibration)
    if hold_cases:
        hold: dict[str, Any] = evaluate_bound(product_bounds(hold_cases), None,
                                              np.array([c.iou for c in hold_cases])).to_dict()
        hold["by_family"] = {
            fam: evaluate_bound(product_bounds(cs), None, np.array([c.iou for c in cs])).to_dict()
            for fam in sorted({c.shift.family for c in hold_cases})
            for cs in [[c for c in hold_cases if c.shift.family == fam]]
        }
        hold["verdicts"] = _verdict_table(hold_cases, calibration)
        calibration["holdout"] = hold
    calibration["fit"] = fit_res
    calibration["validation"] = val_res
    calibration["validation_by_family"] = by_fam
    calibration["verdicts"] = verdicts
    calibration["selection"] = {
        "criterion": (f"largest mean {folds}-fold cross-validated bound on the fit shifts among the candidates with "
                      f"cross-validated coverage >= {min_coverage:g}"),
        "chosen": {k: best[k] for k in ("key", "gate", "coverage", "mean_bound", "median_gap")},
        "candidates": [{k: r.get(k) for k in ("key", "gate", "coverage", "mean_bound", "median_gap")} for r in table],
    }
    calibration["cases"] = [
        {"family": c.shift.family, "params": c.shift.params, "split": c.split, "iou": round(c.iou, 4),
         "iou_source_only": round(c.iou_source_only, 4),
         "x": _round(_xs([c], key)[0]), "x_source_only": _round(_xs([c], key, True)[0]),
         "in_gate": _in_gate(c, gate)}
        for c in cases
    ]
    calibration["provenance"] = dict(provenance or {})
    return CalibrationRun(cases, table, best, gate, bound, fit_res, val_res, by_fam, verdicts, calibration)


def _round(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 5)


def run_calibration_iter(
    model: UNet,
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    *,
    shifts: str | Sequence[Shift | dict[str, Any]] = "toy-grid",
    n_shifts: int | None = None,
    n_images: int = 24,
    validation_fraction: float = 0.4,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 16,
    keys: Sequence[str] | None = None,
    reliable_at: float = RELIABLE_AT,
    unreliable_below: float = UNRELIABLE_BELOW,
    source_statistics_images: ArrayLike | Image | None = None,
    holdout_shifts: str | Sequence[Shift | dict[str, Any]] | None = None,
) -> Iterator[Progress | Result[tuple[UNet, CalibrationRun]]]:
    """The whole calibration, keeping every measured case: yields Progress, finally Result((model, run)).

    Parameters are those of :func:`calibrate`. The returned model is a copy with
    ``meta["calibration"]`` (and source statistics, measured on
    ``source_statistics_images`` or ``images`` if it had none).
    """
    import torch

    t0 = time.perf_counter()
    dev = get_device(device)
    view = check_stack(images, what="calibration images")
    lab = check_stack(labels, what="calibration labels")
    if tuple(view.data.shape) != tuple(lab.data.shape):
        raise BNAdaptError(
            f"the calibration labels {tuple(lab.data.shape)} and images {tuple(view.data.shape)} differ in shape"
        )
    x_all = np.asarray(view.data) if not view.is_2d else np.asarray(view.data)[None]
    y_all = np.asarray(lab.data) if not lab.is_2d else np.asarray(lab.data)[None]
    out_model = copy.deepcopy(model)
    if read_source_statistics(out_model) is None:
        yield from forward(compute_source_statistics_iter(
            out_model, source_statistics_images if source_statistics_images is not None else images,
            device=dev, intensity_range=intensity_range, patch_size=patch_size, batch_size=batch_size,
            seed=seed, in_place=True,
        ))
    stats = read_source_statistics(out_model)
    shift_list = _resolve_shifts(shifts, n_shifts, seed)
    splits = split_cases(shift_list, validation_fraction, seed)
    if holdout_shifts is not None:
        hold = (_resolve_shifts(holdout_shifts, None, seed + 1) if isinstance(holdout_shifts, str)
                else [s if isinstance(s, Shift) else Shift(s["family"], s["params"]) for s in holdout_shifts])
        shift_list = shift_list + hold
        splits = splits + ["holdout"] * len(hold)
    cstats = _class_stats(x_all, y_all) if any(s.classwise for s in shift_list) else None
    rng = np.random.default_rng(seed)
    nz = x_all.shape[0]
    k = min(n_images, nz)
    cases = []
    stage = "calibrating: adapting to shifted data"
    yield Progress(stage, 0, len(shift_list))
    for i, (s, sp) in enumerate(zip(shift_list, splits)):
        idx = np.sort(rng.choice(nz, k, replace=False))
        xs = apply_shift(x_all[idx], y_all[idx], s, seed=seed * 100003 + i, class_stats=cstats)
        cases.append(measure_case(out_model, stats, xs, y_all[idx], shift=s, split=sp, device=dev,
                                  intensity_range=intensity_range, n_patches=n_patches, patch_size=patch_size,
                                  batch_size=batch_size, seed=seed + i, keys=keys))
        yield Progress(stage, i + 1, len(shift_list))
    yield Progress("calibrating: fitting the bound", 0, 1)
    provenance = {
        "shifts": shifts if isinstance(shifts, str) else "custom",
        "n_shifts": len(shift_list),
        "n_holdout": splits.count("holdout"),
        "families": {f: sum(s.family == f for s in shift_list) for f in sorted({s.family for s in shift_list})},
        "n_images_per_shift": k,
        "image_shape": list(x_all.shape[1:]),
        "validation_fraction": validation_fraction,
        "folds": folds,
        "seed": seed,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 1),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "torch": torch.__version__,
    }
    run = finish_calibration(cases, quantile=quantile, min_coverage=min_coverage, folds=folds, seed=seed, keys=keys,
                             reliable_at=reliable_at, unreliable_below=unreliable_below, provenance=provenance)
    out_model.meta["calibration"] = run.calibration
    yield Progress("calibrating: fitting the bound", 1, 1)
    yield Result((out_model, run))


def calibrate(
    model: UNet,
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    *,
    shifts: str | Sequence[Shift | dict[str, Any]] = "toy-grid",
    n_shifts: int | None = None,
    n_images: int = 24,
    validation_fraction: float = 0.4,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 16,
    keys: Sequence[str] | None = None,
    reliable_at: float = RELIABLE_AT,
    unreliable_below: float = UNRELIABLE_BELOW,
    source_statistics_images: ArrayLike | Image | None = None,
    holdout_shifts: str | Sequence[Shift | dict[str, Any]] | None = None,
) -> UNet:
    """Calibrate the reliability bound of a model on its own labelled data.

    Shifts the labelled images in many ways, adapts the model to each shifted
    set, measures the true IoU and the label-free distances and signals, fits
    a monotone lower bound on the IoU against ``log(1 + distance)`` for every
    latent space / normalisation / form, chooses the tightest one that holds
    under cross-validation, and validates it on held-out shifts. See the
    module docstring and docs/reliability.md.

    Parameters
    ----------
    model : UNet
        The source model; NOT modified (a calibrated copy is returned). Source
        statistics are measured on ``images`` (or ``source_statistics_images``)
        if the model has none.
    images : array-like or napari Image layer
        Labelled source data, (Z, Y, X) (ideally NOT the training images: held-out slices).
    labels : array-like or napari Labels layer
        Their labels, same shape; 0 = background, > 0 = mitochondrion.
    shifts : {"toy-grid", "em"} or list of Shift, default "toy-grid"
        ``"toy-grid"``: class-wise intensity shifts (:func:`toy_grid_shifts`);
        ``"em"``: grey-value transformations (:func:`em_shifts`); or the shifts
        themselves (:class:`Shift` or their ``to_dict()`` form, at least 10).
    n_shifts : int or None, default None
        Number of grid (or EM) shifts (None: 128 / 96; failure families come on top).
    n_images : int, default 24
        Images (slices) per shifted target, drawn at random per shift.
    validation_fraction : float, default 0.4
        Share of the shifts held out for validation (seeded, stratified by family).
    quantile : float, default 0.05
        The lower quantile the curve follows.
    min_coverage : float, default 0.9
        Cross-validated coverage a candidate must reach to be chosen.
    folds : int, default 5
        Folds of the cross-validation that chooses the candidate.
    seed : int, default 0
        Seeds the shifts, the split, the image subsets and the noise.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`adapt`.
    n_patches : int or None, default None
        Patches per adaptation and measurement, as in :func:`adapt`.
    patch_size : int, default 256
        Patch side in pixels, as in :func:`adapt`.
    batch_size : int, default 16
        Patches (or tiles) per forward pass.
    keys : list of str or None, default None
        Restrict the candidate distances (``"space|normalize|form"``); None: all.
    reliable_at : float, default 0.8
        Verdict threshold on the bound (IoU) for "reliable", stored with the calibration.
    unreliable_below : float, default 0.5
        Verdict threshold on the bound (IoU) below which it is "unreliable", stored with the calibration.
    source_statistics_images : array-like, napari Image layer or None, default None
        Images to measure the source statistics on when the model has none
        (None: ``images``; better: the training images).
    holdout_shifts : {"toy-grid", "em"}, list of Shift or None, default None
        A second set of shifts, of another KIND, used for nothing but an extra
        validation (``meta["calibration"]["holdout"]``): does the bound carry
        over to shifts unlike those it was fitted on?

    Returns
    -------
    UNet
        A copy with ``meta["calibration"]``: the curve, the chosen space /
        normalisation / form and gate, fit and held-out coverage and gap, the
        candidates' cross-validation table, the cases and the provenance.
    """
    return run_to_end(calibrate_iter(
        model, images, labels, shifts=shifts, n_shifts=n_shifts, n_images=n_images,
        validation_fraction=validation_fraction, quantile=quantile, min_coverage=min_coverage, folds=folds,
        seed=seed, device=device, intensity_range=intensity_range, n_patches=n_patches, patch_size=patch_size,
        batch_size=batch_size, keys=keys, reliable_at=reliable_at, unreliable_below=unreliable_below,
        source_statistics_images=source_statistics_images, holdout_shifts=holdout_shifts,
    ))


@shares_docstring(calibrate)
def calibrate_iter(
    model: UNet,
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    *,
    shifts: str | Sequence[Shift | dict[str, Any]] = "toy-grid",
    n_shifts: int | None = None,
    n_images: int = 24,
    validation_fraction: float = 0.4,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 16,
    keys: Sequence[str] | None = None,
    reliable_at: float = RELIABLE_AT,
    unreliable_below: float = UNRELIABLE_BELOW,
    source_statistics_images: ArrayLike | Image | None = None,
    holdout_shifts: str | Sequence[Shift | dict[str, Any]] | None = None,
) -> Iterator[Progress | Result[UNet]]:
    model, _run = yield from forward(run_calibration_iter(
        model, images, labels, shifts=shifts, n_shifts=n_shifts, n_images=n_images,
        validation_fraction=validation_fraction, quantile=quantile, min_coverage=min_coverage, folds=folds,
        seed=seed, device=device, intensity_range=intensity_range, n_patches=n_patches, patch_size=patch_size,
        batch_size=batch_size, keys=keys, reliable_at=reliable_at, unreliable_below=unreliable_below,
        source_statistics_images=source_statistics_images, holdout_shifts=holdout_shifts,
    ))
    yield Result(model)
