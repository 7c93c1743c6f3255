"""EM models on WHOLE held-out test volumes: source only, AdaBN, and AdaBN behind the guard.

Run: python benchmarks/bench_whole_test_volume.py --models vnc-robust-wide vnc-robust-gpu vnc-robust vnc [--models-dir DIR]
     python benchmarks/bench_whole_test_volume.py --in-domain --models em-generalist-2 lucchi-pp vnc --name ...

``bench_real_generalisation.py`` judges each model on 3 evenly spaced held-out slices (to keep its slow
extras affordable); this checks the headline cross-lab figure on every held-out slice: the 42 slices of
the Lucchi++ test volume for a VNC-trained model, VNC slices 14-19 for a Lucchi++-trained one, at their
true pixel size, AdaBN with the library defaults (cumulative, 64 patches, seed 0; ``--mode``: another estimator). ``--in-domain``: each
model on the test volume(s) of the volume(s) it was trained on instead (any number of them), where AdaBN
should cost nothing. ``+guard``: the workflow's default, the source statistics kept where
:func:`~napari_bnadapt.adabn.need.adaptation_needed` finds no adaptation needed (the column "kept" says
against which reference). Needs ``../shared/data/real/``. Writes ``benchmarks/results/<name>.{txt,json}``. Foreground IoU at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import add_model_arguments, header, load_em_model, save_results  # noqa: E402
from bench_real_generalisation import TRAINED_ON  # noqa: E402
from em_data import RECIPES, load_split, real_data_ready  # noqa: E402

import napari_bnadapt as nb  # noqa: E402
from napari_bnadapt.adabn.estimators import MODES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap, ["lucchi-pp", "vnc"], name="bench_whole_test_volume")
    ap.add_argument("--in-domain", action="store_true", help="the test volumes of the training volumes instead")
    ap.add_argument("--mode", choices=MODES, default="cumulative", help="the AdaBN estimator (default: cumulative)")
    args = ap.parse_args(argv)
    if not real_data_ready(args.threads):
        return 1
    t0 = time.perf_counter()
    rows = []
    for name in args.models:
        trained = TRAINED_ON.get(name)
        if trained is None or (len(trained) != 1 and not args.in_domain):
            raise SystemExit(f"{name!r}: not a single-source model with a recipe in scripts/em_data.py")
        model = load_em_model(name, args.models_dir)
        for target in sorted(trained if args.in_domain else set(RECIPES) - trained):
            rows.append(measure(model, name, target, args.mode))
            r = rows[-1]
            print(f"{name} -> {r['target']} ({r['slices']} slices): source {r['source']:.3f}, AdaBN {r['adabn']:.3f}, "
                  f"+guard {r['guard']:.3f} ({r['seconds']:.0f} s)", flush=True)
    lines = [header("EM models on whole test volumes " + ("they were trained beside" if args.in_domain
                                                           else "of the other lab")),
             f"# command: python benchmarks/bench_whole_test_volume.py {' '.join(sys.argv[1:] if argv is None else argv)}",
             f"# wall time: {time.perf_counter() - t0:.0f} s", "",
             "| model | target (whole test volume) | slices | source only | AdaBN | +guard | kept (guard) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['target']} | {r['slices']} | {r['source']:.3f} | {r['adabn']:.3f} | {r['guard']:.3f} "
              f"| {r['kept'] or 'no: adapted'} | {r['seconds']:.0f} |" for r in rows]
    save_results(args.name, "\n".join(lines) + "\n", {"rows": rows, "command": lines[1][len("# command: "):]})
    return 0


def measure(model: Any, name: str, target: str, mode: str = "cumulative") -> dict[str, Any]:
    """Source only, AdaBN (estimator ``mode``) and AdaBN behind the guard on every test slice of ``target``."""
    from napari_bnadapt.adabn.need import adaptation_needed, apply_verdict

    images, labels = load_split(target, "test")
    images, truth = np.ascontiguousarray(images), labels > 0
    pixel_size = RECIPES[target]["pixel_size_nm"]
    t = time.perf_counter()
    source = nb.iou(nb.segment(model, images, pixel_size_nm=pixel_size), truth)
    adapted, report = nb.adapt(model, images, pixel_size_nm=pixel_size, seed=0, mode=mode)
    adabn = nb.iou(nb.segment(adapted, images, pixel_size_nm=pixel_size), truth)
    verdict = adaptation_needed(model, adapted, report)
    guard = adabn if verdict.needed else nb.iou(nb.segment(apply_verdict(model, adapted, verdict), images,
                                                            pixel_size_nm=pixel_size), truth)
    return {"model": name, "target": RECIPES[target]["label"], "slices": int(images.shape[0]), "source": source,
            "adabn": adabn, "guard": guard, "kept": "" if verdict.needed else verdict.reference,
            "seconds": time.perf_counter() - t}


if __name__ == "__main__":
    raise SystemExit(main())
