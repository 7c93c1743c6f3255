"""Removing objects far larger than any training mitochondrion: what it removes on the visible data, and on a simulated nucleus.

Run: python benchmarks/bench_oversized.py [--models em-generalist-2 lucchi-pp vnc]

The workflow's default (``remove_oversized=True``,
:func:`napari_bnadapt.segmentation.oversized.remove_oversized_objects`) drops objects whose equivalent
diameter exceeds 3 x the 95th-percentile diameter of the model's training mitochondria. Here, per model
and target, the default workflow (AdaBN behind the guard, no reliability check) runs once with the
removal off; the removal is then applied to a copy of its labels: IoU without and with it, objects
removed, and the largest object over the limit.

Targets: the suite's (``bench_real_generalisation.targets(3, 1)``: 3 held-out slices of each real
volume, its 7 simulated other labs) and, SIMULATED, a "nucleus" in the same 3 real slices of each
volume: an ellipse over 70 % of the slice's height and width inside a dark rim, filled either with
24 px tiles of the slice's own mitochondria ("tiled": their texture) or with smooth low-pass noise of
their mean and spread ("smooth"), which a network trained on neuropil could take for mitochondria;
its ground truth is background. The labels of the ground truth are
also measured (largest labelled mitochondrion over the limit), and the removal's cost on whole held-out
volumes' labels against the workflow's time per slice. Needs ``../shared/data/real/``. Writes
``benchmarks/results/<name>.{txt,json}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import add_model_arguments, header, load_em_model, save_results  # noqa: E402
from bench_real_generalisation import TRAINED_ON, targets  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

#: Tile side (px) of the simulated nucleus' texture, and its rim width (px).
TILE, RIM = 24, 6


def with_nucleus(x: np.ndarray, y: np.ndarray, seed: int = 0, tiled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``x`` with a large region like mitochondria (a stand-in for a nucleus), and its ground truth.

    ``tiled``: the region is a mosaic of the slice's own mitochondria (their texture); else smooth: grey
    values with the mean and spread of the mitochondria's pixels, low-pass noise (sigma 2 px).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x, y = x.copy(), (y > 0).astype(np.uint8)
    nz, h, w = x.shape
    yy, xx = np.mgrid[:h, :w]
    r = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2
    inside, rim = r < 1.0, (r >= 1.0) & (r < (1.0 + RIM / (0.35 * min(h, w))) ** 2)
    for z in range(nz):
        core = ndimage.binary_erosion(y[z] > 0, iterations=TILE // 2)
        cy, cx = np.nonzero(core)
        if cy.size == 0:
            continue
        fill = np.empty((h, w), x.dtype)
        if not tiled:
            mito = x[z][y[z] > 0].astype(np.float64)
            noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (h, w)), 2.0)
            fill[...] = np.clip(mito.mean() + mito.std() * noise / noise.std(), 0, 255).astype(x.dtype)
        for ty in range(0, h, TILE) if tiled else ():
            for tx in range(0, w, TILE):
                k = int(rng.integers(cy.size))
                y0, x0 = cy[k] - TILE // 2, cx[k] - TILE // 2
                fill[ty:ty + TILE, tx:tx + TILE] = x[z, y0:y0 + TILE, x0:x0 + TILE][:h - ty, :w - tx]
        x[z][inside] = fill[inside]
        x[z][rim] = (x[z][rim] * 0.6).astype(x.dtype)
        y[z][inside | rim] = 0
    return x, y


def measure(model: Any, x: np.ndarray, y: np.ndarray, px: Any) -> dict[str, Any]:
    """The default workflow once without the removal; the removal applied to a copy of its labels."""
    from napari_bnadapt.segmentation.oversized import remove_oversized_objects
    from napari_bnadapt.workflow import run

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(model, x, assess=False, device="cpu", pixel_size_nm=px, remove_oversized=False)
    kept = res.labels.copy()
    rep = remove_oversized_objects(kept, model, res.zoom)
    truth = remove_oversized_objects((y > 0).astype(np.uint8), model, res.zoom)
    return {"iou": nb.iou(res.labels > 0, y > 0), "iou_removed": nb.iou(kept > 0, y > 0),
            "removed": rep.removed_objects, "removed_px": rep.removed_pixels, "limit_px": rep.limit_diameter_px,
            "largest_over_limit": rep.largest_diameter_px / rep.limit_diameter_px,
            "truth_largest_over_limit": truth.largest_diameter_px / truth.limit_diameter_px,
            "truth_removed": truth.removed_objects, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    from napari_bnadapt.segmentation.oversized import remove_oversized_objects

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["em-generalist-2", "lucchi-pp", "vnc"], name="bench_oversized")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    cases = [(t["name"], t["volume"], t["kind"], t["image"], t["labels"], t["pixel_size_nm"]) for t in targets(3, 1)]
    cases += [(f"{RECIPES[t['volume']]['label']} test + simulated nucleus, {what}", t["volume"], "simulated nucleus",
               *with_nucleus(t["image"], t["labels"], tiled=what == "tiled"), t["pixel_size_nm"])
              for t in targets(3, 1) if t["kind"] == "real" for what in ("tiled", "smooth")]
    rows = []
    for name in args.models:
        model = load_em_model(name, args.models_dir)
        for target, volume, kind, x, y, px in cases:
            r = {"model": name, "target": target, "kind": kind,
                 "domain": "in-domain" if volume in TRAINED_ON[name] else "cross-lab",
                 **measure(model, x, y, px or model.meta.get("pixel_size_nm"))}
            rows.append(r)
            print(f"{name} | {target}: IoU {r['iou']:.3f} -> {r['iou_removed']:.3f}, removed {r['removed']}", flush=True)
    # its cost: the removal on whole held-out volumes' labels (median of 3), against segmenting them
    timing = []
    model = load_em_model(args.models[0], args.models_dir)
    for volume in ("lucchi", "vnc"):
        labels = (np.asarray(load_split(volume, "test")[1]) > 0).astype(np.uint8)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            remove_oversized_objects(labels.copy(), model)
            times.append(time.perf_counter() - t)
        seg = [r["seconds"] for r in rows if r["model"] == args.models[0] and r["target"] == f"{RECIPES[volume]['label']} test"]
        timing.append(f"{RECIPES[volume]['label']} test labels {labels.shape}: {np.median(times):.2f} s "
                      f"({1000 * np.median(times) / len(labels):.1f} ms per slice); the default workflow on 3 of "
                      f"its slices took {seg[0]:.1f} s ({seg[0] / 3:.1f} s per slice, {args.models[0]})")
    command = "python benchmarks/bench_oversized.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [header("Removing objects far larger than any training mitochondrion"), f"# command: {command}",
             f"# wall time: {time.perf_counter() - t0:.0f} s", "",
             "| model | target | kind | domain | IoU, removal off | IoU, removal on (the default) | objects removed "
             "| largest object / limit | largest labelled mitochondrion / limit |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['target']} | {r['kind']} | {r['domain']} | {r['iou']:.3f} | {r['iou_removed']:.3f} | "
              f"{r['removed']} | {r['largest_over_limit']:.2f} | {r['truth_largest_over_limit']:.2f} |" for r in rows]
    real = [r for r in rows if r["kind"] != "simulated nucleus"]
    nuc = [r for r in rows if r["kind"] == "simulated nucleus"]
    lines += ["", f"Without the simulated nucleus ({len(real)} cases): objects removed {sum(r['removed'] for r in real)}, "
              f"largest object / limit at most {max(r['largest_over_limit'] for r in real):.2f}, largest labelled "
              f"mitochondrion / limit at most {max(r['truth_largest_over_limit'] for r in rows):.2f}, labelled "
              f"mitochondria removed {sum(r['truth_removed'] for r in rows)}; IoU change "
              f"{min(r['iou_removed'] - r['iou'] for r in real):+.3f} to {max(r['iou_removed'] - r['iou'] for r in real):+.3f}.",
              f"With it ({len(nuc)} cases): mean IoU {np.mean([r['iou'] for r in nuc]):.3f} -> "
              f"{np.mean([r['iou_removed'] for r in nuc]):.3f}, objects removed {sum(r['removed'] for r in nuc)}.", "",
              "Cost of the removal (median of 3 runs):", *[f"- {t}" for t in timing]]
    save_results(args.name, "\n".join(lines) + "\n", {"rows": rows, "command": command})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
