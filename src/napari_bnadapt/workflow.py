"""The one adapt -> segment -> assess -> report workflow that the CLI, the widget and the demo run.

``run_iter(model, images, ...)`` adapts a copy of ``model`` to ``images`` (AdaBN),
runs the network ONCE over the stack for the probabilities, thresholds them
into labels, optionally assesses the reliability of the adaptation and scores
against a ground truth, and ends with a :class:`WorkflowResult`. The source
model and the images are never changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .adabn.adaptation import AdaptReport, adapt_iter
from .bound.assess import reliability_iter
from .bound.report import ReliabilityReport
from .errors import BNAdaptError
from .io.stack_view import layer_data
from .metrics import iou
from .model.device import get_device
from .progress import Progress, Result, forward, run_to_end
from .segmentation.labels import to_labels
from .segmentation.predict import predict_iter
from .stats.source_statistics import read_source_statistics

if TYPE_CHECKING:
    import torch


@dataclass
class WorkflowResult:
    """What one run of :func:`run` produced.

    Attributes
    ----------
    labels : numpy.ndarray
        uint8 semantic labels (1 = mitochondrion), or uint32 instance labels.
    probabilities : numpy.ndarray or None
        float32 foreground probabilities, when ``keep_probabilities`` was set.
    model : torch.nn.Module
        The model that segmented: the adapted copy, or the source model itself.
    source_model : torch.nn.Module
        The model passed in (unchanged).
    adapted : bool
        Whether the model was adapted.
    adapt_report : AdaptReport or None
        The adaptation's report (None without adaptation).
    reliability : ReliabilityReport or None
        The label-free reliability report (None when not assessed).
    reliability_note : str or None
        Why the reliability was not assessed, when it was asked for but could not be.
    device : str
        The device that segmented (``"cpu"``, ``"cuda:0"``, ...).
    iou_source_only : float or None
        IoU of the source model without adaptation against ``truth``
        (only computed when adapting with a ground truth).
    iou : float or None
        IoU of ``labels`` against ``truth``.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    model: Any
    source_model: Any
    adapted: bool
    adapt_report: AdaptReport | None = None
    reliability: ReliabilityReport | None = None
    reliability_note: str | None = None
    device: str = "cpu"
    iou_source_only: float | None = None
    iou: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_name(self) -> str | None:
        """The source model's name from its card (None for a model without one)."""
        return (getattr(self.source_model, "meta", None) or {}).get("name")

    def summary(self) -> list[str]:
        """The run's outcome as short sentences (what the CLI prints and the widget shows)."""
        out: list[str] = []
        if self.adapt_report is not None:
            rep = self.adapt_report
            out.append(f"adapted on {rep.device} in {rep.seconds:.1f} s from {rep.n_patches} patches"
                       + ("" if rep.converged else " (statistics not converged: use more patches)"))
        else:
            out.append(f"segmented on {self.device}")
        if self.reliability is not None:
            rel = self.reliability
            bound = (f", predicted IoU >= {rel.iou_lower_bound:.2f}"
                     if rel.iou_lower_bound is not None and not rel.gate_failures else "")
            out.append(f"reliability: {rel.verdict}{bound}")
        elif self.reliability_note:
            out.append(self.reliability_note)
        if self.iou is not None:
            if self.iou_source_only is not None:
                out.append(f"IoU without adaptation {self.iou_source_only:.3f}, with adaptation {self.iou:.3f}")
            else:
                out.append(f"IoU {self.iou:.3f}")
        return out + self.notes


def run_iter(
    model: torch.nn.Module,
    images: Any,
    *,
    adapt: bool = True,
    assess: bool = True,
    truth: Any = None,
    threshold: float = 0.5,
    instances: bool = False,
    keep_probabilities: bool = False,
    device: str = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    adapt_options: dict[str, Any] | None = None,
) -> Iterator[Progress | Result[WorkflowResult]]:
    """Adapt, segment, assess and score one stack; yields Progress, finally a Result.

    Parameters
    ----------
    model : torch.nn.Module
        The source model (see :func:`napari_bnadapt.load_model`); never changed.
    images : array-like or napari Image layer
        A (Y, X) image or (Z, Y, X) stack; read, never changed.
    adapt : bool, default True
        Adapt a copy of the model by AdaBN first; False segments with ``model`` as it is.
    assess : bool, default True
        After adapting, measure the label-free reliability when the model file
        holds source statistics (otherwise ``reliability_note`` says why not).
    truth : array-like, optional
        Ground-truth labels of ``images`` (same shape) to report the IoU against;
        with ``adapt`` the source model's IoU is measured too (one more pass).
    threshold : float, default 0.5
        Probability above which a pixel is foreground.
    instances : bool, default False
        One label per connected object (uint32) instead of semantic labels.
    keep_probabilities : bool, default False
        Keep the probability map in the result (float32, the size of the stack).
    device : str, default "auto"
        "auto", "cpu", "cuda", "mps".
    intensity_range : (float, float), "auto" or None
        How grey values map to the model's range (see :func:`napari_bnadapt.predict`).
    tile_size, overlap, batch_size
        Tiling of the segmentation, as in :func:`napari_bnadapt.predict`.
    adapt_options : dict, optional
        Further keyword arguments of :func:`napari_bnadapt.adapt` (``mode``,
        ``alpha``, ``prior``, ``n_patches``, ``patch_size``, ``batch_size``, ``seed``).

    Yields
    ------
    Progress, then Result[WorkflowResult]
    """
    images = layer_data(images)
    if truth is not None:
        truth = layer_data(truth, kind="labels")
        if tuple(np.shape(truth)) != tuple(np.shape(images)):
            raise BNAdaptError(f"the ground truth {tuple(np.shape(truth))} does not match the image "
                               f"{tuple(np.shape(images))}")
    adapt_options = dict(adapt_options or {})
    tiling = dict(tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device,
                  intensity_range=intensity_range)
    result = WorkflowResult(labels=np.zeros(0, np.uint8), probabilities=None, model=model, source_model=model,
                            adapted=adapt, device=str(get_device(device)))
    if truth is not None and adapt:
        before = yield from forward(predict_iter(model, images, **tiling))
        result.iou_source_only = iou(before > threshold, truth)
        del before
    used = model
    if adapt:
        used, result.adapt_report = yield from forward(
            adapt_iter(model, images, device=device, intensity_range=intensity_range, **adapt_options))
        if assess:
            if not hasattr(model, "latent_modules"):  # a model built elsewhere
                result.reliability_note = ("reliability not assessed: it needs this project's U-Net (named latent "
                                           "spaces) and source statistics in the model file")
            elif read_source_statistics(model) is None:
                result.reliability_note = "reliability not assessed: this model file has no source statistics"
            else:
                result.reliability = yield from forward(reliability_iter(
                    model, used, images, device=device, intensity_range=intensity_range,
                    seed=adapt_options.get("seed", 0)))
    prob = yield from forward(predict_iter(used, images, **tiling))
    result.labels = yield from forward(to_labels(prob, threshold, instances))
    result.probabilities = prob if keep_probabilities else None
    result.model = used
    if truth is not None:
        result.iou = iou(result.labels > 0, truth)
    yield Result(result)


def run(
    model: torch.nn.Module,
    images: Any,
    *,
    adapt: bool = True,
    assess: bool = True,
    truth: Any = None,
    threshold: float = 0.5,
    instances: bool = False,
    keep_probabilities: bool = False,
    device: str = "auto",
    intensity_range: tuple[float, float] | str | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    adapt_options: dict[str, Any] | None = None,
    callback: Any = None,
) -> WorkflowResult:
    """Blocking form of :func:`run_iter` (same parameters; ``callback`` receives each Progress)."""
    return run_to_end(run_iter(
        model, images, adapt=adapt, assess=assess, truth=truth, threshold=threshold, instances=instances,
        keep_probabilities=keep_probabilities, device=device, intensity_range=intensity_range,
        tile_size=tile_size, overlap=overlap, batch_size=batch_size, adapt_options=adapt_options,
    ), callback)
