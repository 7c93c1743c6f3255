"""AdaBN against the alternatives of the source documents: TENT, ADDA (with and without momentum reset,
checkpoint chosen by the confusion score or by target labels) and GLSS, on toy and real pairs.

``bnadapt experiment compare`` evaluates, for every (pair, seed), every method of :data:`METHODS`:
the foreground IoU on the target's held-out images, the wall time of the method on this machine
(its adaptation/training and the segmentation; the source model's training, common to all, is not
counted), and whether the method needs target data when it trains. Pair families (:data:`FAMILIES`):

``brightness``  toy b90 -> b150 (thesis #2 datasets: the target 60 grey values brighter);
``distance``    toy d126 -> d30 (thesis #1: an easy source, a low-contrast target);
``inverted``    toy (96, 18, 138, 18) -> (138, 18, 96, 18): objects darker than the background;
``grid800``     the 1-800 grid's source -> ``grid_sample`` targets drawn from its 800 (seeded);
``real``        Lucchi++ <-> VNC with the bundled ``lucchi-pp`` and ``vnc`` models, both directions,
                on ``real_slices`` held-out slices of the target (skipped, with a note, when
                ``../shared/data/real`` or the repository's ``scripts/em_data.py`` is absent).

Seeds: on toy pairs a seed draws the source's training images, trains the source model, draws the
target images and seeds every method; on the real pair the models are the bundled ones and the seed
drives the methods (patch positions, initialisations). Published anchors for the real pair
(:data:`PUBLISHED`) are written to the summary and drawn in its figure.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result
from .datasets import Dataset, UNetScale, derive_seed
from .results import CONFIG_NAME, CSV_NAME, SUMMARY_NAME, ExperimentResult, ResultsCSV, check_config, read_csv

#: The pair families, in the order of the table and the figures.
FAMILIES: tuple[str, ...] = ("brightness", "distance", "inverted", "grid800", "real")
#: method -> (label, needs target data at training time, what it is).
METHODS: dict[str, tuple[str, bool, str]] = {
    "source-only": ("source only", False, "the source model as trained"),
    "adabn": ("AdaBN", False, "BatchNorm statistics re-estimated on the unlabelled target (this project)"),
    "tent": ("TENT", False, "AdaBN, then entropy minimisation of the BatchNorm affine parameters"),
    "adda": ("ADDA, confusion", True, "ADDA, checkpoint with the highest confusion score (label-free)"),
    "adda-label": ("ADDA, labels", True, "ADDA, checkpoint with the best target IoU (needs target labels)"),
    "adda-reset": ("ADDA+reset, confusion", True, "ADDA with momentum reset, confusion-score checkpoint"),
    "adda-reset-label": ("ADDA+reset, labels", True, "ADDA with momentum reset, best-target-IoU checkpoint"),
    "glss": ("GLSS", False, "VAE on source images; nearest source-like clone of each target image"),
}
#: Published foreground IoU of the real pair: Attention Y-Net (Franco-Barranco et al. 2022, 10 runs,
#: full volumes, as reported in the authors' repository; ../shared/data/real/README.md).
PUBLISHED: dict[str, tuple[float, float, str]] = {
    "lucchi->vnc": (0.40, 0.04, "Attention Y-Net (published)"),
    "vnc->lucchi": (0.54, 0.02, "Attention Y-Net (published)"),
}
COLUMNS = ["family", "pair_id", "source_id", "target_id", "seed", "method", "iou", "seconds",
           "target_at_training", "fg_true", "fg_pred", "selected_step", "confusion", "search_s_per_image"]
KEY = ("pair_id", "seed", "method")


@dataclass(frozen=True)
class CompareScale:
    """Sizes of the comparison (defaults: the reduced CPU scale; :data:`FULL`: larger).

    Toy settings: ``image_size``, ``n_train`` (source images: training and the baselines' source
    data), ``n_test`` (target images), ``width``, ``train_steps``, ``batch_size``, ``lr`` (source
    training). Methods: ``tent_steps``; ADDA ``adda_steps`` (``adda_batch`` patches per domain,
    checkpoint and momentum reset every ``adda_checkpoint`` steps, Adam ``adda_lr``); GLSS
    ``glss_steps`` of VAE training (``glss_latent`` dimensions), ``glss_search_steps`` of latent search.
    Real pair: ``real_slices`` held-out target slices, ``real_patch`` patch side of ADDA and the VAE,
    ``real_adda_steps``, ``real_adda_batch``, ``real_glss_steps``, ``real_search_steps``;
    ``real = False`` skips it.
    ``seeds``: seeds 0 .. seeds-1; ``grid_sample``: grid800 targets.
    """

    seeds: int = 2
    grid_sample: int = 2
    image_size: int = 64
    n_train: int = 256
    n_test: int = 16
    width: int = 8
    train_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    tent_steps: int = 10
    adda_steps: int = 40
    adda_batch: int = 8
    adda_checkpoint: int = 10
    adda_lr: float = 1e-4
    glss_steps: int = 200
    glss_latent: int = 64
    glss_search_steps: int = 30
    real: bool = True
    real_slices: int = 1
    real_patch: int = 128
    real_adda_steps: int = 30
    real_adda_batch: int = 4
    real_glss_steps: int = 100
    real_search_steps: int = 10

    def unet_scale(self) -> UNetScale:
        """The source models' training scale (shared with the other toy experiments' cache keys)."""
        return UNetScale(image_size=self.image_size, n_train=self.n_train, n_test=self.n_test, width=self.width,
                         steps=self.train_steps, batch_size=self.batch_size, lr=self.lr)


DEFAULT = CompareScale()
#: More seeds, targets, images and steps (hours on a 2-core CPU).
FULL = CompareScale(seeds=5, grid_sample=10, n_train=1024, n_test=128, width=16, train_steps=1500, tent_steps=20,
                    adda_steps=1000, adda_checkpoint=50, glss_steps=3000, glss_search_steps=100, real_slices=6,
                    real_adda_steps=600, real_glss_steps=2000, real_search_steps=50)
# The default is sized so that its two halves (toy families; real pair), run side by side, finish within
# about 40 minutes on a 2-core machine shared with other jobs.


@dataclass(frozen=True)
class Pair:
    """One (source, target) pair: toy datasets, or real volume names ("lucchi", "vnc")."""

    id: str
    family: str
    source: Any
    target: Any


def toy_pairs(scale: CompareScale) -> list[Pair]:
    """The toy pairs of every family (the grid800 sample drawn with a fixed seed)."""
    from ..synthetic.grid import GRID_SOURCE
    from .grid800 import spec as grid_spec
    from .matrix import brightness_datasets, distance_datasets

    b = {d.id: d for d in brightness_datasets()}
    d = {x.id: x for x in distance_datasets()}
    src = Dataset("grid-source", "source", *GRID_SOURCE)
    mu0, s0, mu1, s1 = GRID_SOURCE
    inv = Dataset("inverted", "inverted", mu1, s0, mu0, s1)
    pairs = [Pair("b90->b150", "brightness", b["b90"], b["b150"]),
             Pair("d126->d30", "distance", d["d126"], d["d30"]),
             Pair("grid-source->inverted", "inverted", src, inv)]
    targets = grid_spec("grid800").targets
    pick = np.random.default_rng(derive_seed("compare-grid-sample")).choice(len(targets), scale.grid_sample,
                                                                          replace=False)
    pairs += [Pair(f"grid-source->{targets[i].id}", "grid800", src, targets[i]) for i in sorted(pick)]
    return pairs


def real_pairs() -> list[Pair]:
    """Lucchi++ -> VNC and VNC -> Lucchi++."""
    return [Pair("lucchi->vnc", "real", "lucchi", "vnc"), Pair("vnc->lucchi", "real", "vnc", "lucchi")]


def em_data() -> Any | None:
    """The repository's ``scripts/em_data.py`` (the real data's files and splits), or None outside a checkout."""
    path = Path(__file__).resolve().parents[3] / "scripts" / "em_data.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_bnadapt_em_data", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def real_available(data: Path | None = None) -> tuple[bool, str]:
    """Whether the real pair can run, and why not."""
    mod = em_data()
    if mod is None:
        return False, "scripts/em_data.py not found (the real pair runs from a checkout of the repository)"
    folder = Path(data) if data is not None else mod.DATA
    if not mod.available(folder):
        return False, f"the real EM data is not in {folder}"
    return True, ""


# ------------------------------------------------------------------------------------- methods
def _iou_fg(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from ..metrics import iou

    return float(iou(pred > 0, y > 0)), float(np.mean(pred > 0))


def evaluate(model: Any, xs: np.ndarray, xt: np.ndarray, yt: np.ndarray, *, seed: int, tent_steps: int,
             adda_kw: dict[str, Any], glss_kw: dict[str, Any], search_steps: int, segment_kw: dict[str, Any],
             glss_cache: dict[Any, Any] | None = None, glss_key: Any = None) -> list[dict[str, Any]]:
    """Every method of :data:`METHODS` on one target: IoU, foreground, seconds, ADDA's chosen checkpoint.

    ``model`` is never changed. ``xs`` are source images (ADDA's source features, GLSS' VAE),
    ``xt`` the target images the methods adapt to and are scored on, ``yt`` their labels, used only to
    score (and for ADDA's label selection, the reference a user does not have).
    """
    from ..adabn.adaptation import adapt
    from ..baselines.adda import adda
    from ..baselines.glss import nearest_clones, train_glss
    from ..baselines.tent import tent
    from ..segmentation.predict import segment

    seg = lambda m, x=xt: segment(m, x, device="cpu", **segment_kw)  # noqa: E731
    rows: dict[str, dict[str, Any]] = {}

    def put(method: str, pred: np.ndarray, seconds: float, **extra: Any) -> None:
        i, fg = _iou_fg(pred, yt)
        rows[method] = {"method": method, "iou": i, "fg_pred": fg, "seconds": seconds, **extra}

    t = time.perf_counter()
    put("source-only", seg(model), time.perf_counter() - t)
    patch = 256  # the library's default patch side (clipped to smaller images)
    t = time.perf_counter()
    adapted, _ = adapt(model, xt, device="cpu", seed=seed, patch_size=patch,
                       pixel_size_nm=segment_kw.get("pixel_size_nm"))
    put("adabn", seg(adapted), time.perf_counter() - t)
    t = time.perf_counter()
    res = tent(model, xt, steps=tent_steps, patch_size=patch, seed=seed, pixel_size_nm=segment_kw.get("pixel_size_nm"))
    put("tent", seg(res.model), time.perf_counter() - t)
    for reset, name in ((None, "adda"), (adda_kw["checkpoint_every"], "adda-reset")):
        t = time.perf_counter()
        run = adda(model, xs, xt, momentum_reset=reset, seed=seed, **adda_kw)
        best = run.best_by_confusion()
        pred = seg(run.model(best))
        train_s = time.perf_counter() - t
        put(name, pred, train_s, selected_step=best.step, confusion=best.confusion)
        chosen, _ = run.select(lambda m: _iou_fg(seg(m), yt)[0])  # the label-based reference
        put(f"{name}-label", pred if chosen is best else seg(run.model(chosen)), train_s,
            selected_step=chosen.step, confusion=chosen.confusion)
    cached = glss_cache.get(glss_key) if glss_cache is not None else None
    g = cached if cached is not None else train_glss(model, xs, seed=seed, **glss_kw)
    if glss_cache is not None:
        glss_cache[glss_key] = g  # the VAE depends on the source only: trained once per (source, seed)
    t = time.perf_counter()
    clones, report = nearest_clones(g, xt, steps=search_steps, seed=seed)
    pred = seg(model, clones)
    # the VAE's training counts in every row that uses it (the cost of the pair run alone)
    put("glss", pred, g.seconds + time.perf_counter() - t, search_s_per_image=report.seconds_per_image)
    fg_true = float(np.mean(yt > 0))
    out = []
    for m in METHODS:
        r = rows[m]
        r["target_at_training"] = METHODS[m][1]
        r["fg_true"] = fg_true
        out.append(r)
    return out


def _toy_rows(pair: Pair, seed: int, sc: CompareScale, cache: Path, glss_cache: dict[Any, Any]) -> list[dict[str, Any]]:
    from ..model.files import load_model
    from .jobs import TrainJob, _torch_threads, model_path, train_source

    us = sc.unet_scale()
    path = model_path(cache, pair.source, us, seed)
    if not path.exists():
        train_source(TrainJob("compare", pair.source, us, seed, str(path)))
    model = load_model(path, device="cpu")
    xs, _, _ = pair.source.generate(sc.n_train, sc.image_size, derive_seed("train", seed, pair.source.key))
    xt, yt, _ = pair.target.generate(sc.n_test, sc.image_size, derive_seed("target", seed, pair.target.key))
    adda_kw = {"steps": sc.adda_steps, "batch_size": sc.adda_batch, "patch_size": sc.image_size,
               "checkpoint_every": sc.adda_checkpoint, "lr": sc.adda_lr, "discriminator_lr": sc.adda_lr}
    glss_kw = {"steps": sc.glss_steps, "patch_size": sc.image_size, "latent": sc.glss_latent}
    with _torch_threads(1):
        return evaluate(model, xs, xt, yt, seed=seed, tent_steps=sc.tent_steps, adda_kw=adda_kw, glss_kw=glss_kw,
                        search_steps=sc.glss_search_steps, segment_kw={"overlap": 0, "batch_size": 16},
                        glss_cache=glss_cache, glss_key=(pair.source.id, seed))


def _real_rows(pair: Pair, seed: int, sc: CompareScale, data: Path | None,
               glss_cache: dict[Any, Any]) -> list[dict[str, Any]]:
    from ..model.files import load_model
    from .jobs import _torch_threads

    mod = em_data()
    folder = Path(data) if data is not None else mod.DATA
    model = load_model(mod.RECIPES[pair.source]["name"], device="cpu")
    xs, _ = mod.load_split(pair.source, "train", folder)
    xm, y = mod.load_split(pair.target, "test", folder)
    keep = np.linspace(0, len(y) - 1, min(sc.real_slices, len(y))).round().astype(int)
    xt, yt = np.asarray(xm[keep]), np.asarray(y[keep])
    adda_kw = {"steps": sc.real_adda_steps, "batch_size": sc.real_adda_batch, "patch_size": sc.real_patch,
               "checkpoint_every": sc.adda_checkpoint, "lr": sc.adda_lr, "discriminator_lr": sc.adda_lr}
    glss_kw = {"steps": sc.real_glss_steps, "batch_size": 8, "patch_size": sc.real_patch,
               "latent": 2 * sc.glss_latent}
    with _torch_threads(1):
        return evaluate(model, np.asarray(xs), xt, yt, seed=seed, tent_steps=sc.tent_steps, adda_kw=adda_kw,
                        glss_kw=glss_kw, search_steps=sc.real_search_steps,
                        segment_kw={"pixel_size_nm": mod.RECIPES[pair.target]["pixel_size_nm"]},
                        glss_cache=glss_cache, glss_key=(pair.source, seed))


# ------------------------------------------------------------------------------------- the run
def run_iter(scale: CompareScale, out: Path, *, resume: bool = True, seed: int = 0, figures: bool = True,
             families: tuple[str, ...] = FAMILIES, data: Path | None = None
             ) -> Iterator[Progress | Result[ExperimentResult]]:
    """Run the comparison into ``out`` (resumable: (pair, seed, method) rows already in the CSV are kept).

    ``seed`` offsets the seeds (seeds ``seed .. seed + scale.seeds - 1``); ``families`` restricts the
    pair families; ``data`` is the real data's folder (default ``../shared/data/real``).
    """
    t0 = time.perf_counter()
    bad = set(families) - set(FAMILIES)
    if bad:
        raise BNAdaptError(f"unknown pair famil{'ies' if len(bad) > 1 else 'y'} {', '.join(sorted(bad))}; "
                           f"choose among {', '.join(FAMILIES)}")
    if scale.image_size % 16 or scale.real_patch % 16:
        raise BNAdaptError("image_size and real_patch must be multiples of 16")
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    config = {"experiment": "compare", "scale": dataclasses.asdict(scale), "seed": seed, "families": list(families)}
    check_config(out, config, resume)
    if not resume:
        (out / CSV_NAME).unlink(missing_ok=True)
    csv = ResultsCSV(out / CSV_NAME, COLUMNS, key=KEY)
    notes: list[str] = []
    pairs = [p for p in toy_pairs(scale) if p.family in families]
    if "real" in families:
        ok, why = real_available(data)
        if ok and scale.real:
            pairs += real_pairs()
        else:
            notes.append("real pair skipped: " + (why or "scale.real is False"))
    seeds = list(range(seed, seed + scale.seeds))
    work = [(p, s) for p in pairs for s in seeds]
    computed = 0
    glss_cache: dict[Any, Any] = {}
    for k, (p, s) in enumerate(work):
        yield Progress("compare", k, len(work))
        if all((p.id, str(s), m) in csv.done for m in METHODS):
            continue
        rows = (_real_rows(p, s, scale, data, glss_cache) if p.family == "real"
                else _toy_rows(p, s, scale, out / "cache", glss_cache))
        src_id = p.source if isinstance(p.source, str) else p.source.id
        tgt_id = p.target if isinstance(p.target, str) else p.target.id
        for r in rows:
            if (p.id, str(s), r["method"]) not in csv.done:
                csv.append({"family": p.family, "pair_id": p.id, "source_id": src_id, "target_id": tgt_id,
                            "seed": s, **r})
                computed += 1
    yield Progress("compare", len(work), len(work))
    order = {p.id: i for i, p in enumerate(pairs)}
    mi = {m: i for i, m in enumerate(METHODS)}
    csv.finalize(lambda r: (order.get(r["pair_id"], 1e9), int(r["seed"]), mi.get(r["method"], 99)))
    summary = summarise(read_csv(out / CSV_NAME))
    summary["notes"] = notes
    summary["published"] = {k: {"iou": v[0], "sd": v[1], "method": v[2]} for k, v in PUBLISHED.items()}
    summary["seconds"] = time.perf_counter() - t0
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / "table.md").write_text(table(summary) + "\n")
    figs = draw(summary, out / "figures") if figures else []
    rows_n = len(csv.rows)
    yield Result(ExperimentResult("compare", out, out / CSV_NAME, figs, summary, time.perf_counter() - t0, computed,
                                  rows_n, dataclasses.asdict(scale)))


# ---------------------------------------------------------------------------- summary and table
def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (pair, method): IoU mean and sd over seeds, mean seconds; per family: the means over its pairs."""
    pairs: dict[str, Any] = {}
    for r in rows:
        p = pairs.setdefault(r["pair_id"], {"family": r["family"], "methods": {}})
        p["methods"].setdefault(r["method"], []).append(r)
    out: dict[str, Any] = {"pairs": {}, "families": {}}
    for pid, p in pairs.items():
        ms = {}
        for m, rs in p["methods"].items():
            v = np.array([float(r["iou"]) for r in rs])
            ms[m] = {"iou": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
                     "seconds": float(np.mean([float(r["seconds"]) for r in rs])),
                     "target_at_training": METHODS[m][1] if m in METHODS else None}
            sp = [float(r["search_s_per_image"]) for r in rs if _finite(r.get("search_s_per_image"))]
            if sp:
                ms[m]["search_s_per_image"] = float(np.mean(sp))
        out["pairs"][pid] = {"family": p["family"], "methods": ms}
    for fam in FAMILIES:
        ps = [v for v in out["pairs"].values() if v["family"] == fam]
        if not ps:
            continue
        fm = {}
        for m in METHODS:
            got = [p["methods"][m] for p in ps if m in p["methods"]]
            if got:
                fm[m] = {"iou": float(np.mean([g["iou"] for g in got])), "sd": float(np.mean([g["sd"] for g in got])),
                         "seconds": float(np.mean([g["seconds"] for g in got])), "pairs": len(got)}
        best = max(fm, key=lambda m: fm[m]["iou"])
        label_free = {m: v for m, v in fm.items() if not m.endswith("-label")}
        out["families"][fam] = {
            "methods": fm, "best": best, "best_label_free": max(label_free, key=lambda m: label_free[m]["iou"]),
            "confusion_cost": {b: fm[f"{b}-label"]["iou"] - fm[b]["iou"] for b in ("adda", "adda-reset")
                               if b in fm and f"{b}-label" in fm},
        }
    return out


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def table(summary: dict[str, Any]) -> str:
    """The comparison as a markdown table: one row per (pair, method), IoU mean +- sd over seeds, seconds."""
    lines = ["| family | pair | method | IoU (mean +- sd over seeds) | seeds | wall time (s) | target data at training |",
             "|---|---|---|---|---|---|---|"]
    for pid, p in summary["pairs"].items():
        for m in [m for m in METHODS if m in p["methods"]]:
            v = p["methods"][m]
            extra = f" (search {v['search_s_per_image']:.2f} s/image)" if "search_s_per_image" in v else ""
            lines.append(f"| {p['family']} | {pid} | {METHODS[m][0]} | {v['iou']:.3f} +- {v['sd']:.3f} | {v['n']} | "
                         f"{v['seconds']:.1f}{extra} | {'yes' if v['target_at_training'] else 'no'} |")
        if pid in PUBLISHED:
            iou_, sd, what = PUBLISHED[pid]
            lines.append(f"| {p['family']} | {pid} | {what} | {iou_:.2f} +- {sd:.2f} | 10 runs | GPU training | yes |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- figures
MARKERS = {"source-only": "o", "adabn": "s", "tent": "D", "adda": "^", "adda-label": "v", "adda-reset": ">",
           "adda-reset-label": "<", "glss": "P"}


def draw(summary: dict[str, Any], folder: Path) -> list[Path]:
    """One figure per family: IoU against wall time (log scale), every (pair, method) with its sd over seeds."""
    from ._figures import figure, save

    paths = []
    for fam in FAMILIES:
        ps = {pid: p for pid, p in summary["pairs"].items() if p["family"] == fam}
        if not ps:
            continue
        fig = figure(figsize=(9.0, 4.8))
        ax = fig.add_subplot(1, 1, 1)
        colours = {m: f"C{i}" for i, m in enumerate(METHODS)}
        fills = ["full", "none", "left", "bottom", "right", "top"]
        for j, (pid, p) in enumerate(ps.items()):
            for m in [m for m in METHODS if m in p["methods"]]:
                v = p["methods"][m]
                ax.errorbar(max(v["seconds"], 1e-2), v["iou"], yerr=v["sd"], fmt=MARKERS[m], color=colours[m],
                            fillstyle=fills[j % len(fills)], ms=8, capsize=3,
                            label=METHODS[m][0] if j == 0 else None)
            if pid in PUBLISHED:
                ax.axhline(PUBLISHED[pid][0], color="grey", ls="--", lw=1)
                ax.text(0.01, PUBLISHED[pid][0], f" {PUBLISHED[pid][2]}: {pid}",
                        transform=ax.get_yaxis_transform(), va="bottom", fontsize=7, color="grey")
        ax.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter, LogLocator

        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("wall time on this machine (s, log scale; 1 CPU thread)")
        ax.set_ylabel("foreground IoU on the target")
        ax.set_ylim(-0.02, 1.02)
        pairs_txt = "; ".join(f"{['filled', 'open', 'left', 'bottom', 'right', 'top'][j % 6]}: {pid}"
                              for j, pid in enumerate(ps))
        ax.set_title(f"{fam}: IoU against cost (mean +- sd over seeds)\n{pairs_txt}", fontsize=8)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(save(fig, folder / f"compare_{fam}.png"))
    return paths


def default_out() -> Path:
    from . import DEFAULT_OUT

    return DEFAULT_OUT / "compare"


__all__ = ["CompareScale", "DEFAULT", "FULL", "FAMILIES", "METHODS", "PUBLISHED", "run_iter", "evaluate",
           "summarise", "table", "draw", "toy_pairs", "real_pairs", "real_available", "CONFIG_NAME"]
