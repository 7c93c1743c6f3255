"""Toy datasets and U-Net training scales of the experiments, and deterministic seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..model.layout import LATENT_SPACES
from ..synthetic.checks import ClippingWarning
from ..synthetic.generator import draw_parameters, generate

#: Latent spaces whose Gaussian distances are written to the CSV (ls0..ls4: encoder
#: stages; dec: the decoder's last BatchNorm).
LAYERS: tuple[str, ...] = LATENT_SPACES


# --------------------------------------------------------------------------- seeds
def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from any printable parts (stable across runs, platforms and Python versions)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# ------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Dataset:
    """One toy domain: the generator's parameters (see :func:`napari_bnadapt.synthetic.generator.generate`).

    Attributes
    ----------
    id : str
        Short unique name used in the CSV (``source_id`` / ``target_id``).
    label : str
        Axis label in the figures.
    mu0, sigma0, mu1, sigma1 : float
        Background and object grey-value means and standard deviations.
    shapes, style : str
        Generator options (``"perlin"``/``"circles"``/``"triangles"``; ``"noise"``/``"gradient"``/``"edges"``).
    distractors : bool
        Circles/triangles only: objects of the other kind drawn but not labelled.
    group : str
        Group name (experiment #3 draws lines between groups).
    """

    id: str
    label: str
    mu0: float
    sigma0: float
    mu1: float
    sigma1: float
    shapes: str = "perlin"
    style: str = "noise"
    distractors: bool = False
    group: str = ""
    random: bool = False

    @property
    def key(self) -> str:
        """The parameters as text: the seed of this dataset's images depends on this only."""
        if self.random:
            return f"random,{self.shapes},{self.style},{int(self.distractors)}"
        return (f"{self.mu0:g},{self.sigma0:g},{self.mu1:g},{self.sigma1:g},"
                f"{self.shapes},{self.style},{int(self.distractors)}")

    def params(self, prefix: str) -> dict[str, Any]:
        """The parameters as CSV columns (``prefix`` = "src" or "tgt"); NaN for per-image random ones."""
        nan = math.nan
        return {f"{prefix}_mu0": nan if self.random else self.mu0,
                f"{prefix}_sigma0": nan if self.random else self.sigma0,
                f"{prefix}_mu1": nan if self.random else self.mu1,
                f"{prefix}_sigma1": nan if self.random else self.sigma1,
                f"{prefix}_shapes": self.shapes + ("+distractors" if self.distractors else ""),
                f"{prefix}_style": "random" if self.random else self.style}

    def generate(self, n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``n`` images of ``size`` x ``size`` and masks, and the clipped fraction (no warning)."""
        if self.random:  # every image its own random parameters (thesis #3 "random")
            p = draw_parameters(seed=derive_seed("random-params", seed), n=n)
            mu0, sigma0, mu1, sigma1 = p["mu0"], p["sigma0"], p["mu1"], p["sigma1"]
        else:
            mu0, sigma0, mu1, sigma1 = self.mu0, self.sigma0, self.mu1, self.sigma1
        with warnings.catch_warnings():
            # experiments #1/#2 use the thesis' sigma = 50, which clips on purpose;
            # the clipped fraction goes to the CSV instead
            warnings.simplefilter("ignore", ClippingWarning)
            x, y, stats = generate(n, (size, size), mu0, sigma0, mu1, sigma1, seed=seed,
                                   shapes=self.shapes, style=self.style, distractors=self.distractors,
                                   return_stats=True)
        return x, y, float(stats.clipped_fraction)


# -------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class UNetScale:
    """Sizes of a U-Net experiment (the defaults are the reduced CPU scale).

    Attributes
    ----------
    image_size : int
        Side of the square toy images (pixels, multiple of 16).
    n_train : int
        Labelled source images per source model (10 % of them for validation).
    n_test : int
        Unlabelled target images per target (also the source images on which the
        source-side latent statistics are measured).
    width : int
        U-Net base width (the thesis: 64).
    steps : int
        Optimiser steps when ``epochs`` is None.
    epochs : float or None
        If set, ``steps = ceil(epochs * training images / batch_size)``.
    batch_size, lr, eval_every, patience, val_fraction :
        Training recipe (:func:`napari_bnadapt.train`).
    evals_per_epoch : int or None
        If set, ``eval_every`` is one epoch divided by it (the thesis validated 5 times per epoch).
    adapt_batch_size : int
        Images per forward pass during BatchNorm adaptation.
    augment : bool
        Random 90-degree rotations and flips during training (the thesis had none).
    optimizer : str
        "adam" (cosine decay) or "rmsprop" (the thesis' recipe; see :func:`napari_bnadapt.train`).
    """

    image_size: int = 64
    n_train: int = 256
    n_test: int = 32
    width: int = 8
    steps: int = 300
    epochs: float | None = None
    batch_size: int = 8
    lr: float = 3e-3
    eval_every: int = 50
    evals_per_epoch: int | None = None
    patience: int = 20
    val_fraction: float = 0.1
    adapt_batch_size: int = 16
    augment: bool = True
    optimizer: str = "adam"

    def train_steps(self) -> int:
        if self.epochs is None:
            return int(self.steps)
        n_tr = self.n_train - int(round(self.n_train * self.val_fraction))
        return int(math.ceil(self.epochs * n_tr / self.batch_size))

    def train_eval_every(self) -> int:
        if self.evals_per_epoch is None:
            return int(self.eval_every)
        n_tr = self.n_train - int(round(self.n_train * self.val_fraction))
        return max(1, int(n_tr / self.batch_size / self.evals_per_epoch))

    def training_key(self) -> dict[str, Any]:
        """What determines a trained source model (besides its dataset and the seed)."""
        keep = ("image_size", "n_train", "width", "batch_size", "lr", "patience", "val_fraction")
        d = {k: getattr(self, k) for k in keep}
        d.update(steps=self.train_steps(), eval_every=self.train_eval_every())
        if not self.augment:  # listed only when off: the default needs no entry
            d["augment"] = False
        if self.optimizer != "adam":
            d["optimizer"] = self.optimizer
        return d


def apply_overrides(base: Any, overrides: dict[str, Any] | None) -> Any:
    """``dataclasses.replace`` with a clear error for unknown names and string values converted."""
    if not overrides:
        return base
    fields = {f.name: f for f in dataclasses.fields(base)}
    clean = {}
    for k, v in overrides.items():
        if k not in fields:
            raise BNAdaptError(f"unknown scale setting {k!r}; choose among {', '.join(fields)}")
        if isinstance(v, str):
            cur = getattr(base, k)
            try:
                if v.lower() in ("none", "null"):
                    v = None
                elif isinstance(cur, bool):
                    v = v.lower() in ("1", "true", "yes")
                elif isinstance(cur, int):
                    v = int(v)
                else:
                    v = float(v)
            except ValueError:
                raise BNAdaptError(f"scale setting {k} needs a number, not {v!r}") from None
        clean[k] = v
    return dataclasses.replace(base, **clean)
