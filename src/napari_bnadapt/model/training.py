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
from ..adabn.scale_search import OBJECTS_KEY, object_size_summary
from ..adabn.volumes import VOLUME_STATISTICS_CROPS, measure_volume_statistics_iter
from ..metrics import foreground_counts
from ..progress import Progress, Result, forward, run_to_end, shares_docstring
from ..stats.source_statistics import compute_source_statistics_iter
from .augment import Augmentation, resolve_augmentation
from .crops import TrainingVolume, as_list, crop_batch, statistics_stack, volume_weights
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


def _volume_zooms(volume_nm: Any, model_nm: Any, n: int) -> list[float]:
    """Each volume's pixel size over the model's (1 where either is unknown)."""
    out = []
    for ps in _per_volume(volume_nm, n):
        if ps is None or not model_nm:
            out.append(1.0)
            continue
        ry, rx = float(ps[0]) / float(model_nm[0]), float(ps[1]) / float(model_nm[1])
        if ry <= 0 or rx <= 0 or abs(ry - rx) > 1e-3 * max(ry, rx):
            raise BNAdaptError(f"volume pixel size {tuple(ps)} nm: anisotropic or non-positive pixels in y/x are not supported")
        out.append(ry)
    return out


def _per_volume(volume_nm: Any, n: int) -> list[Any]:
    if volume_nm is None:
        return [None] * n
    if len(volume_nm) != n:
        raise BNAdaptError(f"volume_pixel_sizes_nm lists {len(volume_nm)} pixel sizes for {n} volumes")
    return list(volume_nm)


def _volume_names(names: list[str] | None, n: int) -> list[str]:
    """One distinct, non-empty name per training volume (default "volume 1", "volume 2", ...)."""
    if names is None:
        return [f"volume {i + 1}" for i in range(n)]
    names = [str(x).strip() for x in names]
    if len(names) != n or not all(names) or len(set(names)) != n:
        raise BNAdaptError(f"volume_names must give {n} distinct, non-empty names (one per training volume), "
                           f"not {names}")
    return names


def _volume_card(v: TrainingVolume, pixel_size: Any) -> dict[str, Any]:
    return {"shape": list(v.view.data.shape), "pixel_size_nm": list(pixel_size) if pixel_size else None,
            "zoom": round(v.zoom, 4), "train_slices": len(v.train), "val_slices": len(v.val),
            "intensity_range": [v.norm.in_low, v.norm.in_high]}


def _object_sizes(volumes: list[TrainingVolume]) -> dict[str, Any]:
    """Object sizes of the training labels at the model's pixel size (every volume, cut to their common shape)."""
    from scipy.ndimage import zoom

    slices = []
    for v in volumes:
        for z in v.train:
            lab = np.asarray(v.labels.read(int(z))) > 0
            if v.zoom != 1.0:
                lab = zoom(lab.astype(np.float32), v.zoom, order=1, grid_mode=True, mode="nearest") > 0.5
            slices.append(lab)
    h, w = min(s.shape[0] for s in slices), min(s.shape[1] for s in slices)
    return object_size_summary(np.stack([s[:h, :w] for s in slices]))


def _validation_set(v: TrainingVolume) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
    """A volume's validation slices and labels at the model's pixel size, with its intensity range."""
    if not len(v.val):
        return None
    images = np.stack([v.view.read(int(z)) for z in v.val])
    labels = np.stack([v.labels.read(int(z)) for z in v.val]) > 0
    if v.zoom != 1.0:
        from scipy.ndimage import zoom

        images = zoom(images.astype(np.float32), (1, v.zoom, v.zoom), order=1, grid_mode=True, mode="reflect")
        labels = zoom(labels.astype(np.float32), (1, v.zoom, v.zoom), order=1, grid_mode=True, mode="nearest") > 0.5
    return images, labels, (v.norm.in_low, v.norm.in_high)


def _validate(model: Any, val_sets: list[Any], dev: Any) -> tuple[float, float]:
    """Foreground IoU and Dice pooled over every volume's validation slices (threshold 0.5)."""
    from ..segmentation.predict import predict

    inter = total_p = total_t = union = 0
    for images, labels, rng in val_sets:
        pred = predict(model, images, device=dev, intensity_range=rng) > 0.5
        i, a, b = foreground_counts(pred, labels)
        inter, total_p, total_t, union = inter + i, total_p + a, total_t + b, union + a + b - i
    iou_ = 1.0 if union == 0 else inter / union
    dice_ = 1.0 if total_p + total_t == 0 else 2.0 * inter / (total_p + total_t)
    return iou_, dice_


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
    augment: bool | str | Augmentation = True,
    volume_pixel_sizes_nm: list[tuple[float, float] | None] | None = None,
    volume_names: list[str] | None = None,
    init: UNet | None = None,
    optimizer: str = "adam",
    source_statistics: bool = True,
    statistics_patches: int | None = 256,
    precision: str = "float32",
) -> UNet:
    """Train a source U-Net on labelled images.

    Parameters
    ----------
    images : array-like or napari Image layer, or a list of them
        (Z, Y, X) training stack (or one (Y, X) image), greyscale. A list trains on
        several volumes (other labs, shapes and pixel sizes) at once: each crop comes
        from one of them, drawn with probability proportional to the square root of
        its training area; each keeps its own grey-value range (``intensity_range``
        is resolved per volume).
    labels : array-like or napari Labels layer, or a list of them
        Same shape(s); 0 = background, > 0 = mitochondrion.
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
        Pixel size (y, x) in nanometres the model is trained at, stored in the model card.
    name : str or None, default None
        The model's name, stored in the model card.
    data_description : str, default ""
        What the training data is, in words; stored in the model card.
    augment : bool, str or Augmentation, default True
        ``True`` or ``"em"``: domain randomisation for electron microscopy (flips and
        rotations, scale jitter, grey-value curves, blur, noise, stripes; see
        :class:`~napari_bnadapt.model.augment.Augmentation` for the defaults);
        ``"geometric"``: flips and 90-degree rotations only; ``False``: none. The
        settings are stored in the model card; the draws follow ``seed``.
    volume_pixel_sizes_nm : list of (float, float) or None, default None
        Pixel size (y, x) in nm of each training volume (None entries: unknown). With
        ``pixel_size_nm`` given, each volume's crops are resampled to it.
    volume_names : list of str or None, default None
        A name for each training volume (default "volume 1", "volume 2", ...), stored with its
        statistics and named by the "no adaptation needed" verdict.
    init : UNet or None, default None
        Start from a copy of this model's weights and input standardisation
        (fine-tuning; ``width`` and ``bilinear`` are then taken from it). The model
        passed is never modified; its name is recorded in the new model's card.
    optimizer : {"adam", "rmsprop"}, default "adam"
        Adam with cosine decay (CPU-practical), or the thesis' RMSprop (momentum 0.999,
        weight decay 1e-8, gradient norm clipped at 1, constant rate; the thesis used lr 1e-5).
    source_statistics : bool, default True
        After training, measure the latent Gaussians and output signals of the
        model on a sample of the training patches and store them in the model
        card (``meta["source_statistics"]``), for the reliability check; see
        :func:`~napari_bnadapt.stats.source_statistics.compute_source_statistics`. With
        several volumes, also each volume's BatchNorm statistics (AdaBN on 64 un-augmented crops
        of it), the references of the "no adaptation needed" test
        (:mod:`~napari_bnadapt.adabn.volumes`).
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
        augment=augment, volume_pixel_sizes_nm=volume_pixel_sizes_nm, volume_names=volume_names, init=init, optimizer=optimizer, source_statistics=source_statistics,
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
    augment: bool | str | Augmentation = True,
    volume_pixel_sizes_nm: list[tuple[float, float] | None] | None = None,
    volume_names: list[str] | None = None,
    init: UNet | None = None,
    optimizer: str = "adam",
    source_statistics: bool = True,
    statistics_patches: int | None = 256,
    precision: str = "float32",
) -> Iterator[Progress | Result[UNet]]:
    import torch
    import torch.nn.functional as F

    from .unet import UNet, count_parameters

    t0 = time.perf_counter()
    image_list, label_list = as_list(images), as_list(labels)
    if len(image_list) != len(label_list):
        raise BNAdaptError(f"{len(image_list)} image stacks but {len(label_list)} label stacks")
    views = [check_stack(im, what="training images") for im in image_list]
    labs = [_labels_view(lb, tuple(v.data.shape)) for lb, v in zip(label_list, views)]
    zooms = _volume_zooms(volume_pixel_sizes_nm, pixel_size_nm, len(views))
    names = _volume_names(volume_names, len(views))
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise BNAdaptError("steps, batch_size and eval_every must be at least 1")
    aug = resolve_augmentation(augment)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    splits = [_split(v.shape3d[0], val_fraction, rng) for v in views]
    bases = [resolve_normalization(v, Normalization().to_meta(), intensity_range, what="training images") for v in views]
    x01 = np.concatenate([((v.sample().astype(np.float64) - b.in_low) / (b.in_high - b.in_low)).ravel()
                          for v, b in zip(views, bases)])
    mean, std = float(x01.mean()), float(max(x01.std(), 1e-3))
    if init is not None:  # fine-tuning keeps the input standardisation its weights were trained with
        if not isinstance(init, UNet):
            raise BNAdaptError(f"init must be a napari-bnadapt UNet, not {type(init).__name__}")
        init_norm = Normalization.from_meta((getattr(init, "meta", None) or {}).get("normalization", {}))
        mean, std = init_norm.mean, init_norm.std
        width, bilinear = init.width, init.bilinear
    volumes = [TrainingVolume(v, lb, Normalization(b.low, b.high, mean, std, b.in_low, b.in_high), z, tr, va)
               for v, lb, b, z, (tr, va) in zip(views, labs, bases, zooms, splits)]
    norm = volumes[0].norm
    weights = volume_weights(volumes)
    view = views[0]
    nz, h, w = view.shape3d
    dev = get_device(device)
    if precision not in ("float32", "bfloat16"):
        raise BNAdaptError(f"precision must be 'float32' or 'bfloat16', not {precision!r}")
    if precision == "bfloat16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BNAdaptError("this GPU has no bfloat16 support: train with precision='float32'")
    # channels-last is the faster layout for oneDNN (CPU) and cuDNN convolutions; the weights saved are the same
    model = UNet(width=width, bilinear=bilinear) if init is None else copy.deepcopy(init).train()
    model = model.to(dev).to(memory_format=torch.channels_last)
    if optimizer == "adam":
        opt: Any = torch.optim.Adam(model.parameters(), lr=lr)
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    elif optimizer == "rmsprop":  # the thesis' recipe: RMSprop, momentum 0.999, gradients clipped at 1
        opt = torch.optim.RMSprop(model.parameters(), lr=lr, momentum=0.999, weight_decay=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    else:
        raise BNAdaptError(f"optimizer must be 'adam' or 'rmsprop', not {optimizer!r}")
    min_h, min_w = (min(v.shape3d[1] for v in views), min(v.shape3d[2] for v in views))
    ph, pw = min(patch_size, min_h) // 16 * 16, min(patch_size, min_w) // 16 * 16
    if ph < 16 or pw < 16:
        raise BNAdaptError(f"patch_size must be at least 16, not {patch_size}")

    def crop_tensors() -> tuple[Any, Any]:
        xs, ys = crop_batch(volumes, weights, (ph, pw), batch_size, aug, rng)
        x = torch.from_numpy(xs).to(dev).contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(ys).to(dev)

    model.meta = {"normalization": norm.to_meta()}
    val_sets = [vs for vs in (_validation_set(v) for v in volumes) if vs is not None]
    val_images = val_sets or None
    best = {"iou": -1.0, "step": 0, "state": copy.deepcopy(model.state_dict())}
    history: list[dict[str, float]] = []
    bad_evals = 0
    step = 0
    yield Progress("training", 0, steps)
    for step in range(1, steps + 1):
        model.train()
        x, y = crop_tensors()
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
                entry["val_iou"] = _validate(model, val_sets, dev)[0]
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
    # without validation the final weights are kept: they are the "best" ones the card names
    metrics: dict[str, Any] = {"steps_run": step, "best_step": best["step"] if val_images is not None else step}
    if val_images is not None:
        val_iou, val_dice = _validate(model, val_sets, dev)
        metrics.update(val_iou=val_iou, val_dice=val_dice, val_slices=sum(len(v.val) for v in volumes))
    model.meta = {
        "name": name,
        "description": data_description,
        "normalization": norm.to_meta(),
        "pixel_size_nm": list(pixel_size_nm) if pixel_size_nm else None,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "training": {
            "data": {"shape": list(view.data.shape), "dtype": str(view.dtype), "description": data_description,
                     "train_slices": sum(len(v.train) for v in volumes), "intensity_range": [norm.in_low, norm.in_high],
                     **({"volumes": [{"name": n, **_volume_card(v, ps)} for n, v, ps in
                                   zip(names, volumes, _per_volume(volume_pixel_sizes_nm, len(volumes)))]}
                        if len(volumes) > 1 else {})},
            "recipe": {"loss": "cross-entropy + Dice", "optimizer": optimizer, "lr": lr,
                       "schedule": "cosine" if optimizer == "adam" else "constant",
                       "steps": steps, "batch_size": batch_size, "patch_size": [ph, pw],
                       "augmentation": aug.to_meta(),
                       "precision": precision, "val_fraction": val_fraction, "eval_every": eval_every, "patience": patience, "seed": seed,
                       "width": width, "bilinear": bilinear, "parameters": count_parameters(model)},
            "metrics": metrics,
            "history": history,
            **({"init": (getattr(init, "meta", None) or {}).get("name") or "a model without a name"} if init is not None else {}),
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(dev),
            "software": {"torch": torch.__version__, "python": platform.python_version()},
        },
    }
    model.meta[OBJECTS_KEY] = _object_sizes(volumes)  # for the label-free scale search
    if source_statistics:
        # the source side of the reliability check travels with the model (a sample of training patches)
        if len(volumes) == 1 and volumes[0].zoom == 1.0:
            stats_images, stats_range = image_list[0], (norm.in_low, norm.in_high)
            few = statistics_patches is None or nz * h * w <= statistics_patches * ph * pw
        else:  # several volumes or pixel sizes: un-augmented crops of each, at the model's pixel size
            stats_images = statistics_stack(volumes, ph, statistics_patches or 64, seed)
            stats_range, few = None, True
        yield from forward(compute_source_statistics_iter(
            model, stats_images, n_patches=None if few else statistics_patches, patch_size=patch_size,
            batch_size=batch_size, seed=seed, device=dev, intensity_range=stats_range, in_place=True,
        ))
        if len(volumes) > 1:  # each volume's BatchNorm statistics: the guard's references (adabn/volumes.py)
            stacks = {n: statistics_stack(volumes, ph, VOLUME_STATISTICS_CROPS, seed, only=i)
                      for i, n in enumerate(names)}
            yield from forward(measure_volume_statistics_iter(
                model, stacks, patch_size=patch_size, batch_size=batch_size, seed=seed, device=dev, in_place=True))
        model.meta["training"]["seconds"] = round(time.perf_counter() - t0, 1)
    yield Result(model)
