"""Did adaptation work? A label-free reliability check with a calibrated lower bound on the IoU.

Source side: the SOURCE model on the SOURCE images (the statistics stored in
the model file, :mod:`napari_bnadapt.stats.source_statistics`). Target side: the
ADAPTED model on the TARGET images. For every latent space (ls0..ls4, the
decoder's last BatchNorm ``dec``, the output logits ``out``) the report gives
the W2^2 distance between the two Gaussians with its sampling-noise floor and
effective sample size, and the same distance for the source model WITHOUT
adaptation (source model on the target images), so the gain of adapting shows.

With a calibration in the model file (:func:`napari_bnadapt.bound.calibration.calibrate`)
the distance in the calibrated space is turned into a lower bound on the IoU of
the adapted model, and a verdict:

* ``unreliable``: a label-free output signal lies outside the range seen on
  successful calibration shifts (the predicted foreground fraction or the
  confidence moved too far: e.g. inverted contrast), so no bound is claimed; or
  the bound is below ``UNRELIABLE_BELOW`` (0.5);
* ``reliable``: the bound is at least ``RELIABLE_AT`` (0.8);
* ``uncertain``: anything in between, or no calibration, or too few samples.

The paper's supervised variant (adapted model vs a model trained on target
labels) is :func:`supervised_distances` (research mode).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BNAdaptError
from ..io.resample import model_grid
from ..io.stack_view import check_stack, resolve_normalization
from ..model.device import get_device
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from ..stats.source_statistics import (
    measure_iter,
    model_normalization,
    read_source_statistics,
)
from ..stats.wasserstein import Distance, distance, noise_floor
from .curve import LowerBound
from .decision import decide, signal_features
from .names import _NORM_ARG, candidate_key, parse_key
from .names import RELIABLE_AT, UNRELIABLE_BELOW
from .report import _FEATURE_TEXT, LatentDistance, ReliabilityReport, _bound_sentence, _sentence
from .trust import NO_GUARANTEE, heldout_iou, trust_decide
from .validity import calibration_problem, verdict_coverage
from .witnesses import foreground_match, measure_witnesses, stack_is_blank

if TYPE_CHECKING:
    import torch
    from napari.layers import Image
    from numpy.typing import ArrayLike

    from ..adabn.patches import PatchPlan
    from ..io.stack_view import Normalization, StackView
    from ..model.unet import UNet
    from ..stats.moments import GaussianMoments


# ================================================================ numbers
def distance_table(
    source_moments: Mapping[str, Any],
    target_moments: Mapping[str, Any],
    *,
    spaces: Any = None,
    normalizations: Any = ("source", "target", "plain"),
    forms: Any = ("full", "diagonal"),
    keys: Any = None,
    min_samples_per_dim: float = 10.0,
) -> dict[str, Any]:
    """W2^2 distances (with floors) for every space x normalisation x form.

    Parameters
    ----------
    source_moments, target_moments : mapping of str to GaussianMoments
        The source Gaussians (reference, first) and the target ones (second).
    spaces, normalizations, forms : sequences
        What to compute; normalisations ``"source"``, ``"target"``, ``"plain"``.

    keys : sequence of str, optional
        Compute only these ``"space|normalize|form"`` keys.
    min_samples_per_dim : float, default 10
        A full form needs an effective sample size of at least this times the
        dimension in both Gaussians; otherwise it is not computed at all (value
        nan, ``meaningful`` False: under-sampled covariances are expensive to
        handle and their value is noise).

    Returns
    -------
    dict of str to wasserstein.Distance
        Keyed ``"space|normalize|form"``; no fallback from the full to the
        diagonal form (a full form that is not meaningful stays flagged).
    """
    wanted = None if keys is None else set(keys)
    out = {}
    for space in spaces or [s for s in source_moments if s in target_moments]:
        if space not in source_moments or space not in target_moments:
            continue
        a, b = source_moments[space], target_moments[space]
        for norm in normalizations:
            for form in forms:
                key = candidate_key(space, norm, form)
                if wanted is not None and key not in wanted:
                    continue
                ea, eb, n = float(a.effective_count), float(b.effective_count), int(a.dim)
                full_stored = a.full_covariance and b.full_covariance
                if form == "full" and full_stored and min(ea, eb) < min_samples_per_dim * n:
                    cov = 0.5 * (a.cov + b.cov) if norm == "plain" else None
                    floor = noise_floor(n, ea, eb, _NORM_ARG[norm], form="full", cov=cov)
                    out[key] = Distance(
                        math.nan, floor, ea, eb, n, "full", _NORM_ARG[norm], False,
                        f"too few effective samples for a {n}-dimensional covariance "
                        f"(m_eff {min(ea, eb):,.0f} < {min_samples_per_dim:g} n = {min_samples_per_dim * n:,.0f})",
                    )
                    continue
                out[key] = distance(a, b, _NORM_ARG[norm], form=form, fallback=False,
                                    min_samples_per_dim=min_samples_per_dim)
    return out


# ================================================================ running
@dataclass(frozen=True)
class PairMeasurement:
    """Latent moments and output signals of the adapted and of the source model on the same target patches.

    Attributes
    ----------
    moments : dict of str to GaussianMoments
        The ADAPTED model's latent Gaussians, per space (ls0..ls4, dec, out).
    signals : dict of str to float
        The adapted model's output signals (:data:`~napari_bnadapt.stats.source_statistics.SIGNAL_NAMES`).
    moments_source_only, signals_source_only
        The same for the SOURCE model without adaptation.
    """

    moments: dict[str, GaussianMoments]
    signals: dict[str, float]
    moments_source_only: dict[str, GaussianMoments]
    signals_source_only: dict[str, float]


def measure_pair_iter(
    source_model: UNet,
    adapted_model: UNet,
    view: StackView,
    norm: Normalization,
    plan: PatchPlan,
    *,
    batch_size: int,
    device: torch.device,
    full_cov_max_dim: int,
) -> Iterator[Progress | Result[PairMeasurement]]:
    """Moments and output signals of the adapted and of the source model on the same target patches.

    Yields Progress, then Result(PairMeasurement).
    """
    from ..adabn.patches import iter_patch_batches

    n_batches = -(-len(plan.corners) // batch_size)

    def measure(model: UNet, stage: str) -> Iterator[Progress | Result[tuple[dict[str, Any], dict[str, float]]]]:
        batches = iter_patch_batches(view, plan, norm.apply, batch_size)
        return measure_iter(model, batches, n_batches, device=device, full_cov_max_dim=full_cov_max_dim, stage=stage)

    mt, st = yield from forward(measure(adapted_model, "measuring the adapted model"))
    ms, ss = yield from forward(measure(source_model, "measuring the source model"))
    yield Result(PairMeasurement(moments=mt, signals=st, moments_source_only=ms, signals_source_only=ss))


def reliability(
    source_model: UNet,
    adapted_model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    reliable_at: float | None = None,
    unreliable_below: float | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    witnesses: bool | None = None,
) -> ReliabilityReport:
    """Check, without labels, whether adapting ``source_model`` to ``images`` worked.

    Parameters
    ----------
    source_model : UNet
        The model before adaptation, with source statistics (and ideally a
        calibration) in its model file.
    adapted_model : UNet
        The result of :func:`adapt` on these (or similar) images.
    images : array-like or napari Image layer
        The target (Y, X) image or (Z, Y, X) stack; only sampled patches are read.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as given to :func:`adapt`.
    n_patches : int or None, default None
        Random patches to measure (None: the whole stack when small, else
        64 x 256 x 256 voxels in random patches).
    patch_size : int, default 256
        Patch side in pixels (rounded down to a multiple of 16).
    batch_size : int, default 8
        Patches per forward pass.
    seed : int, default 0
        Seed of the patch positions.
    reliable_at : float or None, default None
        Overrides the calibration's threshold on the bound (IoU) for "reliable" (None: the calibration's, 0.8).
    unreliable_below : float or None, default None
        Overrides the calibration's threshold on the bound (IoU) below which it is "unreliable"
        (None: the calibration's, 0.5).
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm, as given to :func:`adapt` (None: a napari layer's scale
        and units, else unknown). When it and the source model's training pixel size differ by more
        than :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE` (2 %), the latent spaces are
        measured on the stack resampled to the model's pixel size (the report's notes say so).
        Either one unknown: runs as it is, and a :class:`~napari_bnadapt.io.resample.PixelSizeWarning`
        says so once.
    witnesses : bool or None, default None
        Measure the label-free witnesses (:mod:`~napari_bnadapt.bound.witnesses`: agreement of two
        more adaptations on other random patches, self-consistency under flips and rescaling; about
        20 s on 2 CPU cores). None: when the source model carries a trust calibration
        (``meta["trust"]``, :mod:`~napari_bnadapt.bound.trust`), which decides the verdict then.
        Whether the stack is blank is always checked (cheap): a blank stack gets ``no guarantee``.

    Returns
    -------
    ReliabilityReport
        ``iou_lower_bound``, ``verdict``, ``sentence``, per-space distances
        (adapted and unadapted) with floors and sample sizes, the output
        signals; ``print(report)`` gives a readable summary.

    Raises
    ------
    BNAdaptError
        The source model has no source statistics (see
        :func:`~napari_bnadapt.stats.source_statistics.compute_source_statistics`), or
        a model is not this project's U-Net: the check compares its named latent spaces
        (``latent_modules()``) with statistics that only this project's ``train`` /
        ``compute_source_statistics`` store, so a model built elsewhere (a torch-em or BiaPy
        U-Net, a TorchScript module) is refused with a sentence that says so.
    """
    return run_to_end(reliability_iter(
        source_model, adapted_model, images, device=device, intensity_range=intensity_range, n_patches=n_patches,
        patch_size=patch_size, batch_size=batch_size, seed=seed, reliable_at=reliable_at,
        unreliable_below=unreliable_below, pixel_size_nm=pixel_size_nm, witnesses=witnesses,
    ))


@shares_docstring(reliability)
def reliability_iter(
    source_model: UNet,
    adapted_model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    reliable_at: float | None = None,
    unreliable_below: float | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    witnesses: bool | None = None,
) -> Iterator[Progress | Result[ReliabilityReport]]:
    from ..adabn.patches import plan_patches

    from ..model.foreign import RELIABILITY_MESSAGE, describe

    t0 = time.perf_counter()
    for model in (source_model, adapted_model):  # latent spaces by name: this project's U-Net only
        if not hasattr(model, "latent_modules"):
            raise BNAdaptError(RELIABILITY_MESSAGE.format(what=describe(model)))
    stats = read_source_statistics(source_model)
    if stats is None:
        raise BNAdaptError(
            "this model file carries no source statistics, so its latent spaces cannot be compared with the "
            "training data; add them with compute_source_statistics(model, training_images) and save the model"
        )
    cal = (getattr(source_model, "meta", None) or {}).get("calibration")
    if cal is None:
        cal = (getattr(adapted_model, "meta", None) or {}).get("calibration")
    rejected = calibration_problem(cal)
    if rejected:  # degenerate: the model is treated as uncalibrated, and the report says why
        cal = None
    trust = (getattr(source_model, "meta", None) or {}).get("trust")
    if witnesses is None:
        witnesses = trust is not None
    view = check_stack(images)
    norm = resolve_normalization(view, model_normalization(source_model), intensity_range)
    grid = model_grid(source_model, images, pixel_size_nm)
    work = grid.view(view)  # the stack at the model's pixel size (resampled lazily), or as it is
    plan = plan_patches(work.shape3d, n_patches, patch_size, seed)
    dev = get_device(device)
    full_max = int(stats.provenance.get("full_cov_max_dim", 256))
    pair = yield from forward(measure_pair_iter(source_model, adapted_model, work, norm, plan,
                                                batch_size=batch_size, device=dev, full_cov_max_dim=full_max))
    mt, st, ms, ss = pair.moments, pair.signals, pair.moments_source_only, pair.signals_source_only
    if cal is not None:
        _, norm_c, form_c = parse_key(cal["feature"]["key"])
    else:
        norm_c, form_c = "source", None
    forms = (form_c,) if form_c else ("full", "diagonal")
    tab = distance_table(stats.moments, mt, normalizations=(norm_c,), forms=forms)
    tab_so = distance_table(stats.moments, ms, normalizations=(norm_c,), forms=forms)
    feats = signal_features(stats.signals, st)
    feats_so = signal_features(stats.signals, ss)
    dec = decide(cal, tab, feats, reliable_at=reliable_at, unreliable_below=unreliable_below)
    dec_so = decide(cal, tab_so, feats_so)
    rows = []
    for space in stats.moments:
        if space not in mt:
            continue
        if form_c:
            key = candidate_key(space, norm_c, form_c)
        else:  # no calibration: full where stored and meaningful, else diagonal
            kf = candidate_key(space, norm_c, "full")
            key = kf if tab[kf].meaningful else candidate_key(space, norm_c, "diagonal")
        d, dso = tab[key], tab_so[key]
        rows.append(LatentDistance(space, float(d.value), float(dso.value), float(d.floor), float(d.m_eff_other),
                                   int(d.dim), d.form, norm_c, bool(d.meaningful), d.reason,
                                   calibrated=cal is not None and key == cal["feature"]["key"]))
    signals = dict(feats)
    for k, v in feats_so.items():
        signals[f"{k}_source_only"] = v
    signals["source_foreground_fraction"] = float(stats.signals["foreground_fraction"])
    signals["source_confidence"] = float(stats.signals["confidence"])
    notes = [f"measured on the stack {grid.zoom_phrase()}"] if grid.resamples else []
    if rejected:
        notes.append(f"the model's W2 calibration is not used: {rejected}")
    if cal is None and not rejected and trust is None:  # with a trust calibration the default gate cannot decide
        notes.append("the gate on the predicted foreground fraction and the confidence uses DEFAULT thresholds "
                      "(from the toy model), not ones measured for this model")
    if dec.beyond_calibration:
        notes.append("the distance is beyond the largest one seen in the calibration: no bound is claimed")
    if cal is not None and not dec.meaningful and not dec.gate_failures:
        notes.append(f"the calibrated distance is not meaningful here: {dec.reason}")
    cal_summary: dict[str, Any] = {"rejected": rejected} if rejected else {}
    x_label = None
    bound_so = None
    if cal is not None:
        x_label = cal["feature"]["x_label"]
        val = cal.get("validation", {})
        cal_summary = {
            "key": cal["feature"]["key"],
            "quantile": cal["curve"]["quantile"],
            "validation_coverage": val.get("coverage"),
            "validation_median_gap": val.get("median_gap"),
            "validation_n": val.get("n"),
        }
        if dec_so.x is not None and math.isfinite(dec_so.x):
            bound_so = float(LowerBound.from_dict(cal["curve"])(dec_so.x))
    # ---- blank stack, witnesses, trust calibration: the verdict
    blank = stack_is_blank(source_model, images, pixel_size_nm=pixel_size_nm, intensity_range=intensity_range)
    wit = None
    if witnesses and not blank:
        yield Progress("measuring the witnesses", 0, 1)
        wit = measure_witnesses(source_model, adapted_model, images, device=dev, intensity_range=intensity_range,
                                pixel_size_nm=pixel_size_nm, seed=seed + 1)
        yield Progress("measuring the witnesses", 1, 1)
    bound, verdict, coverage, basis, spoke = dec.bound, dec.verdict, None, "", "W2 distance"
    sentence = _sentence(dec, feats, stats.signals, cal is not None, None, rejected=rejected)
    wit_info: dict[str, Any] = {}
    wvals = None
    if wit is not None:
        wvals = {**wit.values(), "foreground_match": foreground_match(feats["fg_logratio"])}
        wit_info = {"values": wvals, "contrast": wit.contrast, "foreground_fraction": wit.foreground_fraction,
                    "size_ratio": wit.size_ratio, "seconds": wit.seconds}
    # a gate with DEFAULT limits (no usable W2 calibration) does not overrule a validated trust calibration
    gated = bool(dec.gate_failures) and (cal is not None or trust is None)
    if trust is not None and dec.gate_failures and not gated:
        notes.append("the default gate (limits not measured for this model) flagged: "
                     + ", ".join(_FEATURE_TEXT.get(g[0], g[0]) for g in dec.gate_failures)
                     + "; the verdict follows the model's trust calibration")
    if blank or (trust is not None and not gated):
        heldout = heldout_iou(getattr(source_model, "meta", None))
        td = trust_decide(trust, wvals, wit.foreground_fraction if wit is not None else None, blank=blank,
                          in_domain=_within_noise_floor(source_model, adapted_model), heldout=heldout,
                          size_ratio=wit.size_ratio if wit is not None else None)
        wit_info.update({"thresholds": (trust or {}).get("thresholds", {}), "failing": td.failing,
                         "passing": td.passing, "route": td.route})
        if td.route == "in-domain":
            notes.append(f"the image's statistics are within the noise floor of the model's training data: the "
                         f"model's held-out IoU ({heldout:.3f}) applies, capped at the calibrated level")
        if td.verdict == NO_GUARANTEE:
            bound, verdict, sentence = None, NO_GUARANTEE, td.reason
            spoke = ("blank stack" if blank else
                     ", ".join(f[0].replace("_", " ") for f in td.failing) or td.outside or "witnesses")
        else:
            assert td.bound is not None
            tb = float(td.bound)
            spoke = ("noise floor (the image matches the training data)" if td.route == "in-domain"
                     else "witnesses (all within the calibrated region)")
            if cal is not None and dec.bound is not None and dec.bound < tb:
                tb, spoke = float(dec.bound), "W2 distance (lower than the witnesses' bound)"
            thr = trust.get("verdict_thresholds", {}) if trust else {}
            rel = float(reliable_at if reliable_at is not None else thr.get("reliable", RELIABLE_AT))
            unrel = float(unreliable_below if unreliable_below is not None else thr.get("unreliable",
                                                                                          UNRELIABLE_BELOW))
            bound = tb
            verdict = "reliable" if tb >= rel else "unreliable" if tb < unrel else "uncertain"
            tv = (trust or {}).get("validation", {})
            bv = tv.get("by_verdict", {}).get(verdict)
            if bv:
                coverage = float(bv["coverage"])
                basis = (f"of {bv['n']} held-out cases given '{verdict}' (leave one volume out: "
                         f"{', '.join(tv.get('volumes', []))})")
            sentence = _bound_sentence(verdict, tb, coverage, basis)
    elif gated:
        spoke = ", ".join(_FEATURE_TEXT.get(g[0], g[0]) for g in dec.gate_failures)
    elif cal is not None and dec.bound is not None:
        cov, n = verdict_coverage(cal, dec.verdict)
        if cov is not None:
            coverage, basis = cov, f"of {n} held-out calibration shifts given '{dec.verdict}'"
        sentence = _sentence(dec, feats, stats.signals, True, coverage, basis=basis)
    else:
        spoke = ""
    report = ReliabilityReport(
        iou_lower_bound=bound,
        verdict=verdict,
        sentence=sentence,
        distances=rows,
        signals=signals,
        calibration_x=dec.x if cal is not None else None,
        calibration_x_source_only=dec_so.x if cal is not None else None,
        x_label=x_label,
        bound_source_only=bound_so,
        gate_failures=dec.gate_failures if gated else [],
        calibration=cal_summary,
        n_patches=len(plan.corners),
        n_voxels=plan.n_voxels,
        device=str(dev),
        seconds=time.perf_counter() - t0,
        notes=notes,
        witnesses=wit_info,
        spoke=spoke,
        coverage=coverage,
        coverage_basis=basis,
        w2_bound=dec.bound if cal is not None else None,
    )
    yield Result(report)


def _within_noise_floor(source_model: Any, adapted_model: Any) -> bool:
    """Whether AdaBN moved the statistics no more than the image's own noise floor (False when unknown).

    Never through the guard's content floor (:mod:`~napari_bnadapt.adabn.content_floor`, off by default): a
    stack that only lies within what crops of the training data differ by may keep the source statistics, but
    a crop's IoU varies with its content far more than the held-out volume's IoU that the in-domain route
    promises (``em-generalist-2`` on crops of its own Lucchi++ test slices as they are: 0.77-0.93), so the
    witnesses judge it as any other stack."""
    from ..adabn.need import adaptation_needed

    try:
        return not adaptation_needed(source_model, adapted_model, content_floor=False).needed
    except (BNAdaptError, KeyError, AttributeError, TypeError):  # no adaptation report, or not this project's U-Net
        return False


# ========================================================== research mode
def supervised_distances(
    adapted_model: UNet,
    target_model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    normalize: str = "source",
) -> list[LatentDistance]:
    """Research mode (the paper's variant): distances between the adapted model and a target-trained model.

    Both models run on the same (target) images; the reference Gaussian is the
    target-trained model's. Needs a model trained on TARGET labels, so it is a
    validation tool, not something a user without labels can run. Note that
    the two models have different weights, so their latent coordinates only
    correspond if they were trained alike (the paper's setting).

    Parameters
    ----------
    adapted_model : UNet
        The result of :func:`adapt` on the target.
    target_model : UNet
        A model trained on target labels: the reference.
    images : array-like or napari Image layer
        Target images, (Y, X) or (Z, Y, X); only sampled patches are read.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value mapping, as in :func:`reliability`.
    n_patches : int or None, default None
        Random patches to measure, as in :func:`reliability`.
    patch_size : int, default 256
        Patch side in pixels.
    batch_size : int, default 8
        Patches per forward pass.
    seed : int, default 0
        Seed of the patch positions.
    normalize : {"source", "target", "plain"}, default "source"
        "source" here means whitened by the target-trained model's Gaussian.

    Returns
    -------
    list of LatentDistance
        ``value_source_only`` is nan.
    """
    return run_to_end(supervised_distances_iter(
        adapted_model, target_model, images, device=device, intensity_range=intensity_range, n_patches=n_patches,
        patch_size=patch_size, batch_size=batch_size, seed=seed, normalize=normalize,
    ))


@shares_docstring(supervised_distances)
def supervised_distances_iter(
    adapted_model: UNet,
    target_model: UNet,
    images: ArrayLike | Image,
    *,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    normalize: str = "source",
) -> Iterator[Progress | Result[list[LatentDistance]]]:
    from ..adabn.patches import plan_patches

    view = check_stack(images)

    norm = resolve_normalization(view, model_normalization(target_model), intensity_range)
    norm_a = resolve_normalization(view, model_normalization(adapted_model), intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    dev = get_device(device)
    from ..adabn.patches import iter_patch_batches

    n_batches = -(-len(plan.corners) // batch_size)
    m_ref, _ = yield from forward(measure_iter(
        target_model, iter_patch_batches(view, plan, norm.apply, batch_size), n_batches, device=dev,
        stage="measuring the target-trained model"))
    m_ad, _ = yield from forward(measure_iter(
        adapted_model, iter_patch_batches(view, plan, norm_a.apply, batch_size), n_batches, device=dev,
        stage="measuring the adapted model"))
    tab = distance_table(m_ref, m_ad, normalizations=(normalize,), forms=("full", "diagonal"))
    rows = []
    for space in m_ref:
        kf = candidate_key(space, normalize, "full")
        key = kf if tab[kf].meaningful else candidate_key(space, normalize, "diagonal")
        d = tab[key]
        rows.append(LatentDistance(space, float(d.value), math.nan, float(d.floor), float(d.m_eff_other), int(d.dim),
                                   d.form, normalize, bool(d.meaningful), d.reason))
    yield Result(rows)
