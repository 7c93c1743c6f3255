"""Calibrate the reliability bound of the bundled EM models (``lucchi-pp``, ``vnc``).

Usage::

    python scripts/calibrate_em_models.py lucchi|vnc [--n-shifts N] [--n-images K] [--dry-run]

What it does (deterministic: every random choice is seeded):

1. Loads the bundled model (``scripts/train_em_models.py`` made it, with its source
   statistics measured on its training patches).
2. Cuts the dataset's held-out TEST slices (never trained on) into 256 x 256 tiles:
   the labelled calibration pool.
3. Calibration (:func:`napari_bnadapt.bound.calibration.run_calibration_iter`) with grey-value
   shifts of real EM (:func:`~napari_bnadapt.bound.shifts.em_shifts`: offset, gain, gamma,
   noise, blur, alone and combined, plus inverted contrast), ``K`` random tiles per
   shifted target; 60 % of the shifts fit the bound, 40 % validate it.
4. Saves the model with the calibration in its card; the weights are checked to be
   byte-identical to the input file's.
5. Draws ``docs/images/reliability_em_<name>_*.png`` and prints the summary that
   docs/real-data.md quotes.

The real test of the bound, a shift of a kind never fitted (the other lab's volume),
is in ``benchmarks/bench_real_cross_domain.py``. Torch runs on ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_bundled import ROOT, draw_figures, summary, weights_bytes  # noqa: E402
from em_data import BUNDLED, RECIPES, load_split, split_description, tiles  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(RECIPES))
    ap.add_argument("--n-shifts", type=int, default=56, help="grey-value shifts (inverted ones come on top)")
    ap.add_argument("--n-inverted", type=int, default=8)
    ap.add_argument("--n-images", type=int, default=16, help="256-px tiles per shifted target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figures", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--dry-run", action="store_true", help="do not save the model")
    args = ap.parse_args(argv)

    import torch

    import napari_bnadapt as nb
    from napari_bnadapt.bound.shifts import em_shifts
    from napari_bnadapt.bound.calibration import run_calibration_iter
    from napari_bnadapt.progress import run_to_end, tqdm_callback

    torch.set_num_threads(args.threads)
    r = RECIPES[args.dataset]
    path = BUNDLED / f"{r['name']}.safetensors"
    before = weights_bytes(path)
    model = nb.load_model(path, device="cpu")
    pool_x, pool_y = tiles(*load_split(args.dataset, "test"))
    print(f"calibration pool: {pool_x.shape[0]} tiles of 256 x 256 from {split_description(args.dataset, 'test')}")
    t0 = time.perf_counter()
    shifts = em_shifts(args.n_shifts, seed=args.seed, n_inverted=args.n_inverted)
    cal_model, run = run_to_end(
        run_calibration_iter(model, pool_x, (pool_y > 0).astype("uint8"), shifts=shifts, n_images=args.n_images,
                             validation_fraction=0.4, quantile=0.05, seed=args.seed, device="cpu", batch_size=16),
        tqdm_callback(),
    )
    seconds = time.perf_counter() - t0
    prov = cal_model.meta["calibration"]["provenance"]
    prov["command"] = "python scripts/calibrate_em_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    prov["seconds_total"] = round(seconds, 1)
    prov["data"] = (f"{pool_x.shape[0]} tiles 256 x 256 of the held-out {split_description(args.dataset, 'test')} "
                    f"(not trained on); {args.n_images} random tiles per target; grey-value shifts (em_shifts, "
                    f"seed {args.seed})")
    print(summary(run))
    print(f"calibration: {seconds:.0f} s for {len(run.cases)} shifted targets")
    for fig in draw_figures(run, args.figures, prefix=f"reliability_em_{r['name']}",
                            holdout_title="(no out-of-family hold-out here: see the cross-domain benchmark)"):
        print(f"figure: {fig}")
    if not args.dry_run:
        cal_model.meta.pop("path", None)
        saved = nb.save_model(cal_model, path, overwrite=True)
        if weights_bytes(saved) != before:
            raise SystemExit("the weights changed while adding the calibration: refusing this file")
        print(f"saved {saved} (weights byte-identical)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
