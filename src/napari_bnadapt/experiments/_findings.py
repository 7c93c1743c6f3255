"""The findings of each experiment, computed from its CSV rows (numbers for docs/experiments.md).

Each function returns plain numbers and booleans; the docs page puts them next
to what the thesis and the paper report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _mean(v: Any) -> float:
    a = np.asarray(list(v), dtype=float)
    return float(np.nanmean(a)) if a.size else math.nan


def _spearman(x: Any, y: Any) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def envelope(x: Any, y: Any, n_bins: int = 8, level: float = 0.9) -> dict[str, Any]:
    """Is there a lower-bound envelope of ``y`` (adapted IoU) that falls as ``x`` (log(1 + W2)) grows?

    Returns the minimum of ``y`` in ``n_bins`` equal-count bins of ``x``, the
    Spearman correlation of the bin minima with the bin order (negative: the
    lower bound falls with the distance), the largest ``x`` below which every
    point has ``y >= level`` (and the share of points there), and a verdict:
    ``visible`` when the bin minima fall (Spearman <= -0.5) and the lowest
    third of ``x`` has a minimum at least 0.1 above that of the highest third.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out: dict[str, Any] = {"n_points": int(x.size)}
    if x.size < 6:
        out.update(visible=False, reason="too few points")
        return out
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    nb = max(2, min(n_bins, x.size // 3))
    edges = np.linspace(0, x.size, nb + 1).astype(int)
    mins = [float(ys[a:b].min()) for a, b in zip(edges[:-1], edges[1:])]
    centres = [float(np.median(xs[a:b])) for a, b in zip(edges[:-1], edges[1:])]
    third = x.size // 3
    low_min, high_min = float(ys[:third].min()), float(ys[-third:].min())
    below = np.nonzero(ys < level)[0]
    k = int(below[0]) if below.size else x.size
    thr = float(xs[k - 1]) if k > 0 else math.nan
    rho = _spearman(range(nb), mins)
    out.update(
        bin_x=centres,
        bin_min=mins,
        spearman_bin_min=rho,
        min_low_third=low_min,
        min_high_third=high_min,
        x_all_above_level=thr,
        share_all_above_level=k / x.size,
        level=level,
        spearman_points=_spearman(x, y),
        visible=bool(np.isfinite(rho) and rho <= -0.5 and low_min >= high_min + 0.1),
    )
    return out


def _by_pair(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["source_id"], r["target_id"]): r for r in rows}


def _matrix_common(spec: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    diag = [r for r in rows if r["source_id"] == r["target_id"]]
    off = [r for r in rows if r["source_id"] != r["target_id"]]
    f: dict[str, Any] = {
        "pairs": len(rows),
        "diag_source_only": _mean(r["iou_source_only"] for r in diag),
        "diag_adapted": _mean(r["iou_adapted"] for r in diag),
        "offdiag_source_only": _mean(r["iou_source_only"] for r in off),
        "offdiag_adapted": _mean(r["iou_adapted"] for r in off),
        "share_offdiag_improved": _mean(r["iou_adapted"] > r["iou_source_only"] for r in off),
    }
    f["offdiag_over_diag_adapted"] = f["offdiag_adapted"] / f["diag_adapted"] if f["diag_adapted"] else math.nan
    return f


def _asymmetry(spec: Any, rows: list[dict[str, Any]], col: str) -> dict[str, Any]:
    pairs = _by_pair(rows)
    ids = [d.id for d in spec.sources]
    diffs = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if (a, b) in pairs and (b, a) in pairs:
                diffs.append((a, b, pairs[(a, b)][col] - pairs[(b, a)][col]))
    absd = [abs(d) for *_, d in diffs]
    top = sorted(diffs, key=lambda t: -abs(t[2]))[:5]
    return {"mean_abs_asymmetry": _mean(absd),
            "share_asymmetry_over_0.2": _mean(d > 0.2 for d in absd),
            "largest": [{"a": a, "b": b, "iou(a->b) - iou(b->a)": d} for a, b, d in top]}


def unet_findings(spec: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The findings of a U-Net experiment (see the module docstring)."""
    if not rows:
        return {}
    x_tn = [math.log1p(r["tnw2_ls0"]) for r in rows]
    x_w2 = [math.log1p(r["w2_ls0"]) for r in rows]
    y = [r["iou_adapted"] for r in rows]
    f: dict[str, Any] = {
        "mean_source_only": _mean(r["iou_source_only"] for r in rows),
        "mean_adapted": _mean(y),
        "share_improved": _mean(r["iou_adapted"] > r["iou_source_only"] for r in rows),
        "share_improved_or_within_0.01": _mean(r["iou_adapted"] >= r["iou_source_only"] - 0.01 for r in rows),
        "envelope_tnw2_ls0": envelope(x_tn, y),
        "envelope_w2_ls0": envelope(x_w2, y),
    }
    if spec.layout == "matrix":
        f.update(_matrix_common(spec, rows))
    if spec.name == "brightness":
        off = [r for r in rows if r["source_id"] != r["target_id"]]
        brighter = [r for r in off if r["tgt_mu0"] > r["src_mu0"]]
        darker = [r for r in off if r["tgt_mu0"] < r["src_mu0"]]
        f.update(
            source_only_target_brighter=_mean(r["iou_source_only"] for r in brighter),
            source_only_target_darker=_mean(r["iou_source_only"] for r in darker),
            predicted_fg_target_brighter=_mean(r["fg_source_only"] for r in brighter),
            predicted_fg_target_darker=_mean(r["fg_source_only"] for r in darker),
            share_offdiag_all_white=_mean(r["fg_source_only"] > 0.9 for r in off),
            share_offdiag_all_black=_mean(r["fg_source_only"] < 0.02 for r in off),
            share_offdiag_all_black_or_white=_mean((r["fg_source_only"] > 0.9) or (r["fg_source_only"] < 0.02)
                                                   for r in off),
            true_fg=_mean(r["fg_true"] for r in rows),
        )
        # two or more brightness steps (|delta mu0| >= 40 = the object/background contrast) apart
        far = [r for r in off if abs(r["tgt_mu0"] - r["src_mu0"]) >= 40]
        f.update(
            far_source_only_target_brighter=_mean(r["iou_source_only"] for r in far if r["tgt_mu0"] > r["src_mu0"]),
            far_source_only_target_darker=_mean(r["iou_source_only"] for r in far if r["tgt_mu0"] < r["src_mu0"]),
            far_share_all_black_or_white=_mean((r["fg_source_only"] > 0.9) or (r["fg_source_only"] < 0.02)
                                               for r in far),
        )
        f["adaptation_closes_gap"] = bool(f["offdiag_over_diag_adapted"] >= 0.9)
    if spec.name == "distance":
        pairs = _by_pair(rows)
        ids = [d.id for d in spec.sources]
        for col, tag in (("iou_source_only", "source_only"), ("iou_adapted", "adapted")):
            wins, diffs = [], []
            for i, a in enumerate(ids):  # a is harder (smaller mu1 - mu0) than b
                for b in ids[i + 1:]:
                    d = pairs[(a, b)][col] - pairs[(b, a)][col]  # hard->easy minus easy->hard
                    diffs.append(d)
                    wins.append(d > 0)
            f[f"share_hard_to_easy_better_{tag}"] = _mean(wins)
            f[f"mean_hard_to_easy_minus_easy_to_hard_{tag}"] = _mean(diffs)
        f["asymmetry_source_only"] = _asymmetry(spec, rows, "iou_source_only")
        f["asymmetry_adapted"] = _asymmetry(spec, rows, "iou_adapted")
    if spec.name == "mixed":
        pairs = _by_pair(rows)
        f["asymmetry_source_only"] = _asymmetry(spec, rows, "iou_source_only")
        f["asymmetry_adapted"] = _asymmetry(spec, rows, "iou_adapted")
        if ("gradient", "edges") in pairs and ("edges", "gradient") in pairs:
            f["gradient_to_edges"] = {k: pairs[("gradient", "edges")][k] for k in ("iou_source_only", "iou_adapted")}
            f["edges_to_gradient"] = {k: pairs[("edges", "gradient")][k] for k in ("iou_source_only", "iou_adapted")}
        groups = {d.id: d.group for d in spec.sources}
        blocks: dict[str, Any] = {}
        for gs in ("distance", "brightness", "misc"):
            for gt in ("distance", "brightness", "misc"):
                sel = [r for r in rows if groups.get(r["source_id"]) == gs and groups.get(r["target_id"]) == gt]
                if sel:
                    blocks[f"{gs}->{gt}"] = {"source_only": _mean(r["iou_source_only"] for r in sel),
                                             "adapted": _mean(r["iou_adapted"] for r in sel)}
        f["blocks"] = blocks
    if spec.layout == "grid":
        f.update({
            "targets": len(rows),
            "share_adapted_above_0.9": _mean(r["iou_adapted"] > 0.9 for r in rows),
            "share_source_only_all_black": _mean(r["fg_source_only"] < 0.02 for r in rows),
            "share_source_only_all_white": _mean(r["fg_source_only"] > 0.9 for r in rows),
            "min_adapted": float(np.min(y)),
            "raises_on_90_percent": bool(_mean(r["iou_adapted"] > r["iou_source_only"] for r in rows) >= 0.9),
        })
    return f
