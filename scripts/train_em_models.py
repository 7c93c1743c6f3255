"""Train the source U-Nets for real electron microscopy (issue 7, first slice).

Usage::

    python scripts/train_em_models.py lucchi [--steps N] [--out DIR]

Trains a width-16 bilinear U-Net on the Lucchi++ FIB-SEM training volume
(``../shared/data/real/lucchi_pp_fibsem``, read with ``tifffile.memmap`` and never
copied) and saves it as ``DIR/lucchi-pp.safetensors`` (default ``/tmp/em_models``,
deliberately *not* into the package: bundling is a separate decision).
Source statistics for the reliability check are stored in the file by ``train_iter``.
Only ``lucchi`` is implemented; a VNC-trained model is future work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real"

RECIPES = {
    "lucchi": {
        "folder": "lucchi_pp_fibsem",
        "images": "train_image.tif",
        "labels": "train_labels.tif",
        "file": "lucchi-pp.safetensors",
        "name": "lucchi-pp",
        "pixel_size_nm": (5.0, 5.0),
        "description": "Lucchi++ FIB-SEM mouse hippocampus CA1, train volume (42 x 768 x 1024, every 4th slice), ~5 nm",
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--patience", type=int, default=100, help="evaluations without improvement before stopping")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/em_models"))
    args = ap.parse_args(argv)

    import tifffile
    import torch

    import napari_bnadapt as nb
    from napari_bnadapt.progress import run_to_end, tqdm_callback

    torch.set_num_threads(args.threads)
    r = RECIPES[args.dataset]
    folder = args.data / r["folder"]
    images = tifffile.memmap(folder / r["images"])
    labels = tifffile.imread(folder / r["labels"])
    print(f"images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}", flush=True)
    t0 = time.perf_counter()
    gen = nb.train_iter(
        images, labels, width=16, bilinear=True, steps=args.steps, batch_size=args.batch_size,
        patch_size=args.patch_size, lr=1e-3, val_fraction=0.1, eval_every=args.eval_every,
        patience=args.patience, seed=0, device="cpu", pixel_size_nm=r["pixel_size_nm"], name=r["name"],
        data_description=r["description"],
    )
    model = run_to_end(gen, tqdm_callback())
    wall = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / r["file"]
    nb.save_model(model, path)
    tr = model.meta["training"]
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"wall time {wall:.0f} s; metrics {tr['metrics']}")
    for h in tr["history"]:
        print("  ", h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
