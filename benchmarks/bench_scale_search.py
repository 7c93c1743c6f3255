"""Benchmark: does the label-free scale search (adabn/scale_search.py) recover a known zoom?

Toy part: toy stacks (8 x 192 x 192, objects of the training scale) shrunk or enlarged by a known
factor s in {0.5, 0.67, 1, 1.5}; the right zoom back is 1/s. For each: the zoom chosen by
``choose_zoom`` with the ``size`` criterion (reference: the object sizes of the toy model's own kind
of training data, 64 x 64 toy images) and with the ``flip`` fallback (no reference), and the
segmentation IoU (AdaBN on the whole stack at that zoom, probabilities zoomed back) at zoom 1, at
the chosen zoom and at the true one.

Real part (only when ``../shared/data/real`` exists; evaluation only, nothing was tuned to it): the
bundled ``lucchi-pp`` model (reference: object sizes of the Lucchi++ training labels) on a VNC crop
(slices 14-19, the central 512 x 512), zoomed by 0.5 and by 1.0 beforehand. Whatever zoom the
1.0 case picks (VNC mitochondria need not be Lucchi's size), the 0.5 case should pick about twice it.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_scale_search.py

Writes ``benchmarks/results/bench_scale_search.txt``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _common import header, write  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt import synthetic  # noqa: E402
from napari_bnadapt.adabn.scale_search import choose_zoom, object_size_summary  # noqa: E402
from napari_bnadapt.io.pixel_size import rescale  # noqa: E402
from napari_bnadapt.metrics import iou  # noqa: E402

SOURCE = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}
SHRINKS = (0.5, 0.67, 1.0, 1.5)
REAL = HERE.parent.parent / "shared" / "data" / "real"
WIDE = [round(float(2 ** e), 3) for e in np.linspace(-1.5, 1.5, 9)]  # 0.35 ... 2.83


def zoom_pair(image: np.ndarray, mask: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask resampled by ``s`` (linear; the mask thresholded at 0.5)."""
    img = rescale(image, (s, s), order=1)
    msk = rescale(mask.astype(np.float32), (s, s), order=1) >= 0.5
    return img, msk.astype(np.uint8)


def segment_at(model, image: np.ndarray, factor: float, **kw) -> np.ndarray:
    """Foreground mask of ``image`` segmented at zoom ``factor`` (AdaBN there), back at its own size."""
    zoomed = rescale(image, (factor, factor), order=1) if factor != 1 else image
    adapted, _ = nb.adapt(model, zoomed, device="cpu", **kw)
    prob = nb.predict(adapted, zoomed, device="cpu")
    h, w = image.shape[-2:]
    if factor != 1:
        prob = rescale(prob, (h / prob.shape[-2], w / prob.shape[-1]), order=1)
    return prob >= 0.5


def toy_part(lines: list[str]) -> None:
    model = nb.load_model("toy-perlin", device="cpu")
    _, train_masks = synthetic.generate(500, (64, 64), seed=1, **SOURCE)
    ref = object_size_summary(train_masks)
    lines.append(f"toy-perlin reference (500 training-like 64x64 masks): median diameter "
                 f"{ref['median_diameter_px']:.1f} px, quartiles {ref['q25_diameter_px']:.1f}-"
                 f"{ref['q75_diameter_px']:.1f}, {ref['count']} objects")
    image, mask = synthetic.generate(8, (192, 192), seed=21, cell_size=32, **SOURCE)
    lines.append("toy stack 8 x 192 x 192 (cell 32 px), zoomed by s; the right zoom back is 1/s; "
                 "default grid 0.5 ... 2 (7 steps of 2^(1/3))")
    lines.append("")
    lines.append(f"{'s':>5} {'truth':>6} | {'size: chosen':>12} {'s':>5} | {'flip: chosen':>12} {'s':>5} | "
                 f"{'IoU@1':>6} {'IoU@chosen':>10} {'IoU@truth':>9}")
    for s in SHRINKS:
        img, msk = zoom_pair(image, mask, s) if s != 1 else (image, mask)
        truth = 1 / s
        t = time.perf_counter()
        by_size = choose_zoom(model, img, reference=ref, device="cpu")
        t_size = time.perf_counter() - t
        t = time.perf_counter()
        by_flip = choose_zoom(model, img, device="cpu")
        t_flip = time.perf_counter() - t
        at1 = iou(segment_at(model, img, 1.0), msk)
        at_c = iou(segment_at(model, img, by_size.factor), msk)
        at_t = iou(segment_at(model, img, truth), msk)
        lines.append(f"{s:5.2f} {truth:6.2f} | {by_size.factor:12.2f} {t_size:5.1f} | {by_flip.factor:12.2f} "
                     f"{t_flip:5.1f} | {at1:6.3f} {at_c:10.3f} {at_t:9.3f}")
        lines.append("      size scores: " + " ".join(f"{f:.2f}:{v:.2f}" for f, v in
                                                      zip(by_size.factors, by_size.scores)))
        lines.append("      flip scores: " + " ".join(f"{f:.2f}:{v:.3f}" for f, v in
                                                      zip(by_flip.factors, by_flip.scores)))
        print(lines[-3], flush=True)


def real_part(lines: list[str]) -> None:
    import tifffile

    model = nb.load_model("lucchi-pp", device="cpu")
    train = tifffile.imread(REAL / "lucchi_pp_fibsem" / "train_labels.tif")
    ref = object_size_summary(train)
    image = tifffile.imread(REAL / "vnc_drosophila_sstem" / "image.tif")[14:20, 256:768, 256:768]
    labels = tifffile.imread(REAL / "vnc_drosophila_sstem" / "labels.tif")[14:20, 256:768, 256:768]
    vnc = object_size_summary(labels)
    lines += ["", "Real EM (evaluation only): lucchi-pp model on VNC slices 14-19, central 512 x 512 crop",
              f"  Lucchi++ training labels: median diameter {ref['median_diameter_px']:.1f} px "
              f"({ref['count']} objects); VNC crop labels: {vnc['median_diameter_px']:.1f} px "
              f"({vnc['count']} objects) -> the size-matching zoom for the unzoomed crop is about "
              f"{ref['median_diameter_px'] / vnc['median_diameter_px']:.2f}",
              f"  grid {WIDE} (wider than the default, so that the answers for both cases lie inside)", "",
              f"{'pre-zoom':>8} | {'chosen':>6} {'s':>5} | {'IoU@1':>6} {'IoU@chosen':>10}"]
    for s in (0.5, 1.0):
        img, msk = zoom_pair(image, labels, s) if s != 1 else (image, labels)
        t = time.perf_counter()
        c = choose_zoom(model, img, reference=ref, factors=WIDE, device="cpu")
        dt = time.perf_counter() - t
        at1 = iou(segment_at(model, img, 1.0), msk)
        at_c = iou(segment_at(model, img, c.factor), msk)
        lines.append(f"{s:8.2f} | {c.factor:6.2f} {dt:5.1f} | {at1:6.3f} {at_c:10.3f}")
        lines.append("      size scores: " + " ".join(f"{f:.2f}:{v:.2f}" for f, v in zip(c.factors, c.scores)))
        lines.append("      median diameters: " + " ".join(
            f"{f:.2f}:{'-' if d is None else f'{d:.0f}'}" for f, d in zip(c.factors, c.median_diameters_px)))
        print(lines[-3], flush=True)


def main() -> None:
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine
    t0 = time.perf_counter()
    lines = [header("label-free scale search (choose_zoom): chosen zoom vs a known one"), ""]
    toy_part(lines)
    if REAL.is_dir():
        real_part(lines)
    else:
        lines.append(f"\n(real data not found at {REAL}: real part skipped)")
    lines.append(f"\ntotal {time.perf_counter() - t0:.0f} s")
    write("bench_scale_search", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
