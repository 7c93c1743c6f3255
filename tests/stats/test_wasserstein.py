"""W2 distances: accuracy against an mpmath reference, numerics, noise floor, verdicts."""

from __future__ import annotations

import subprocess
import sys

import mpmath as mp
import numpy as np
import pytest
import torch

from napari_bnadapt.errors import BNAdaptError
from napari_bnadapt.stats.wasserstein import (
    Distance,
    distance,
    noise_floor,
    w2_squared,
    w2_squared_diag,
)


def _spd(rng, n, cond_floor=0.5, scale=1.0):
    a = rng.standard_normal((n, n))
    return scale * (a @ a.T / n + cond_floor * np.eye(n))


# ------------------------------------------------------------- mpmath reference
# Plain Python lists of mpf (rows) and triangular-aware products: mpmath is pure Python
# (a 64 x 64 matrix product costs ~0.3 s, mpmath.eigsy ~1-3 s), so the work is kept small.
def _mpf_vec(a):
    return [mp.mpf(float(v)) for v in np.asarray(a, dtype=np.float64)]


def _mpf_mat(a):
    return [_mpf_vec(row) for row in np.asarray(a, dtype=np.float64)]


def _mp_cholesky(s):
    """Lower Cholesky factor L (S = L L^T) as rows."""
    n = len(s)
    lo = [[mp.mpf(0)] * n for _ in range(n)]
    for j in range(n):
        d = s[j][j] - mp.fdot(lo[j][:j], lo[j][:j])
        lo[j][j] = mp.sqrt(d)
        for i in range(j + 1, n):
            lo[i][j] = (s[i][j] - mp.fdot(lo[i][:j], lo[j][:j])) / lo[j][j]
    return lo


def _mp_forward(lo, b_cols):
    """Solve L X = B for lower-triangular L; B given as a list of columns."""
    n = len(lo)
    out = []
    for b in b_cols:
        x = [mp.mpf(0)] * n
        for i in range(n):
            x[i] = (b[i] - mp.fdot(lo[i][:i], x[:i])) / lo[i][i]
        out.append(x)
    return out


def _mp_gram(cols):
    """G = C^T C for C given as a list of columns (symmetric; rows of mpf)."""
    n = len(cols)
    g = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            g[i][j] = g[j][i] = mp.fdot(cols[i], cols[j])
    return g


def _mp_eigvalsh(a):
    """Eigenvalues of a symmetric mpf matrix, certified to far below 1e-9.

    Rayleigh quotients of float64 eigenvectors, evaluated in 50 digits: for a unit
    vector q with residual r = A q - rho q, |rho - lambda| <= |r|^2 / gap
    (gap = distance from rho to the other eigenvalues). The residual of a float64
    eigenvector is ~1e-16 |A|, so each eigenvalue is good to ~1e-30 relative, and the
    bound is checked. (mpmath.eigsy gives the same but takes seconds for n = 64.)
    """
    n = len(a)
    _, q = np.linalg.eigh(np.array([[float(v) for v in row] for row in a]))
    rho, res = [], []
    for j in range(n):
        v = _mpf_vec(q[:, j])
        norm = mp.sqrt(mp.fdot(v, v))
        v = [x / norm for x in v]
        av = [mp.fdot(row, v) for row in a]
        r = mp.fdot(v, av)
        rho.append(r)
        res.append(mp.sqrt(mp.fsum((x - r * y) ** 2 for x, y in zip(av, v))))
    scale = max(abs(r) for r in rho)
    for j in range(n):
        gap = min(abs(rho[j] - rho[k]) for k in range(n) if k != j)
        assert res[j] ** 2 / gap < mp.mpf(10) ** -25 * scale, "reference eigenvalue not certified"
    return rho


@pytest.fixture(scope="module")
def mp_case():
    """A well-conditioned n = 64 case and its 50-digit reference values for all three forms."""
    mp.mp.dps = 50
    rng = np.random.default_rng(20240611)
    n = 64
    m1, m2 = rng.standard_normal(n), rng.standard_normal(n) * 0.7 + 0.3
    s1, s2 = _spd(rng, n, 0.5, 2.0), _spd(rng, n, 0.3, 0.7)
    M1, M2, S1, S2 = _mpf_vec(m1), _mpf_vec(m2), _mpf_mat(s1), _mpf_mat(s2)
    L1, L2 = _mp_cholesky(S1), _mp_cholesky(S2)
    d = [a - b for a, b in zip(M1, M2)]
    tr1, tr2 = mp.fsum(S1[i][i] for i in range(n)), mp.fsum(S2[i][i] for i in range(n))

    # plain: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2); S1^1/2 S2 S1^1/2 is similar to
    # L1^T S2 L1 = C^T C with C = L2^T L1 (columns: c_j = L2^T l1_j)
    l1_cols = [[L1[i][j] for i in range(n)] for j in range(n)]
    c_cols = [[mp.fdot([L2[k][i] for k in range(i, n)], col[i:]) for i in range(n)] for col in l1_cols]
    ev = _mp_eigvalsh(_mp_gram(c_cols))
    plain = mp.fdot(d, d) + tr1 + tr2 - 2 * mp.fsum(mp.sqrt(e) for e in ev)

    # source-normalised: (m2-m1)^T S1^-1 (m2-m1) + tr(I + S1^-1 S2) - 2 tr((S1^-1/2 S2 S1^-1/2)^1/2);
    # S1^-1/2 S2 S1^-1/2 is similar to A = (L1^-1 L2)(L1^-1 L2)^T, whose eigenvalues are those
    # of S1^-1 S2; the target-normalised form has the reciprocal eigenvalues (S2^-1 S1).
    l2_cols = [[L2[i][j] for i in range(n)] for j in range(n)]
    x_cols = _mp_forward(L1, l2_cols)  # columns of X = L1^-1 L2
    x_rows = [[x_cols[j][i] for j in range(n)] for i in range(n)]
    lam = _mp_eigvalsh(_mp_gram(x_rows))  # X X^T
    z1 = _mp_forward(L1, [d])[0]
    z2 = _mp_forward(L2, [d])[0]
    sn = mp.fdot(z1, z1) + n + mp.fsum(lam) - 2 * mp.fsum(mp.sqrt(e) for e in lam)
    tn = mp.fdot(z2, z2) + n + mp.fsum(1 / e for e in lam) - 2 * mp.fsum(1 / mp.sqrt(e) for e in lam)
    return (m1, s1, m2, s2), {None: plain, "source": sn, "target": tn}


@pytest.mark.parametrize("normalize", [None, "source", "target"])
def test_matches_mpmath_reference(mp_case, normalize):
    (m1, s1, m2, s2), ref = mp_case
    got = w2_squared(m1, s1, m2, s2, normalize=normalize)
    want = float(ref[normalize])
    assert want > 1.0  # a real distance, not a cancellation test
    assert abs(got - want) <= 1e-9 * abs(want), (got, want)


def test_closed_forms_for_known_gaussians():
    """Shifted copies and scaled covariances, whose W2^2 is known in closed form, at several sizes of shift."""
    rng = np.random.default_rng(12)
    n = 6
    s = _spd(rng, n)
    u = rng.standard_normal(n)
    maha = float(u @ np.linalg.solve(s, u))
    for t in (0.0, 0.5, 1.0, 3.0):  # a pure mean shift: |t u|^2 plain, t^2 u^T S^-1 u whitened
        m2 = t * u
        assert w2_squared(np.zeros(n), s, m2, s) == pytest.approx(t * t * float(u @ u), rel=1e-10, abs=1e-12)
        assert w2_squared(np.zeros(n), s, m2, s, "source") == pytest.approx(t * t * maha, rel=1e-10, abs=1e-12)
    for c in (0.25, 1.0, 4.0):  # S2 = c S1: tr(S1) (sqrt(c) - 1)^2 plain, n (sqrt(c) - 1)^2 whitened
        want = float(np.trace(s)) * (np.sqrt(c) - 1) ** 2
        assert w2_squared(u, s, u, c * s) == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert w2_squared(u, s, u, c * s, "source") == pytest.approx(n * (np.sqrt(c) - 1) ** 2, rel=1e-9, abs=1e-12)
        assert w2_squared(u, s, u, c * s, "target") == pytest.approx(n * (1 / np.sqrt(c) - 1) ** 2, rel=1e-9, abs=1e-12)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert w2_squared([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


# ----------------------------------------------------------------- numerics
@pytest.mark.parametrize("n,rank", [(64, 20), (128, 40)])
def test_identical_rank_deficient_is_zero_not_negative(n, rank):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, rank)) * rng.uniform(0.1, 10, rank)
    s = a @ a.T
    m = rng.standard_normal(n) * 5
    v = w2_squared(m, s, m, s)
    assert 0.0 <= v <= 1e-10 * np.trace(s)
    # a slightly perturbed copy: still >= 0 and tiny
    v2 = w2_squared(m, s, m, s * (1 + 1e-12))
    assert 0.0 <= v2 <= 1e-10 * np.trace(s)
    # a normalised form needs a positive-definite reference
    with pytest.raises(BNAdaptError, match="singular"):
        w2_squared(m, s, m, s, normalize="source")


def test_fast_and_svd_routes_agree_on_ill_conditioned_input(monkeypatch):
    import napari_bnadapt.stats.wasserstein as w

    rng = np.random.default_rng(11)
    n = 96
    covs = []
    for _ in range(2):  # condition number 1e5
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        covs.append((q * np.logspace(0, -5, n)) @ q.T)
    m1, m2 = rng.standard_normal(n) * 0.01, rng.standard_normal(n) * 0.01
    fast = w2_squared(m1, covs[0], m2, covs[1])
    monkeypatch.setattr(w, "_GRAM_RATIO", 2.0)  # force the SVD route
    svd = w2_squared(m1, covs[0], m2, covs[1])
    assert fast == pytest.approx(svd, rel=1e-12)
    assert 0.0 <= w2_squared(m1, covs[0], m1, covs[0]) <= 1e-13 * np.trace(covs[0])


def test_float32_inputs():
    rng = np.random.default_rng(1)
    n = 32
    m1, m2, s1, s2 = rng.standard_normal(n), rng.standard_normal(n), _spd(rng, n), _spd(rng, n)
    f32 = [x.astype(np.float32) for x in (m1, s1, m2, s2)]
    for normalize in (None, "source", "target"):
        ref64 = w2_squared(m1, s1, m2, s2, normalize=normalize)
        got = w2_squared(*f32, normalize=normalize)
        assert isinstance(got, float)
        assert got == pytest.approx(w2_squared(*[x.astype(np.float64) for x in f32], normalize=normalize), rel=1e-12)
        assert got == pytest.approx(ref64, rel=1e-5)


def test_huge_common_offset():
    rng = np.random.default_rng(2)
    n = 48
    m1, m2, s1, s2 = rng.standard_normal(n), rng.standard_normal(n), _spd(rng, n), _spd(rng, n)
    off = 1e6 + rng.uniform(0, 1, n)
    for normalize in (None, "source", "target"):
        base = w2_squared(m1, s1, m2, s2, normalize=normalize)
        shifted = w2_squared(m1 + off, s1, m2 + off, s2, normalize=normalize)
        assert shifted == pytest.approx(base, rel=1e-8)
    base = w2_squared_diag(m1, np.diag(s1), m2, np.diag(s2), "target")
    assert w2_squared_diag(m1 + off, np.diag(s1), m2 + off, np.diag(s2), "target") == pytest.approx(base, rel=1e-8)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    n = 24
    m1, m2, s1, s2 = rng.standard_normal(n), rng.standard_normal(n), _spd(rng, n), _spd(rng, n)
    for normalize in (None, "source", "target"):
        ref = w2_squared(m1, s1, m2, s2, normalize=normalize)
        t64 = [torch.from_numpy(x) for x in (m1, s1, m2, s2)]
        assert w2_squared(*t64, normalize=normalize) == pytest.approx(ref, rel=1e-13)
        t32 = [torch.from_numpy(x).float() for x in (m1, s1, m2, s2)]
        n32 = [x.astype(np.float32) for x in (m1, s1, m2, s2)]
        assert w2_squared(*t32, normalize=normalize) == pytest.approx(w2_squared(*n32, normalize=normalize), rel=1e-13)
    v1, v2 = np.diag(s1).copy(), np.diag(s2).copy()
    assert w2_squared_diag(torch.from_numpy(m1), torch.from_numpy(v1), m2, torch.from_numpy(v2), "source") == (
        pytest.approx(w2_squared_diag(m1, v1, m2, v2, "source"), rel=1e-13)
    )


def test_symmetry_and_swap():
    rng = np.random.default_rng(4)
    n = 40
    m1, m2, s1, s2 = rng.standard_normal(n), rng.standard_normal(n), _spd(rng, n), _spd(rng, n, 0.1, 3.0)
    assert w2_squared(m1, s1, m2, s2) == pytest.approx(w2_squared(m2, s2, m1, s1), rel=1e-12)
    assert w2_squared(m1, s1, m2, s2, "source") == pytest.approx(w2_squared(m2, s2, m1, s1, "target"), rel=1e-12)
    assert w2_squared(m1, s1, m2, s2, "source") != pytest.approx(w2_squared(m1, s1, m2, s2, "target"), rel=1e-3)


def test_diagonal_forms_match_full_forms_on_diagonal_covariances():
    rng = np.random.default_rng(5)
    n = 16
    m1, m2 = rng.standard_normal(n), rng.standard_normal(n)
    v1, v2 = rng.uniform(0.2, 3, n), rng.uniform(0.2, 3, n)
    for normalize in (None, "source", "target"):
        full = w2_squared(m1, np.diag(v1), m2, np.diag(v2), normalize=normalize)
        assert w2_squared_diag(m1, v1, m2, v2, normalize=normalize) == pytest.approx(full, rel=1e-12)
    # scalar check of the normalised diagonal formula
    got = w2_squared_diag([1.0], [4.0], [3.0], [9.0], "source")
    assert got == pytest.approx((3 - 1) ** 2 / 4 + (1.5 - 1) ** 2)


def test_bad_input_raises_user_error():
    with pytest.raises(BNAdaptError):
        w2_squared(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(BNAdaptError):
        w2_squared(np.zeros(3), np.eye(3), np.zeros(3), np.full((3, 3), np.nan))
    with pytest.raises(BNAdaptError):
        w2_squared(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3), normalize="both")
    with pytest.raises(BNAdaptError, match="zero variance"):
        w2_squared_diag(np.zeros(2), np.array([1.0, 0.0]), np.zeros(2), np.ones(2), "source")
    with pytest.raises(BNAdaptError):
        w2_squared_diag(np.zeros(2), np.array([1.0, -1.0]), np.zeros(2), np.ones(2))


def test_import_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import napari_bnadapt.stats.wasserstein as w\n"
        "w.w2_squared(np.zeros(3), np.eye(3), np.ones(3), 2 * np.eye(3), 'target')\n"
        "w.noise_floor(3, 100, 100)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    import os

    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -------------------------------------------------------------- noise floor
def test_noise_floor_formulas_and_thesis_fit():
    # (n^2 + 5n)/4 (1/m1 + 1/m2); with m1 = m2 = m this is the thesis' f_err = (0.502 n^2 + 2.596 n - 4.457)/m
    assert noise_floor(16, 1000, 1000) == pytest.approx((256 + 80) / 4 * 2 / 1000)
    for n in (10, 30, 64, 99):
        f_err = (0.502 * n * n + 2.596 * n - 4.457) / 1e4
        assert noise_floor(n, 1e4, 1e4, "target") == pytest.approx(f_err, rel=0.05)
    assert noise_floor(16, 1000, 1000, form="diagonal") == pytest.approx(1.5 * 16 * 2 / 1000)
    # the plain floor reduces to the normalised one for an identity covariance
    assert noise_floor(8, 500, 2000, None, cov=np.eye(8)) == pytest.approx(noise_floor(8, 500, 2000))
    assert noise_floor(8, 500, 2000, None, form="diagonal", var=np.ones(8)) == pytest.approx(
        noise_floor(8, 500, 2000, form="diagonal")
    )
    with pytest.raises(BNAdaptError):
        noise_floor(8, 500, 2000, None)


def test_two_samples_of_one_gaussian_land_on_the_floor():
    rng = np.random.default_rng(6)
    n, m1, m2, reps = 8, 1500, 3000, 60
    a = rng.standard_normal((n, n))  # correlated channels
    cov = a @ a.T + 0.1 * np.eye(n)
    mu = rng.standard_normal(n) * 10
    vals = {k: [] for k in ("source", "target", "plain", "dsource", "dplain")}
    for _ in range(reps):
        x = rng.standard_normal((m1, n)) @ a.T + mu
        y = rng.standard_normal((m2, n)) @ a.T + mu
        mx, my = x.mean(0), y.mean(0)
        sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        vals["source"].append(w2_squared(mx, sx, my, sy, "source"))
        vals["target"].append(w2_squared(mx, sx, my, sy, "target"))
        vals["plain"].append(w2_squared(mx, sx, my, sy))
        vals["dsource"].append(w2_squared_diag(mx, np.diag(sx), my, np.diag(sy), "source"))
        vals["dplain"].append(w2_squared_diag(mx, np.diag(sx), my, np.diag(sy)))
    want = {
        "source": noise_floor(n, m1, m2, "source"),
        "target": noise_floor(n, m1, m2, "target"),
        "plain": noise_floor(n, m1, m2, None, cov=a @ a.T + 0.1 * np.eye(n)),
        "dsource": noise_floor(n, m1, m2, "source", form="diagonal"),
        "dplain": noise_floor(n, m1, m2, None, form="diagonal", var=np.diag(cov)),
    }
    for k, v in vals.items():
        assert np.mean(v) == pytest.approx(want[k], rel=0.25), k


# ----------------------------------------------------------------- distance
class _M:
    """A minimal moments-like object."""

    def __init__(self, mean, cov, m_eff, diagonal=False):
        self.mean = np.asarray(mean, float)
        self._cov = np.asarray(cov, float)
        self.cov = None if diagonal else self._cov
        self.var = np.diag(self._cov).copy()
        self.effective_count = float(m_eff)


def test_distance_meaningful_and_string():
    rng = np.random.default_rng(7)
    n = 16
    s1, s2 = _spd(rng, n), _spd(rng, n)
    a, b = _M(np.zeros(n), s1, 12_000), _M(np.ones(n) * 0.1, s2, 12_000)
    d = distance(a, b, "target")
    assert isinstance(d, Distance)
    assert d.meaningful and d.form == "full" and d.dim == n
    assert d.value == pytest.approx(w2_squared(a.mean, s1, b.mean, s2, "target"))
    assert d.floor == pytest.approx(noise_floor(n, 12_000, 12_000, "target"))
    text = str(d)
    assert text.startswith("tnW2² = ") and "noise floor" in text and "m_eff 12,000" in text and "n 16" in text
    assert str(distance(a, b, "source")).startswith("snW2² = ")
    assert str(distance(a, b, None)).startswith("W2² = ")


def test_distance_under_sampled_is_flagged():
    rng = np.random.default_rng(8)
    n = 16
    a, b = _M(np.zeros(n), _spd(rng, n), 100), _M(np.zeros(n), _spd(rng, n), 10_000)  # 100 < 10 n
    d = distance(a, b, "source", fallback=False)
    assert not d.meaningful and "too few effective samples" in d.reason and d.form == "full"
    assert np.isfinite(d.value)
    d = distance(a, b, "source")  # falls back to the diagonal form and says so
    assert d.form == "diagonal" and d.meaningful
    assert "too few" in d.reason and "diagonal form used" in d.reason
    assert "(diagonal)" in str(d)
    d = distance(_M(np.zeros(n), np.eye(n), 5), b, "source")  # even the diagonal form is under-sampled
    assert not d.meaningful


def test_distance_singular_reference_is_flagged():
    rng = np.random.default_rng(9)
    n = 12
    a = rng.standard_normal((n, 5))
    s_sing = a @ a.T  # rank 5, every variance > 0
    ref = _M(np.zeros(n), s_sing, 1e6)
    other = _M(np.zeros(n), _spd(rng, n), 1e6)
    d = distance(ref, other, "source", fallback=False)
    assert not d.meaningful and "singular" in d.reason and np.isnan(d.value)
    d = distance(ref, other, "source")
    assert d.meaningful and d.form == "diagonal" and "singular" in d.reason
    # normalising by the other (well-conditioned) Gaussian is fine
    d = distance(ref, other, "target")
    assert d.meaningful and d.form == "full"
    # a dead channel (zero variance) breaks even the diagonal form
    s_dead = np.eye(n)
    s_dead[3, 3] = 0.0
    d = distance(_M(np.zeros(n), s_dead, 1e6), other, "source")
    assert not d.meaningful and "zero variance" in d.reason


def test_distance_diagonal_only_statistics():
    n = 300
    a = _M(np.zeros(n), np.eye(n), 1e6, diagonal=True)
    b = _M(np.full(n, 0.1), 2 * np.eye(n), 1e6, diagonal=True)
    d = distance(a, b, "target")
    assert d.form == "diagonal" and d.meaningful
    assert d.value == pytest.approx(w2_squared_diag(a.mean, a.var, b.mean, b.var, "target"))
    assert d.floor == pytest.approx(noise_floor(n, 1e6, 1e6, form="diagonal"))
