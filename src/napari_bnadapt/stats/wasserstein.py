"""Wasserstein-2 distances between Gaussians, with their sampling-noise floor.

Formulas (docs/method.md, 'Latent spaces and the Wasserstein distance'; Givens and Shortt 1984; the normalised forms of
the BN-adaptation paper, Eq. 2-5):

* plain:  ``W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)``
* normalised by a reference Gaussian (m_r, S_r), with ``L = chol(S_r)`` and
  ``lambda = eigvalsh(L^-1 S_o L^-T)``::

      |L^-1 (m_o - m_r)|^2 + sum_i (sqrt(lambda_i) - 1)^2     (every term >= 0)

  ``normalize="source"`` takes the FIRST Gaussian as the reference (snW2^2 when
  the first is the source), ``normalize="target"`` the SECOND (tnW2^2).
* diagonal forms (per-channel variances only)::

      plain:      sum_i (m1_i - m2_i)^2 + (sqrt v1_i - sqrt v2_i)^2
      normalised: sum_i (m_o,i - m_r,i)^2 / v_r,i + (sqrt(v_o,i / v_r,i) - 1)^2

Numerics: everything is computed in float64 numpy (inputs may be numpy arrays
or torch tensors of any float dtype; torch is never imported by this module).
The plain trace term uses ``tr (S1^1/2 S2 S1^1/2)^1/2 = ||F2^T F1||_*`` (nuclear
norm) for any factors ``S = F F^T`` (Cholesky, or ``V diag(sqrt(max(w, 0)))``
from ``eigh`` when Cholesky fails on a singular matrix). Singular values are
accurate to ``eps * ||F1|| ||F2||``, so identical rank-deficient inputs give
~1e-15 of the trace, whereas ``sqrtm(S1 @ S2)`` (pytorch-fid) is slower and
goes negative or complex; for well-conditioned inputs the (equally accurate
there) eigenvalues of ``(F2^T F1)^T (F2^T F1)`` replace the SVD for speed.
Results are clamped at 0.

Sampling noise: two samples of the SAME Gaussian (effective sizes m1, m2) give
a positive distance on average; see :func:`noise_floor`. :func:`distance`
reports every value with its floor and says whether it is meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg as sla

from ..errors import BNAdaptError

__all__ = [
    "w2_squared",
    "w2_squared_diag",
    "noise_floor",
    "distance",
    "Distance",
]

_NORMALIZE = (None, "source", "target")


# ----------------------------------------------------------------- helpers
def _f64(x: Any, name: str, ndim: int, n: int | None = None) -> np.ndarray:
    """float64 numpy copy of a numpy array / torch tensor / sequence (torch is not imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, duck-typed
        x = x.detach().cpu()
        if hasattr(x, "double"):
            x = x.double()
        x = x.numpy()
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BNAdaptError(f"{name} must be an array of numbers ({exc})") from None
    if a.ndim != ndim:
        raise BNAdaptError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if ndim == 2 and a.shape[0] != a.shape[1]:
        raise BNAdaptError(f"{name} must be square, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise BNAdaptError(f"{name} has size {a.shape[0]} but the means have size {n}")
    if not np.all(np.isfinite(a)):
        raise BNAdaptError(f"{name} contains NaN or infinite values")
    return a


def _check_normalize(normalize: str | None) -> None:
    if normalize not in _NORMALIZE:
        raise BNAdaptError(f"normalize must be None, 'source' or 'target', got {normalize!r}")


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def _psd_factor(s: np.ndarray) -> tuple[np.ndarray, bool]:
    """F with F F^T = S (S symmetric PSD), and whether it is a Cholesky factor.

    Cholesky when S is numerically positive definite, else ``V diag(sqrt(max(w, 0)))``
    from ``eigh`` (eigenvalues clamped at 0).
    """
    try:
        return sla.cholesky(s, lower=True, check_finite=False), True
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(s)
        return v * np.sqrt(np.clip(w, 0.0, None)), False


# The eigenvalues of G = B^T B replace the SVD of B only when they span less than this ratio
# (singular values of B within 1e6; roughly cond(S1) * cond(S2) < 1e12). Measured at n = 64-1024
# with cond(S) up to 1e6 each, both routes then agree to ~1e-15 of the trace, and to <= 5e-13 of
# it for ridge-regularised rank-deficient input (clusters of small eigenvalues). Below it (and for
# numerically singular input) the small eigenvalues of G carry an absolute error ~eps |G|, whose
# square roots would give ~1e-8 of the scale each: the SVD is used.
_GRAM_RATIO = 1e-12


def _gram_may_do(l1: np.ndarray, l2: np.ndarray) -> bool:
    """Cheap guess whether B = L2^T L1 is conditioned well enough for the eigvalsh route.

    max|L_ii| / min|L_ii| is a lower bound on cond(L) (the diagonal holds the
    eigenvalues of a triangular matrix). When the product for both factors is
    already beyond the limit the SVD is taken straight away instead of after a
    wasted eigvalsh. Only speed depends on this guess: the route is decided by
    the computed eigenvalues.
    """
    d1, d2 = np.abs(np.diag(l1)), np.abs(np.diag(l2))
    if d1.min() <= 0 or d2.min() <= 0:
        return False
    return (d1.max() / d1.min()) * (d2.max() / d2.min()) < 1.0 / math.sqrt(_GRAM_RATIO)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2, the nuclear norm of B = F2^T F1 (any factors S = F F^T).

    The singular values of B are the square roots of the eigenvalues of
    S1^1/2 S2 S1^1/2 (both are similar to F1^T S2 F1 = B^T B). An SVD of B has
    an absolute error ~eps ||B|| per singular value, so tiny and zero singular
    values (rank-deficient inputs) stay at ~1e-16 of the scale; eigvalsh of
    B^T B followed by a square root would give sqrt(eps) ||B|| there. When both
    covariances are positive definite and B^T B is well conditioned, the
    faster eigvalsh route is exact to the same order and is used.
    """
    f1, ok1 = _psd_factor(s1)
    f2, ok2 = _psd_factor(s2)
    if ok2:  # B = L2^T F1 by a triangular product
        b = sla.blas.dtrmm(1.0, f2, f1, lower=1, trans_a=1)
    else:
        b = f2.T @ f1
    if ok1 and ok2 and _gram_may_do(f1, f2):
        g = sla.blas.dsyrk(1.0, b, trans=1, lower=1)  # lower triangle of B^T B
        mu = sla.eigvalsh(g, lower=True, check_finite=False)
        if mu[-1] > 0 and mu[0] > _GRAM_RATIO * mu[-1]:
            return float(np.sum(np.sqrt(mu)))
    return float(np.sum(sla.svdvals(b, check_finite=False)))


def _whiten(ref: np.ndarray, what: str) -> np.ndarray:
    try:
        return sla.cholesky(ref, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise BNAdaptError(
            f"the {what} covariance is singular (not positive definite), so the normalised distance is "
            "undefined; use the plain or the diagonal form, or more images"
        ) from None


# -------------------------------------------------------------- full forms
def w2_squared(mean1: Any, cov1: Any, mean2: Any, cov2: Any, normalize: str | None = None) -> float:
    """Squared 2-Wasserstein distance between N(mean1, cov1) and N(mean2, cov2).

    Parameters
    ----------
    mean1, mean2 : array-like (n,)
    cov1, cov2 : array-like (n, n)
        Symmetric positive semi-definite (symmetrised here). numpy or torch, any
        float dtype; computed in float64.
    normalize : {None, "source", "target"}
        None: the plain W2^2 (symmetric). "source": in the coordinates whitened
        by the FIRST Gaussian (snW2^2 with the source first); "target": whitened
        by the SECOND (tnW2^2). The reference covariance must be positive
        definite.

    Returns
    -------
    float
        >= 0.

    Raises
    ------
    BNAdaptError
        Bad shapes, non-finite values, or a singular reference covariance.
    """
    _check_normalize(normalize)
    m1 = _f64(mean1, "mean1", 1)
    n = m1.shape[0]
    m2 = _f64(mean2, "mean2", 1, n)
    s1 = _sym(_f64(cov1, "cov1", 2, n))
    s2 = _sym(_f64(cov2, "cov2", 2, n))
    if normalize is None:
        d = m1 - m2
        tr = float(np.trace(s1) + np.trace(s2)) - 2.0 * _trace_sqrt_product(s1, s2)
        return max(0.0, float(d @ d) + max(0.0, tr))
    if normalize == "source":
        m_r, s_r, m_o, s_o, what = m1, s1, m2, s2, "first (source)"
    else:
        m_r, s_r, m_o, s_o, what = m2, s2, m1, s1, "second (target)"
    return _normalised_w2(m_r, s_r, m_o, s_o, what)


def _normalised_w2(m_r: np.ndarray, s_r: np.ndarray, m_o: np.ndarray, s_o: np.ndarray, what: str) -> float:
    lo = _whiten(s_r, what)
    z = sla.solve_triangular(lo, m_o - m_r, lower=True, check_finite=False)
    x = sla.solve_triangular(lo, s_o, lower=True, check_finite=False)  # L^-1 S_o
    a = sla.solve_triangular(lo, x.T, lower=True, check_finite=False)  # L^-1 S_o L^-T
    lam = sla.eigvalsh(_sym(a), check_finite=False)
    cov_term = float(np.sum((np.sqrt(np.clip(lam, 0.0, None)) - 1.0) ** 2))
    return max(0.0, float(z @ z) + cov_term)


# ---------------------------------------------------------- diagonal forms
def w2_squared_diag(mean1: Any, var1: Any, mean2: Any, var2: Any, normalize: str | None = None) -> float:
    """Squared W2 between Gaussians with diagonal covariances (per-channel variances).

    ``sum (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2``; normalised by the reference
    (``"source"``: first, ``"target"``: second):
    ``sum (m_o - m_r)^2 / v_r + (sqrt(v_o / v_r) - 1)^2``. Variances must be
    >= 0, and > 0 for the reference of a normalised form.
    """
    _check_normalize(normalize)
    m1 = _f64(mean1, "mean1", 1)
    n = m1.shape[0]
    m2 = _f64(mean2, "mean2", 1, n)
    v1 = _f64(var1, "var1", 1, n)
    v2 = _f64(var2, "var2", 1, n)
    if np.any(v1 < 0) or np.any(v2 < 0):
        raise BNAdaptError("variances must not be negative")
    if normalize is None:
        return float(np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    if normalize == "source":
        m_r, v_r, m_o, v_o, what = m1, v1, m2, v2, "first (source)"
    else:
        m_r, v_r, m_o, v_o, what = m2, v2, m1, v1, "second (target)"
    if np.any(v_r <= 0):
        raise BNAdaptError(
            f"{int(np.sum(v_r <= 0))} channel(s) of the {what} Gaussian have zero variance, "
            "so the normalised distance is undefined"
        )
    return float(np.sum((m_o - m_r) ** 2 / v_r) + np.sum((np.sqrt(v_o / v_r) - 1.0) ** 2))


# ------------------------------------------------------------- noise floor
def noise_floor(
    n: int,
    m1: float,
    m2: float,
    normalize: str | None = "source",
    *,
    form: str = "full",
    cov: Any = None,
    var: Any = None,
) -> float:
    """Expected W2^2 between two independent samples of the SAME Gaussian.

    Leading order in 1/m (m = EFFECTIVE sample sizes of the two samples); with
    ``c = 1/m1 + 1/m2``:

    * normalised, full:     ``(n^2 + 5 n) / 4 * c``
    * normalised, diagonal: ``3/2 * n * c``
    * plain, full (needs ``cov``, eigenvalues l_i):
      ``c * (5/4 sum_i l_i + 1/2 sum_ij l_i l_j / (l_i + l_j))`` (= the normalised
      value when cov = I)
    * plain, diagonal (needs ``var``): ``3/2 * c * sum_i v_i``

    Derivation: the mean term contributes ``E|x1 - x2|^2 = c tr(S)`` (``c n``
    whitened). To second order the covariance term is the Bures metric
    ``1/2 tr(dS X)`` with ``S X + X S = dS``; for ``dS = S1 - S2`` of two Wishart
    estimates ``E dS_ij^2 = c l_i l_j (1 + delta_ij)`` in the eigenbasis of S,
    giving ``c (n^2 + n) / 4`` whitened. In the diagonal forms each channel is a
    1-d case: ``c`` from the mean and ``c / 2`` from the variance, whatever the
    correlation between channels (each term depends only on its channel's
    marginal). The normalised forms are affine-invariant, so the floor does not
    depend on the covariance.

    The thesis' fit ``f_err(m, n) = (0.502 n^2 + 2.596 n - 4.457) / m`` is this
    formula with m1 = m2 = m (m samples in EACH of the two sets):
    ``(n^2 + 5 n) / (2 m)``. It used raw pixel counts for m (Table 5.1), which
    overstates the information in correlated pixels.

    Checked by simulation (i.i.d. samples, n = 4-64): the mean of 200 repeats is
    within 2 % of the formula for m >= 30 n, and ~15 % above it for the
    normalised full forms at m = 10 n (leading order only: the inverse of an
    estimated covariance is biased up). With clustered (image) data and m the
    effective count of :class:`~napari_bnadapt.stats.moments.GaussianMoments`, the
    floor errs high (observed/floor ~0.6-1.0), because the design effect of the
    mean is also applied to the covariance part.
    """
    _check_normalize(normalize)
    if form not in ("full", "diagonal"):
        raise BNAdaptError(f"form must be 'full' or 'diagonal', got {form!r}")
    n = int(n)
    m1, m2 = float(m1), float(m2)
    if n < 1:
        raise BNAdaptError(f"the dimension must be at least 1, got {n}")
    if not (m1 > 0 and m2 > 0):
        return math.inf
    c = 1.0 / m1 + 1.0 / m2
    if normalize is not None:
        return (n * n + 5.0 * n) / 4.0 * c if form == "full" else 1.5 * n * c
    if form == "diagonal":
        if var is None:
            if cov is None:
                raise BNAdaptError("the plain (unnormalised) noise floor needs the variances (var=)")
            v = np.diag(_f64(cov, "cov", 2, n))
        else:
            v = _f64(var, "var", 1, n)
        return 1.5 * c * float(np.sum(np.clip(v, 0.0, None)))
    if cov is None:
        raise BNAdaptError("the plain (unnormalised) full-covariance noise floor needs the covariance (cov=)")
    lam = np.clip(np.linalg.eigvalsh(_sym(_f64(cov, "cov", 2, n))), 0.0, None)
    num = np.outer(lam, lam)
    den = lam[:, None] + lam[None, :]
    pair = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return c * (1.25 * float(lam.sum()) + 0.5 * float(pair.sum()))


# ---------------------------------------------------------------- distance
_LABEL = {None: "W2²", "source": "snW2²", "target": "tnW2²"}


@dataclass(frozen=True)
class Distance:
    """A W2^2 distance between two fitted Gaussians, with what is needed to trust it.

    Attributes
    ----------
    value : float
        W2^2 in the chosen normalisation (nan when it could not be computed).
    floor : float
        Expected value for two samples of one Gaussian of the same sizes
        (:func:`noise_floor`); values near it are indistinguishable from 0.
    m_eff_ref, m_eff_other : float
        Effective sample sizes of the first and second Gaussian.
    dim : int
        Dimension n (channels).
    form : str
        "full" or "diagonal" (the form actually computed).
    normalize : str or None
        None, "source" (by the first) or "target" (by the second).
    meaningful : bool
        False when the value must not be used (singular/ill-conditioned
        reference, too few effective samples); ``reason`` says why.
    reason : str
        Why it is not meaningful, or a note (e.g. a fallback to the diagonal form).
    """

    value: float
    floor: float
    m_eff_ref: float
    m_eff_other: float
    dim: int
    form: str
    normalize: str | None
    meaningful: bool
    reason: str = ""

    @property
    def label(self) -> str:
        """``snW2²``, ``tnW2²`` or ``W2²`` (with "(diagonal)" for the diagonal form)."""
        lab = _LABEL[self.normalize]
        return lab + (" (diagonal)" if self.form == "diagonal" else "")

    @property
    def above_floor(self) -> float:
        """value / floor (1 = what two samples of one Gaussian give on average)."""
        if not (self.floor > 0) or not math.isfinite(self.value):
            return math.nan
        return self.value / self.floor

    def __str__(self) -> str:
        m = (
            f"{self.m_eff_ref:,.0f}"
            if round(self.m_eff_ref) == round(self.m_eff_other)
            else f"{self.m_eff_ref:,.0f} / {self.m_eff_other:,.0f}"
        )
        s = f"{self.label} = {_fmt(self.value)} (noise floor {_fmt(self.floor)}, m_eff {m}, n {self.dim})"
        if not self.meaningful:
            s += f" - not meaningful: {self.reason}"
        elif self.reason:
            s += f" - {self.reason}"
        return s


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if 1000 <= abs(v) < 1e7:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _as_moments(m: Any, name: str) -> Any:
    if isinstance(m, dict):  # to_dict() output, e.g. read from a model file
        from .moments import GaussianMoments  # imports torch

        return GaussianMoments.from_dict(m)
    for attr in ("mean", "var", "cov", "effective_count"):
        if not hasattr(m, attr):
            raise BNAdaptError(f"{name} is not a set of Gaussian moments (no {attr!r})")
    return m


def distance(
    moments_ref: Any,
    moments_other: Any,
    normalize: str | None = "source",
    *,
    form: str = "auto",
    min_samples_per_dim: float = 10.0,
    rcond: float = 1e-10,
    fallback: bool = True,
) -> Distance:
    """W2^2 between two fitted Gaussians, with its noise floor and a verdict.

    Parameters
    ----------
    moments_ref, moments_other : GaussianMoments or dict
        The two Gaussians (e.g. source model on source images, adapted model on
        target images); a dict is :meth:`GaussianMoments.to_dict` output.
    normalize : {"source", "target", None}
        "source": whitened by ``moments_ref`` (the FIRST); "target": by
        ``moments_other`` (the SECOND); None: plain W2^2.
    form : {"auto", "full", "diagonal"}
        "auto": full when both have a full covariance, else diagonal.
    min_samples_per_dim : float
        The full form needs an effective sample size >= this * n in both
        Gaussians (the diagonal form >= this).
    rcond : float
        A normalising covariance whose smallest eigenvalue (variance, in the
        diagonal form) is <= rcond * the largest counts as singular.
    fallback : bool
        When the full form is not meaningful, compute the diagonal form instead
        and say so in ``reason`` (``form`` becomes "diagonal"). Note that full and
        diagonal values are different quantities: do not compare one with a
        threshold fitted on the other.

    Returns
    -------
    Distance
    """
    _check_normalize(normalize)
    if form not in ("auto", "full", "diagonal"):
        raise BNAdaptError(f"form must be 'auto', 'full' or 'diagonal', got {form!r}")
    a = _as_moments(moments_ref, "moments_ref")
    b = _as_moments(moments_other, "moments_other")
    ma, mb = np.asarray(a.mean, dtype=np.float64), np.asarray(b.mean, dtype=np.float64)
    n = ma.shape[0]
    if mb.shape[0] != n:
        raise BNAdaptError(f"the two Gaussians have different dimensions ({n} and {mb.shape[0]})")
    ea, eb = float(a.effective_count), float(b.effective_count)
    ref_name = {"source": "first (reference)", "target": "second (other)", None: ""}[normalize]
    notes: list[str] = []

    if form in ("auto", "full"):
        ca, cb = a.cov, b.cov
        if ca is None or cb is None:
            problem = "full covariance not stored (diagonal-only statistics)"
            if form == "full" and not fallback:
                return Distance(math.nan, math.inf, ea, eb, n, "full", normalize, False, problem)
            notes.append(problem)
        else:
            ca = _sym(np.asarray(ca, dtype=np.float64))
            cb = _sym(np.asarray(cb, dtype=np.float64))
            floor = noise_floor(n, ea, eb, normalize, form="full", cov=0.5 * (ca + cb))
            problem, computable = None, True
            need = min_samples_per_dim * n
            if min(ea, eb) < need:  # computable, but sampling noise dominates the covariance
                problem = (
                    f"too few effective samples for a {n}-dimensional covariance "
                    f"(m_eff {min(ea, eb):,.0f} < {min_samples_per_dim:g} n = {need:,.0f})"
                )
            if normalize is not None:
                w = np.linalg.eigvalsh(ca if normalize == "source" else cb)
                if not (w[-1] > 0) or w[0] <= rcond * w[-1]:
                    cond = math.inf if w[0] <= 0 else w[-1] / w[0]
                    p = (
                        f"the {ref_name} covariance is singular or ill-conditioned "
                        f"(condition number {cond:.2g}), so the normalised full form is undefined or noise"
                    )
                    problem = p if problem is None else f"{problem}; {p}"
                    computable = False
            value = math.nan
            if computable:
                try:
                    value = w2_squared(ma, ca, mb, cb, normalize=normalize)
                except BNAdaptError as exc:  # Cholesky failed after all
                    problem, value = str(exc), math.nan
            if problem is None:
                return Distance(value, floor, ea, eb, n, "full", normalize, True, "")
            if not fallback:
                return Distance(value, floor, ea, eb, n, "full", normalize, False, problem)
            notes.append(problem)

    # the diagonal form (asked for, the only one stored, or the fallback)
    va, vb = np.asarray(a.var, dtype=np.float64), np.asarray(b.var, dtype=np.float64)
    floor = noise_floor(n, ea, eb, normalize, form="diagonal", var=0.5 * (va + vb))
    problems: list[str] = []
    computable = True
    if min(ea, eb) < min_samples_per_dim:
        problems.append(f"too few effective samples (m_eff {min(ea, eb):,.0f} < {min_samples_per_dim:g})")
    if normalize is not None:
        v_ref = va if normalize == "source" else vb
        vmax = float(v_ref.max())
        bad = int(np.sum(v_ref <= rcond * vmax)) if vmax > 0 else n
        if bad:
            problems.append(f"{bad} channel(s) of the {ref_name} Gaussian have (almost) zero variance")
            computable = False
    value = w2_squared_diag(ma, va, mb, vb, normalize=normalize) if computable else math.nan
    if notes and not problems:
        notes.append("diagonal form used instead")
    reason = "; ".join(notes + problems)
    return Distance(value, floor, ea, eb, n, "diagonal", normalize, not problems, reason)
