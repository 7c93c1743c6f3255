"""The demo on bundled defaults: a brightness-shifted toy stack, the bundled model, IoU before/after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .model.files import DEMO_MODEL, load_model
from .progress import Progress, tqdm_callback
from .synthetic.samples import (
    BRIGHTNESS_PARAMETERS,
    SOURCE_PARAMETERS,
    toy_brightness_target,
)
from .workflow import WorkflowResult, run


def demo_data() -> tuple[Any, Any]:
    """The demo target (the brightness-shifted toy sample, 8 x 256 x 256) and its ground truth."""
    return toy_brightness_target()


def run_demo(callback: Callable[[Progress], None] | None = None, device: str = "auto") -> WorkflowResult:
    """Segment the demo target with the bundled model, without and with adaptation.

    Parameters
    ----------
    callback : callable, optional
        Receives :class:`~napari_bnadapt.progress.Progress` items.
    device : str, default "auto"
        "auto", "cpu", "cuda", "mps".

    Returns
    -------
    WorkflowResult
        With ``iou_source_only`` (the bundled model as it is) and ``iou`` (adapted).
    """
    images, truth = demo_data()
    model = load_model(DEMO_MODEL, device=device)
    return run(model, images, adapt=True, truth=truth, device=device, callback=callback)


def run_text_demo(quiet: bool = False) -> int:
    """Print the demo's outcome (the README's main command without a GUI)."""
    src, target = SOURCE_PARAMETERS, BRIGHTNESS_PARAMETERS
    print(
        f"Demo: model {DEMO_MODEL!r} (trained on toy images with background {src['mu0']}, mitochondria "
        f"{src['mu1']}) applied to a target whose grey values are {target['mu0'] - src['mu0']} brighter "
        f"({target['mu0']} / {target['mu1']})."
    )
    res = run_demo(tqdm_callback(disable=quiet))
    print(res.adapt_report)
    if res.reliability is not None:
        print(res.reliability)
    print(f"IoU without adaptation: {res.iou_source_only:.3f}")
    print(f"IoU with BatchNorm adaptation: {res.iou:.3f}")
    return 0
