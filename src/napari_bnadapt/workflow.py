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
from .adabn.depth import DepthChoice, choose_depth_iter
from .adabn.entropy import EntropyReport, entropy_step_iter
from .adabn.need import NeedVerdict, adaptation_needed, apply_verdict
from .adabn.scale_search import ZoomChoice, choose_zoom_iter
from .adabn.self_train import SelfTrainReport, self_train_iter
from .adabn.smoothing import SmoothingChoice, choose_smoothing_iter, given_smoothing
from .adabn.statistics_choice import StatisticsChoice, choose_statistics_iter
from .bound.assess import reliability_iter
from .bound.report import ReliabilityReport
from .bound.validity import format_bound
from .errors import BNAdaptError
from .io.resample import model_grid, resolve_grid
from .io.smoothed import smoothed
from .io.stack_view import layer_data
from .metrics import iou
from .model.device import get_device
from .progress import Progress, Result, forward, run_to_end
from .segmentation.labels import label_objects, to_labels
from .segmentation.oversized import OversizeReport, remove_oversized_objects_iter
from .segmentation.predict import predict_iter
from .segmentation.tta import TRANSFORM_COUNTS, predict_tta_iter
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
    zoom : (float, float) or None
        Model-grid pixels per image pixel (y, x) when the stack was resampled to the model's
        pixel size (``pixel_size_nm``); None when it ran as it is. The results are always on the
        image's own grid.
    pixel_size_note : str or None
        The resampling, or which pixel size was unknown, in one sentence (None: they matched, or
        neither was known).
    notes : list of str
        Further sentences for :meth:`summary`.
    need : NeedVerdict or None
        Whether the target needed adaptation at all (``guard``); when not, the source statistics segmented.
    zoom_choice : ZoomChoice or None
        The label-free scale search's choice (``search_scale``).
    statistics_choice : StatisticsChoice or None
        Whether the source or the adapted statistics segmented, chosen without labels (``choose_statistics``).
    depth_choice : DepthChoice or None
        How many blocks kept the adapted statistics (``choose_depth``).
    smoothing : SmoothingChoice or None
        The blur the whole run saw the image through (``smooth``); None: no smoothing.
    entropy_report : EntropyReport or None
        The entropy step's report (``entropy``).
    self_train_report : SelfTrainReport or None
        The self-training pass's report (``self_train``).
    oversized : OversizeReport or None
        What the removal of objects far larger than the training mitochondria did (``remove_oversized``);
        None when it was off or the model's card holds no object sizes.
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
    zoom: tuple[float, float] | None = None
    pixel_size_note: str | None = None
    need: NeedVerdict | None = None
    zoom_choice: ZoomChoice | None = None
    statistics_choice: StatisticsChoice | None = None
    depth_choice: DepthChoice | None = None
    smoothing: SmoothingChoice | None = None
    entropy_report: EntropyReport | None = None
    self_train_report: SelfTrainReport | None = None
    oversized: OversizeReport | None = None

    @property
    def model_name(self) -> str | None:
        """The source model's name from its card (None for a model without one)."""
        return (getattr(self.source_model, "meta", None) or {}).get("name")

    @property
    def source_statistics_kept(self) -> bool:
        """Whether the model was adapted and yet its source statistics segmented (the guard or the choice kept them)."""
        return (self.need is not None and not self.need.needed) or (
            self.statistics_choice is not None and not self.statistics_choice.adapted)

    def summary(self) -> list[str]:
        """The run's outcome as short sentences (what the CLI prints and the widget shows)."""
        out: list[str] = [f"pixel size: {self.pixel_size_note}"] if self.pixel_size_note else []
        if self.adapt_report is not None:
            rep = self.adapt_report
            out.append(f"adapted on {rep.device} in {rep.seconds:.1f} s from {rep.n_patches} patches"
                       + ("" if rep.converged else " (statistics not converged: use more patches)"))
        else:
            out.append(f"segmented on {self.device}")
        if self.reliability is not None:
            rel = self.reliability
            bound = (f", predicted IoU >= {format_bound(rel.iou_lower_bound)}"
                     if rel.iou_lower_bound is not None and not rel.gate_failures else "")
            out.append(f"reliability: {rel.verdict}{bound}")
        elif self.reliability_note:
            out.append(self.reliability_note)
        if self.zoom_choice is not None:
            out.append(f"scale search: {self.zoom_choice.reason}")
        if self.smoothing is not None:
            out.append(f"smoothing: {self.smoothing.reason}")
        if self.need is not None and not self.need.needed:
            out.append(self.need.message)
        if self.statistics_choice is not None:
            out.append(f"statistics: {self.statistics_choice.reason}")
        if self.depth_choice is not None:
            out.append(f"adaptation depth: {self.depth_choice.reason}")
        if self.entropy_report is not None:
            e = self.entropy_report
            out.append(f"entropy step: {e.steps_run} of {e.steps} steps kept, mean entropy {e.entropy_before:.3f} -> "
                       f"{e.entropy_after:.3f}" + (f" ({e.guard})" if e.guard else ""))
        if self.self_train_report is not None:
            r = self.self_train_report
            out.append(f"self-training: {r.steps_run} of {r.steps} steps kept in {r.seconds:.0f} s, "
                       f"{r.confident_fraction:.0%} of the pixels used" + (f" ({r.guard})" if r.guard else ""))
        if self.oversized is not None and self.oversized.removed_objects:
            out.append(self.oversized.message)
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
    pixel_size_nm: tuple[float, float] | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    adapt_options: dict[str, Any] | None = None,
    guard: bool = True,
    content_floor: bool = False,
    tta: int = 1,
    search_scale: bool = False,
    choose_statistics: bool = False,
    choose_depth: bool = False,
    smooth: float | str | None = None,
    entropy: bool = False,
    self_train: bool = False,
    remove_oversized: bool = True,
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
    pixel_size_nm : (float, float) or None, default None
        The image's (y, x) pixel size in nm (None: a napari layer's scale and units, else unknown).
        When it and the model's training pixel size differ by more than
        :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE` (2 %), adaptation, the reliability
        check and the segmentation run on the stack resampled to the model's pixel size, and the
        labels and probabilities come back on the image's own grid (same shape); ``zoom`` records it.
        Either one unknown: runs as it is, and one :class:`~napari_bnadapt.io.resample.PixelSizeWarning`
        says so (``pixel_size_note`` too).
    tile_size, overlap, batch_size
        Tiling of the segmentation, as in :func:`napari_bnadapt.predict`.
    adapt_options : dict, optional
        Further keyword arguments of :func:`napari_bnadapt.adapt` (``mode``,
        ``alpha``, ``prior``, ``n_patches``, ``patch_size``, ``batch_size``, ``seed``).
    guard : bool, default True
        "No adaptation needed": when the target's BatchNorm statistics differ from the source's
        by no more than their sampling noise (:func:`~napari_bnadapt.adabn.need.adaptation_needed`),
        or, for a model trained on several volumes, differ that little from one training volume's
        (:mod:`~napari_bnadapt.adabn.volumes`), segment with the source statistics instead (AdaBN on
        in-domain data can only add noise).
    content_floor : bool, default False
        With ``guard``: also keep the source statistics when every BatchNorm layer lies no farther from a
        reference than crops of the training data of the stack's size do (models that carry a content floor:
        the bundled generalists; :mod:`~napari_bnadapt.adabn.content_floor`). For a small stack of a kind the
        model was trained on, whose pixel size is known (without it the floor is not used, and ``need`` says so);
        it hides inverted contrast on a small stack (docs/real-data.md).
    tta : {1, 2, 4, 8}, default 1
        Test-time augmentation: average the probabilities over this many flipped/rotated views
        (:func:`~napari_bnadapt.segmentation.tta.predict_tta`; the segmentation costs ``tta`` times more).
    search_scale : bool, default False
        Before adapting, choose the zoom at which predicted mitochondria have the sizes the model
        was trained on (:func:`~napari_bnadapt.adabn.scale_search.choose_zoom`, no labels) and run
        at that zoom; ``zoom_choice`` says which and why. Needs the model's pixel size in its card.
    choose_statistics : bool, default False
        After AdaBN (when the guard found adaptation needed), segment with the source statistics instead
        when, on a sample of the stack, the source model agrees more with itself under flips and its
        share of mitochondria is no farther from the training data's
        (:func:`~napari_bnadapt.adabn.statistics_choice.choose_statistics`, no labels; 8 segmentations of
        up to 6 slices x 1024 px); ``statistics_choice`` says which and why. An option, measured in
        docs/real-data.md.
    choose_depth : bool, default False
        After AdaBN (when the guard found adaptation needed), keep the adapted statistics only in the
        first blocks, as many as make the segmentation agree best with that of the image turned 180
        degrees (:func:`~napari_bnadapt.adabn.depth.choose_depth`, no labels; 10 segmentations of a
        small sample); ``depth_choice`` says which and why.
    smooth : float, "auto" or None, default None
        See the image through a Gaussian blur (lazily, slice by slice; the data is never changed) for the
        whole run: a standard deviation in the model's pixels, or "auto" to choose the one that makes the
        image look most like the training data to the model's first BatchNorm layer
        (:func:`~napari_bnadapt.adabn.smoothing.choose_smoothing`, no labels; the first layer's statistics
        on 16 patches per candidate, seconds). ``smoothing`` says which and why, and the adapted model's
        card records the blur its statistics were estimated through. None or 0: none.
    entropy : bool, default False
        After AdaBN, the entropy step on the BatchNorm affine parameters
        (:func:`~napari_bnadapt.adabn.entropy.entropy_step`; a research option: it lowered the IoU
        on the real EM pair, see docs/real-data.md).
    self_train : bool, default False
        After AdaBN (and the entropy step), a short self-training pass of a copy on its own confident
        target pixels (:func:`~napari_bnadapt.adabn.self_train.self_train`; about a minute on a CPU;
        an option, measured in docs/real-data.md).
    remove_oversized : bool, default True
        Remove the objects far larger than any mitochondrion the model was trained on (a nucleus, a
        cell body: :func:`~napari_bnadapt.segmentation.oversized.remove_oversized_objects`; its card's
        training object sizes, on the model's grid); ``oversized`` says what was removed. On the
        visible Lucchi++ and VNC data it removed nothing (``benchmarks/bench_oversized.py``).

    Yields
    ------
    Progress, then Result[WorkflowResult]
    """
    if tta not in TRANSFORM_COUNTS:
        raise BNAdaptError(f"tta must be one of {TRANSFORM_COUNTS}, not {tta!r}")
    grid = model_grid(model, images, pixel_size_nm)  # decided (and said) once for the whole run
    images = layer_data(images)
    px = grid.pass_on()
    choice = None
    if search_scale:
        choice = yield from forward(choose_zoom_iter(model, images, pixel_size_nm=px, device=device,
                                                     intensity_range=intensity_range))
        if choice.effective_pixel_size_nm() is not None:
            px = choice.effective_pixel_size_nm()
            grid = resolve_grid(px, grid.model_nm)
    adapt_options = dict(adapt_options or {})
    smoothing = None
    if isinstance(smooth, str):
        if smooth != "auto":
            raise BNAdaptError(f"smooth must be a blur in the model's pixels, \"auto\" or None, not {smooth!r}")
        smoothing = yield from forward(choose_smoothing_iter(
            model, images, device=device, intensity_range=intensity_range, pixel_size_nm=px,
            seed=adapt_options.get("seed", 0)))
    elif smooth:
        smoothing = given_smoothing(float(smooth), grid)
    if smoothing is not None and smoothing.sigma > 0:
        images = smoothed(images, smoothing.sigma_image_px)  # the whole run sees the image through it
    if truth is not None:
        truth = layer_data(truth, kind="labels")
        if tuple(np.shape(truth)) != tuple(np.shape(images)):
            raise BNAdaptError(f"the ground truth {tuple(np.shape(truth))} does not match the image "
                               f"{tuple(np.shape(images))}")
    tiling = dict(tile_size=tile_size, overlap=overlap, batch_size=batch_size, device=device,
                  intensity_range=intensity_range, pixel_size_nm=px)
    result = WorkflowResult(labels=np.zeros(0, np.uint8), probabilities=None, model=model, source_model=model,
                            adapted=adapt, device=str(get_device(device)), zoom=grid.zoom,
                            pixel_size_note=grid.sentence(), zoom_choice=choice, smoothing=smoothing)
    if truth is not None and adapt:
        before = yield from forward(predict_iter(model, images, **tiling))
        result.iou_source_only = iou(before > threshold, truth)
        del before
    used = model
    if adapt:
        used, result.adapt_report = yield from forward(
            adapt_iter(model, images, device=device, intensity_range=intensity_range, pixel_size_nm=px,
                       **adapt_options))
        if smoothing is not None and smoothing.sigma > 0:  # statistics of the smoothed image: say so in the card
            used.meta["adaptation"]["smoothing"] = {"sigma_model_px": smoothing.sigma, "reason": smoothing.reason}
        if assess:
            if not hasattr(model, "latent_modules"):  # a model built elsewhere
                result.reliability_note = ("reliability not assessed: it needs this project's U-Net (named latent "
                                           "spaces) and source statistics in the model file")
            elif read_source_statistics(model) is None:
                result.reliability_note = "reliability not assessed: this model file has no source statistics"
            else:
                result.reliability = yield from forward(reliability_iter(
                    model, used, images, device=device, intensity_range=intensity_range,
                    seed=adapt_options.get("seed", 0), pixel_size_nm=px))
        if guard:
            result.need = adaptation_needed(model, used, result.adapt_report, content_floor=content_floor)
            used = apply_verdict(model, used, result.need)
        if choose_statistics and (result.need is None or result.need.needed):
            used, result.statistics_choice = yield from forward(choose_statistics_iter(
                model, used, images, device=device, intensity_range=intensity_range, pixel_size_nm=px))
        adapting = not result.source_statistics_kept
        if choose_depth and adapting:
            used, result.depth_choice = yield from forward(choose_depth_iter(
                model, used, images, device=device, intensity_range=intensity_range, pixel_size_nm=px))
        if entropy and adapting:
            used, result.entropy_report = yield from forward(entropy_step_iter(
                used, images, device=device, intensity_range=intensity_range, pixel_size_nm=px,
                seed=adapt_options.get("seed", 0)))
        if self_train and adapting:
            used, result.self_train_report = yield from forward(self_train_iter(
                used, images, device=device, intensity_range=intensity_range, pixel_size_nm=px,
                seed=adapt_options.get("seed", 0)))
    if tta > 1:
        prob = yield from forward(predict_tta_iter(used, images, transforms=tta, **tiling))
    else:
        prob = yield from forward(predict_iter(used, images, **tiling))
    result.labels = yield from forward(to_labels(prob, threshold))
    if remove_oversized:
        result.oversized = yield from forward(remove_oversized_objects_iter(result.labels, model, result.zoom))
    if instances:
        result.labels = yield from forward(label_objects(result.labels))
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
    pixel_size_nm: tuple[float, float] | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    adapt_options: dict[str, Any] | None = None,
    guard: bool = True,
    content_floor: bool = False,
    tta: int = 1,
    search_scale: bool = False,
    choose_statistics: bool = False,
    choose_depth: bool = False,
    smooth: float | str | None = None,
    entropy: bool = False,
    self_train: bool = False,
    remove_oversized: bool = True,
    callback: Any = None,
) -> WorkflowResult:
    """Blocking form of :func:`run_iter` (same parameters; ``callback`` receives each Progress)."""
    return run_to_end(run_iter(
        model, images, adapt=adapt, assess=assess, truth=truth, threshold=threshold, instances=instances,
        keep_probabilities=keep_probabilities, device=device, intensity_range=intensity_range,
        pixel_size_nm=pixel_size_nm, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
        adapt_options=adapt_options, guard=guard, content_floor=content_floor, tta=tta, search_scale=search_scale,
        choose_statistics=choose_statistics, choose_depth=choose_depth,
        smooth=smooth, entropy=entropy,
        self_train=self_train, remove_oversized=remove_oversized,
    ), callback)
