"""Reproducible toy sample data for the napari "File > Open Sample" menu.

Plain functions returning ``(image, labels)`` numpy arrays (uint8, the
labels 0 = background, 1 = mitochondrion); no napari import here. The
plugin enumerates :data:`SAMPLES`.

The stacks are 8 independent 256 x 256 toy images (or one coherent 3D
volume) with objects of the same size as in the 64 x 64 training images of
:func:`napari_bnadapt.synthetic.generator.generate` (Perlin lattice cell 32 px), so a
model trained on the default toy source applies to them directly.

=========================  ==========================  ======================
sample                     (mu0, sigma0, mu1, sigma1)  what changes vs source
=========================  ==========================  ======================
``toy_source``             (96, 18, 138, 18)           nothing (the source)
``toy_brightness_target``  (136, 18, 178, 18)          both means +40
``toy_contrast_target``    (110, 28, 140, 28)          less contrast, more noise
``toy_stack_3d``           (96, 18, 138, 18)           3D-coherent stack
=========================  ==========================  ======================
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .generator import generate, generate_volume

__all__ = [
    "SAMPLES",
    "SOURCE_PARAMETERS",
    "toy_brightness_target",
    "toy_contrast_target",
    "toy_source",
    "toy_stack_3d",
]

#: The source domain of the thesis (background mu0/sigma0, objects mu1/sigma1).
SOURCE_PARAMETERS: dict[str, int] = {"mu0": 96, "sigma0": 18, "mu1": 138, "sigma1": 18}
#: Brightness shift: both means +40 (AdaBN corrects this fully in the thesis).
BRIGHTNESS_PARAMETERS: dict[str, int] = {"mu0": 136, "sigma0": 18, "mu1": 178, "sigma1": 18}
#: Contrast/noise shift: class distance 42 -> 30 grey values, sigma 18 -> 28,
#: background +14. The source threshold no longer fits and the classes overlap
#: more, so a source model degrades; renormalising the features (AdaBN) moves
#: the decision back between the classes and is expected to recover part of it
#: (the pixel-level separability d/sigma itself drops from 2.3 to 1.1).
CONTRAST_PARAMETERS: dict[str, int] = {"mu0": 110, "sigma0": 28, "mu1": 140, "sigma1": 28}

# in-plane object scale of the 256 x 256 samples: the training images'
_CELL_2D = 32
_STACK_2D = (8, 256, 256)
_STACK_3D = (32, 256, 256)
_SEED_SOURCE = 20240101
_SEED_BRIGHTNESS = 20240102
_SEED_CONTRAST = 20240103
_SEED_3D = 20240104


def _stack(params: dict[str, int], seed: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, masks = generate(shape[0], shape[1:], seed=seed, cell_size=_CELL_2D, **params)
    return images, masks


def toy_source(shape: tuple[int, int, int] = _STACK_2D, seed: int = _SEED_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """Toy EM stack in the *source* domain (the domain the bundled model was trained on).

    Parameters
    ----------
    shape : (int, int, int), default (8, 256, 256)
        (number of images, height, width) in pixels.
    seed : int, default 20240101
        Fixed seed: the sample is the same every time.

    Returns
    -------
    image : ndarray of uint8, shape ``shape``
        Independent 2D toy images, background ~ N(96, 18), objects ~ N(138, 18).
    labels : ndarray of uint8, shape ``shape``
        Ground-truth masks (0 background, 1 mitochondrion).
    """
    return _stack(SOURCE_PARAMETERS, seed, shape)


def toy_brightness_target(shape: tuple[int, int, int] = _STACK_2D,
                          seed: int = _SEED_BRIGHTNESS) -> tuple[np.ndarray, np.ndarray]:
    """Toy stack with a *brightness* shift: both class means +40 grey values.

    Background ~ N(136, 18), objects ~ N(178, 18). A source model sees
    everything as "bright" (over-segments); AdaBN corrects this shift almost
    fully (thesis experiment #2).

    Parameters
    ----------
    shape : (int, int, int), default (8, 256, 256)
        (number of images, height, width) in pixels.
    seed : int, default 20240102
        Fixed seed.

    Returns
    -------
    image, labels : ndarray of uint8, shape ``shape``
    """
    return _stack(BRIGHTNESS_PARAMETERS, seed, shape)


def toy_contrast_target(shape: tuple[int, int, int] = _STACK_2D,
                        seed: int = _SEED_CONTRAST) -> tuple[np.ndarray, np.ndarray]:
    """Toy stack with a *contrast and noise* shift.

    Background ~ N(110, 28), objects ~ N(140, 28): the class distance drops
    from 42 to 30 grey values and the noise rises from 18 to 28, so the
    task is genuinely harder; a source model degrades and AdaBN is expected
    to recover only part of it (a realistic, not a best, case).

    Parameters
    ----------
    shape : (int, int, int), default (8, 256, 256)
        (number of images, height, width) in pixels.
    seed : int, default 20240103
        Fixed seed.

    Returns
    -------
    image, labels : ndarray of uint8, shape ``shape``
    """
    return _stack(CONTRAST_PARAMETERS, seed, shape)


def toy_stack_3d(shape: tuple[int, int, int] = _STACK_3D, seed: int = _SEED_3D) -> tuple[np.ndarray, np.ndarray]:
    """A 3D-coherent toy volume in the source domain (objects continue across slices).

    Made by :func:`napari_bnadapt.synthetic.generator.generate_volume` with the source
    parameters (96, 18, 138, 18) and a lattice cell of (16, 32, 32) voxels.

    Parameters
    ----------
    shape : (int, int, int), default (32, 256, 256)
        (Z, Y, X) in voxels.
    seed : int, default 20240104
        Fixed seed.

    Returns
    -------
    image, labels : ndarray of uint8, shape ``shape``
    """
    return generate_volume(shape, seed=seed, cell_size=(16, _CELL_2D, _CELL_2D), **SOURCE_PARAMETERS)


#: name -> (function, display name for the menu, parameters used)
SAMPLES: dict[str, tuple[Callable[..., tuple[np.ndarray, np.ndarray]], str, dict[str, Any]]] = {
    "toy_source": (
        toy_source,
        "Toy mitochondria: source (96/18, 138/18)",
        {**SOURCE_PARAMETERS, "shape": _STACK_2D, "seed": _SEED_SOURCE},
    ),
    "toy_brightness_target": (
        toy_brightness_target,
        "Toy mitochondria: brightness shift (+40)",
        {**BRIGHTNESS_PARAMETERS, "shape": _STACK_2D, "seed": _SEED_BRIGHTNESS},
    ),
    "toy_contrast_target": (
        toy_contrast_target,
        "Toy mitochondria: contrast/noise shift",
        {**CONTRAST_PARAMETERS, "shape": _STACK_2D, "seed": _SEED_CONTRAST},
    ),
    "toy_stack_3d": (
        toy_stack_3d,
        "Toy mitochondria: 3D stack (source)",
        {**SOURCE_PARAMETERS, "shape": _STACK_3D, "seed": _SEED_3D},
    ),
}
