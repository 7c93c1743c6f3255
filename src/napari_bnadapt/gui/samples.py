"""Sample data for napari's File > Open Sample menu: toy images with their ground truth.

Returns napari layer-data tuples; napari itself is not imported.
"""

from __future__ import annotations

from typing import Any

from ..model.files import DEMO_MODEL
from ..synthetic.samples import SAMPLES

LayerData = tuple[Any, dict[str, Any], str]
#: Layer-metadata key naming the model an image was made for (the widget selects it; see ``suggest_model``).
MODEL_HINT_KEY = "napari_bnadapt_model"


def _layers(key: str, short: str) -> list[LayerData]:
    func, _title, _params = SAMPLES[key]
    image, labels = func()
    return [
        (image, {"name": short, "contrast_limits": (0, 255), "colormap": "gray",
                 "metadata": {MODEL_HINT_KEY: DEMO_MODEL}}, "image"),
        (labels, {"name": f"{short} truth", "opacity": 0.4}, "labels"),
    ]


def toy_source() -> list[LayerData]:
    """Toy source images (what the bundled ``toy-perlin`` model was trained on) and truth."""
    return _layers("toy_source", "toy source")


def toy_brightness_target() -> list[LayerData]:
    """Toy target, both grey-value means 40 higher than the source, and truth."""
    return _layers("toy_brightness_target", "toy target (brighter)")


def toy_contrast_target() -> list[LayerData]:
    """Toy target with less contrast and more noise than the source, and truth."""
    return _layers("toy_contrast_target", "toy target (low contrast)")


def toy_stack_3d() -> list[LayerData]:
    """A coherent 3D toy stack (source parameters) and truth."""
    return _layers("toy_stack_3d", "toy 3D stack")
