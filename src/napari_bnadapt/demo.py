"""The demo on bundled defaults: a brightness-shifted toy stack, the bundled model, IoU before/after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .adabn.adaptation import adapt_iter
from .metrics import iou
from .model.files import load_model
from .progress import run_to_end, tqdm_callback
from .synthetic.samples import BRIGHTNESS_PARAMETERS as target
from .synthetic.samples import toy_brightness_target

DEMO_MODEL = "toy-perlin"


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo`."""

    iou_source_only: float
    iou_adapted: float
    report: Any
    images: Any
    truth: Any
    labels_source_only: Any
    labels_adapted: Any


def demo_data() -> tuple[Any, Any]:
    """The demo target (the brightness-shifted toy sample, 8 x 256 x 256) and its ground truth."""

    return toy_brightness_target()


def run_demo(callback: Any = None, device: str = "auto") -> DemoResult:
    """Segment the demo target with the bundled model, without and with adaptation.

    Parameters
    ----------
    callback : callable, optional
        Receives :class:`~napari_bnadapt.progress.Progress` items.
    device : str, default "auto"

    Returns
    -------
    DemoResult
    """
    from .segmentation.predict import segment_iter

    images, truth = demo_data()
    model = load_model(DEMO_MODEL, device=device)
    before = run_to_end(segment_iter(model, images, device=device), callback)
    adapted, report = run_to_end(adapt_iter(model, images, device=device), callback)
    after = run_to_end(segment_iter(adapted, images, device=device), callback)
    return DemoResult(iou(before, truth), iou(after, truth), report, images, truth, before, after)


def run_text_demo(quiet: bool = False) -> int:
    """Print the demo's outcome (the README's main command without a GUI)."""

    print(
        f"Demo: model {DEMO_MODEL!r} (trained on toy images with background 96, mitochondria 138) "
        f"applied to a target whose grey values are 40 brighter ({target['mu0']} / {target['mu1']})."
    )
    res = run_demo(tqdm_callback(disable=quiet))
    print(res.report)
    print(f"IoU without adaptation: {res.iou_source_only:.3f}")
    print(f"IoU with BatchNorm adaptation: {res.iou_adapted:.3f}")
    return 0
