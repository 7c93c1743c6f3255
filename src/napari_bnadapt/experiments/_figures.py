"""Figures of the experiments, drawn from their CSV rows with matplotlib's Agg canvas.

matplotlib is imported here only (lazily), so the package and the experiments'
computations never need it; only drawing does. Figures are made with
``matplotlib.figure.Figure`` (Agg), never pyplot, so drawing inside a napari
session does not touch its GUI backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..synthetic.grid import GRID_D as DIST
from ..synthetic.grid import GRID_MU0 as MU0
from ..synthetic.grid import GRID_SIGMA as SIGMAS
from ..synthetic.grid import GRID_SOURCE as SOURCE
from ._findings import envelope


def figure(**kwargs: Any) -> Any:
    """A new Agg-backed ``matplotlib.figure.Figure`` (no pyplot, no GUI)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BNAdaptError("drawing the figures needs matplotlib: pip install matplotlib "
                           "(the results CSV is complete without it)") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].copy()


def save(fig: Any, path: Path) -> Path:
    """Write a PNG (without a timestamp, so reruns give identical files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


# ------------------------------------------------------------------ matrix layout
def _matrix(spec: Any, rows: list[dict[str, Any]], col: str, transpose: bool) -> np.ndarray:
    si = {d.id: i for i, d in enumerate(spec.sources)}
    ti = {d.id: i for i, d in enumerate(spec.targets)}
    m = np.full((len(spec.sources), len(spec.targets)), np.nan)
    for r in rows:
        if r["source_id"] in si and r["target_id"] in ti:
            m[si[r["source_id"]], ti[r["target_id"]]] = r[col]
    return m.T if transpose else m


def matrix_heatmaps(spec: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    """Before/after IoU heatmaps side by side.

    Layout as in the thesis: experiments #1 and #2 (Figs. 5.3, 5.5) put the
    source on the x axis and the target on the y axis; experiment #3 (Fig. 5.8)
    puts the source on the y axis and the target on the x axis, with lines
    between the three groups of datasets.
    """
    mixed = spec.name == "mixed"
    labels = [d.label for d in spec.sources]
    n = len(labels)
    fig = figure(figsize=(5.2 * 2 + 1.2, 5.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, what in zip(axes, ("iou_source_only", "iou_adapted"), ("without adaptation", "with BN adaptation")):
        # rows of the image = y axis: targets for #1/#2, sources for #3
        img = _matrix(spec, rows, col, transpose=not mixed)
        im = ax.imshow(img, vmin=0, vmax=1, cmap="viridis", origin="upper" if mixed else "lower")
        ax.set_xticks(range(n), labels, rotation=90 if mixed else 0, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel("target" if mixed else "source " + ("mu1 - mu0" if spec.name == "distance" else "mu0"))
        ax.set_ylabel("source" if mixed else "target " + ("mu1 - mu0" if spec.name == "distance" else "mu0"))
        ax.set_title(f"IoU {what}")
        if n <= 12:
            for i in range(img.shape[0]):
                for j in range(img.shape[1]):
                    v = img[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                                color="white" if v < 0.55 else "black")
        if mixed:
            groups = [d.group for d in spec.sources]
            for k in range(1, n):
                if groups[k] != groups[k - 1]:
                    ax.axhline(k - 0.5, color="red", lw=1.5)
                    ax.axvline(k - 0.5, color="red", lw=1.5)
    fig.colorbar(im, ax=axes, shrink=0.85, label="IoU (objects)")
    fig.suptitle(spec.title)
    return save(fig, path)


# -------------------------------------------------------------------- grid layout
def _grid_mosaic(rows: list[dict[str, Any]], col: str) -> tuple[np.ndarray, list[int], list[int]]:
    k = len(SIGMAS)
    step = k + 1
    mos = np.full((len(MU0) * step - 1, len(DIST) * step - 1), np.nan)
    for r in rows:
        m0, d = int(r["tgt_mu0"]), int(round(r["tgt_mu1"] - r["tgt_mu0"]))
        if m0 not in MU0 or d not in DIST:
            continue
        i, j = MU0.index(m0), DIST.index(d)
        a, b = SIGMAS.index(int(r["tgt_sigma0"])), SIGMAS.index(int(r["tgt_sigma1"]))
        mos[i * step + a, j * step + b] = r[col]
    return mos, list(MU0), list(DIST)


def grid_heatmaps(spec: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    """The 800 targets before/after adaptation in the thesis' layout (Figs. 5.16, 5.17, 5.26, 5.27).

    One 5 x 5 block per (mu0, mu1 - mu0); inside a block the x axis is sigma1
    (objects) and the y axis sigma0 (background), both 6..30. The red frame marks
    the source parameters.
    """
    from matplotlib.patches import Rectangle

    cm = cmap("viridis")
    cm.set_bad("white")
    k = len(SIGMAS)
    step = k + 1
    fig = figure(figsize=(13.5, 6.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, what in zip(axes, ("iou_source_only", "iou_adapted"), ("without adaptation", "with BN adaptation")):
        mos, mu0s, ds = _grid_mosaic(rows, col)
        im = ax.imshow(mos, vmin=0, vmax=1, cmap=cm, origin="upper", interpolation="nearest")
        ax.set_xticks([j * step + (k - 1) / 2 for j in range(len(ds))], [str(d) for d in ds])
        ax.set_yticks([i * step + (k - 1) / 2 for i in range(len(mu0s))], [str(m) for m in mu0s])
        ax.set_xlabel("mu1 - mu0   (inside each block: sigma1 = 6 ... 30, left to right)")
        ax.set_ylabel("mu0   (inside each block: sigma0 = 6 ... 30, top to bottom)")
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        m0, s0, m1, s1 = SOURCE
        i, j = mu0s.index(m0), ds.index(m1 - m0)
        a, b = SIGMAS.index(s0), SIGMAS.index(s1)
        ax.add_patch(Rectangle((j * step + b - 0.5, i * step + a - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(f"IoU {what}: mean {np.nanmean(mos):.2f}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="IoU (objects)")
    fig.suptitle(spec.title + " (red: the source parameters)")
    return save(fig, path)


# -------------------------------------------------------------------- the scatter
def scatter(spec: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    """Adapted IoU against log(1 + W2^2) and log(1 + tnW2^2) on ls0 (thesis Figs. 5.22-5.24).

    Source side: the source model on source images; target side: the adapted
    model on target images. The step line is the minimum IoU in equal-count
    bins of the distance (the empirical lower envelope).
    """
    y = np.array([r["iou_adapted"] for r in rows], float)
    c = np.array([r["iou_source_only"] for r in rows], float)
    fig = figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, col, name in zip(axes, ("w2_ls0", "tnw2_ls0"), ("W2²", "tnW2²")):
        x = np.log1p(np.array([r[col] for r in rows], float))
        sc = ax.scatter(x, y, c=c, cmap="coolwarm_r", vmin=0, vmax=1, s=10 if len(rows) > 200 else 22,
                        edgecolors="none", alpha=0.85)
        env = envelope(x, y)
        if "bin_min" in env:
            order = np.sort(x[np.isfinite(x)])
            edges = np.linspace(0, order.size, len(env["bin_min"]) + 1).astype(int)
            xs = [order[a] for a in edges[:-1]] + [order[-1]]
            ax.step(xs, env["bin_min"] + [env["bin_min"][-1]], where="post", color="k", lw=1.2,
                    label=f"bin minimum (Spearman {env['spearman_bin_min']:+.2f})")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_xlabel(f"log(1 + {name}) on ls0")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("IoU after BN adaptation")
    fig.colorbar(sc, ax=axes, label="IoU without adaptation")
    fig.suptitle(f"{spec.title}: adapted IoU vs latent distance (ls0)")
    return save(fig, path)


def unet_figures(spec: Any, rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """All figures of a U-Net experiment into ``folder``."""
    folder = Path(folder)
    figs = []
    if spec.layout == "matrix":
        figs.append(matrix_heatmaps(spec, rows, folder / f"exp_{spec.name}_iou.png"))
    else:
        figs.append(grid_heatmaps(spec, rows, folder / f"exp_{spec.name}_iou.png"))
    if rows:
        figs.append(scatter(spec, rows, folder / f"exp_{spec.name}_scatter.png"))
    return figs
