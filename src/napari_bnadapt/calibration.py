"""Calibrating the reliability bound: shift labelled source data, adapt, measure, fit, validate.

The finding of the thesis (science.md section 3) is that the Wasserstein
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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import BNAdaptError
from .progress import Progress, Result, run_to_end

__all__ = [
    "Shift",
    "LowerBound",
    "CalibrationCase",
    "CalibrationRun",
    "toy_grid_shifts",
    "em_shifts",
    "apply_shift",
    "fit_lower_bound",
    "evaluate_bound",
    "measure_case",
    "run_calibration_iter",
    "calibrate",
    "calibrate_iter",
    "calibration_curve",
    "SPACES",
    "NORMALIZATIONS",
    "FORMS",
]

CALIBRATION_VERSION = 1
#: Latent spaces measured (encoder stages, decoder, output logits).
SPACES = ("ls0", "ls1", "ls2", "ls3", "ls4", "dec", "out")
#: Normalisations: by the source Gaussian, by the target Gaussian, none.
NORMALIZATIONS = ("source", "target", "plain")
FORMS = ("full", "diagonal")
#: IoU at or above which a bound makes the verdict "reliable".
RELIABLE_AT = 0.8
#: Bound below which the verdict is "unreliable".
UNRELIABLE_BELOW = 0.5
#: Cases with an adapted IoU at least this count as successes when the gate is set.
SUCCESS_IOU = 0.7

# the 1-800 experiment of the thesis (science.md section 4)
GRID_MU0 = (64, 80, 96, 112, 128, 144, 160)
GRID_D = (24, 32, 42, 55, 73, 97, 128)
GRID_SIGMA = (6, 12, 18, 24, 30)


# =================================================================== shifts
@dataclass(frozen=True)
class Shift:
    """One target domain made from the labelled source data.

    Attributes
    ----------
    family : str
        ``"grid"``, ``"inverted"``, ``"faint"`` (toy, class-wise intensities) or
        ``"em"``, ``"em-inverted"`` (grey-value transformations).
    params : dict
        ``classwise``: ``mu0, sigma0, mu1, sigma1`` (target grey values of background
        and objects). Grey-value shifts: any of ``offset`` (fraction of the
        1-99 % range), ``gain`` (contrast around the mean), ``gamma``, ``noise``
        (Gaussian noise sigma, fraction of the range), ``blur`` (Gaussian blur
        sigma, pixels), ``invert`` (bool).
    """

    family: str
    params: dict[str, Any]

    @property
    def classwise(self) -> bool:
        return "mu0" in self.params

    def label(self) -> str:
        """Short text for tables and figures."""
        p = self.params
        if self.classwise:
            return f"{self.family} ({p['mu0']:g},{p['sigma0']:g},{p['mu1']:g},{p['sigma1']:g})"
        neutral = {"offset": 0.0, "gain": 1.0, "gamma": 1.0, "noise": 0.0, "blur": 0.0}
        parts = [f"{k} {p[k]:g}" for k in neutral if k in p and float(p[k]) != neutral[k]]
        if p.get("invert"):
            parts.append("inverted")
        return f"{self.family} ({', '.join(parts) or 'none'})"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params)}


def toy_grid_shifts(
    n_grid: int = 128,
    seed: int = 0,
    *,
    n_inverted: int = 16,
    n_faint: int = 12,
) -> list[Shift]:
    """Targets for a toy model: a random subset of the thesis' 1-800 grid plus failure families.

    Parameters
    ----------
    n_grid : int, default 128
        Grid targets drawn without replacement from the 800 of the 1-800
        experiment: ``mu0`` in 64, 80, ..., 160; ``mu1 = mu0 + d`` with ``d`` in
        24, 32, 42, 55, 73, 97, 128 and ``mu1 <= 192``; ``sigma0, sigma1`` in 6, 12,
        18, 24, 30. ``n_grid >= 800`` takes all.
    seed : int
        Seed of the draw.
    n_inverted : int, default 16
        Inverted contrast (objects DARKER than the background: ``mu1 = mu0 - d``),
        the failure the distances alone do not catch.
    n_faint : int, default 12
        Very low contrast (``d`` in 8, 12, 16 with sigmas 12-30), where even
        perfect adaptation cannot segment well.

    Returns
    -------
    list of Shift
        ``classwise`` shifts (families ``grid``, ``inverted``, ``faint``).
    """
    rng = np.random.default_rng(seed)
    grid = [
        (m0, s0, m0 + d, s1)
        for m0 in GRID_MU0
        for d in GRID_D
        if m0 + d <= 192
        for s0 in GRID_SIGMA
        for s1 in GRID_SIGMA
    ]
    take = rng.permutation(len(grid))[: min(n_grid, len(grid))]
    out = [Shift("grid", dict(zip(("mu0", "sigma0", "mu1", "sigma1"), map(float, grid[i])))) for i in sorted(take)]
    for _ in range(n_inverted):
        d = float(rng.choice(GRID_D[:5]))
        m1 = float(rng.choice((64, 80, 96, 112, 128)))
        m0 = min(192.0, m1 + d)
        out.append(Shift("inverted", {"mu0": m0, "sigma0": float(rng.choice(GRID_SIGMA)), "mu1": m1,
                                      "sigma1": float(rng.choice(GRID_SIGMA))}))
    for _ in range(n_faint):
        d = float(rng.choice((8, 12, 16)))
        m0 = float(rng.choice((80, 96, 112, 128)))
        out.append(Shift("faint", {"mu0": m0, "sigma0": float(rng.choice(GRID_SIGMA[1:])), "mu1": m0 + d,
                                   "sigma1": float(rng.choice(GRID_SIGMA[1:]))}))
    return out


def em_shifts(n: int = 96, seed: int = 0, *, n_inverted: int = 12) -> list[Shift]:
    """Grey-value shifts of real slices (for EM models; they apply to any labelled images).

    One-factor shifts (each factor alone over its range), then random
    combinations: ``offset`` in [-0.3, 0.3] of the 1-99 % range, ``gain`` in
    [0.35, 2.0], ``gamma`` in [0.5, 2.0], Gaussian ``noise`` up to 0.15 of the
    range, Gaussian ``blur`` up to 3 px. ``n_inverted`` more shifts invert the
    grey values (with random other factors): the known failure family.
    """
    rng = np.random.default_rng(seed)
    singles: list[dict[str, Any]] = []
    singles += [{"offset": v} for v in (-0.3, -0.2, -0.1, 0.1, 0.2, 0.3)]
    singles += [{"gain": v} for v in (0.35, 0.5, 0.7, 1.4, 2.0)]
    singles += [{"gamma": v} for v in (0.5, 0.7, 1.5, 2.0)]
    singles += [{"noise": v} for v in (0.03, 0.06, 0.1, 0.15)]
    singles += [{"blur": v} for v in (0.7, 1.2, 2.0, 3.0)]
    out = [Shift("em", p) for p in singles[: max(0, n)]]

    def draw() -> dict[str, Any]:
        p: dict[str, Any] = {}
        if rng.random() < 0.7:
            p["offset"] = round(float(rng.uniform(-0.3, 0.3)), 3)
        if rng.random() < 0.7:
            p["gain"] = round(float(np.exp(rng.uniform(np.log(0.35), np.log(2.0)))), 3)
        if rng.random() < 0.4:
            p["gamma"] = round(float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))), 3)
        if rng.random() < 0.5:
            p["noise"] = round(float(rng.uniform(0.0, 0.15)), 3)
        if rng.random() < 0.4:
            p["blur"] = round(float(rng.uniform(0.0, 3.0)), 2)
        return p

    while len(out) < n:
        out.append(Shift("em", draw()))
    for _ in range(n_inverted):
        p = draw()
        p["invert"] = True
        out.append(Shift("em-inverted", p))
    return out


def _class_stats(images: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    fg = labels > 0
    x = images.astype(np.float64)
    if not fg.any() or fg.all():
        raise BNAdaptError("the calibration labels must contain both background (0) and objects (> 0)")
    b, f = x[~fg], x[fg]
    return float(b.mean()), float(max(b.std(), 1e-6)), float(f.mean()), float(max(f.std(), 1e-6))


def _dtype_range(dtype: np.dtype, sample: np.ndarray) -> tuple[float, float]:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float(sample.min()), float(sample.max())


def apply_shift(images: np.ndarray, labels: np.ndarray, shift: Shift, seed: int = 0,
                class_stats: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The images as the target domain ``shift`` would show them (same dtype, same labels).

    Class-wise shifts map the grey values of background and object pixels
    separately and affinely onto ``N(mu0, sigma0)`` and ``N(mu1, sigma1)``
    (pixels are dequantised by +-0.5 first); for the toy images this is exactly
    the generator with new parameters. Grey-value shifts are applied in the
    order invert, gamma, gain, offset, blur, noise on values scaled by the
    1-99 % range. Integer output is rounded and clipped to the dtype's range.

    Parameters
    ----------
    images, labels : numpy arrays (Z, Y, X) or (Y, X)
    shift : Shift
    seed : int
        Seed of the dequantisation and noise.
    class_stats : (mu0, sigma0, mu1, sigma1), optional
        Source class statistics (computed from the images and labels by default).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = np.asarray(images)
    dtype = x.dtype
    xf = x.astype(np.float64)
    if dtype.kind in "ui":
        xf = xf + rng.uniform(-0.5, 0.5, xf.shape)
    lo_d, hi_d = _dtype_range(dtype, x)
    p = shift.params
    if shift.classwise:
        m0, s0, m1, s1 = class_stats or _class_stats(x, np.asarray(labels))
        fg = np.asarray(labels) > 0
        out = np.where(
            fg,
            p["mu1"] + (xf - m1) / s1 * p["sigma1"],
            p["mu0"] + (xf - m0) / s0 * p["sigma0"],
        )
    else:
        lo, hi = (float(v) for v in np.percentile(x, [1, 99]))
        span = max(hi - lo, 1e-6)
        u = (xf - lo) / span  # ~[0, 1]
        if p.get("invert"):
            u = 1.0 - u
        if p.get("gamma", 1.0) != 1.0:
            u = np.sign(u) * np.abs(u) ** float(p["gamma"])
        if p.get("gain", 1.0) != 1.0:
            mean = float(u.mean())
            u = mean + (u - mean) * float(p["gain"])
        u = u + float(p.get("offset", 0.0))
        if p.get("blur"):
            sig = float(p["blur"])
            u = ndimage.gaussian_filter(u, (0, sig, sig) if u.ndim == 3 else sig)
        if p.get("noise"):
            u = u + rng.normal(0.0, float(p["noise"]), u.shape)
        out = lo + u * span
    if dtype.kind in "ui":
        return np.clip(np.rint(out), lo_d, hi_d).astype(dtype)
    return out.astype(dtype)


# ============================================================ lower bound
@dataclass
class LowerBound:
    """A monotone non-increasing step function: a lower bound on the IoU against x.

    ``bound(x) = y[k]`` for the first knot with ``x <= x_knots[k]``. Beyond the
    last knot (distances larger than any the calibration saw) the bound is 0:
    there is no evidence to promise anything. Knots are the upper x edges of
    the fitted blocks.
    """

    x_knots: np.ndarray
    y_knots: np.ndarray
    quantile: float
    x_min: float = 0.0

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        k = np.searchsorted(self.x_knots, x, side="left")
        beyond = k >= len(self.y_knots)
        k = np.clip(k, 0, len(self.y_knots) - 1)
        out = np.where(beyond, 0.0, self.y_knots[k].astype(np.float64))
        return np.where(np.isfinite(x), out, np.nan)

    @property
    def x_max(self) -> float:
        return float(self.x_knots[-1])

    def to_dict(self) -> dict[str, Any]:
        return {"x": [float(v) for v in self.x_knots], "y": [float(v) for v in self.y_knots],
                "quantile": self.quantile, "x_min": self.x_min}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LowerBound:
        return cls(np.asarray(d["x"], float), np.asarray(d["y"], float), float(d["quantile"]),
                   float(d.get("x_min", 0.0)))

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) points drawing the step function from ``x_min`` to the last knot."""
        xs = [self.x_min]
        ys = [self.y_knots[0]]
        for i, (xk, yk) in enumerate(zip(self.x_knots, self.y_knots)):
            xs += [xk]
            ys += [yk]
            if i + 1 < len(self.y_knots):
                xs += [xk]
                ys += [self.y_knots[i + 1]]
        return np.asarray(xs), np.asarray(ys)


def _lower_quantile(y: np.ndarray, q: float) -> float:
    """Conservative q-quantile of a block: the order statistic k = floor(q (n + 1)) - 1 (0-based, at least 0).

    For exchangeable cases a new one falls below the k-th smallest of n with
    probability (k + 1) / (n + 1) <= q (the split-conformal rule); with
    n < 1 / q - 1 the minimum is used and the guarantee is weaker.
    """
    ys = np.sort(y)
    k = max(0, int(math.floor(q * (len(ys) + 1))) - 1)
    return float(ys[min(len(ys) - 1, k)])


def fit_lower_bound(x: Any, y: Any, quantile: float = 0.05, min_block: int | None = None) -> LowerBound:
    """Fit a monotone non-increasing lower-quantile curve of ``y`` against ``x``.

    Isotonic quantile regression by pool-adjacent-violators on blocks: the
    cases are sorted by x and cut into consecutive blocks of at least
    ``min_block`` cases; each block's value is its conservative ``quantile``
    order statistic; adjacent blocks whose values rise with x are pooled (and
    their value recomputed from the pooled cases) until the values never rise.

    Parameters
    ----------
    x, y : array-like
        Predictor (e.g. ``log(1 + distance)``) and the true IoU; non-finite pairs are dropped.
    quantile : float, default 0.05
        The share of cases allowed below the bound within a block.
    min_block : int, optional
        Smallest block (default ``max(8, ceil(1 / quantile) - 1)``, 19 for the 5 %
        quantile: the smallest block whose minimum is a 1 - quantile
        conformal bound). Smaller blocks let the curve follow single points.

    Returns
    -------
    LowerBound
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        raise BNAdaptError("at least two calibration cases are needed to fit a bound")
    if not 0.0 < quantile < 0.5:
        raise BNAdaptError(f"quantile must be in (0, 0.5), not {quantile}")
    if min_block is None:
        min_block = max(8, int(math.ceil(1.0 / quantile)) - 1)
    min_block = max(1, min(int(min_block), len(x)))
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    n = len(x)
    n_blocks = max(1, n // min_block)
    edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
    # never split ties in x between blocks
    blocks: list[list[int]] = []
    start = 0
    for e in edges[1:]:
        e = int(e)
        while 0 < e < n and x[e] == x[e - 1]:
            e += 1
        if e > start:
            blocks.append([start, e])
            start = e
    if start < n:
        blocks[-1][1] = n
    vals = [_lower_quantile(y[a:b], quantile) for a, b in blocks]
    # PAVA for a non-increasing fit
    stack: list[list[Any]] = []  # [a, b, value]
    for (a, b), v in zip(blocks, vals):
        stack.append([a, b, v])
        while len(stack) > 1 and stack[-2][2] < stack[-1][2]:
            b2 = stack.pop()
            b1 = stack.pop()
            a_, c_ = b1[0], b2[1]
            stack.append([a_, c_, _lower_quantile(y[a_:c_], quantile)])
    x_knots = np.array([x[b - 1] for a, b, _ in stack])
    y_knots = np.clip(np.array([v for *_, v in stack]), 0.0, 1.0)
    # knots halfway to the next block's first x (a new distance between blocks gets the lower value)
    mids = [0.5 * (x[b - 1] + x[b]) if b < n else x[b - 1] for a, b, _ in stack]
    x_knots = np.array(mids[:-1] + [x_knots[-1]])
    return LowerBound(x_knots, y_knots, float(quantile), float(x[0]))


def evaluate_bound(bound: Any, x: Any, y: Any) -> dict[str, float]:
    """Coverage (share with ``y >= bound(x)``), the median and mean gap ``y - bound``, the mean bound,
    and the largest shortfall ``bound - y`` of a case below its bound (0 when none is).

    ``bound`` is a LowerBound or an array of bound values. Non-finite x give bound 0.
    """
    y = np.asarray(y, dtype=np.float64)
    b = np.asarray(bound(x) if callable(bound) else bound, dtype=np.float64)
    b = np.where(np.isfinite(b), b, 0.0)
    if len(y) == 0:
        return {"n": 0, "coverage": math.nan, "median_gap": math.nan, "mean_gap": math.nan, "mean_bound": math.nan,
                "worst_shortfall": math.nan}
    gap = y - b
    return {
        "n": int(len(y)),
        "coverage": float(np.mean(y >= b - 1e-12)),
        "median_gap": float(np.median(gap)),
        "mean_gap": float(np.mean(gap)),
        "mean_bound": float(np.mean(b)),
        "worst_shortfall": float(max(0.0, -gap.min())),
    }


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
        :func:`~napari_bnadapt.reliability_bound.signal_features`.
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
    from .adaptation import adapt
    from .device import get_device
    from .images import check_stack, resolve_normalization
    from .inference import segment
    from .metrics import iou
    from .patches import plan_patches
    from .reliability_bound import distance_table, measure_pair_iter, signal_features
    from .source_statistics import model_normalization

    t0 = time.perf_counter()
    dev = get_device(device)
    adapted, _ = adapt(model, images, device=dev, n_patches=n_patches, patch_size=patch_size,
                       batch_size=batch_size, seed=seed, intensity_range=intensity_range)
    view = check_stack(images)
    norm = resolve_normalization(view, model_normalization(model), intensity_range)
    plan = plan_patches(view.shape3d, n_patches, patch_size, seed)
    mt, st, ms, ss = run_to_end(measure_pair_iter(
        model, adapted, view, norm, plan, batch_size=batch_size, device=dev,
        full_cov_max_dim=int(stats.provenance.get("full_cov_max_dim", 256)),
    ))
    kw = {"device": dev, "intensity_range": intensity_range, "batch_size": batch_size}
    i_ad = iou(segment(adapted, images, **kw), labels)
    i_so = iou(segment(model, images, **kw), labels)
    vals, floors = _values(distance_table(stats.moments, mt, keys=keys))
    vals_so, _ = _values(distance_table(stats.moments, ms, keys=keys))
    return CalibrationCase(
        shift=shift or Shift("custom", {}), split=split, iou=float(i_ad), iou_source_only=float(i_so),
        distances=vals, distances_source_only=vals_so, floors=floors,
        features=signal_features(stats.signals, st), features_source_only=signal_features(stats.signals, ss),
        seconds=time.perf_counter() - t0,
    )


# ============================================================ selection
#: Output signals that may gate the bound, and which side of them is checked.
GATE_FEATURES: dict[str, str] = {"fg_logratio": "both", "conf_drop": "upper"}
#: The gate range spans the successful fit cases, widened by this share of its width on each side.
GATE_MARGIN = 0.25


def _gate_from(cases: Sequence[CalibrationCase], features: Sequence[str],
               success_iou: float) -> dict[str, list[float]]:
    """Ranges of the gate features over the successful cases (IoU >= success_iou), widened by GATE_MARGIN."""
    ok = [c for c in cases if c.iou >= success_iou]
    gate: dict[str, list[float]] = {}
    for f in features:
        v = np.array([c.features[f] for c in ok], dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 2:
            continue
        lo, hi = float(v.min()), float(v.max())
        w = max(hi - lo, 1e-6)
        lo, hi = lo - GATE_MARGIN * w, hi + GATE_MARGIN * w
        side = GATE_FEATURES.get(f, "both")
        gate[f] = [None if side == "upper" else lo, None if side == "lower" else hi]
    return gate


def _in_gate(case: CalibrationCase, gate: dict[str, list[float]], source_only: bool = False) -> bool:
    feats = case.features_source_only if source_only else case.features
    for f, (lo, hi) in gate.items():
        v = feats.get(f, math.nan)
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            return False
    return True


def _xs(cases: Sequence[CalibrationCase], key: str, source_only: bool = False) -> np.ndarray:
    vals = np.array([(c.distances_source_only if source_only else c.distances).get(key, math.nan) for c in cases])
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(vals) & (vals >= 0), np.log1p(np.clip(vals, 0, None)), np.nan)


def _predict(cases: Sequence[CalibrationCase], key: str, gate: dict[str, list[float]],
             bound: LowerBound | None) -> np.ndarray:
    """Bound per case as the product computes it: 0 when gated out or not computable."""
    x = _xs(cases, key)
    out = np.zeros(len(cases))
    for i, c in enumerate(cases):
        if _in_gate(c, gate) and bound is not None and math.isfinite(x[i]):
            out[i] = float(bound(x[i]))
    return out


def _fit(cases: Sequence[CalibrationCase], key: str, gate_features: Sequence[str], quantile: float,
         success_iou: float) -> tuple[dict[str, list[float]], LowerBound | None]:
    gate = _gate_from(cases, gate_features, success_iou)
    inside = [c for c in cases if _in_gate(c, gate)]
    x = _xs(inside, key)
    y = np.array([c.iou for c in inside])
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return gate, None
    return gate, fit_lower_bound(x[ok], y[ok], quantile)


def _folds(cases: Sequence[CalibrationCase], k: int, seed: int) -> np.ndarray:
    """Fold index per case, stratified by family."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(cases), dtype=int)
    fams: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        fams.setdefault(c.shift.family, []).append(i)
    offset = 0
    for fam in sorted(fams):
        idx = np.array(fams[fam])[rng.permutation(len(fams[fam]))]
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def cross_validate(cases: Sequence[CalibrationCase], key: str, gate_features: Sequence[str], *, quantile: float = 0.05,
                   folds: int = 5, seed: int = 0, success_iou: float = SUCCESS_IOU) -> dict[str, float]:
    """K-fold cross-validated coverage and tightness of one (distance, gate) choice on the fit cases."""
    fold = _folds(cases, folds, seed)
    pred = np.zeros(len(cases))
    y = np.array([c.iou for c in cases])
    for f in range(folds):
        tr = [c for c, g in zip(cases, fold) if g != f]
        te_idx = np.flatnonzero(fold == f)
        if len(te_idx) == 0:
            continue
        gate, bound = _fit(tr, key, gate_features, quantile, success_iou)
        pred[te_idx] = _predict([cases[i] for i in te_idx], key, gate, bound)
    res = evaluate_bound(pred, None, y)
    res["computable"] = float(np.mean(np.isfinite(_xs(cases, key))))
    return res


def select_candidate(
    cases: Sequence[CalibrationCase],
    *,
    keys: Sequence[str] | None = None,
    gate_sets: Sequence[Sequence[str]] | None = None,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    success_iou: float = SUCCESS_IOU,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Cross-validate every (distance, gate) pair on the fit cases and choose the tightest valid one.

    The score is the mean cross-validated bound (higher = tighter) among the
    pairs whose cross-validated coverage is at least ``min_coverage`` and whose
    distance is computable in every case; ties go to the simpler gate.

    Returns
    -------
    (table, best)
        One row per pair (key, gate, coverage, mean_bound, median_gap, ...), and the chosen row.
    """
    if keys is None:
        keys = sorted({k for c in cases for k in c.distances})
    if gate_sets is None:
        feats = list(GATE_FEATURES)
        gate_sets = [()] + [(f,) for f in feats] + ([tuple(feats)] if len(feats) > 1 else [])
    table = []
    for key in keys:
        ratio = np.array([c.distances.get(key, math.nan) / c.floors.get(key, math.nan) for c in cases])
        above = float(np.nanmedian(ratio)) if np.any(np.isfinite(ratio)) else math.nan
        if not above >= 1.0:
            # at or below its noise floor in most cases: it measures sampling noise, not the shift (this is
            # what the diagonal forms of BatchNorm outputs do after AdaBN, which matches them by construction)
            table.append({"key": key, "gate": [], "coverage": math.nan, "mean_bound": math.nan,
                          "median_gap": math.nan, "computable": float(np.mean(np.isfinite(_xs(cases, key)))),
                          "median_above_floor": above, "excluded": "below its noise floor"})
            continue
        if not np.all(np.isfinite(_xs(cases, key))):
            table.append({"key": key, "gate": [], "coverage": math.nan, "mean_bound": math.nan,
                          "median_gap": math.nan, "computable": float(np.mean(np.isfinite(_xs(cases, key)))),
                          "median_above_floor": above, "excluded": "not computable in every case"})
            continue
        for gs in gate_sets:
            r = cross_validate(cases, key, gs, quantile=quantile, folds=folds, seed=seed, success_iou=success_iou)
            r.update(key=key, gate=list(gs), median_above_floor=above, excluded="")
            table.append(r)
    valid = [r for r in table if not r["excluded"] and r["coverage"] >= min_coverage]
    if not valid:
        valid = [r for r in table if not r["excluded"]]
        if not valid:
            raise BNAdaptError("no latent distance could be computed for every calibration shift; use more images")
        best = max(valid, key=lambda r: (r["coverage"], r["mean_bound"]))
    else:
        best = max(valid, key=lambda r: (round(r["mean_bound"], 4), -len(r["gate"])))
    return table, best


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


def _resolve_shifts(shifts: Any, n_shifts: int | None, seed: int) -> list[Shift]:
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


@dataclass(frozen=True)
class _Dist:
    value: float
    floor: float
    meaningful: bool
    reason: str = ""


def _case_distance(c: CalibrationCase, key: str, source_only: bool = False) -> dict[str, _Dist]:
    v = (c.distances_source_only if source_only else c.distances).get(key, math.nan)
    return {key: _Dist(v, c.floors.get(key, 0.0), math.isfinite(v), "" if math.isfinite(v) else "not meaningful")}


def _verdict_table(cases: Sequence[CalibrationCase], calibration: dict[str, Any]) -> dict[str, Any]:
    from .reliability_bound import decide

    key = calibration["feature"]["key"]
    out: dict[str, Any] = {}
    for c in cases:
        d = decide(calibration, _case_distance(c, key), c.features)
        v = out.setdefault(d["verdict"], {"n": 0, "iou_min": 1.0, "iou_max": 0.0, "families": {}})
        v["n"] += 1
        v["iou_min"] = min(v["iou_min"], c.iou)
        v["iou_max"] = max(v["iou_max"], c.iou)
        v["families"][c.shift.family] = v["families"].get(c.shift.family, 0) + 1
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
    from .reliability_bound import decide, distance_label, parse_key

    fit_cases = [c for c in cases if c.split == "fit"]
    val_cases = [c for c in cases if c.split == "validation"]
    hold_cases = [c for c in cases if c.split == "holdout"]
    if len(fit_cases) < 10:
        raise BNAdaptError("fewer than 10 fit cases: use more shifts")
    table, best = select_candidate(fit_cases, keys=keys, gate_sets=gate_sets, quantile=quantile,
                                   min_coverage=min_coverage, folds=folds, seed=seed, success_iou=success_iou)
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
            out.append(d["bound"] if d["bound"] is not None else 0.0)
        return np.asarray(out, dtype=np.float64)

    y_fit = np.array([c.iou for c in fit_cases])
    y_val = np.array([c.iou for c in val_cases])
    fit_res = evaluate_bound(product_bounds(fit_cases), None, y_fit)
    val_res = evaluate_bound(product_bounds(val_cases), None, y_val) if val_cases else evaluate_bound([], None, [])
    in_gate = [c for c in val_cases if _in_gate(c, gate)]
    ig = evaluate_bound(product_bounds(in_gate), None, np.array([c.iou for c in in_gate]))
    val_res["in_gate_n"] = ig["n"]
    val_res["in_gate_coverage"] = ig["coverage"]
    val_res["in_gate_median_gap"] = ig["median_gap"]
    val_res["gated_n"] = len(val_cases) - len(in_gate)
    gated = [c.iou for c in val_cases if not _in_gate(c, gate)]
    val_res["gated_iou_max"] = float(max(gated)) if gated else math.nan
    by_fam = {}
    for fam in sorted({c.shift.family for c in val_cases}):
        cs = [c for c in val_cases if c.shift.family == fam]
        by_fam[fam] = evaluate_bound(product_bounds(cs), None, np.array([c.iou for c in cs]))
    verdicts = _verdict_table(val_cases, calibration)
    if hold_cases:
        hold = evaluate_bound(product_bounds(hold_cases), None, np.array([c.iou for c in hold_cases]))
        hold["by_family"] = {
            fam: evaluate_bound(product_bounds(cs), None, np.array([c.iou for c in cs]))
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
    model: Any,
    images: Any,
    labels: Any,
    *,
    shifts: Any = "toy-grid",
    n_shifts: int | None = None,
    n_images: int = 24,
    validation_fraction: float = 0.4,
    quantile: float = 0.05,
    min_coverage: float = 0.9,
    folds: int = 5,
    seed: int = 0,
    device: Any = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    n_patches: int | None = None,
    patch_size: int = 256,
    batch_size: int = 16,
    keys: Sequence[str] | None = None,
    reliable_at: float = RELIABLE_AT,
    unreliable_below: float = UNRELIABLE_BELOW,
    source_statistics_images: Any = None,
    holdout_shifts: Any = None,
) -> Iterator[Progress | Result[tuple[Any, CalibrationRun]]]:
    """The whole calibration, keeping every measured case: yields Progress, finally Result((model, run)).

    Parameters are those of :func:`calibrate`. The returned model is a copy with
    ``meta["calibration"]`` (and source statistics, measured on
    ``source_statistics_images`` or ``images`` if it had none).
    """
    import torch

    from .device import get_device
    from .images import check_stack
    from .source_statistics import compute_source_statistics_iter, read_source_statistics

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
        for item in compute_source_statistics_iter(
            out_model, source_statistics_images if source_statistics_images is not None else images,
            device=dev, intensity_range=intensity_range, patch_size=patch_size, batch_size=batch_size,
            seed=seed, in_place=True,
        ):
            if isinstance(item, Progress):
                yield item
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


def calibrate_iter(model: Any, images: Any, labels: Any, **kwargs: Any) -> Iterator[Progress | Result[Any]]:
    """Generator form of :func:`calibrate`: yields Progress, finally ``Result(model)``."""
    for item in run_calibration_iter(model, images, labels, **kwargs):
        if isinstance(item, Result):
            yield Result(item.value[0])
        else:
            yield item


def calibrate(model: Any, images: Any, labels: Any, **kwargs: Any) -> Any:
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
    images, labels : arrays (Z, Y, X)
        Labelled source data (ideally NOT the training images: held-out slices).
    shifts : {"toy-grid", "em"} or list of Shift, default "toy-grid"
        ``"toy-grid"``: class-wise intensity shifts (:func:`toy_grid_shifts`);
        ``"em"``: grey-value transformations (:func:`em_shifts`).
    n_shifts : int, optional
        Number of grid (or EM) shifts (default 128 / 96; failure families come on top).
    n_images : int, default 24
        Images (slices) per shifted target, drawn at random per shift.
    validation_fraction : float, default 0.4
        Share of the shifts held out for validation (seeded, stratified by family).
    quantile : float, default 0.05
        The lower quantile the curve follows.
    min_coverage : float, default 0.9
        Cross-validated coverage a candidate must reach to be chosen.
    folds : int, default 5
    seed : int, default 0
        Seeds the shifts, the split, the image subsets and the noise.
    device, intensity_range, n_patches, patch_size, batch_size
        As in :func:`adapt`.
    keys : list of str, optional
        Restrict the candidate distances (``"space|normalize|form"``).
    reliable_at, unreliable_below : float, default 0.8, 0.5
        Verdict thresholds on the bound, stored with the calibration.
    source_statistics_images : array, optional
        Images to measure the source statistics on when the model has none
        (default: ``images``; better: the training images).
    holdout_shifts : {"toy-grid", "em"} or list of Shift, optional
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
    return run_to_end(calibrate_iter(model, images, labels, **kwargs))


def calibration_curve(model: Any) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(x, lower-bound IoU, x-axis label) of a model's calibration for plotting, or None."""
    from .reliability_bound import calibration_curve as _cc

    return _cc(model)
