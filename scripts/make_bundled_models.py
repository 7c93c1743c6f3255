"""Train the models bundled in the package with the project's own ``train``.

Usage::

    python scripts/make_bundled_models.py toy-perlin [--out DIR]

``toy-perlin``: 2000 synthetic 64 x 64 source images (background N(96, 18),
mitochondria N(138, 18); seed 1), a width-8 U-Net, 2000 Adam steps of 16 crops,
one CPU thread (deterministic, and fast on a shared 2-core machine).
The model card records the recipe, the data and the validation metrics, the
source statistics (measured by ``train``) and the calibrated reliability bound
(``scripts/calibrate_bundled.py``, about 10 more minutes; its figures are
drawn by that script alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari_bnadapt as nb
from napari_bnadapt import synthetic
from napari_bnadapt.model.files import BUNDLED_DIR
from napari_bnadapt.progress import run_to_end, tqdm_callback

TOY_SOURCE = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}


def make_toy_perlin(out: Path, overwrite: bool) -> None:
    images, masks = synthetic.generate(2000, (64, 64), seed=1, **TOY_SOURCE)
    t0 = time.perf_counter()
    model = run_to_end(
        nb.train_iter(
            images, masks, width=8, steps=2000, batch_size=16, patch_size=64, lr=2e-3,
            eval_every=250, patience=4, seed=0, device="cpu", name="toy-perlin",
            data_description="synthetic toy mitochondria (Perlin noise, 64x64): background N(96,18), "
            "mitochondria N(138,18); 2000 images, seed 1",
        ),
        tqdm_callback(),
    )
    test_x, test_y = synthetic.generate(500, (64, 64), seed=99, **TOY_SOURCE)
    model.meta["training"]["metrics"]["test_iou"] = nb.iou(nb.segment(model, test_x, device="cpu"), test_y)
    model.meta["training"]["command"] = "python scripts/make_bundled_models.py toy-perlin"
    # train() stored the source statistics; add the calibrated reliability bound (scripts/calibrate_bundled.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calibrate_bundled import calibrate_toy, default_args, summary

    model, run, seconds = calibrate_toy(model, default_args(), tqdm_callback())
    print(summary(run))
    print(f"calibration: {seconds:.0f} s")
    path = nb.save_model(model, out / "toy-perlin.safetensors", overwrite=overwrite)
    print(f"{path}: {time.perf_counter() - t0:.0f} s, metrics {model.meta['training']['metrics']}")


MAKERS = {"toy-perlin": make_toy_perlin}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", choices=sorted(MAKERS))
    p.add_argument("--out", type=Path, default=BUNDLED_DIR, help="output folder (default: the package's models/)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for name in args.names:
        MAKERS[name](args.out, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
