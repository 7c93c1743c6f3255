"""The paper's toy UDA (Stenger et al., ISBI 2022, section 4.3, Figs. 3 and 4).

A 2D Gaussian N1 = N(0, I) is classified by a circular decision boundary centred
on its mean, with the radius sqrt(2 ln 2) that splits it into two equal halves
(no label shift). A small network, Linear(2, h) -> BatchNorm -> ReLU ->
Linear(h, h) -> BatchNorm -> ReLU -> Linear(h, 2), is trained on N1.

Two questions, one row per random Gaussian N_k:

1. *Classic UDA* (Fig. 3): N_k is N1 moved by an affine map T_k (the labels move
   with it, so the true boundary becomes an ellipse around the mean of N_k).
   ``acc_source_only``: the source network on N_k; ``acc_adapted``: after its
   BatchNorm statistics were re-estimated on unlabelled samples of N_k.
2. *Estimated statistics* (Fig. 4): the paper's reading of the performance drop
   after adaptation is that the BatchNorm statistics are an *estimate* of the
   true target's. N1 plays the true target, N_k the estimate: the network's
   BatchNorm statistics are re-estimated on N_k and it is evaluated on N1
   (``acc_estimated``); ``rel_perf = acc_estimated / acc(N1 statistics)``. The
   paper finds ``rel_perf`` close to log-linear in the target-normalised
   W2^2 between N1 (the reference: the true target) and N_k, computed in
   closed form from the Gaussians' parameters.

N_k: a discrepancy scale s is drawn log-uniformly in [0.01, 3]; the mean moves by
s * z / sqrt(2) (z standard normal in 2D) and the covariance is
R(theta) diag(exp(2 s a), exp(2 s b)) R(theta)^T with a, b standard normal and
theta uniform. The paper gives no sample sizes; ours are in :data:`DEFAULT`
and :data:`FULL`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adabn.estimators import adapt_batchnorm_iter
from ..progress import Progress, Result, forward, run_to_end
from ..stats.wasserstein import w2_squared, w2_squared_diag
from ._figures import figure, save
from .datasets import derive_seed
from .jobs import _torch_threads
from .results import (
    CSV_NAME,
    SUMMARY_NAME,
    ExperimentResult,
    ResultsCSV,
    _json_default,
    check_config,
    read_csv,
)

RADIUS = math.sqrt(2.0 * math.log(2.0))  # P(|x| < r) = 1/2 for x ~ N(0, I_2)
#: The classic-UDA target of the decision-boundary figure: moved by (3, 2), scaled by (1.5, 0.8).
BOUNDARY_TARGET = {"mean": (3.0, 2.0), "cov": ((1.5 ** 2, 0.0), (0.0, 0.8 ** 2))}


@dataclass(frozen=True)
class ToyScale:
    """Sizes of the toy UDA.

    Attributes
    ----------
    n_train : int
        Training samples of N1.
    hidden : int
        Width of the hidden layers.
    steps, batch_size, lr :
        Adam training of the network.
    n_targets : int
        Random Gaussians N_k (rows of the CSV).
    n_adapt : int
        Unlabelled samples of N_k used to re-estimate the BatchNorm statistics.
    adapt_batch_size : int
        Samples per forward pass during adaptation.
    n_test : int
        Labelled samples for every accuracy.
    """

    n_train: int = 4000
    hidden: int = 16
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-2
    n_targets: int = 200
    n_adapt: int = 1000
    adapt_batch_size: int = 250
    n_test: int = 20000


DEFAULT = ToyScale()
FULL = ToyScale(n_train=20000, hidden=32, steps=5000, n_targets=1000, n_adapt=10000, adapt_batch_size=500,
                n_test=100000)

COLUMNS = ["target_id", "scale", "mean_x", "mean_y", "cov_xx", "cov_xy", "cov_yy",
           "acc_source_only", "acc_adapted", "acc_reference", "acc_estimated", "rel_perf",
           "w2", "snw2", "tnw2", "tnw2_ls0_diag"]


def make_network(hidden: int) -> Any:
    """Linear(2, h) -> BN -> ReLU -> Linear(h, h) -> BN -> ReLU -> Linear(h, 2)."""
    from torch import nn

    return nn.Sequential(nn.Linear(2, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


def _sample(rng: np.random.Generator, n: int, mean: Any = (0.0, 0.0), cov: Any = ((1.0, 0.0), (0.0, 1.0))
            ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of N(mean, cov) = T(N1) and their labels (the circle of N1, moved by T)."""
    x = rng.standard_normal((n, 2))
    labels = (np.einsum("ij,ij->i", x, x) < RADIUS ** 2).astype(np.int64)
    return x @ _sqrtm(np.asarray(cov, float)).T + np.asarray(mean, float), labels


def _sqrtm(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _accuracy(net: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
    return float(np.mean(pred == y))


def _adapted(net: Any, x: np.ndarray, batch_size: int) -> Any:
    """A copy of ``net`` with BatchNorm statistics re-estimated on ``x`` (the package's AdaBN engine)."""
    import torch

    out = copy.deepcopy(net)
    t = torch.from_numpy(x.astype(np.float32))
    batches = [t[i:i + batch_size] for i in range(0, len(t), batch_size)]
    run_to_end(adapt_batchnorm_iter(out, batches, len(batches)))
    return out


def train_network(scale: ToyScale, seed: int) -> Iterator[Progress | Result[Any]]:
    """Train the toy network on N1 (Adam, cross-entropy); yields progress, then the network."""
    import torch

    torch.manual_seed(derive_seed("toy-init", seed))
    rng = np.random.default_rng(derive_seed("toy-train", seed))
    x, y = _sample(rng, scale.n_train)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    net = make_network(scale.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=scale.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=scale.steps, eta_min=scale.lr * 0.02)
    every = max(1, scale.steps // 50)
    for step in range(1, scale.steps + 1):
        net.train()
        idx = torch.from_numpy(rng.integers(0, len(x), scale.batch_size))
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == scale.steps:
            yield Progress("training the toy network", step, scale.steps)
    # BatchNorm running statistics of the whole training set (exact, not the training EMA)
    net = _adapted(net, x, scale.adapt_batch_size)
    net.eval()
    yield Result(net)


def _target(rng: np.random.Generator) -> dict[str, Any]:
    s = float(np.exp(rng.uniform(np.log(0.01), np.log(3.0))))
    mean = s * rng.standard_normal(2) / math.sqrt(2.0)
    a, b = rng.standard_normal(2)
    th = rng.uniform(0, math.pi)
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cov = r @ np.diag([math.exp(2 * s * a), math.exp(2 * s * b)]) @ r.T
    return {"scale": s, "mean": mean, "cov": 0.5 * (cov + cov.T)}


def _bn1_moments(net: Any, x: np.ndarray) -> Any:
    from ..stats.latent_moments import collect_latent_moments

    return collect_latent_moments(net, [x.astype(np.float32)], {"ls0": net[1]})["ls0"]


def evaluate_target(net: Any, k: int, scale: ToyScale, seed: int, ref: dict[str, Any]) -> dict[str, Any]:
    """One row: classic UDA on N_k, and the estimated-statistics question with N1 as the true target."""
    tg = _target(np.random.default_rng(derive_seed("toy-target", seed, k)))
    rng = np.random.default_rng(derive_seed("toy-target-data", seed, k))
    xa, _ = _sample(rng, scale.n_adapt, tg["mean"], tg["cov"])
    xk, yk = _sample(rng, scale.n_test, tg["mean"], tg["cov"])
    adapted = _adapted(net, xa, scale.adapt_batch_size)
    acc_est = _accuracy(adapted, ref["x"], ref["y"])
    m1, c1 = np.zeros(2), np.eye(2)
    b = _bn1_moments(adapted, ref["x"])
    return {
        "target_id": f"t{k:04d}", "scale": tg["scale"],
        "mean_x": tg["mean"][0], "mean_y": tg["mean"][1],
        "cov_xx": tg["cov"][0, 0], "cov_xy": tg["cov"][0, 1], "cov_yy": tg["cov"][1, 1],
        "acc_source_only": _accuracy(net, xk, yk),
        "acc_adapted": _accuracy(adapted, xk, yk),
        "acc_reference": ref["acc"],
        "acc_estimated": acc_est,
        "rel_perf": acc_est / ref["acc"],
        # N_k first, the true target N1 second: "target" normalises by N1
        "w2": w2_squared(tg["mean"], tg["cov"], m1, c1),
        "snw2": w2_squared(tg["mean"], tg["cov"], m1, c1, normalize="source"),
        "tnw2": w2_squared(tg["mean"], tg["cov"], m1, c1, normalize="target"),
        # the same question in the first BatchNorm layer's output (diagonal form: that
        # layer's covariance has rank 2): estimated-statistics network vs the reference network, on N1
        "tnw2_ls0_diag": w2_squared_diag(b.mean, b.var, ref["ls0"].mean, ref["ls0"].var, normalize="target"),
    }


def fit_loglinear(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares line ``rel_perf = a + b log10(tnW2^2)`` and correlations.

    Fitted on the points between the two plateaus (rel_perf in [0.6, 0.97]): below
    about 0.5 / acc(reference) a balanced binary classifier is at chance, and
    near 1 the network's own error dominates.
    """
    x = np.log10(np.array([r["tnw2"] for r in rows], float))
    y = np.array([r["rel_perf"] for r in rows], float)
    loss = 1.0 - y
    ok = np.isfinite(x) & np.isfinite(y)
    mid = ok & (y >= 0.6) & (y <= 0.97)
    out: dict[str, Any] = {"n_points": int(ok.sum()), "n_fitted": int(mid.sum())}
    if mid.sum() >= 3:
        b, a = np.polyfit(x[mid], y[mid], 1)
        out.update(slope_per_decade=float(b), intercept=float(a),
                   pearson_fitted=float(np.corrcoef(x[mid], y[mid])[0, 1]),
                   x_range_fitted=[float(x[mid].min()), float(x[mid].max())])
    if ok.sum() >= 3:
        lx = np.log1p(np.array([r["tnw2"] for r in rows], float))[ok]
        out["pearson_log1p_tnw2_vs_loss"] = float(np.corrcoef(lx, loss[ok])[0, 1])
        from scipy.stats import spearmanr

        out["spearman_tnw2_vs_rel_perf"] = float(spearmanr(x[ok], y[ok]).statistic)
    return out


def toy_findings(rows: list[dict[str, Any]], boundary: dict[str, float]) -> dict[str, Any]:
    acc0 = np.array([r["acc_source_only"] for r in rows], float)
    acc1 = np.array([r["acc_adapted"] for r in rows], float)
    return {
        "targets": len(rows),
        "reference_accuracy": rows[0]["acc_reference"] if rows else math.nan,
        "mean_acc_source_only": float(acc0.mean()) if rows else math.nan,
        "mean_acc_adapted": float(acc1.mean()) if rows else math.nan,
        "share_adaptation_helps": float(np.mean(acc1 > acc0)) if rows else math.nan,
        "boundary_target": boundary,
        "loglinear": fit_loglinear(rows),
    }


def figures(net: Any, rows: list[dict[str, Any]], scale: ToyScale, seed: int, folder: Path,
            findings: dict[str, Any]) -> list[Path]:
    """The decision boundary before/after adaptation, and relative performance vs tnW2 (log x)."""
    import torch
    from matplotlib.patches import Ellipse

    folder = Path(folder)
    rng = np.random.default_rng(derive_seed("toy-boundary", seed))
    mean, cov = BOUNDARY_TARGET["mean"], np.array(BOUNDARY_TARGET["cov"])
    xa, _ = _sample(rng, scale.n_adapt, mean, cov)
    xs, ys = _sample(rng, 600, mean, cov)
    x1, y1 = _sample(rng, 600)
    adapted = _adapted(net, xa, scale.adapt_batch_size)
    gx, gy = np.meshgrid(np.linspace(-4, 8, 300), np.linspace(-4, 6, 250))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))
    fig = figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, model, what in zip(axes, (net, adapted), ("(a) before adaptation", "(b) after BatchNorm adaptation")):
        model.eval()
        with torch.no_grad():
            p = torch.softmax(model(grid), 1)[:, 1].numpy().reshape(gx.shape)
        ax.contourf(gx, gy, p, levels=[0, 0.5, 1], colors=["#f3d9c6", "#cfe3f3"])
        ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(x1[:, 0], x1[:, 1], s=4, c="0.55", alpha=0.5, label="N1 (source)")
        ax.scatter(xs[:, 0], xs[:, 1], s=5, c=np.where(ys == 1, "tab:blue", "tab:orange"), alpha=0.8,
                   label="N2 (target), coloured by true class")
        w, v = np.linalg.eigh(cov)
        ang = math.degrees(math.atan2(v[1, -1], v[0, -1]))
        ax.add_patch(Ellipse(mean, 2 * RADIUS * math.sqrt(w[-1]), 2 * RADIUS * math.sqrt(w[0]), angle=ang,
                             fill=False, ls="--", ec="tab:blue", lw=1.5))
        acc = _accuracy(model, *_sample(np.random.default_rng(1), 20000, mean, cov))
        ax.set_title(f"{what}: accuracy on N2 {acc:.3f}")
        ax.set_aspect("equal")
        ax.set_xlim(-4, 8)
        ax.set_ylim(-4, 6)
    axes[0].legend(loc="upper left", fontsize=7, markerscale=2)
    fig.suptitle("Toy UDA: decision boundary (black) of the Linear+BatchNorm network; dashed: true boundary on N2")
    figs = [save(fig, folder / "exp_toy_uda_boundary.png")]

    fig = figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.array([r["tnw2"] for r in rows], float)
    y = np.array([r["rel_perf"] for r in rows], float)
    ax.scatter(x, y, s=10, c="tab:blue", alpha=0.7, label="random estimated targets N_k")
    fit = findings["loglinear"]
    if "slope_per_decade" in fit:
        lo, hi = fit["x_range_fitted"]
        xx = np.linspace(lo, hi, 50)
        ax.plot(10 ** xx, fit["intercept"] + fit["slope_per_decade"] * xx, "k-", lw=1.5,
                label=f"fit: {fit['slope_per_decade']:+.3f} per decade (r = {fit['pearson_fitted']:+.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("target-normalised W2² between the true (N1) and the estimated (N_k) statistics")
    ax.set_ylabel("relative performance P_estimated / P_true")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Toy UDA: relative performance vs tnW2² (paper Fig. 4, blue dots)")
    figs.append(save(fig, folder / "exp_toy_uda_relation.png"))
    return figs


def run_iter(scale: ToyScale, out: Path, *, resume: bool = True, seed: int = 0, figures_: bool = True
             ) -> Iterator[Progress | Result[ExperimentResult]]:
    """Generator behind ``experiments.run("toy-uda")``."""
    import torch

    t0 = time.perf_counter()
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    config = {"experiment": "toy-uda", "seed": seed, "scale": dataclasses.asdict(scale)}
    check_config(out, config, resume)
    table = ResultsCSV(out / CSV_NAME, COLUMNS, key=("target_id",))
    h = hashlib.sha256(json.dumps([dataclasses.asdict(scale), seed], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"toy_network_{h}.pt"
    with _torch_threads(1):
        if path.exists() and resume:
            net = make_network(scale.hidden)
            net.load_state_dict(torch.load(path, weights_only=True))
            net.eval()
        else:
            net = yield from forward(train_network(scale, seed))
            tmp = path.with_suffix(".partial")
            torch.save(net.state_dict(), tmp)
            tmp.replace(path)
        rng = np.random.default_rng(derive_seed("toy-reference", seed))
        xr, yr = _sample(rng, scale.n_test)
        ref = {"x": xr, "y": yr, "acc": _accuracy(net, xr, yr), "ls0": _bn1_moments(net, xr)}
        done = table.done
        computed = 0
        stage = "adapting to the random targets"
        yield Progress(stage, len(done), scale.n_targets)
        for k in range(scale.n_targets):
            if (f"t{k:04d}",) in done:
                continue
            table.append(evaluate_target(net, k, scale, seed, ref))
            computed += 1
            yield Progress(stage, len(done) + computed, scale.n_targets)
        table.finalize(lambda r: r["target_id"])
        rows = read_csv(out / CSV_NAME)
        bt = _sample(np.random.default_rng(derive_seed("toy-boundary", seed)), scale.n_adapt,
                     BOUNDARY_TARGET["mean"], BOUNDARY_TARGET["cov"])[0]
        test = _sample(np.random.default_rng(1), 20000, BOUNDARY_TARGET["mean"], BOUNDARY_TARGET["cov"])
        boundary = {"acc_source_only": _accuracy(net, *test),
                    "acc_adapted": _accuracy(_adapted(net, bt, scale.adapt_batch_size), *test)}
        findings = toy_findings(rows, boundary)
        figs: list[Path] = []
        if figures_:
            yield Progress("drawing figures", 0, 1)
            figs = figures(net, rows, scale, seed, out / "figures", findings)
            yield Progress("drawing figures", 1, 1)
    seconds = time.perf_counter() - t0
    summary = {"experiment": "toy-uda", "rows": len(rows), "computed_this_run": computed,
               "seconds_this_run": round(seconds, 1), "findings": findings}
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    yield Result(ExperimentResult("toy-uda", out, out / CSV_NAME, figs, findings, seconds, computed, len(rows),
                                  dataclasses.asdict(scale)))
