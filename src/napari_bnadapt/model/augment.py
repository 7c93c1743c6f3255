"""Domain-randomising augmentation for training source U-Nets on electron microscopy.

AdaBN re-centres grey values per channel after training; it cannot give a network
invariances it never learned. A network trained on one volume with flips and
rotations only fails on another lab's contrast curve, noise, blur or scale. So
training crops are randomised in the ways EM volumes from different microscopes,
protocols and labs differ (docs/models.md, "Robust source training"):

* **scale**: the crop is resampled by a factor drawn log-uniformly within
  ``scale_jitter`` around the volume's pixel size over the model's;
* **grey-value curve**: gamma, gain (contrast about the crop's mean) and offset;
* **blur**: Gaussian, sigma in pixels (defocus, thicker sections, lower resolution);
* **noise**: additive Gaussian, in units of the 0..1 grey range (dwell time, dose);
* **stripes**: a smooth random offset per column or row (FIB-SEM curtaining,
  ssTEM section or scan-line banding);
* **inversion** (off by default: every labelled volume we have shows mitochondria darker).

Each step is applied with its own probability, so some crops stay clean and the
in-domain quality is kept. Everything is drawn from the caller's seeded
``numpy.random.Generator``: the same seed gives the same crops. The settings are
stored in the model card (``meta["training"]["recipe"]["augmentation"]``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import BNAdaptError


@dataclass(frozen=True)
class Augmentation:
    """What a training crop may go through, and how strongly.

    Attributes
    ----------
    rotate_flip : bool
        Random 90-degree rotations and flips (the eight symmetries of a square).
    scale_jitter : float
        Zoom factors are drawn log-uniformly in ``[1 / scale_jitter, scale_jitter]``
        around the volume-to-model pixel-size ratio (1: no jitter).
    gamma : (float, float)
        Range of the gamma exponent (drawn log-uniformly), applied with ``p_grey``.
    gain : (float, float)
        Range of the contrast factor about the crop's mean, applied with ``p_grey``.
    offset : (float, float)
        Range of the brightness offset in units of the 0..1 grey range, applied with ``p_grey``.
    p_grey : float
        Probability of the grey-value curve (gamma, gain, offset together).
    blur_sigma : (float, float)
        Range of the Gaussian blur sigma in pixels, applied with ``p_blur``.
    p_blur : float
    noise_std : (float, float)
        Range of the additive Gaussian noise's standard deviation (0..1 grey units), applied with ``p_noise``.
    p_noise : float
    stripe_amplitude : float
        Largest stripe offset (0..1 grey units), applied with ``p_stripes``.
    p_stripes : float
    p_invert : float
        Probability of inverting the contrast.
    """

    rotate_flip: bool = True
    scale_jitter: float = 1.25
    gamma: tuple[float, float] = (0.6, 1.7)
    gain: tuple[float, float] = (0.6, 1.4)
    offset: tuple[float, float] = (-0.15, 0.15)
    p_grey: float = 0.8
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    p_blur: float = 0.3
    noise_std: tuple[float, float] = (0.01, 0.08)
    p_noise: float = 0.4
    stripe_amplitude: float = 0.06
    p_stripes: float = 0.15
    p_invert: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise BNAdaptError(f"augmentation {f.name} is a probability in [0, 1], not {v}")
            if isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1]):
                raise BNAdaptError(f"augmentation {f.name} must be a (low, high) range, not {v}")
        if self.scale_jitter < 1.0:
            raise BNAdaptError(f"scale_jitter must be at least 1, not {self.scale_jitter}")
        if self.gamma[0] <= 0 or self.gain[0] <= 0:
            raise BNAdaptError("gamma and gain ranges must be positive")

    @classmethod
    def geometric(cls) -> Augmentation:
        """Flips and rotations only (the recipe of the first bundled models)."""
        return cls(scale_jitter=1.0, p_grey=0.0, p_blur=0.0, p_noise=0.0, p_stripes=0.0)

    @classmethod
    def off(cls) -> Augmentation:
        """No augmentation at all."""
        return cls(rotate_flip=False, scale_jitter=1.0, p_grey=0.0, p_blur=0.0, p_noise=0.0, p_stripes=0.0)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready settings for the model card."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Augmentation:
        """Settings read back from a model card (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items() if k in known})

    def draw_zoom(self, rng: np.random.Generator) -> float:
        """A jitter factor around 1 (log-uniform in [1/scale_jitter, scale_jitter])."""
        if self.scale_jitter == 1.0:
            return 1.0
        j = math.log(self.scale_jitter)
        return float(math.exp(rng.uniform(-j, j)))

    def grey(self, x01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply the grey-value steps to one crop in 0..1 units (float32, not clipped afterwards)."""
        x = x01.astype(np.float32, copy=True)
        if self.p_invert and rng.random() < self.p_invert:
            x = 1.0 - x
        if self.p_grey and rng.random() < self.p_grey:
            g = math.exp(rng.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))
            x = np.clip(x, 0.0, 1.0) ** np.float32(g)
            m = np.float32(x.mean())
            x = (x - m) * np.float32(rng.uniform(*self.gain)) + m + np.float32(rng.uniform(*self.offset))
        if self.p_blur and rng.random() < self.p_blur:
            from scipy.ndimage import gaussian_filter

            x = gaussian_filter(x, float(rng.uniform(*self.blur_sigma)))
        if self.p_stripes and rng.random() < self.p_stripes:
            x = x + _stripes(x.shape, self.stripe_amplitude, rng)
        if self.p_noise and rng.random() < self.p_noise:
            x = x + rng.normal(0.0, rng.uniform(*self.noise_std), x.shape).astype(np.float32)
        return x

    def geometry(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random flip/rotation of an (image, label) crop pair (90-degree turns only for square crops)."""
        if not self.rotate_flip:
            return image, label
        square = image.shape[0] == image.shape[1]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        image, label = np.rot90(image, k), np.rot90(label, k)
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label


def _stripes(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random offset per column (or per row): curtaining and banding artefacts."""
    axis = int(rng.integers(2))
    n = shape[1 - axis]
    walk = np.cumsum(rng.normal(0.0, 1.0, n))
    walk += rng.normal(0.0, 2.0, n)  # sharp single-column stripes on top of the slow drift
    walk -= walk.mean()
    walk *= amplitude / max(float(np.abs(walk).max()), 1e-6)
    profile = walk.astype(np.float32)
    return profile[None, :] if axis == 0 else profile[:, None]


#: names accepted for ``train(augment=...)``
PRESETS = {"em": Augmentation, "geometric": Augmentation.geometric, "off": Augmentation.off}


def resolve_augmentation(augment: bool | str | Augmentation | dict[str, Any] | None) -> Augmentation:
    """``True`` or ``"em"`` -> the EM defaults, ``"geometric"`` -> flips and rotations,
    ``False``/None/``"off"`` -> none, a dict -> its settings, an instance as is."""
    if isinstance(augment, Augmentation):
        return augment
    if isinstance(augment, dict):
        return Augmentation.from_meta(augment)
    if augment is True:
        return Augmentation()
    if augment is False or augment is None:
        return Augmentation.off()
    if isinstance(augment, str) and augment in PRESETS:
        return PRESETS[augment]()
    raise BNAdaptError(f"augment must be True, False, one of {sorted(PRESETS)}, a dict or an Augmentation, "
                       f"not {augment!r}")
