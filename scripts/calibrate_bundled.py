"""Add source statistics and the calibrated reliability bound to the bundled toy model.

Usage::

    python scripts/calibrate_bundled.py [--model PATH] [--out PATH] [--figures DIR] [--dry-run]

What it does (deterministic: every random choice is seeded):

1. Loads ``toy-perlin`` (default: the bundled file) on the CPU.
2. Source statistics: unless the model already carries them (``train`` stores
   them), measures them on 512 of its training images (``synthetic.generate(512,
   seed=1)``: the first 512 of the 2000 it was trained on).
3. Calibration (:func:`napari_bnadapt.bound.calibration.run_calibration_iter`) on a
   held-out pool of 1024 labelled source images (seed 5), 24 per target:
   160 targets of the thesis' 1-800 grid + 16 inverted-contrast + 16 faint
   targets, split 60/40 into fit and validation (seeded, stratified by family);
   plus 48 grey-value ("EM-style") shifts of the same images, 8 of them
   inverted, used ONLY as an out-of-family hold-out.
4. Saves the model with the statistics and the calibration in its card; its
   weights are checked to be byte-identical to the input file's.
5. Draws the figures ``docs/images/reliability_*.png`` and prints the summary
   that docs/reliability.md quotes.

Threads: torch runs on one thread (the machine is shared); about 10 min on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# small matrices only: a multi-threaded BLAS spins and slows down 5x on a shared machine (set before numpy loads)
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY_SOURCE = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}
FAMILY_STYLE = {
    "grid": ("tab:blue", "o"),
    "faint": ("tab:orange", "s"),
    "inverted": ("tab:red", "X"),
    "em": ("tab:green", "^"),
    "em-inverted": ("tab:purple", "v"),
}


def weights_bytes(path: Path) -> dict[str, bytes]:
    """Every non-extra tensor of a safetensors file as raw bytes."""
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(path)).items() if not k.startswith("extra.")}


def make_shifts(args: argparse.Namespace):
    from napari_bnadapt.bound.shifts import em_shifts, toy_grid_shifts

    fit_val = toy_grid_shifts(args.n_grid, seed=args.seed, n_inverted=args.n_inverted, n_faint=args.n_faint)
    holdout = em_shifts(args.n_em, seed=args.seed + 1, n_inverted=args.n_em_inverted)
    return fit_val, holdout


def calibrate_toy(model, args: argparse.Namespace, progress=None):
    """Statistics (if missing) and calibration; returns (model copy, CalibrationRun, seconds)."""
    import napari_bnadapt as nb  # noqa: F401
    from napari_bnadapt import synthetic
    from napari_bnadapt.bound.calibration import run_calibration_iter
    from napari_bnadapt.progress import run_to_end
    from napari_bnadapt.stats.source_statistics import compute_source_statistics, has_source_statistics

    t0 = time.perf_counter()
    if not has_source_statistics(model) or args.restats:
        train_x, _ = synthetic.generate(512, (64, 64), seed=1, **TOY_SOURCE)
        model = compute_source_statistics(model, train_x, device="cpu", batch_size=32, seed=0)
    pool_x, pool_y = synthetic.generate(1024, (64, 64), seed=5, **TOY_SOURCE)
    fit_val, holdout = make_shifts(args)
    cal_model, run = run_to_end(
        run_calibration_iter(
            model, pool_x, pool_y, shifts=fit_val, holdout_shifts=holdout, n_images=args.n_images,
            validation_fraction=0.4, quantile=0.05, seed=args.seed, device="cpu", batch_size=24,
        ),
        progress,
    )
    seconds = time.perf_counter() - t0
    cal_model.meta["calibration"]["provenance"]["command"] = "python scripts/calibrate_bundled.py"
    cal_model.meta["calibration"]["provenance"]["seconds_total"] = round(seconds, 1)
    cal_model.meta["calibration"]["provenance"]["data"] = (
        "toy Perlin images 64x64 made like the training data (background N(96,18), mitochondria N(138,18)) "
        "with seed 5 (not the training seed 1); class-wise intensity shifts for the grid, inverted and faint "
        "families; grey-value shifts for the em families (hold-out only)"
    )
    return cal_model, run, seconds


# ------------------------------------------------------------------ figures
def _family_scatter(ax, xs, ys, cases, alpha=0.8, size=18):
    for fam, (color, marker) in FAMILY_STYLE.items():
        idx = [i for i, c in enumerate(cases) if c.shift.family == fam]
        if not idx:
            continue
        val = [i for i in idx if cases[i].split != "fit"]
        fit = [i for i in idx if cases[i].split == "fit"]
        ax.scatter(xs[fit], ys[fit], s=size, c=color, marker=marker, alpha=alpha, linewidths=0, label=f"{fam} (fit)")
        ax.scatter(xs[val], ys[val], s=size, facecolors="none", edgecolors=color, marker=marker, alpha=alpha,
                   linewidths=0.8, label=f"{fam} (held out)")


def draw_figures(run, outdir: Path, prefix: str = "reliability", holdout_title: str = "out-of-family hold-out: grey-value shifts") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_bnadapt.bound.names import SPACES
    from napari_bnadapt.bound.selection import _fit, _in_gate, _xs
    from napari_bnadapt.bound.names import distance_label, parse_key

    outdir.mkdir(parents=True, exist_ok=True)
    cases = run.cases
    fitval = [c for c in cases if c.split in ("fit", "validation")]
    fit_cases = [c for c in cases if c.split == "fit"]
    y = np.array([c.iou for c in fitval])
    paths = []
    best_key = run.best["key"]
    gate_feats = run.best["gate"]

    # 1. IoU vs log(1 + W2^2) for every latent space and normalisation (full covariance), with the bound
    norms = ("source", "target", "plain")
    fig, axes = plt.subplots(len(norms), len(SPACES), figsize=(3.0 * len(SPACES), 2.7 * len(norms)),
                             sharey=True, squeeze=False)
    for i, norm in enumerate(norms):
        for j, space in enumerate(SPACES):
            ax = axes[i][j]
            key = f"{space}|{norm}|full"
            x = _xs(fitval, key)
            ok = np.isfinite(x)
            if ok.sum() == 0:
                ax.text(0.5, 0.5, "not meaningful\n(too few samples\nfor the full covariance)", ha="center",
                        va="center", transform=ax.transAxes, fontsize=8)
            else:
                _family_scatter(ax, x, y, fitval, size=12)
                gate, bound = _fit(fit_cases, key, gate_feats, 0.05, run.calibration["success_iou"])
                if bound is not None:
                    bx, by = bound.curve()
                    ax.plot(bx, by, "k-", lw=1.5)
                r = [rr for rr in run.table if rr["key"] == key and rr.get("gate") == gate_feats]
                excl = [rr["excluded"] for rr in run.table if rr["key"] == key and rr.get("excluded")]
                if excl:
                    why = excl[0] if ok.all() else f"meaningful in {ok.mean():.0%} of the shifts only"
                    ax.set_title(f"{distance_label(space, norm, 'full')}\nexcluded: {why}", fontsize=8)
                elif r:
                    ax.set_title(f"{distance_label(space, norm, 'full')}\nCV cover {r[0]['coverage']:.2f}, "
                                 f"mean bound {r[0]['mean_bound']:.2f}", fontsize=8,
                                 color="darkred" if key == best_key else "black")
                else:
                    ax.set_title(f"{distance_label(space, norm, 'full')}", fontsize=8)
            if key == best_key:
                for sp in ax.spines.values():
                    sp.set_edgecolor("darkred")
                    sp.set_linewidth(2)
            if j == 0:
                ax.set_ylabel("adapted IoU")
            if i == len(norms) - 1:
                ax.set_xlabel("log(1 + W2²)")
    h, lab = axes[0][0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("Adapted IoU against the latent distance (source model on source data vs adapted model on target), "
                 "full covariance; black: 5 % lower bound fitted on the fit shifts "
                 f"(gate: {', '.join(gate_feats) or 'none'}); "
                 "red frame: chosen", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    p = outdir / f"{prefix}_scatter.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)

    # 2. why this space: separation of failures without any gate, and the cross-validated tightness
    from scipy.stats import mannwhitneyu

    keys = [r["key"] for r in run.table if not r.get("excluded")]
    keys = sorted(set(keys), key=lambda k: (SPACES.index(parse_key(k)[0]), parse_key(k)[1]))
    fig, (ax0, ax) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    fam = np.array([c.shift.family for c in fit_cases])
    yf = np.array([c.iou for c in fit_cases])
    aucs, auc_inv = [], []
    for k in keys:
        xk = _xs(fit_cases, k)
        good, bad, inv = xk[yf >= 0.8], xk[yf < 0.5], xk[np.char.find(fam.astype(str), "inverted") >= 0]
        aucs.append(mannwhitneyu(bad, good).statistic / (len(bad) * len(good)) if len(bad) and len(good) else np.nan)
        auc_inv.append(mannwhitneyu(inv, good).statistic / (len(inv) * len(good)) if len(inv) and len(good) else np.nan)
    pos = np.arange(len(keys))
    ax0.bar(pos - 0.2, aucs, 0.4, label="all failures (IoU < 0.5) vs successes (IoU >= 0.8)")
    ax0.bar(pos + 0.2, auc_inv, 0.4, label="inverted contrast vs successes")
    ax0.axhline(1.0, color="k", lw=0.5)
    ax0.set_ylim(0.5, 1.02)
    ax0.set_ylabel("AUC: failures further\nthan successes")
    ax0.set_title("A. How well the distance ALONE separates failed from successful adaptations (fit shifts, no gate)",
                  fontsize=9)
    ax0.legend(fontsize=8, loc="lower right")
    gate_sets = sorted({tuple(r["gate"]) for r in run.table if not r.get("excluded")}, key=len)
    width = 0.8 / max(1, len(gate_sets))
    for gi, gs in enumerate(gate_sets):
        vals, covs = [], []
        for k in keys:
            r = [rr for rr in run.table if rr["key"] == k and tuple(rr["gate"]) == gs]
            vals.append(r[0]["mean_bound"] if r else np.nan)
            covs.append(r[0]["coverage"] if r else np.nan)
        bars = ax.bar(pos - 0.4 + width / 2 + gi * width, vals, width, label=f"gate: {', '.join(gs) or 'none'}")
        for b, c in zip(bars, covs):
            if np.isfinite(c) and c < 0.9:
                b.set_hatch("//")
                b.set_alpha(0.5)
    ax.set_xticks(pos)
    ax.set_xticklabels([k.replace("|full", "").replace("|", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("mean cross-validated bound\n(higher = tighter)")
    ax.set_title(f"B. Tightness of the bound, 5-fold cross-validation on the fit shifts (hatched: coverage < 0.9). "
                 f"Chosen: {best_key}, gate {', '.join(gate_feats) or 'none'}", fontsize=9)
    ax.legend(fontsize=8, ncol=4, loc="lower right")
    ax.set_ylim(0, 1)
    fig.text(0.01, 0.005, "Full covariance only: the diagonal forms (and spaces whose full covariance is "
             "under-sampled) "
             "are excluded, as they sit at or below their noise floor after AdaBN.", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    p = outdir / f"{prefix}_selection.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)

    # 3. the gate signals
    allc = cases
    fg = np.array([c.features["fg_logratio"] for c in allc])
    cd = np.array([c.features["conf_drop"] for c in allc])
    ious = np.array([c.iou for c in allc])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sc = ax.scatter(fg, cd, c=ious, cmap="viridis", vmin=0, vmax=1, s=22,
                    marker="o", edgecolors=["red" if "inverted" in c.shift.family else "none" for c in allc])
    fig.colorbar(sc, label="adapted IoU")
    for f, (lo, hi) in run.gate.items():
        if f == "conf_drop" and hi is not None:
            ax.axhline(hi, color="k", ls="--", lw=1)
            ax.text(ax.get_xlim()[0], hi, " gate: confidence drop", va="bottom", fontsize=8)
        if f == "fg_logratio":
            for v in (lo, hi):
                if v is not None:
                    ax.axvline(v, color="k", ls=":", lw=1)
    ax.set_xlabel("log(predicted foreground fraction / source's)")
    ax.set_ylabel("confidence drop (source - target)")
    ax.set_title("Label-free output signals of the adapted model\n(red edge: inverted contrast; all shifts)",
                 fontsize=9)
    fig.tight_layout()
    p = outdir / f"{prefix}_signals.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)

    # 4. the stored curve, with the held-out and out-of-family cases, and the unadapted positions
    xlim = 4.0
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    bx, by = run.bound.curve()
    for ax, split, title in ((axes[0], ("validation",), "held-out shifts of the fitted kinds"),
                             (axes[1], ("holdout",), holdout_title)):
        cs = [c for c in cases if c.split in split]
        if not cs:
            continue
        x = _xs(cs, best_key)
        xso = np.minimum(_xs(cs, best_key, source_only=True), xlim)
        yy = np.array([c.iou for c in cs])
        yso = np.array([c.iou_source_only for c in cs])
        gated = np.array([not _in_gate(c, run.gate) for c in cs])
        ax.scatter(xso, yso, s=8, c="0.7", marker=">", label="same targets, unadapted source model")
        for fam, (color, marker) in FAMILY_STYLE.items():
            m = np.array([c.shift.family == fam for c in cs])
            if not m.any():
                continue
            ax.scatter(np.minimum(x[m & ~gated], xlim), yy[m & ~gated], c=color, marker=marker, s=24, label=fam)
            ax.scatter(np.minimum(x[m & gated], xlim), yy[m & gated], facecolors="none", edgecolors=color,
                       marker=marker, s=40, label=f"{fam}, gated (no bound)")
        ax.plot(bx, by, "k-", lw=2, label="stored 5 % lower bound")
        ax.axvline(run.bound.x_max, color="k", ls=":", lw=1)
        ax.set_xlim(-0.05, xlim + 0.1)
        res = run.validation if split == ("validation",) else run.calibration.get("holdout", {})
        ax.set_title(f"{title}\nn {res.get('n')}, coverage {res.get('coverage', math.nan):.2f}, "
                     f"median gap {res.get('median_gap', math.nan):.2f}", fontsize=9)
        ax.set_xlabel(run.calibration["feature"]["x_label"] + f" (clipped at {xlim:g})")
        ax.legend(fontsize=7, loc="center right")
    axes[0].set_ylabel("IoU")
    # zoom on the reliable region
    ax = axes[2]
    cs = [c for c in cases if c.split in ("validation", "holdout")]
    x = _xs(cs, best_key)
    yy = np.array([c.iou for c in cs])
    below = yy < run.bound(x) - 1e-12
    for fam, (color, marker) in FAMILY_STYLE.items():
        m = np.array([c.shift.family == fam for c in cs])
        ax.scatter(x[m & ~below], yy[m & ~below], c=color, marker=marker, s=20, label=fam if m.any() else None)
    ax.scatter(x[below], yy[below], facecolors="none", edgecolors="red", s=70, label="below the bound")
    ax.plot(bx, by, "k-", lw=2)
    ax.set_xlim(0, 0.6)
    ax.set_ylim(0.8, 1.0)
    ax.set_title("zoom: held-out and out-of-family cases near the top", fontsize=9)
    ax.set_xlabel(run.calibration["feature"]["x_label"])
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    p = outdir / f"{prefix}_curve.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    return paths


def summary(run) -> str:
    cal = run.calibration
    lines = [
        f"chosen: {cal['feature']['key']} ({cal['feature']['x_label']}), gate {cal['gate']}",
        f"curve: x {np.round(cal['curve']['x'], 3).tolist()} -> bound {np.round(cal['curve']['y'], 3).tolist()}",
        f"floor reference {cal['floor_reference']:.4f}",
        f"fit:        {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.fit.items()})}",
        f"validation: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.validation.items()})}",
    ]
    for fam, r in run.validation_by_family.items():
        lines.append(f"  {fam}: n {r['n']}, coverage {r['coverage']:.3f}, median gap {r['median_gap']:.3f}, "
                     f"mean bound {r['mean_bound']:.3f}")
    lines.append(f"validation verdicts: {json.dumps(run.verdicts)}")
    if "holdout" in cal:
        h = cal["holdout"]
        lines.append(f"hold-out (grey-value shifts): n {h['n']}, coverage {h['coverage']:.3f}, "
                     f"median gap {h['median_gap']:.3f}, mean bound {h['mean_bound']:.3f}")
        for fam, r in h["by_family"].items():
            lines.append(f"  {fam}: n {r['n']}, coverage {r['coverage']:.3f}, median gap {r['median_gap']:.3f}")
        lines.append(f"hold-out verdicts: {json.dumps(h['verdicts'])}")
    lines.append("top candidates (5-fold CV on the fit shifts):")
    ok = sorted([r for r in run.table if not r.get("excluded") and r["coverage"] >= 0.9],
                key=lambda r: -r["mean_bound"])
    for r in ok[:12]:
        lines.append(f"  {r['key']:<22} gate {','.join(r['gate']) or '-':<22} coverage {r['coverage']:.3f} "
                     f"mean bound {r['mean_bound']:.3f} median gap {r['median_gap']:.3f}")
    excl = sorted({r["key"] for r in run.table if r.get("excluded")})
    lines.append(f"excluded candidates ({len(excl)}): {', '.join(excl)}")
    return "\n".join(lines)


def default_args() -> argparse.Namespace:
    """The settings of the bundled calibration (the command-line defaults)."""
    return _parser().parse_args([])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model file (default: the bundled toy-perlin)")
    p.add_argument("--out", type=Path, default=None, help="where to save (default: overwrite --model)")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "images")
    p.add_argument("--cases", type=Path, default=None, help="also write every measured case as JSON here")
    p.add_argument("--dry-run", action="store_true", help="do not save the model")
    p.add_argument("--restats", action="store_true", help="measure the source statistics even if present")
    p.add_argument("--n-grid", type=int, default=160)
    p.add_argument("--n-inverted", type=int, default=16)
    p.add_argument("--n-faint", type=int, default=16)
    p.add_argument("--n-em", type=int, default=40)
    p.add_argument("--n-em-inverted", type=int, default=8)
    p.add_argument("--n-images", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--from-cases", type=Path, default=None,
                   help="redo the fit and the figures from cases saved with --cases (nothing is measured or saved)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import napari_bnadapt as nb
    from napari_bnadapt.model.files import BUNDLED_DIR
    from napari_bnadapt.progress import tqdm_callback

    if args.from_cases:
        from napari_bnadapt.bound.cases import CalibrationCase
        from napari_bnadapt.bound.calibration import finish_calibration

        cases = [CalibrationCase.from_dict(d) for d in json.loads(args.from_cases.read_text())]
        run = finish_calibration(cases, quantile=0.05, seed=args.seed)
        print(summary(run))
        for path in draw_figures(run, args.figures):
            print(f"figure: {path}")
        return 0
    src = args.model or BUNDLED_DIR / "toy-perlin.safetensors"
    out = args.out or src
    model = nb.load_model(src, device="cpu")
    before = weights_bytes(src)
    cal_model, run, seconds = calibrate_toy(model, args, tqdm_callback())
    print(summary(run))
    print(f"calibration: {seconds:.0f} s for {len(run.cases)} shifted targets")
    if args.cases:
        args.cases.write_text(json.dumps([c.to_dict() for c in run.cases]))
    for path in draw_figures(run, args.figures):
        print(f"figure: {path}")
    if not args.dry_run:
        cal_model.meta.pop("path", None)
        path = nb.save_model(cal_model, out, overwrite=True)
        if out == src or args.model is None:
            after = weights_bytes(path)
            if after != before:
                raise SystemExit("the weights changed while adding the calibration: refusing this file")
        print(f"saved {path} (weights byte-identical: {weights_bytes(path) == before})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
