"""Evaluate the Lucchi++-trained source U-Net on real EM data (issue 7, first slice).

Usage::

    python scripts/evaluate_real.py [--model /tmp/em_models/lucchi-pp.safetensors]
                                    [--lucchi-step 7] [--vnc-step 5] [--rel-patches 32] [--out benchmarks/results/real_data_eval.txt]

Reports foreground IoU (pooled over the evaluated slices) for

* in-domain: Lucchi++ test volume (every ``--lucchi-step``-th slice),
* Lucchi++ -> VNC: source-only, AdaBN ``cumulative``, ``ema`` and ``prior``
  (default settings), each with the label-free reliability report's verdict and
  predicted lower bound next to the true IoU.

Adaptation and the reliability check sample patches from the whole VNC volume
(adapt: its default sample; reliability: ``--rel-patches`` random 256 x 256 patches); segmentation and IoU use every ``--vnc-step``-th VNC slice,
to keep the CPU run to a few minutes. The data are read from
``../shared/data/real`` with ``tifffile`` and never copied.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/em_models/lucchi-pp.safetensors"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--lucchi-step", type=int, default=7, help="evaluate every N-th Lucchi++ test slice")
    ap.add_argument("--vnc-step", type=int, default=5, help="evaluate every N-th VNC slice")
    ap.add_argument("--rel-patches", type=int, default=32, help="patches of 256 x 256 for each reliability check")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "real_data_eval.txt")
    args = ap.parse_args(argv)

    import tifffile
    import torch

    import napari_bnadapt as nb

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    lines: list[str] = []

    def log(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    model = nb.load_model(str(args.model), device="cpu")
    meta = model.meta or {}
    tr = meta.get("training", {})
    log(f"# real-data evaluation, {_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()}")
    log(f"# command: python {' '.join(sys.argv)}")
    log(f"# model: {args.model} (trained {tr.get('recipe', {}).get('steps')} steps in {tr.get('seconds')} s on "
        f"{tr.get('device')}; validation IoU {tr.get('metrics', {}).get('val_iou')})")
    log(f"# machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, CPU")
    log(f"# calibration in model file: {'yes' if meta.get('calibration') else 'no'}")
    log()

    lu = args.data / "lucchi_pp_fibsem"
    vn = args.data / "vnc_drosophila_sstem"
    lu_img = tifffile.memmap(lu / "test_image.tif")
    lu_lab = tifffile.imread(lu / "test_labels.tif")
    lz = np.arange(0, lu_img.shape[0], args.lucchi_step)
    t = time.perf_counter()
    pred = nb.segment(model, np.asarray(lu_img[lz]), device="cpu")
    iou_in = nb.iou(pred, lu_lab[lz])
    t_in = time.perf_counter() - t
    log(f"in-domain Lucchi++ test: slices {lz.tolist()} of {lu_img.shape[0]} "
        f"({len(lz)} x {lu_img.shape[1]} x {lu_img.shape[2]}): IoU {iou_in:.3f}  [{t_in:.0f} s]")
    log()

    vn_img = tifffile.memmap(vn / "image.tif")
    vn_lab = tifffile.imread(vn / "labels.tif")
    vz = np.arange(0, vn_img.shape[0], args.vnc_step)
    vn_eval = np.asarray(vn_img[vz])
    vn_truth = vn_lab[vz]
    log(f"Lucchi++ -> VNC: adapt / reliability sample the whole VNC volume {vn_img.shape}; "
        f"IoU on slices {vz.tolist()} ({len(vz)} x {vn_img.shape[1]} x {vn_img.shape[2]})")
    rows = []
    t = time.perf_counter()
    iou_so = nb.iou(nb.segment(model, vn_eval, device="cpu"), vn_truth)
    rows.append(("source-only", iou_so, None, None, None, time.perf_counter() - t))
    reports = {}
    for mode in ("cumulative", "ema", "prior"):
        t = time.perf_counter()
        adapted, rep = nb.adapt(model, vn_img, mode=mode, device="cpu")
        t_ad = time.perf_counter() - t
        iou_m = nb.iou(nb.segment(adapted, vn_eval, device="cpu"), vn_truth)
        t_seg = time.perf_counter() - t - t_ad
        t = time.perf_counter()
        rel = nb.reliability(model, adapted, vn_img, device="cpu", n_patches=args.rel_patches)
        t_rel = time.perf_counter() - t
        reports[mode] = rel
        rows.append((f"AdaBN {mode}", iou_m, rel.verdict, rel.iou_lower_bound, rel.bound_source_only,
                     t_ad + t_seg, t_rel, rep.converged))
    log()
    log(f"{'method':<18} {'true IoU':>8}  {'verdict':<11} {'bound':>6}  {'time (s)':>8}")
    log(f"{'-' * 18} {'-' * 8}  {'-' * 11} {'-' * 6}  {'-' * 8}")
    log(f"{'in-domain (test)':<18} {iou_in:>8.3f}  {'':<11} {'':>6}  {t_in:>8.0f}")
    for r in rows:
        name, v, verdict, bound = r[:4]
        tt = r[5] + (r[6] if len(r) > 6 else 0.0)
        log(f"{name:<18} {v:>8.3f}  {verdict or '-':<11} {_fmt(bound) if verdict else '-':>6}  {tt:>8.0f}")
    log("(time: adapt + segment [+ reliability]; bound: the reliability report's predicted IoU lower bound,"
        " n/a = no calibration in the model file)")
    log()
    for mode, rel in reports.items():
        log(f"--- reliability report, AdaBN {mode} ---")
        log(str(rel))
        log()
    log(f"# total wall time {time.perf_counter() - t_all:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
