"""The lower-bound curve: a monotone step function of the distance, fitted as a low quantile in
blocks, evaluated on held-out cases, and plotted from a model's calibration."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..model.unet import UNet


@dataclass(frozen=True)
class CalibrationCurve:
    """The calibrated lower-bound curve of a model, for plotting (see :func:`calibration_curve`).

    Attributes
    ----------
    x : numpy.ndarray
        Step-function points on the x axis: ``log(1 + distance)``.
    y : numpy.ndarray
        The lower bound on the adapted IoU at ``x`` (non-increasing).
    label : str
        The x-axis label: which distance, in words.
    """

    x: np.ndarray
    y: np.ndarray
    label: str


def calibration_curve(model: UNet) -> CalibrationCurve | None:
    """The calibrated lower-bound curve of a model, for plotting.

    Parameters
    ----------
    model : UNet
        A model with a calibration in its model card (``meta["calibration"]``).

    Returns
    -------
    CalibrationCurve or None
        Step-function points ``x`` (``log(1 + distance)``), ``y`` (lower bound on the
        adapted IoU) and the x-axis ``label``; None when the model has no calibration.
    """
    cal = (getattr(model, "meta", None) or {}).get("calibration")
    if not cal:
        return None
    x, y = LowerBound.from_dict(cal["curve"]).curve()
    return CalibrationCurve(x=x, y=y, label=cal["feature"]["x_label"])


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


@dataclass(frozen=True)
class BoundEvaluation:
    """How a lower bound fares on cases with known IoU (see :func:`evaluate_bound`).

    Attributes
    ----------
    n : int
        Number of cases.
    coverage : float
        Share of the cases with ``IoU >= bound`` (nan without cases).
    median_gap, mean_gap : float
        Median and mean of ``IoU - bound`` (IoU units).
    mean_bound : float
        Mean bound over the cases (higher = tighter).
    worst_shortfall : float
        Largest ``bound - IoU`` of a case below its bound; 0 when none is.
    """

    n: int
    coverage: float
    median_gap: float
    mean_gap: float
    mean_bound: float
    worst_shortfall: float

    def to_dict(self) -> dict[str, float]:
        """Plain-JSON form (as stored in a model's calibration)."""
        return asdict(self)


def evaluate_bound(bound: LowerBound | Callable[[Any], Any] | ArrayLike, x: ArrayLike | None,
                   y: ArrayLike) -> BoundEvaluation:
    """Coverage (share with ``y >= bound(x)``), the median and mean gap ``y - bound``, the mean bound,
    and the largest shortfall ``bound - y`` of a case below its bound (0 when none is).

    Parameters
    ----------
    bound : LowerBound, callable or array-like
        The bound as a function of ``x``, or the bound values of the cases themselves.
    x : array-like or None
        The cases' predictor (``log(1 + distance)``) when ``bound`` is a function;
        ignored otherwise. Non-finite x give bound 0.
    y : array-like
        The cases' true IoU.

    Returns
    -------
    BoundEvaluation
    """
    y = np.asarray(y, dtype=np.float64)
    b = np.asarray(bound(x) if callable(bound) else bound, dtype=np.float64)
    b = np.where(np.isfinite(b), b, 0.0)
    if len(y) == 0:
        return BoundEvaluation(n=0, coverage=math.nan, median_gap=math.nan, mean_gap=math.nan, mean_bound=math.nan,
                               worst_shortfall=math.nan)
    gap = y - b
    return BoundEvaluation(
        n=int(len(y)),
        coverage=float(np.mean(y >= b - 1e-12)),
        median_gap=float(np.median(gap)),
        mean_gap=float(np.mean(gap)),
        mean_bound=float(np.mean(b)),
        worst_shortfall=float(max(0.0, -gap.min())),
    )
