"""napari-bnadapt: adapt a source-trained U-Net to a new EM volume by BatchNorm adaptation.

Importing this package is cheap: torch and the heavy modules are imported only
when one of the public functions below is first used, so napari starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "list_models": "modelfile",
    "load_model": "modelfile",
    "save_model": "modelfile",
    "model_card": "modelfile",
    "adapt": "adaptation",
    "adapt_iter": "adaptation",
    "AdaptReport": "adaptation",
    "predict": "inference",
    "predict_iter": "inference",
    "segment": "inference",
    "segment_iter": "inference",
    "train": "training",
    "train_iter": "training",
    "iou": "metrics",
    "dice": "metrics",
    "run_to_end": "progress",
    "BNAdaptError": "errors",
    "ModelFileError": "errors",
    "CancelledError": "errors",
    "UNet": "unet",
    "add_result": "widgets.layers",
    "predict_dask": "lazy",
    "segment_dask": "lazy",
    "reliability": "reliability_bound",
    "reliability_iter": "reliability_bound",
    "ReliabilityReport": "reliability_bound",
    "calibrate": "calibration",
    "calibrate_iter": "calibration",
    "compute_source_statistics": "source_statistics",
    "read_stack": "stack_io",
    "StackInfo": "stack_io",
    "crop_and_downsample": "stack_io",
    "AmbiguousDatasetError": "stack_io",
    "rescale": "pixel_size",
    "pixel_size_nm": "pixel_size",
}
_SUBMODULES = {"adaptation", "calibration", "source_statistics", "synthetic", "sample_data", "wasserstein", "errors", "progress", "metrics", "images", "modelfile"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
