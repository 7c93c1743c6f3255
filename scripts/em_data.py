"""The real EM data of ``../shared/data/real/`` as the project's EM scripts and benchmarks use it.

Which files, which slices train and which test, and the model-card facts of each
dataset. Nothing here is part of the installed package: the data is not shipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "real"
BUNDLED = REPO / "src" / "napari_bnadapt" / "model" / "bundled"

#: dataset -> where its files are, which slices train and test, and its model card
RECIPES: dict[str, dict[str, Any]] = {
    "lucchi": {
        "folder": "lucchi_pp_fibsem",
        "train": ("train_image.tif", "train_labels.tif", slice(None)),
        "test": ("test_image.tif", "test_labels.tif", slice(None)),
        "name": "lucchi-pp",
        "label": "Lucchi++",
        "pixel_size_nm": (5.0, 5.0),
        "steps": 5000,
        "description": "Lucchi++ FIB-SEM, mouse hippocampus CA1 (EPFL; Casser et al. 2020 labels), "
        "train volume 42 x 768 x 1024 (every 4th slice), ~5 nm isotropic",
    },
    "vnc": {
        "folder": "vnc_drosophila_sstem",
        "train": ("image.tif", "labels.tif", slice(0, 14)),
        "test": ("image.tif", "labels.tif", slice(14, 20)),
        "name": "vnc",
        "label": "VNC",
        "pixel_size_nm": (4.6, 4.6),
        "steps": 4000,
        "description": "VNC ssTEM, Drosophila larva ventral nerve cord (Gerhard et al. 2013, CC BY-NC-SA 3.0), "
        "slices 0-13 of 20 x 1024 x 1024, 4.6 x 4.6 nm, 45-50 nm sections",
    },
}


def _single_robust(dataset: str, name: str, steps: int, note: str = "", **extra: Any) -> dict[str, Any]:
    """A single-dataset recipe with the EM domain randomisation (``extra``: e.g. ``augment=`` settings)."""
    r = RECIPES[dataset]
    return {"name": name, "sources": [dataset], "pixel_size_nm": r["pixel_size_nm"], "steps": steps,
            "description": r["description"] + "; EM domain randomisation" + note, **extra}


#: every probability of the EM domain randomisation halved (the ablation's best trade-off, docs/models.md)
HALF_PROBABILITIES: dict[str, float] = {"p_grey": 0.4, "p_blur": 0.15, "p_noise": 0.2, "p_stripes": 0.075}
_HALF_NOTE = " with every probability halved"

_GENERALIST = ("every labelled EM volume of the project at 5 nm: Lucchi++ FIB-SEM train volume (mouse CA1, "
               "42 x 768 x 1024, ~5 nm) and VNC ssTEM slices 0-13 (Drosophila, 4.6 nm, resampled); EM domain randomisation")


def _generalist(name: str, steps: int, note: str = "", **extra: Any) -> dict[str, Any]:
    """A recipe on both labelled volumes at 5 nm with the EM domain randomisation (``extra``: e.g. ``augment=``)."""
    return {"name": name, "sources": ["lucchi", "vnc"], "pixel_size_nm": (5.0, 5.0), "steps": steps,
            "description": _GENERALIST + note, **extra}


def _gpu_single(dataset: str, name: str, width: int, steps: int) -> dict[str, Any]:
    """A from-scratch GPU recipe on one dataset (halved probabilities, ``width``)."""
    return _single_robust(dataset, name, steps, f"{_HALF_NOTE}, width {width}, from scratch on a GPU",
                          augment=HALF_PROBABILITIES, width=width)


#: source models trained on several datasets, or with the domain-randomising recipe (docs/real-data.md); each
#: recipe's steps are those its model was trained with (the other settings: the commands in docs/real-data.md)
ROBUST: dict[str, dict[str, Any]] = {
    "generalist": _generalist("em-generalist", 1500),
    # the single-source models' best trade-off (halved probabilities, fixed steps, final weights) on both volumes
    "generalist-half": _generalist("em-generalist-half", 1500, _HALF_NOTE, augment=HALF_PROBABILITIES),
    "lucchi-robust": _single_robust("lucchi", "lucchi-pp-robust", 500),
    "lucchi-robust-fixed": _single_robust("lucchi", "lucchi-pp-robust-fixed", 500, ", fixed steps (final weights)"),
    "lucchi-robust-half": _single_robust("lucchi", "lucchi-pp-robust-half", 1500, _HALF_NOTE, augment=HALF_PROBABILITIES),
    # lucchi-pp-robust-half trained on (--init DIR/lucchi-pp-robust-half.safetensors): 5,000 robust steps in all
    "lucchi-robust-long": _single_robust("lucchi", "lucchi-pp-robust-long", 3500, _HALF_NOTE + ", continued from "
                                         "lucchi-pp-robust-half", augment=HALF_PROBABILITIES),
    # lucchi-pp-robust-long trained on without the EM augmentation (--init DIR/lucchi-pp-robust-long.safetensors):
    # does a clean finish win the in-domain IoU back? (docs/real-data.md: it costs the robustness)
    "lucchi-robust-anneal": _single_robust("lucchi", "lucchi-pp-robust-anneal", 600, _HALF_NOTE + " (lucchi-pp-robust-"
                                           "long), then flips and rotations only", augment="geometric"),
    "vnc-robust": _single_robust("vnc", "vnc-robust", 500),
    # chosen on the Lucchi++ -> VNC direction, then applied unchanged to the other one (a held-out check of the recipe)
    "vnc-robust-half": _single_robust("vnc", "vnc-robust-half", 1500, _HALF_NOTE, augment=HALF_PROBABILITIES),
    # from scratch on a GPU (scripts/gpu_training.sh, benchmarks/results/gpu_training.txt): the halved-probability
    # recipe, 8 x 256 px crops, lr 1e-3, final weights, width 16 (the bundled size) or 32 (4x the parameters);
    # steps: what fitted that run's time budget
    "lucchi-robust-gpu": _gpu_single("lucchi", "lucchi-pp-robust-gpu", 16, 4827),
    "lucchi-robust-wide": _gpu_single("lucchi", "lucchi-pp-robust-wide", 32, 6371),
    "vnc-robust-gpu": _gpu_single("vnc", "vnc-robust-gpu", 16, 2640),
    "vnc-robust-wide": _gpu_single("vnc", "vnc-robust-wide", 32, 5447),
    "generalist-gpu": _generalist("em-generalist-2", 5457, _HALF_NOTE + ", width 16, from scratch on a GPU",
                                  augment=HALF_PROBABILITIES, width=16),
}


#: weight-space blends (``napari_bnadapt.model.blend``, WiSE-FT): a first bundled specialist and its robust
#: fine-tuning (read from ``--out``), half and half (WiSE-FT's untuned default, fixed before any blend was
#: measured), the running statistics estimated again on the training slices; made in seconds, not trained
BLENDS: dict[str, dict[str, Any]] = {
    f"{d}-blend": {"name": f"{RECIPES[d]['name']}-blend", "sources": [d], "pixel_size_nm": RECIPES[d]["pixel_size_nm"],
                   "base": RECIPES[d]["name"], "tuned": ROBUST[f"{d}-robust-half"]["name"], "weight": 0.5,
                   "description": RECIPES[d]["description"]}
    for d in ("lucchi", "vnc")
}


def model_recipe(key: str) -> dict[str, Any]:
    """A model's training recipe: a single-dataset one of :data:`RECIPES` (flips and rotations only,
    as the first bundled models were trained), a robust one of :data:`ROBUST` (EM augmentation) or a blend of
    :data:`BLENDS` (no ``augment``: nothing is trained)."""
    if key in ROBUST:
        return {"augment": "em", **ROBUST[key]}
    if key in BLENDS:
        return dict(BLENDS[key])
    r = RECIPES[key]
    return {"augment": "geometric", "sources": [key], **{k: r[k] for k in ("name", "pixel_size_nm", "steps", "description")}}

def recipes_by_model_name() -> dict[str, dict[str, Any]]:
    """Every recipe (:func:`model_recipe`) under the name of the model it makes."""
    return {r["name"]: r for r in map(model_recipe, [*RECIPES, *ROBUST, *BLENDS])}


def available(data: Path = DATA) -> bool:
    """Whether every file of both datasets is there."""
    return all((data / r["folder"] / f).exists() for r in RECIPES.values() for f in r["train"][:2] + r["test"][:2])


def real_data_ready(threads: int) -> bool:
    """For a benchmark's start: False, after saying so on stderr, when the data is missing; else torch gets ``threads``."""
    import sys

    if not available():
        print(f"{DATA} is missing: nothing to evaluate", file=sys.stderr)
        return False
    import torch

    torch.set_num_threads(threads)
    return True


def load_split(dataset: str, split: str, data: Path = DATA) -> tuple[Any, np.ndarray]:
    """(images, labels) of one split: a lazy memmap view of the images, the labels in memory."""
    import tifffile

    r = RECIPES[dataset]
    image_file, label_file, z = r[split]
    folder = data / r["folder"]
    return tifffile.memmap(folder / image_file, mode="r")[z], tifffile.imread(folder / label_file)[z]


def split_description(dataset: str, split: str) -> str:
    """``folder/file slices a-b`` for a model card or a table."""
    import tifffile

    r = RECIPES[dataset]
    z = r[split][2]
    n = tifffile.memmap(DATA / r["folder"] / r[split][0], mode="r").shape[0]
    return f"{r['folder']}/{r[split][0]} slices {z.start or 0}-{(z.stop or n) - 1}"


def tiles(images: Any, labels: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Cut every slice into non-overlapping ``size`` x ``size`` tiles: (N, size, size) images and labels."""
    x = np.asarray(images)
    nz, h, w = x.shape
    ty, tx = h // size, w // size
    cut = (slice(None), slice(0, ty * size), slice(0, tx * size))

    def split(a: np.ndarray) -> np.ndarray:
        a = a[cut].reshape(nz, ty, size, tx, size).transpose(0, 1, 3, 2, 4)
        return np.ascontiguousarray(a.reshape(nz * ty * tx, size, size))

    return split(x), split(labels)


def test_iou(model: Any, dataset: str, data: Path = DATA) -> float:
    """Foreground IoU of ``model`` on the dataset's held-out test slices (threshold 0.5, whole slices)."""
    import napari_bnadapt as nb

    images, labels = load_split(dataset, "test", data)
    return nb.iou(nb.segment(model, images, pixel_size_nm=RECIPES[dataset]["pixel_size_nm"]) > 0, labels > 0)
