"""Benchmark: napari_bnadapt.stats.wasserstein.w2_squared against scipy sqrtm(S1 @ S2).

The pytorch-fid way of computing W2^2 (the Frechet distance) is
``tr(S1 + S2 - 2 sqrtm(S1 @ S2))`` with ``scipy.linalg.sqrtm``. This script times
it against ``w2_squared`` (plain and source-normalised) at n = 64, 256, 1024 on
sample covariances of correlated Gaussians, median of repeated runs, with the
methods interleaved within every repeat so that load changes hit all of them
alike, on moderately and on badly conditioned covariances. It also checks what sqrtm gives for two identical rank-deficient
covariances (true value 0).

Usage::

    python benchmarks/bench_wasserstein.py [--repeats 7] [--threads N] [--out FILE]

``--threads`` sets OPENBLAS/MKL/OMP_NUM_THREADS before numpy is imported (the
default leaves the BLAS as it is). The table is printed and written to
``benchmarks/results/bench_wasserstein.txt``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per method and size (>= 5)")
    ap.add_argument("--sizes", default="64,256,1024")
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: unchanged)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_wasserstein.txt"))
    args = ap.parse_args(argv)
    if args.threads is not None:
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import numpy as np
    import scipy
    from scipy import linalg as sla

    sys.path.insert(0, str(HERE.parent / "src"))
    from napari_bnadapt.stats.wasserstein import w2_squared

    def fid_sqrtm(m1, s1, m2, s2):
        covmean = sla.sqrtm(s1 @ s2)
        raw = covmean
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        d = m1 - m2
        return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)), raw

    rng = np.random.default_rng(12345)

    def sample_cov(n, m, rank=None, spread=None):
        """Sample covariance of m draws of a random Gaussian.

        spread=None: population covariance A A^T with A a random n x rank Gaussian matrix with
        column scales in [0.2, 3] (badly conditioned for rank = n); spread=s: a random rotation of
        eigenvalues log-spaced over s decades.
        """
        r = rank or n
        if spread is None:
            a = rng.standard_normal((n, r)) * rng.uniform(0.2, 3.0, r)
        else:
            q, _ = np.linalg.qr(rng.standard_normal((n, n)))
            a = q * np.sqrt(np.logspace(0, -spread, n))
        x = rng.standard_normal((m, a.shape[1])) @ a.T
        return x.mean(0), np.cov(x, rowvar=False)

    lines: list[str] = []

    def out(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out("W2^2 benchmark: scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid) vs napari_bnadapt.stats.wasserstein.w2_squared")
    out(f"date      {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    out(f"platform  {platform.platform()} ({platform.machine()}), python {platform.python_version()}")
    out(f"cpu count {os.cpu_count()}; BLAS threads: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    out(f"numpy {np.__version__}, scipy {scipy.__version__}")
    if load:
        out(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out(f"median of {args.repeats} repeats, methods interleaved within each repeat. Covariances: sample")
    out("covariances of 4n draws; 'moderate': population eigenvalues over 2 decades, 'ill': population")
    out("A A^T with a random square A (the condition number of S1 is in the 'cond S1' column).")
    out()
    header = (
        f"{'n':>5} {'case':<9} {'method':<30} {'median s':>9} {'min s':>9} {'speed-up':>9} "
        f"{'cond S1':>8} {'|ours-sqrtm|/ours':>18}"
    )
    out(header)
    out("-" * len(header))
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        for case, spread in (("moderate", 2.0), ("ill", None)):
            m1, s1 = sample_cov(n, 4 * n, spread=spread)
            m2, s2 = sample_cov(n, 4 * n, spread=spread)
            cond = np.linalg.cond(s1)
            methods = {
                "scipy sqrtm(S1 @ S2)": lambda: fid_sqrtm(m1, s1, m2, s2)[0],
                "w2_squared (plain)": lambda: w2_squared(m1, s1, m2, s2),
                "w2_squared (normalize=source)": lambda: w2_squared(m1, s1, m2, s2, normalize="source"),
                "w2_squared (normalize=target)": lambda: w2_squared(m1, s1, m2, s2, normalize="target"),
            }
            values = {k: f() for k, f in methods.items()}  # warm-up, and the values
            times: dict[str, list[float]] = {k: [] for k in methods}
            for _ in range(args.repeats):
                for k, f in methods.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            base = float(np.median(times["scipy sqrtm(S1 @ S2)"]))
            for k in methods:
                med = float(np.median(times[k]))
                diff = ""
                if k == "w2_squared (plain)":
                    diff = f"{abs(values[k] - values['scipy sqrtm(S1 @ S2)']) / values[k]:.1e}"
                out(
                    f"{n:>5} {case:<9} {k:<30} {med:>9.4f} {min(times[k]):>9.4f} {base / med:>8.1f}x "
                    f"{cond:>8.1e} {diff:>18}"
                )
            out()

    out("Identical rank-deficient covariances (true W2^2 = 0), rank n/4:")
    out(f"{'n':>5} {'sqrtm value':>14} {'sqrtm complex?':>15} {'max |imag|':>11} {'w2_squared':>11} {'trace':>10} "
        f"{'sqrtm s':>8} {'ours s':>8}")
    for n in sizes:
        m, s = sample_cov(n, 4 * n, rank=max(2, n // 4))
        t0 = time.perf_counter()
        v_fid, raw = fid_sqrtm(m, s, m, s)
        t_fid = time.perf_counter() - t0
        t0 = time.perf_counter()
        v_ours = w2_squared(m, s, m, s)
        t_ours = time.perf_counter() - t0
        cplx = np.iscomplexobj(raw)
        imag = float(np.max(np.abs(raw.imag))) if cplx else 0.0
        out(f"{n:>5} {v_fid:>14.3e} {str(cplx):>15} {imag:>11.1e} {v_ours:>11.1e} {np.trace(s):>10.3g} "
            f"{t_fid:>8.3f} {t_ours:>8.3f}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        out()
        out(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
