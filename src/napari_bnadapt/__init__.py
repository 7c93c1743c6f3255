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
    "list_models": "model.files",
    "load_model": "model.files",
    "save_model": "model.files",
    "model_card": "model.files",
    "export_bioimageio": "model.bioimageio_export",
    "adapt": "adabn.adaptation",
    "adapt_iter": "adabn.adaptation",
    "AdaptReport": "adabn.adaptation",
    "predict": "segmentation.predict",
    "predict_iter": "segmentation.predict",
    "segment": "segmentation.predict",
    "segment_iter": "segmentation.predict",
    "train": "model.training",
    "train_iter": "model.training",
    "blend_models": "model.blend",
    "iou": "metrics",
    "dice": "metrics",
    "run_to_end": "progress",
    "BNAdaptError": "errors",
    "ModelFileError": "errors",
    "CancelledError": "errors",
    "UNet": "model.unet",
    "add_result": "gui.layers",
    "predict_dask": "segmentation.dask_arrays",
    "segment_dask": "segmentation.dask_arrays",
    "reliability": "bound.assess",
    "reliability_iter": "bound.assess",
    "ReliabilityReport": "bound.report",
    "calibrate": "bound.calibration",
    "calibrate_iter": "bound.calibration",
    "compute_source_statistics": "stats.source_statistics",
    "read_stack": "io.read",
    "StackInfo": "io.stack_info",
    "crop_and_downsample": "io.crop",
    "AmbiguousDatasetError": "io.stack_info",
    "rescale": "io.pixel_size",
    "pixel_size_nm": "io.pixel_size",
    "predict_tta": "segmentation.tta",
    "predict_tta_iter": "segmentation.tta",
    "segment_tta": "segmentation.tta",
    "entropy_step": "adabn.entropy",
    "entropy_step_iter": "adabn.entropy",
    "self_train": "adabn.self_train",
    "self_train_iter": "adabn.self_train",
    "adaptation_needed": "adabn.need",
    "choose_zoom": "adabn.scale_search",
    "choose_zoom_iter": "adabn.scale_search",
    "ZoomChoice": "adabn.scale_search",
    "object_size_summary": "adabn.scale_search",
    "Augmentation": "model.augment",
    "spot_check": "bound.spot_check",
    "spot_check_iter": "bound.spot_check",
    "SpotCheck": "bound.spot_check",
}
# public submodules reachable as attributes (``nb.synthetic``, ``nb.sample_data``, ...) -> their module
_SUBMODULES: dict[str, str] = {
    "synthetic": "synthetic",
    "sample_data": "synthetic.samples",
    "errors": "errors",
    "progress": "progress",
    "metrics": "metrics",
    "workflow": "workflow",
    "settings": "settings",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
