"""Diagnostic: does a smoother target help a model trained on the other volume? (Gaussian blur before segmenting.)

Run: python benchmarks/bench_target_blur.py [--models vnc vnc-robust-half ...] [--models-dir DIR]

Needs ``../shared/data/real/`` (not shipped). Each single-source model segments the real held-out
slices of the OTHER volume (the 3 slices of ``bench_real_generalisation.py``) after a Gaussian blur of
sigma 0, 1 and 2 pixels (slice by slice, rounded back to 8 bits), source only and with AdaBN (adapted to
the blurred slices). A diagnostic, not a method: sigma is not chosen without labels here. It asks
whether the cross-lab loss is one of texture (ssTEM sections of 45-50 nm look smoother than FIB-SEM
slices of 5 nm) that AdaBN's per-channel re-centring cannot express. Writes
``benchmarks/results/<name>.{txt,json}``. Foreground IoU at threshold 0.5.
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
from em_data import real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0)


def blurred(x: np.ndarray, sigma: float) -> np.ndarray:
    """Each slice blurred (sigma in pixels), back in the input's 8-bit range."""
    from scipy.ndimage import gaussian_filter

    if sigma == 0:
        return x
    out = np.stack([gaussian_filter(z.astype(np.float32), sigma) for z in x])
    return np.clip(np.rint(out), 0, 255).astype(x.dtype)


def run(models: list[str], models_dir: Path | None) -> list[dict[str, Any]]:
    real = [t for t in targets(3, 1) if t["kind"] == "real"]
    rows = []
    for name in models:
        model = load_em_model(name, models_dir)
        for t in (t for t in real if t["volume"] not in TRAINED_ON[name]):
            y = t["labels"] > 0
            for sigma in SIGMAS:
                t0 = time.perf_counter()
                x = blurred(t["image"], sigma)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    src = nb.predict(model, x, device="cpu", pixel_size_nm=t["pixel_size_nm"])
                    adapted, _ = nb.adapt(model, x, device="cpu", pixel_size_nm=t["pixel_size_nm"], seed=0)
                    ada = nb.predict(adapted, x, device="cpu", pixel_size_nm=t["pixel_size_nm"])
                rows.append({"model": name, "target": t["name"], "sigma": sigma, "source": nb.iou(src > 0.5, y),
                             "adabn": nb.iou(ada > 0.5, y), "seconds": time.perf_counter() - t0})
                print(f"{name:>22} | {t['name']:<14} | sigma {sigma:.0f} | source {rows[-1]['source']:.3f} "
                      f"adabn {rows[-1]['adabn']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["vnc", "vnc-robust-half", "lucchi-pp", "lucchi-pp-robust-half"], name="bench_target_blur")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 2
    t0 = time.perf_counter()
    rows = run(args.models, args.models_dir)
    lines = ["| model | target (cross-lab, real) | blur sigma (px) | source | adabn |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['target']} | {r['sigma']:.0f} | {r['source']:.3f} | {r['adabn']:.3f} |"
              for r in rows]
    text = (header("A smoother target for a model trained on the other volume (diagnostic)")
            + f"# command: python benchmarks/bench_target_blur.py {' '.join(sys.argv[1:] if argv is None else argv)}\n"
            + f"# wall time: {time.perf_counter() - t0:.0f} s\n\n" + "\n".join(lines) + "\n")
    save_results(args.name, text, {"rows": rows, "sigmas": list(SIGMAS)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
