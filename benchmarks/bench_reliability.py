"""Benchmark: the reliability check on a 20 x 1024 x 1024 stack on the CPU.

``reliability(source, adapted, stack)`` runs the adapted and the source model
over the sampled target patches (default: 64 random patches of 256 x 256, so
the cost does not grow with the stack) and accumulates float64 Gaussian
moments of seven latent spaces (full covariance) plus output signals. This
script times

* ``reliability()`` end to end (default sampling, and the whole stack);
* the same forward passes WITHOUT the statistics hooks, so the overhead of the
  streaming moments is visible;

for the bundled ``toy-perlin`` model (width 8) and a width-16 U-Net (random
weights; the cost does not depend on the weights). Median of ``--repeats`` runs
(the whole-stack setting: one run, width 8).

Usage::

    python benchmarks/bench_reliability.py [--repeats 3] [--threads 2] [--widths 8,16] [--whole]

Results: ``benchmarks/results/bench_reliability.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="8,16")
    ap.add_argument("--whole", action="store_true",
                    help="also measure the whole stack (320 patches; one run, width 8 only)")
    ap.add_argument("--out", default="bench_reliability")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from _common import header, write

    import napari_bnadapt as nb
    from napari_bnadapt import synthetic
    from napari_bnadapt.io.stack_view import check_stack, resolve_normalization
    from napari_bnadapt.model.files import default_meta
    from napari_bnadapt.adabn.patches import iter_patch_batches, plan_patches
    from napari_bnadapt.bound.assess import reliability
    from napari_bnadapt.stats.source_statistics import compute_source_statistics
    from napari_bnadapt.model.unet import UNet

    t = time.perf_counter()
    stack, _ = synthetic.generate(20, (1024, 1024), seed=3, mu0=120, sigma0=20, mu1=165, sigma1=20, cell_size=32)
    gen_s = time.perf_counter() - t
    lines = [header("reliability() on a 20 x 1024 x 1024 uint8 stack, CPU"),
             f"# stack generated in {gen_s:.1f} s; median of {args.repeats} runs; torch threads {args.threads}",
             "",
             f"{'model':<22} {'patches':>8} {'Mvoxel':>7} {'reliability s':>14} {'Mvox/s':>7} "
             f"{'forward-only s':>15} {'stats overhead':>15}"]
    for width in (int(w) for w in args.widths.split(",")):
        if width == 8:
            source = nb.load_model("toy-perlin", device="cpu")
            name = "toy-perlin (width 8)"
        else:
            torch.manual_seed(0)
            source = UNet(width=width).eval()
            source.meta = default_meta(source, name=f"unet-w{width}")
            source = compute_source_statistics(source, stack[:2], device="cpu", n_patches=16)
            name = f"U-Net width {width}"
        if "source_statistics" not in source.meta:
            source = compute_source_statistics(source, stack[:2], device="cpu", n_patches=16)
        adapted, _ = nb.adapt(source, stack, device="cpu")
        settings = [("default", None, args.repeats)] + ([("whole stack", 320, 1)] if args.whole and width == 8 else [])
        for label, n_patches, repeats in settings:
            kw = {"device": "cpu"}
            if n_patches:
                kw["n_patches"] = n_patches
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                rep = reliability(source, adapted, stack, **kw)
                times.append(time.perf_counter() - t)
            view = check_stack(stack)
            norm = resolve_normalization(view, source.meta["normalization"], None)
            plan = plan_patches(view.shape3d, n_patches, 256, 0)
            fwd = []
            for _ in range(repeats):
                t = time.perf_counter()
                with torch.inference_mode():
                    for m in (adapted, source):
                        for b in iter_patch_batches(view, plan, norm.apply, 8):
                            m(torch.from_numpy(b))
                fwd.append(time.perf_counter() - t)
            med, fmed = statistics.median(times), statistics.median(fwd)
            mvox = 2 * plan.n_voxels / 1e6  # two models
            lines.append(f"{name:<22} {len(plan.corners):>8} {plan.n_voxels / 1e6:>7.1f} {med:>14.2f} "
                         f"{mvox / med:>7.2f} {fmed:>15.2f} {(med / fmed - 1):>14.0%}")
            print(lines[-1], flush=True)
        lines.append(f"#   verdict on this synthetic target: {rep.verdict}, bound {rep.iou_lower_bound}")
    lines += ["",
              "# Mvox/s counts the voxels through both models (adapted + source). 'stats overhead' is the extra",
              "# time of reliability() over the bare forward passes of the same patches (hooks, float64 moments",
              "# of ls0..ls4, dec, out with full covariance, output signals, distances)."]
    write(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
