"""Training a source U-Net on labelled images (the thesis recipe: cross-entropy + Dice loss).

CPU-practical: random crops instead of whole slices, Adam, a fixed number of
optimiser steps, a validation split with early stopping on validation IoU,
and the best weights kept.
"""

from __future__ import annotations

import copy
import datetime as _dt
import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BNAdaptError
from ..io.stack_view import (
    Normalization,
    check_stack,
    layer_data,
    resolve_normalization,
)
from ..metrics import dice, iou
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from ..stats.source_statistics import compute_source_statistics_iter
from .device import get_device

if TYPE_CHECKING:
    import torch
    from napari.layers import Image, Labels
    from numpy.typing import ArrayLike

    from .unet import UNet


def _labels_view(labels: Any, shape: tuple[int, ...]) -> Any:
    view = check_stack(layer_data(labels, kind="labels"), what="training labels")
    if tuple(view.data.shape) != shape:
        raise BNAdaptError(f"the labels {tuple(view.data.shape)} and the images {shape} differ in shape")
    if view.dtype.kind == "f":
        raise BNAdaptError("the training labels must be integers (0 = background, > 0 = mitochondrion)")
    return view


def _split(nz: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= val_fraction < 1.0:
        raise BNAdaptError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n_val = int(round(nz * val_fraction))
    if val_fraction > 0 and nz >= 2:
        n_val = max(1, n_val)
    order = rng.permutation(nz)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _dice_loss(logits: Any, target: Any) -> Any:
    import torch

    p = torch.softmax(logits, 1)[:, 1]
    t = target.float()
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + 1.0) / (p.sum() + t.sum() + 1.0)


def train(
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    *,
    width: int = 16,
    bilinear: bool = False,
    steps: int = 1500,
    batch_size: int = 8,
    patch_size: int = 128,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    eval_every: int = 100,
    patience: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    name: str | None = None,
    data_description: str = "",
    augment: bool = True,
    optimizer: str = "adam",
    source_statistics: bool = True,
    statistics_patches: int | None = 256,
    precision: str = "float32",
) -> UNet:
    """Train a source U-Net on labelled images.

    Parameters
    ----------
    images : array-like or napari Image layer
        (Z, Y, X) training stack (or one (Y, X) image), greyscale.
    labels : array-like or napari Labels layer
        Same shape; 0 = background, > 0 = mitochondrion.
    width : int, default 16
        U-Net base width (16: about 1.9 M parameters, fast on a CPU).
    bilinear : bool, default False
        Bilinear upsampling instead of transposed convolutions.
    steps : int, default 1500
        Optimiser steps (each a batch of random crops).
    batch_size : int, default 8
        Crops per step.
    patch_size : int, default 128
        Crop side in pixels (rounded down to a multiple of 16 and to the slice size).
    lr : float, default 1e-3
        Learning rate of the optimiser (with Adam: cosine decay to 5 % of it).
    val_fraction : float, default 0.1
        Share of slices held out for validation (early stopping, best weights kept).
    eval_every : int, default 100
        Steps between validations.
    patience : int, default 5
        Stop after this many validations without improvement.
    seed : int, default 0
        Seeds the split, the crops and the initial weights.
    device : str or torch.device, default "auto"
        "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None, default None
        Grey-value range of the training data mapped to the model's 0..255 input
        ("auto": the 0.5 and 99.5 percentiles of a sample; None: the data must lie in 0..255).
    pixel_size_nm : (float, float) or None, default None
        Pixel size (y, x) of the training data in nanometres, stored in the model card.
    name : str or None, default None
        The model's name, stored in the model card.
    data_description : str, default ""
        What the training data is, in words; stored in the model card.
    augment : bool, default True
        Random 90-degree rotations and flips.
    optimizer : {"adam", "rmsprop"}, default "adam"
        Adam with cosine decay (CPU-practical), or the thesis' RMSprop (momentum 0.999,
        weight decay 1e-8, gradient norm clipped at 1, constant rate; the thesis used lr 1e-5).
    source_statistics : bool, default True
        After training, measure the latent Gaussians and output signals of the
        model on a sample of the training patches and store them in the model
        card (``meta["source_statistics"]``), for the reliability check; see
        :func:`~napari_bnadapt.stats.source_statistics.compute_source_statistics`.
    statistics_patches : int or None, default 256
        Number of random training patches (of ``patch_size``) measured for them
        (all of a smaller stack; None: up to 64 x 256 x 256 voxels).
    precision : {"float32", "bfloat16"}, default "float32"
        ``"bfloat16"``: mixed precision (autocast) for the forward pass; weights,
        BatchNorm statistics, loss and optimiser stay float32. Faster on CPUs with
        AVX-512 BF16 / AMX and on recent GPUs (no committed benchmark measures by how
        much); the saved model is float32.

    Returns
    -------
    UNet
        The trained model (best validation weights) with its model card in ``model.meta``.
    """
    return run_to_end(train_iter(
        images, labels, width=width, bilinear=bilinear, steps=steps, batch_size=batch_size, patch_size=patch_size,
        lr=lr, val_fraction=val_fraction, eval_every=eval_every, patience=patience, seed=seed, device=device,
        intensity_range=intensity_range, pixel_size_nm=pixel_size_nm, name=name, data_description=data_description,
        augment=augment, optimizer=optimizer, source_statistics=source_statistics,
        statistics_patches=statistics_patches, precision=precision,
    ))


@shares_docstring(train)
def train_iter(
    images: ArrayLike | Image,
    labels: ArrayLike | Labels,
    *,
    width: int = 16,
    bilinear: bool = False,
    steps: int = 1500,
    batch_size: int = 8,
    patch_size: int = 128,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    eval_every: int = 100,
    patience: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    pixel_size_nm: tuple[float, float] | None = None,
    name: str | None = None,
    data_description: str = "",
    augment: bool = True,
    optimizer: str = "adam",
    source_statistics: bool = True,
    statistics_patches: int | None = 256,
    precision: str = "float32",
) -> Iterator[Progress | Result[UNet]]:
    import torch
    import torch.nn.functional as F

    from ..segmentation.predict import predict
    from .unet import UNet, count_parameters

    t0 = time.perf_counter()
    view = check_stack(images, what="training images")
    lab = _labels_view(labels, tuple(view.data.shape))
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise BNAdaptError("steps, batch_size and eval_every must be at least 1")
    nz, h, w = view.shape3d
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tr_idx, va_idx = _split(nz, val_fraction, rng)
    base = resolve_normalization(view, Normalization().to_meta(), intensity_range, what="training images")
    sample = view.sample().astype(np.float64)
    x01 = (sample - base.in_low) / (base.in_high - base.in_low)
    norm = Normalization(base.low, base.high, float(x01.mean()), float(max(x01.std(), 1e-3)), base.in_low, base.in_high)
    dev = get_device(device)
    if precision not in ("float32", "bfloat16"):
        raise BNAdaptError(f"precision must be 'float32' or 'bfloat16', not {precision!r}")
    if precision == "bfloat16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BNAdaptError("this GPU has no bfloat16 support: train with precision='float32'")
    # channels-last is the faster layout for oneDNN (CPU) and cuDNN convolutions; the weights saved are the same
    model = UNet(width=width, bilinear=bilinear).to(dev).to(memory_format=torch.channels_last)
    if optimizer == "adam":
        opt: Any = torch.optim.Adam(model.parameters(), lr=lr)
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    elif optimizer == "rmsprop":  # the thesis' recipe: RMSprop, momentum 0.999, gradients clipped at 1
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, momentum=0.999, weight_decay=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    else:
        raise BNAdaptError(f"optimizer must be 'adam' or 'rmsprop', not {optimizer!r}")
    ph, pw = min(patch_size, h) // 16 * 16, min(patch_size, w) // 16 * 16
    if ph < 16 or pw < 16:
        raise BNAdaptError(f"patch_size must be at least 16, not {patch_size}")

    def crop_batch() -> tuple[Any, Any]:
        zs = rng.choice(tr_idx, batch_size)
        xs, ys = [], []
        for z in zs:
            y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
            im = norm.apply(view.read(int(z), slice(y0, y0 + ph), slice(x0, x0 + pw)))
            lb = (lab.read(int(z), slice(y0, y0 + ph), slice(x0, x0 + pw)) > 0).astype(np.int64)
            if augment:
                k = int(rng.integers(4)) if ph == pw else 2 * int(rng.integers(2))
                im, lb = np.rot90(im, k), np.rot90(lb, k)
                if rng.random() < 0.5:
                    im, lb = im[:, ::-1], lb[:, ::-1]
            xs.append(np.ascontiguousarray(im))
            ys.append(np.ascontiguousarray(lb))
        x = torch.from_numpy(np.stack(xs)[:, None]).to(dev).contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(np.stack(ys)).to(dev)

    model.meta = {"normalization": norm.to_meta()}
    val_images = np.stack([view.read(int(z)) for z in va_idx]) if len(va_idx) else None
    val_labels = np.stack([lab.read(int(z)) for z in va_idx]) if len(va_idx) else None
    best = {"iou": -1.0, "step": 0, "state": copy.deepcopy(model.state_dict())}
    history: list[dict[str, float]] = []
    bad_evals = 0
    step = 0
    yield Progress("training", 0, steps)
    for step in range(1, steps + 1):
        model.train()
        x, y = crop_batch()
        with torch.enable_grad():  # also when called from a no_grad context
            # mixed precision: convolutions in bfloat16, BatchNorm, loss and weights stay float32
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits = model(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y) + _dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if optimizer == "rmsprop":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            entry = {"step": step, "loss": float(loss.item())}
            if val_images is not None:
                model.eval()
                pred = predict(model, val_images, device=dev, intensity_range=(norm.in_low, norm.in_high)) > 0.5
                entry["val_iou"] = iou(pred, val_labels)
                if entry["val_iou"] > best["iou"] + 1e-4:
                    best = {"iou": entry["val_iou"], "step": step, "state": copy.deepcopy(model.state_dict())}
                    bad_evals = 0
                else:
                    bad_evals += 1
            history.append(entry)
            if val_images is not None and bad_evals >= patience:
                yield Progress("training", steps, steps)
                break
        yield Progress("training", step, steps)
    if val_images is not None:
        model.load_state_dict(best["state"])
    model.to(memory_format=torch.contiguous_format).eval()
    metrics: dict[str, Any] = {"steps_run": step, "best_step": best["step"]}
    if val_images is not None:
        pred = predict(model, val_images, device=dev, intensity_range=(norm.in_low, norm.in_high)) > 0.5
        metrics.update(val_iou=iou(pred, val_labels), val_dice=dice(pred, val_labels), val_slices=len(va_idx))
    model.meta = {
        "name": name,
        "description": data_description,
        "normalization": norm.to_meta(),
        "pixel_size_nm": list(pixel_size_nm) if pixel_size_nm else None,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "training": {
            "data": {"shape": list(view.data.shape), "dtype": str(view.dtype), "description": data_description,
                     "train_slices": len(tr_idx), "intensity_range": [norm.in_low, norm.in_high]},
            "recipe": {"loss": "cross-entropy + Dice", "optimizer": optimizer, "lr": lr,
                       "schedule": "cosine" if optimizer == "adam" else "constant",
                       "steps": steps, "batch_size": batch_size, "patch_size": [ph, pw], "augment": augment,
                       "precision": precision, "val_fraction": val_fraction, "eval_every": eval_every, "patience": patience, "seed": seed,
                       "width": width, "bilinear": bilinear, "parameters": count_parameters(model)},
            "metrics": metrics,
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(dev),
            "software": {"torch": torch.__version__, "python": platform.python_version()},
        },
    }
    if source_statistics:
        # the source side of the reliability check travels with the model (a sample of training patches)

        few = statistics_patches is None or nz * h * w <= statistics_patches * ph * pw
        yield from forward(compute_source_statistics_iter(
            model, images, n_patches=None if few else statistics_patches, patch_size=patch_size,
            batch_size=batch_size, seed=seed, device=dev, intensity_range=(norm.in_low, norm.in_high), in_place=True,
        ))
        model.meta["training"]["seconds"] = round(time.perf_counter() - t0, 1)
    yield Result(model)
