"""The synthetic toy-mitochondria generator and the sample data built on it.

- ``generator``: ``generate`` (2D images) and ``generate_volume`` (3D stacks), ``draw_parameters``.
- ``perlin``: 2D/3D Perlin noise, thresholded into mitochondria-like masks.
- ``shapes``: circles and triangles (with distractors) for the shape experiments.
- ``checks``: argument checks, seeds, the clipping warning and the generator's constants.
- ``samples``: the fixed toy samples of napari's File > Open Sample and of the demo.
"""

from __future__ import annotations

from .checks import (
    CLIP_WARN_FRACTION,
    PERLIN_THRESHOLD,
    SAFE_MU_RANGE,
    SAFE_SIGMA_MAX,
    SHAPES,
    STYLES,
    ClippingWarning,
    GenerationStats,
)
from .generator import draw_parameters, generate, generate_volume
from .perlin import perlin_2d, perlin_3d

__all__ = [
    "CLIP_WARN_FRACTION",
    "PERLIN_THRESHOLD",
    "SAFE_MU_RANGE",
    "SAFE_SIGMA_MAX",
    "SHAPES",
    "STYLES",
    "ClippingWarning",
    "GenerationStats",
    "draw_parameters",
    "generate",
    "generate_volume",
    "perlin_2d",
    "perlin_3d",
]
