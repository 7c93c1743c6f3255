"""The ``bnadapt`` command line: train, adapt, segment, export, blend, generate, models, demo.

Every subcommand is one call of a public core function; errors about the
user's input are printed as one clear sentence (exit code 2), not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .errors import BNAdaptError
from .model.files import DEFAULT_EM_MODEL
from .settings import PREFIX

EPILOG = """examples:
  bnadapt generate --n 8 --shape 256 256 --mu0 136 --mu1 178 --output target.tif --labels truth.tif
  bnadapt segment --model toy-perlin --adapt --input target.tif --output labels.tif --truth truth.tif
  bnadapt adapt --model toy-perlin --input target.tif --output adapted.safetensors
  bnadapt export --model adapted.safetensors --output adapted-bioimageio.zip
  bnadapt train --images src.tif --labels src_labels.tif --output my-model.safetensors
  bnadapt blend --base lucchi-pp --tuned my-finetuned.safetensors --weight 0.5 --training-images src.tif \
      --output my-blend.safetensors
  bnadapt models
"""


def _read(path: str, what: str) -> tuple[Any, Any]:
    from .io.read import read_stack

    if not Path(path).exists():
        raise BNAdaptError(f"the {what} {path!r} does not exist")
    return read_stack(path)


def _check_output(path: str | None, overwrite: bool) -> None:
    if path and Path(path).exists() and not overwrite:
        raise BNAdaptError(f"{path!r} already exists; choose another name or add --overwrite")
    if path and not Path(path).resolve().parent.is_dir():
        raise BNAdaptError(f"the folder of {path!r} does not exist")


def _write_tiff(path: str, data: Any, info: Any = None) -> None:
    import numpy as np
    import tifffile

    arr = np.asarray(data)
    kwargs: dict[str, Any] = {}
    vs = getattr(info, "voxel_size_nm", None) if info is not None else None
    if vs and all(v for v in vs[-2:]):
        if arr.dtype in (np.uint8, np.uint16, np.float32):  # ImageJ hyperstack with its nm unit
            kwargs.update(imagej=True, resolution=(1.0 / vs[-1], 1.0 / vs[-2]),
                          metadata={"unit": "nm", "axes": "ZYX"[-arr.ndim:]})
            if arr.ndim == 3 and vs[0]:
                kwargs["metadata"]["spacing"] = vs[0]
        else:  # ImageJ cannot hold this type: plain TIFF resolution in pixels per centimetre
            kwargs.update(resolution=(1e7 / vs[-1], 1e7 / vs[-2]), resolutionunit="CENTIMETER")
    tifffile.imwrite(path, arr, compression="zlib" if arr.dtype != np.float32 else None, **kwargs)


def _given_pixel_size(args: argparse.Namespace, info: Any) -> tuple[float, float] | None:
    """The (y, x) pixel size in nm from --pixel-size, else from the file's voxel size, else None."""
    vs = getattr(info, "voxel_size_nm", None)
    return args.pixel_size or (tuple(vs[-2:]) if vs and all(vs[-2:]) else None)


def _pixel_size(args: argparse.Namespace, model: Any, info: Any) -> Any:
    """The image's pixel size for the library: --pixel-size, else the file's; says once what happens with it.

    The sentence (resampled to the model's pixel size, or which one is unknown) is printed here,
    once; the value returned lets the library decide the same without saying it again.
    """
    from .io.resample import model_pixel_size, resolve_grid

    image_nm = _given_pixel_size(args, info)
    grid = resolve_grid(image_nm, model_pixel_size(model))
    sentence = grid.sentence()
    if grid.resamples:
        print(f"note: {sentence}", file=sys.stderr)
    elif sentence:
        hint = " (give --pixel-size NM, or Y_NM X_NM, to compare them)" if grid.image_nm is None else ""
        print(f"warning: {sentence}{hint}", file=sys.stderr)
    return grid.pass_on()


def _intensity(args: argparse.Namespace) -> Any:
    v = getattr(args, "intensity_range", None)
    if not v:
        return None
    if v == ["auto"]:
        return "auto"
    if len(v) != 2:
        raise BNAdaptError("--intensity-range takes 'auto' or two numbers LOW HIGH")
    try:
        return (float(v[0]), float(v[1]))
    except ValueError:
        raise BNAdaptError("--intensity-range takes 'auto' or two numbers LOW HIGH") from None


def _smoothing(value: str) -> float | str:
    """--smooth: 'auto' or a blur (Gaussian standard deviation) >= 0 in the model's pixels."""
    if value == "auto":
        return value
    try:
        sigma = float(value)
    except ValueError:
        sigma = -1.0
    if not 0 <= sigma < float("inf"):
        raise argparse.ArgumentTypeError(f"--smooth takes 'auto' or a blur of 0 or more pixels, not {value!r}")
    return sigma


def _progress(args: argparse.Namespace) -> Any:
    from .progress import tqdm_callback

    return tqdm_callback(disable=getattr(args, "quiet", False))


def _adapt_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        mode=args.mode, alpha=args.alpha, prior=args.prior, n_patches=args.n_patches,
        patch_size=args.patch_size, batch_size=args.adapt_batch_size, seed=args.seed,
    )


def _cmd_models(args: argparse.Namespace) -> int:
    from .model.files import list_models, model_card, user_model_dir

    names = list_models()
    if not names:
        print("no models installed")
    for name in names:
        card = model_card(name)
        px = " x ".join(f"{v:g}" for v in card.pixel_size_nm) + " nm" if card.pixel_size_nm else "unknown"
        print(f"{name}: {card.description or ''}".rstrip())
        print(f"    pixel size: {px}; validation IoU: {card.val_iou:.3f}")
    print(f"(your own models go in {user_model_dir()})")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import synthetic

    _check_output(args.output, args.overwrite)
    _check_output(args.labels, args.overwrite)
    params = dict(mu0=args.mu0, sigma0=args.sigma0, mu1=args.mu1, sigma1=args.sigma1, seed=args.seed)
    if args.volume:
        images, masks = synthetic.generate_volume((args.n, *args.shape), **params)
    else:
        images, masks = synthetic.generate(args.n, tuple(args.shape), shapes=args.shapes, style=args.style, **params)
    _write_tiff(args.output, images)
    if args.labels:
        _write_tiff(args.labels, masks)
    print(f"wrote {images.shape} toy images to {args.output}" + (f" and labels to {args.labels}" if args.labels else ""))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .model.files import load_model, save_model
    from .model.training import train_iter
    from .progress import run_to_end

    _check_output(args.output, args.overwrite)
    images, info = _read(args.images, "image file")
    labels, _ = _read(args.labels, "label file")
    px = _given_pixel_size(args, info)
    model = run_to_end(
        train_iter(
            images, labels, width=args.width, bilinear=args.bilinear, steps=args.steps, batch_size=args.batch_size,
            patch_size=args.patch_size, lr=args.lr, val_fraction=args.val_fraction, eval_every=args.eval_every,
            patience=args.patience, seed=args.seed, device=args.device, intensity_range=_intensity(args),
            pixel_size_nm=px, name=args.name or Path(args.output).stem.replace(".safetensors", ""),
            data_description=args.description, augment=args.augment,
            init=load_model(args.init, device="cpu") if args.init else None,
        ),
        _progress(args),
    )
    path = save_model(model, args.output, overwrite=args.overwrite)
    m = model.meta["training"]["metrics"]
    print(f"saved {path} (validation IoU {m.get('val_iou', float('nan')):.3f} after {m['steps_run']} steps)")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from .adabn.adaptation import adapt_iter
    from .model.files import load_model, save_model
    from .progress import run_to_end

    _check_output(args.output, args.overwrite)
    model = load_model(args.model, device=args.device)
    images, info = _read(args.input, "image file")
    px = _pixel_size(args, model, info)
    adapted, report = run_to_end(
        adapt_iter(model, images, device=args.device, intensity_range=_intensity(args), pixel_size_nm=px,
                   **_adapt_kwargs(args)),
        _progress(args),
    )
    print(report)
    if args.output:
        print(f"saved {save_model(adapted, args.output, overwrite=args.overwrite)}")
    return 0


def _cmd_blend(args: argparse.Namespace) -> int:
    from .io.resample import model_pixel_size, resolve_grid
    from .model.blend import blend_models
    from .model.files import load_model, save_model
    from .stats.source_statistics import compute_source_statistics

    _check_output(args.output, args.overwrite)
    base, tuned = load_model(args.base, device="cpu"), load_model(args.tuned, device="cpu")
    images = px = None
    if args.training_images:
        images, info = _read(args.training_images, "training image file")
        px = _pixel_size(args, tuned, info)
    blend = blend_models(base, tuned, args.weight, name=args.name or Path(args.output).name.split(".")[0],
                         statistics_images=images, pixel_size_nm=px, intensity_range=_intensity(args),
                         device=args.device)
    if images is None:
        print("note: the running statistics are the same mix of both models' (give --training-images to estimate "
              "them again), and the blend has no source statistics: the reliability check needs them", file=sys.stderr)
    elif resolve_grid(px, model_pixel_size(blend)).resamples:
        print("note: the training images are not at the model's pixel size, so the blend's source statistics (for the "
              "reliability check) were not measured", file=sys.stderr)
    else:
        compute_source_statistics(blend, images, device=args.device, intensity_range=_intensity(args), in_place=True)
    path = save_model(blend, args.output, overwrite=args.overwrite)
    print(f"saved {path}: {1 - args.weight:g} x {blend.meta['blend']['base']} + {args.weight:g} x "
          f"{blend.meta['blend']['tuned']}; running statistics {blend.meta['blend']['running_statistics']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .model.bioimageio_export import export_bioimageio
    from .model.files import load_model

    if not args.output.lower().endswith(".zip"):
        raise BNAdaptError(f"the package {args.output!r} must be a .zip file")
    _check_output(args.output, args.overwrite)
    model = load_model(args.model, device="cpu")
    test_image = None
    if args.test_image:
        images, _ = _read(args.test_image, "test image")
        test_image = images[images.shape[0] // 2] if images.ndim == 3 else images
    path = export_bioimageio(model, args.output, test_image=test_image, name=args.name, authors=args.author,
                             license=args.license, overwrite=args.overwrite)
    print(f"saved {path} (bioimage.io model package: open it in deepImageJ, ilastik, BiaPy or QuPath)")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .model.files import load_model
    from .progress import run_to_end
    from .workflow import run_iter

    for out in (args.output, args.probabilities):
        _check_output(out, args.overwrite)
    model = load_model(args.model, device=args.device)
    images, info = _read(args.input, "image file")
    px = _pixel_size(args, model, info)
    truth = _read(args.truth, "ground-truth file")[0] if args.truth else None
    res = run_to_end(
        run_iter(
            model, images, adapt=args.adapt, assess=args.adapt and not args.no_assess, truth=truth,
            threshold=args.threshold, instances=args.instances, keep_probabilities=bool(args.probabilities),
            device=args.device, intensity_range=_intensity(args), pixel_size_nm=px, tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size, adapt_options=_adapt_kwargs(args), guard=not args.no_guard,
            content_floor=args.content_floor, tta=args.tta,
            search_scale=args.search_scale, choose_statistics=args.choose_statistics,
            choose_depth=args.choose_depth, smooth=args.smooth,
            entropy=args.entropy_step, self_train=args.self_train, remove_oversized=not args.keep_oversized,
        ),
        _progress(args),
    )
    if res.iou_source_only is not None:
        print(f"IoU without adaptation: {res.iou_source_only:.3f}")
    if res.adapt_report is not None:
        print(res.adapt_report)
    for what, choice in (("scale search", res.zoom_choice), ("smoothing", res.smoothing),
                         ("statistics", res.statistics_choice), ("adaptation depth", res.depth_choice)):
        if choice is not None:
            print(f"{what}: {choice.reason}")
    if res.need is not None and not res.need.needed:
        print(res.need.message)
    if res.reliability is not None:
        print(res.reliability)
    elif res.reliability_note:
        print(res.reliability_note)
    if res.oversized is not None and res.oversized.removed_objects:
        print(res.oversized.message)
    if res.iou is not None:
        print(f"IoU{' after adaptation' if args.adapt else ''}: {res.iou:.3f}")
    _write_tiff(args.output, res.labels, info)
    print(f"wrote labels {res.labels.shape} {res.labels.dtype} to {args.output}")
    if args.probabilities:
        _write_tiff(args.probabilities, res.probabilities, info)
        print(f"wrote probabilities to {args.probabilities}")
    return 0


def _has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.no_gui and not _has_display():
        print("no display found, so napari cannot open here: running the demo without a window "
              "(for a screenshot of the napari demo on a headless machine: xvfb-run -a bnadapt demo --screenshot demo.png)\n")
        args.no_gui = True
    if args.no_gui:
        from .demo import run_text_demo

        return run_text_demo(quiet=args.quiet)
    try:
        from .gui.demo import run_gui_demo
    except ImportError as exc:
        raise BNAdaptError(f"the GUI demo needs napari ({exc}); install napari-bnadapt[napari] or use --no-gui") from None
    return run_gui_demo(args.screenshot)


def _add_common(p: argparse.ArgumentParser, *, device: bool = True, intensity: bool = True) -> None:
    if device:
        p.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda or mps (default: auto)")
    if intensity:
        p.add_argument("--intensity-range", nargs="+", metavar="V",
                       help="grey values of your data mapped to the model's range: 'auto' (percentiles) or LOW HIGH; "
                            "needed for 16-bit or float data outside 0..255")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class _PixelSizeAction(argparse.Action):
    """``--pixel-size NM`` (square pixels) or ``--pixel-size Y_NM X_NM``, stored as a (y, x) tuple."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if len(values) > 2:
            parser.error(f"{option_string} takes one value (square pixels) or two (Y_NM X_NM), not {len(values)}")
        setattr(namespace, self.dest, (values[0], values[-1]))


_PIXEL_SIZE_HELP = ("the image's pixel size in nm: one value for square pixels, or Y_NM X_NM (default: the file's "
                    "voxel size, when it has one); when it differs from the model's by more than 2 %%, the stack is "
                    "resampled to the model's pixel size internally and the results are written on the image's own "
                    "grid")


def _add_pixel_size(p: argparse.ArgumentParser, text: str = _PIXEL_SIZE_HELP) -> None:
    p.add_argument("--pixel-size", type=float, nargs="+", action=_PixelSizeAction, metavar="NM", help=text)


def _add_adapt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adaptation (BatchNorm statistics re-estimated on your stack)")
    from .adabn.estimators import MODES

    g.add_argument("--mode", default="cumulative", choices=MODES,
                   help="cumulative: equal-weight average (default); ema: the paper's moving average; prior: mix with the "
                   "source; balanced: cumulative, reweighted to the training data's share of mitochondria")
    g.add_argument("--alpha", type=float, default=0.1, help="EMA rate for --mode ema (default 0.1)")
    g.add_argument("--prior", type=float, default=None, help="source pseudo-count N for --mode prior (default 16)")
    g.add_argument("--n-patches", type=int, default=None, help="random patches to adapt on (default: whole stack if small, else 64)")
    g.add_argument("--patch-size", type=int, default=256, help="patch side in pixels (default 256)")
    g.add_argument("--adapt-batch-size", type=int, default=8, help="patches per forward pass (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the patch positions (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``bnadapt`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="bnadapt",
        description="Adapt a mitochondria-segmentation U-Net to your EM stack by BatchNorm adaptation, and segment it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"napari-bnadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="segment a stack (optionally adapting the model to it first)")
    p.add_argument("--model", default=DEFAULT_EM_MODEL,
                   help=f"model name (see 'bnadapt models') or .safetensors file (default {DEFAULT_EM_MODEL}: "
                   "trained on every labelled EM volume of the project; toy-perlin for the toy images)")
    p.add_argument("--input", required=True, help="image stack: TIFF, folder of slices, MRC, HDF5, zarr")
    p.add_argument("--output", required=True, help="labels TIFF to write (1 = mitochondrion)")
    p.add_argument("--adapt", action="store_true", help="adapt the model's BatchNorm statistics to this stack first")
    p.add_argument("--no-assess", action="store_true",
                   help="with --adapt: skip the label-free reliability check (it needs source statistics in the model file)")
    p.add_argument("--no-guard", action="store_true",
                   help="with --adapt: use the adapted statistics even when the stack already matches the model's "
                   "training data (by default the source statistics are kept then)")
    p.add_argument("--content-floor", action="store_true",
                   help="with --adapt: the guard also keeps the source statistics when the stack lies no farther from "
                   "the training data than crops of its size of the training data do (models with a content floor: "
                   "the generalists; for a small stack of a kind the model was trained on, with its pixel size known; "
                   "an option, docs/real-data.md)")
    p.add_argument("--keep-oversized", action="store_true",
                   help="keep objects far larger than any mitochondrion the model was trained on (by default they are "
                   "removed and the number is printed: a nucleus or cell body is the usual cause)")
    p.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8],
                   help="test-time augmentation: average over this many flipped/rotated views (default 1: off)")
    p.add_argument("--search-scale", action="store_true",
                   help="choose the zoom at which predicted mitochondria match the training sizes (no labels)")
    p.add_argument("--choose-statistics", action="store_true",
                   help="with --adapt: segment with the source statistics instead when, on a sample, the model without "
                   "adaptation agrees more with itself under flips and finds a share of mitochondria no farther from "
                   "its training data's (no labels; an option, docs/real-data.md)")
    p.add_argument("--choose-depth", action="store_true",
                   help="with --adapt: keep the adapted statistics only in the first blocks, as many as make the "
                   "segmentation agree best with itself on the image turned 180 degrees (no labels; an option)")
    p.add_argument("--smooth", type=_smoothing, default=None, metavar="auto|SIGMA",
                   help="see the image through a Gaussian blur of SIGMA pixels (at the model's pixel size), or 'auto': "
                   "the blur that makes it look most like the training data to the model's first layer (no labels; "
                   "an option, docs/real-data.md)")
    p.add_argument("--entropy-step", action="store_true",
                   help="with --adapt: tune the BatchNorm affine parameters by entropy minimisation (research option)")
    p.add_argument("--self-train", action="store_true",
                   help="with --adapt: a short self-training pass on the confidently segmented pixels; it adds "
                   "foreground: for stacks where the adapted model misses mitochondria (docs/real-data.md)")
    p.add_argument("--truth", help="ground-truth labels TIFF: prints the IoU (before and after adaptation)")
    p.add_argument("--probabilities", help="also write the float32 foreground probability to this TIFF")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--instances", action="store_true", help="one label per object instead of 0/1")
    _add_pixel_size(p)
    p.add_argument("--tile-size", type=int, default=None,
                   help="largest tile side in pixels, multiple of 16 (default: 576 on CPU, 1024 on GPU)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: one 576 px tile per pass on CPU, "
                   "up to 2 Mpixel on GPU)")
    _add_adapt_options(p)
    _add_common(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("adapt", help="adapt a model to a stack and save the adapted model")
    p.add_argument("--model", default=DEFAULT_EM_MODEL,
                   help=f"model name or .safetensors file, never modified (default {DEFAULT_EM_MODEL})")
    p.add_argument("--input", required=True, help="the unlabelled target stack")
    p.add_argument("--output", help="where to save the adapted model (.safetensors)")
    _add_pixel_size(p)
    _add_adapt_options(p)
    _add_common(p)
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("export", help="export a model as a bioimage.io package (deepImageJ, ilastik, BiaPy, QuPath)")
    p.add_argument("--model", required=True, help="model name or file (.safetensors, e.g. an adapted model)")
    p.add_argument("--output", required=True, help="the package to write (.zip)")
    p.add_argument("--name", help="the package's name (default: the model's)")
    p.add_argument("--author", action="append", help="an author's name (repeat for several)")
    p.add_argument("--license", default="BSD-3-Clause", help="SPDX licence of the package (default BSD-3-Clause)")
    p.add_argument("--test-image", help="image for the test tensors (its middle slice; default: a toy sample)")
    p.add_argument("--overwrite", action="store_true", help="replace the package if it exists")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("blend", help="mix a model and its fine-tuned copy in weight space (WiSE-FT); nothing is trained")
    p.add_argument("--base", required=True, help="the model that was fine-tuned (name or file), never modified")
    p.add_argument("--tuned", required=True, help="its fine-tuned copy (name or file), never modified")
    p.add_argument("--weight", type=float, default=0.5, help="the fine-tuned model's share, 0..1 (default 0.5)")
    p.add_argument("--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--name", help="the blend's name (default: the file name)")
    p.add_argument("--training-images", help="un-augmented training images: the blend's BatchNorm running statistics "
                   "and its source statistics are measured on them (recommended)")
    _add_pixel_size(p, "the training images' pixel size in nm: one value for square pixels, or Y_NM X_NM "
                       "(default: the file's voxel size, when it has one)")
    _add_common(p)
    p.set_defaults(func=_cmd_blend)

    p = sub.add_parser("train", help="train a source model on labelled images")
    p.add_argument("--images", required=True, help="training image stack")
    p.add_argument("--labels", required=True, help="training labels (0 = background, >0 = mitochondrion)")
    p.add_argument("--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--name", help="model name (default: the file name)")
    p.add_argument("--description", default="", help="what the model was trained on (shown in the model card)")
    _add_pixel_size(p, "the training images' pixel size in nm: one value for square pixels, or Y_NM X_NM "
                       "(default: the file's voxel size, when it has one)")
    p.add_argument("--width", type=int, default=16, help="U-Net base width (default 16)")
    p.add_argument("--bilinear", action="store_true", help="bilinear upsampling instead of transposed convolutions")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=8, help="random crops per step (default 8)")
    p.add_argument("--patch-size", type=int, default=128, help="crop side in pixels (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of slices for validation (default 0.1)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations (default 100)")
    p.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--augment", default="em", choices=["em", "geometric", "off"],
                   help="em: flips/rotations plus EM domain randomisation (scale, grey-value curves, blur, noise, "
                   "stripes; default); geometric: flips and rotations only; off: none")
    p.add_argument("--init", default=None, help="fine-tune from this model (name or file) instead of from scratch")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="make synthetic toy-mitochondria images (Perlin noise)")
    p.add_argument("--n", type=int, default=8, help="number of images, or slices with --volume (default 8)")
    p.add_argument("--shape", type=int, nargs=2, default=[256, 256], metavar=("Y", "X"), help="image size (default 256 256)")
    p.add_argument("--mu0", type=float, default=96, help="background mean grey value (default 96)")
    p.add_argument("--sigma0", type=float, default=18, help="background noise (default 18)")
    p.add_argument("--mu1", type=float, default=138, help="mitochondria mean grey value (default 138)")
    p.add_argument("--sigma1", type=float, default=18, help="mitochondria noise (default 18)")
    p.add_argument("--shapes", default="perlin", choices=["perlin", "circles", "triangles"], help="object shapes")
    p.add_argument("--style", default="noise", choices=["noise", "gradient", "edges"], help="image style")
    p.add_argument("--volume", action="store_true", help="a coherent 3D stack (3D Perlin noise) instead of independent images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", required=True, help="image TIFF to write")
    p.add_argument("--labels", help="mask TIFF to write")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("models", help="list the installed models and their cards")
    p.set_defaults(func=_cmd_models)

    from .experiments import add_experiment_parser

    add_experiment_parser(sub)

    p = sub.add_parser("demo", help="napari with a brightness-shifted toy stack, adapted and segmented in one click")
    p.add_argument("--screenshot", metavar="FILE", help="run without a user: save the window to FILE (PNG) and quit")
    p.add_argument("--no-gui", action="store_true", help="no window: print the IoU before and after adaptation")
    p.add_argument("--quiet", action="store_true", help="no progress bars (with --no-gui)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bnadapt`` console script."""
    # the CLI owns its process and runs the network on its main thread, where the tuned
    # allocator is 1.4-1.6x faster (settings.py); an explicit BNADAPT_MALLOC wins
    os.environ.setdefault(f"{PREFIX}MALLOC", "tuned")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BNAdaptError as exc:
        print(f"bnadapt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnadapt {args.command}: cancelled; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

