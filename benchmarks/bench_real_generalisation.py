"""How the EM source models do on volumes from labs they never saw: real and simulated, leave one volume out.

Run: python benchmarks/bench_real_generalisation.py [--models lucchi-pp vnc em-generalist] [--models-dir DIR]

Needs ``../shared/data/real/`` (not shipped). Targets are always HELD-OUT slices (never trained on):

* real: ``--real-slices`` evenly spaced whole slices of the Lucchi++ test volume (42 slices) and of
  VNC slices 14-19, each at its true pixel size (5 and 4.6 nm). For a model trained on one of the two volumes
  the other one is a real cross-lab target (leave one volume out); for a model trained on both
  (``em-generalist``) both are in-domain held-out slices, and only the simulated targets test it.
* simulated other labs (clearly labelled as such): ``--sim-slices`` central 512 x 512 crops of the
  same held-out slices of each volume, changed the way other microscopes and protocols differ:
  coarser and finer pixels (stated correctly, and once NOT stated), a low-dose grey-value curve
  with noise, blur with curtaining stripes, inverted contrast, and a combination. Every change
  is seeded; labels are resampled with the image.

Methods per (model, target), each adding one step (times on this machine, 2 CPU cores):

* ``source``: the source model as trained (pixel size given: resampled to the model's);
* ``adabn``: cumulative AdaBN on the target (64 patches, seed 0), the library default;
* ``+guard``: AdaBN, but the source statistics are kept where :func:`adaptation_needed` finds the
  target's statistics at the noise floor ("no adaptation needed") of the model's running statistics or,
  for a model trained on several volumes, of one training volume's (``napari_bnadapt.adabn.volumes``);
  with ``--content-floor``, also within how far crops of the training data of the target's size lie
  (``napari_bnadapt.adabn.content_floor``);
* ``+tta``: the AdaBN model, probabilities averaged over the 4 flips (test-time augmentation);
* ``+entropy``: the AdaBN model after the entropy step on the BatchNorm affine parameters;
* ``+scale``: AdaBN and segmentation at the zoom :func:`choose_zoom` picks without labels.

The two slow extras (``+entropy``, ``+scale``) run on the real targets and on the one simulation
whose pixel size is not stated (blank cells elsewhere), to keep a run near ten minutes per model on
2 cores. Rows are appended to ``<name>.partial.jsonl`` as they finish; a rerun with the same
arguments skips them (delete the file to start over).

Writes ``benchmarks/results/bench_real_generalisation.{txt,json}`` and
``docs/images/real_generalisation.png``. Foreground IoU at threshold 0.5 on the target's grid.
Published anchors (full volumes, other protocols): Attention Y-Net Lucchi++ -> VNC 0.40,
VNC -> Lucchi++ 0.54 (Franco-Barranco et al. 2022); DA-ISC VNC -> Lucchi 0.69-0.74.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import RESULTS, add_model_arguments, header, load_em_model, read_partial, save_results  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready, recipes_by_model_name  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

METHODS = ("source", "adabn", "+guard", "+tta", "+entropy", "+scale")
#: which volume(s) each model was trained on (its other volumes are cross-lab targets)
#: (read from the training recipes, so a new recipe cannot be mistaken for a cross-lab model)
TRAINED_ON = {name: set(r["sources"]) for name, r in recipes_by_model_name().items()}


def domain_of(model_name: str, volume: str) -> str:
    """"in-domain" when ``model_name`` was trained on ``volume``, else "cross-lab" (unknown models refused)."""
    if model_name not in TRAINED_ON:
        raise SystemExit(f"{model_name!r} has no training recipe in scripts/em_data.py: cannot tell its "
                         "in-domain targets from its cross-lab ones")
    return "in-domain" if volume in TRAINED_ON[model_name] else "cross-lab"


# --- simulated other labs ----------------------------------------------------------------------

def _zoomed(x: np.ndarray, y: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels as a microscope with pixels 1/f times the size would record them (antialiased)."""
    from scipy.ndimage import gaussian_filter, zoom

    xs = x.astype(np.float32)
    if f < 1:  # coarser pixels integrate over a larger area
        xs = np.stack([gaussian_filter(s, 0.5 / f) for s in xs])
    xz = zoom(xs, (1, f, f), order=1, grid_mode=True, mode="reflect")
    yz = zoom((y > 0).astype(np.float32), (1, f, f), order=1, grid_mode=True, mode="nearest") > 0.5
    return np.clip(np.rint(xz), 0, 255).astype(np.uint8), yz.astype(np.uint8)


def _grey(x: np.ndarray, gamma: float = 1.0, gain: float = 1.0, offset: float = 0.0, noise: float = 0.0,
          blur: float = 0.0, stripes: float = 0.0, invert: bool = False, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    v = x.astype(np.float32) / 255.0
    if blur:
        v = np.stack([gaussian_filter(s, blur) for s in v])
    v = np.clip(v, 0, 1) ** gamma
    v = (v - v.mean()) * gain + v.mean() + offset
    if stripes:
        cols = np.cumsum(rng.normal(0, 1, v.shape[-1]))
        cols = (cols - cols.mean()) / np.abs(cols - cols.mean()).max() * stripes
        v = v + cols[None, None, :]
    if noise:
        v = v + rng.normal(0, noise, v.shape)
    if invert:
        v = 1.0 - v
    return np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)


#: name -> (what it is, function (image, labels, pixel size) -> (image, labels, stated pixel size or None))
SIMULATIONS: dict[str, tuple[str, Callable[..., Any]]] = {
    "pixels 1.6x coarser": ("a lab imaging at 1.6x the pixel size, stated",
                            lambda x, y, px: (*_zoomed(x, y, 1 / 1.6), tuple(p * 1.6 for p in px))),
    "pixels 0.7x finer": ("a lab imaging at 0.7x the pixel size, stated",
                          lambda x, y, px: (*_zoomed(x, y, 1 / 0.7), tuple(p * 0.7 for p in px))),
    "pixels 1.6x, not stated": ("as '1.6x coarser' but the pixel size is unknown to the plugin",
                                lambda x, y, px: (*_zoomed(x, y, 1 / 1.6), None)),
    "low dose": ("gamma 0.7, contrast 0.7, Gaussian noise 0.06", lambda x, y, px: (
        _grey(x, gamma=0.7, gain=0.7, noise=0.06, seed=1), y, px)),
    "blur + stripes": ("Gaussian blur 1.5 px, curtaining stripes +-0.08", lambda x, y, px: (
        _grey(x, blur=1.5, stripes=0.08, seed=2), y, px)),
    "inverted": ("inverted contrast (mitochondria bright)", lambda x, y, px: (_grey(x, invert=True), y, px)),
    "combined": ("1.3x coarser (stated), gamma 1.4, contrast 1.2, noise 0.04, blur 0.8", lambda x, y, px: (
        _grey(_zoomed(x, y, 1 / 1.3)[0], gamma=1.4, gain=1.2, noise=0.04, blur=0.8, seed=3),
        _zoomed(x, y, 1 / 1.3)[1], tuple(p * 1.3 for p in px))),
}


def targets(real_slices: int, sim_slices: int) -> list[dict[str, Any]]:
    """Every target: name, volume, kind (real/simulated), image, labels, stated pixel size."""
    out = []
    for vol in ("lucchi", "vnc"):
        xm, y = load_split(vol, "test")
        keep = np.linspace(0, len(y) - 1, min(real_slices, len(y))).round().astype(int)
        x, y = np.asarray(xm[keep]), np.asarray(y[keep])
        px = RECIPES[vol]["pixel_size_nm"]
        label = RECIPES[vol]["label"]
        out.append({"name": f"{label} test", "volume": vol, "kind": "real", "what": f"{len(x)} held-out slices",
                    "image": x, "labels": y, "pixel_size_nm": px, "extras": True})
        zs = np.linspace(0, len(x) - 1, sim_slices).round().astype(int)
        h, w = x.shape[1:]
        crop = (zs, slice(h // 2 - 256, h // 2 + 256), slice(w // 2 - 256, w // 2 + 256))
        xc, yc = x[crop[0]][:, crop[1], crop[2]], y[crop[0]][:, crop[1], crop[2]]
        for name, (what, fn) in SIMULATIONS.items():
            xi, yi, pi = fn(xc, yc, px)
            out.append({"name": f"{label}: {name}", "volume": vol, "kind": "simulated", "what": what,
                        "image": xi, "labels": yi, "pixel_size_nm": pi, "extras": name.endswith("not stated")})
    return out


# --- methods -------------------------------------------------------------------------------------

def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    v = fn()
    return v, time.perf_counter() - t


def evaluate(model: Any, t: dict[str, Any], content_floor: bool = False) -> dict[str, dict[str, float]]:
    """IoU and seconds of every method on one target."""
    from napari_bnadapt.adabn.entropy import entropy_step
    from napari_bnadapt.adabn.need import adaptation_needed, apply_verdict
    from napari_bnadapt.adabn.scale_search import choose_zoom
    from napari_bnadapt.segmentation.tta import predict_tta

    x, y, px = t["image"], t["labels"], t["pixel_size_nm"]
    if px is None:
        px = (getattr(model, "meta", None) or {}).get("pixel_size_nm")  # "not stated": run as is, silently
    score = lambda prob: nb.iou(prob > 0.5, y > 0)  # noqa: E731
    seg = lambda m, **kw: nb.predict(m, x, device="cpu", pixel_size_nm=kw.get("px", px))  # noqa: E731
    res: dict[str, dict[str, float]] = {}
    p, s = _timed(lambda: seg(model))
    res["source"] = {"iou": score(p), "seconds": s}
    # "not stated": adapted as is, the pixel size unknown as a user's would be (the same statistics as with the model's)
    (adapted, report), s_adapt = _timed(lambda: nb.adapt(model, x, device="cpu", pixel_size_nm=t["pixel_size_nm"],
                                                         seed=0))
    p, s = _timed(lambda: seg(adapted))
    res["adabn"] = {"iou": score(p), "seconds": s_adapt + s}
    verdict = adaptation_needed(model, adapted, report, content_floor=content_floor)
    guarded = apply_verdict(model, adapted, verdict)
    res["+guard"] = {"iou": res["adabn"]["iou"] if guarded is adapted else score(seg(guarded)),
                     "seconds": res["adabn"]["seconds"], "needed": bool(verdict.needed)}
    p, s = _timed(lambda: predict_tta(adapted, x, transforms=4, device="cpu", pixel_size_nm=px))
    res["+tta"] = {"iou": score(p), "seconds": s_adapt + s}
    skipped = {"iou": float("nan"), "seconds": float("nan"), "zoom": float("nan")}
    if not t["extras"]:  # the slow extras run on the real targets and the pixel-size simulations only
        res["+entropy"], res["+scale"] = dict(skipped), dict(skipped)
        return res
    (tuned, _), s_ent = _timed(lambda: entropy_step(adapted, x, device="cpu", pixel_size_nm=px))
    p, s = _timed(lambda: seg(tuned))
    res["+entropy"] = {"iou": score(p), "seconds": s_adapt + s_ent + s}
    image_px = t["pixel_size_nm"]
    choice, s_search = _timed(lambda: choose_zoom(model, x, pixel_size_nm=image_px, device="cpu"))
    zpx = choice.effective_pixel_size_nm() or px
    (zadapted, _), s_za = _timed(lambda: nb.adapt(model, x, device="cpu", pixel_size_nm=zpx, seed=0))
    p, s = _timed(lambda: seg(zadapted, px=zpx))
    res["+scale"] = {"iou": score(p), "seconds": s_search + s_za + s, "zoom": float(choice.factor)}
    return res


def run(models: list[str], models_dir: Path | None, real_slices: int, sim_slices: int,
        only: list[str] | None = None, partial_name: str = "bench_real_generalisation",
        content_floor: bool = False) -> dict[str, Any]:
    tg = [t for t in targets(real_slices, sim_slices) if not only or any(o in t["name"] for o in only)]
    partial = RESULTS / f"{partial_name}.partial.jsonl"
    done = read_partial(partial)
    rows = []
    reused = 0
    for name in models:
        model = load_em_model(name, models_dir)
        for t in tg:
            old = [r for r in done if r["model"] == name and r["target"] == t["name"]]
            if old:  # the domain label is derived, not measured: recomputed from the current recipes
                rows.append({**old[0], "domain": domain_of(name, t["volume"])})
                reused += 1
                continue
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = evaluate(model, t, content_floor)
            domain = domain_of(name, t["volume"])
            rows.append({"model": name, "target": t["name"], "kind": t["kind"], "domain": domain, "what": t["what"],
                         **{m: res[m] for m in METHODS}})
            with partial.open("a") as f:
                f.write(json.dumps(rows[-1], default=float) + "\n")
            print(f"{name:>16} | {t['name']:<34} | " + " ".join(f"{m} {res[m]['iou']:.3f}" for m in METHODS)
                  + f" | {time.perf_counter() - t0:.0f} s", flush=True)
    return {"rows": rows, "reused": reused, "targets": [{k: t[k] for k in ("name", "volume", "kind", "what")} | {
        "shape": list(t["image"].shape), "pixel_size_nm": t["pixel_size_nm"]} for t in tg]}


def table(result: dict[str, Any]) -> str:
    lines = ["| model | target | kind | " + " | ".join(METHODS) + " | zoom chosen | AdaBN s (adapt + segment) |",
             "|---|---|---|" + "---|" * len(METHODS) + "---|---|"]
    for r in result["rows"]:
        best = np.nanmax([r[m]["iou"] for m in METHODS])
        cells = ["" if np.isnan(r[m]["iou"]) else f"**{r[m]['iou']:.3f}**" if r[m]["iou"] == best
                 else f"{r[m]['iou']:.3f}" for m in METHODS]
        zoom = "" if np.isnan(r["+scale"]["zoom"]) else f"{r['+scale']['zoom']:.2f}"
        lines.append(f"| {r['model']} | {r['target']} | {r['kind']}, {r['domain']} | " + " | ".join(cells)
                     + f" | {zoom} | {r['adabn']['seconds']:.1f} |")
    lines += ["", "Means over targets (IoU):", "",
              "| model | targets | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for model in dict.fromkeys(r["model"] for r in result["rows"]):
        for label, keep in (("real cross-lab", lambda r: r["kind"] == "real" and r["domain"] == "cross-lab"),
                            ("real in-domain (held-out slices)", lambda r: r["kind"] == "real" and r["domain"] == "in-domain"),
                            ("simulated, from the other volume", lambda r: r["kind"] == "simulated" and r["domain"] == "cross-lab"),
                            ("simulated, from a training volume", lambda r: r["kind"] == "simulated" and r["domain"] == "in-domain"),
                            ("all simulated but inverted", lambda r: r["kind"] == "simulated" and "inverted" not in r["target"])):
            sel = [r for r in result["rows"] if r["model"] == model and keep(r)]
            if sel:
                lines.append(f"| {model} | {label} ({len(sel)}) | " + " | ".join(_mean(sel, m) for m in METHODS) + " |")
    return "\n".join(lines)


def _mean(rows: list[dict[str, Any]], method: str) -> str:
    v = [r[method]["iou"] for r in rows if not np.isnan(r[method]["iou"])]
    return f"{np.mean(v):.3f}" + ("" if len(v) == len(rows) else f" ({len(v)})") if v else ""


def figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] == "real" or r["target"].endswith(("coarser", "low dose", "combined"))]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 6.0), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in rows if r["model"] == model):
            ax.plot(range(len(METHODS)), [r[m]["iou"] for m in METHODS], marker="o",  # NaN: not run, a gap
                    ls="-" if r["kind"] == "real" else "--", label=f"{r['target']} ({r['domain']})")
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=30)
        ax.set_title(model)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: never over the data
    axes[0][0].set_ylabel("foreground IoU")
    title = "IoU per step: source only -> AdaBN -> each extra (solid: real, dashed: simulated other labs)"
    fig.suptitle(title if len(models) > 1 else title.replace(" (", "\n("))  # one panel: too narrow for one line
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc", "em-generalist"], name="bench_real_generalisation")
    ap.add_argument("--real-slices", type=int, default=3,
                    help="held-out test slices per real target, evenly spaced (default 3)")
    ap.add_argument("--sim-slices", type=int, default=1, help="slices per simulated target (default 1)")
    ap.add_argument("--targets", nargs="+", default=None, help="only targets whose name contains one of these")
    ap.add_argument("--content-floor", action="store_true",
                    help="+guard also allows for how far crops of the training data of the target's size lie from the "
                    "model's statistics (napari_bnadapt.adabn.content_floor; models that carry one)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    result = run(args.models, args.models_dir, args.real_slices, args.sim_slices, args.targets, args.name,
                 args.content_floor)
    result["command"] = "python benchmarks/bench_real_generalisation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["seconds"] = round(time.perf_counter() - t0)
    text = header("EM source models on volumes from labs they never saw (real and simulated), per method") + (
        f"# command: {result['command']}\n# wall time: {result['seconds']} s"
        + (f" ({result['reused']} of {len(result['rows'])} rows read back from {args.name}.partial.jsonl, written by "
           "earlier runs of the same command; each row's seconds are its own)" if result["reused"] else "")
        + "\n\n" + table(result) + "\n")
    save_results(args.name, text, result, figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
