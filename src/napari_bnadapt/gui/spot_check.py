"""The *Spot check* section of the Reliability panel: the IoU on one slice the user annotated.

The user paints the mitochondria of one slice (or corrects the segmentation there) in a Labels
layer; one click segments that slice with the model of the viewer's last *Adapt & segment* run and
shows the IoU there, an interval for the IoU of the whole stack and, when asked, which adaptation
variant does best on the slice (:func:`napari_bnadapt.bound.spot_check.spot_check`, in a thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFormLayout, QGroupBox, QLabel, QSizePolicy, QVBoxLayout

from ..bound.spot_check import spot_check_iter
from ..errors import BNAdaptError
from ..progress import forward
from .layers import layers_of
from .runner import Runner
from .viewer_state import reports_of

if TYPE_CHECKING:
    import napari

    from ..bound.spot_check import SpotCheck
    from ..workflow import WorkflowResult

EVERY_LABELLED = "every slice with labels"
SHOWN = "the slice shown"
REGION_CHOICES = [("the whole slice", "slice"), ("the box around my painting", "bbox")]
NO_RUN = "none yet: run 'Adapt & segment' on this image first"


def last_run(viewer: Any) -> tuple[WorkflowResult | None, Any]:
    """The viewer's last *Adapt & segment* run and the widget that made it, or (None, None)."""
    from .adapt_widget import AdaptSegmentWidget

    docked = getattr(getattr(viewer, "window", None), "dock_widgets", None) or {}
    for widget in list(docked.values()):
        if isinstance(widget, AdaptSegmentWidget) and widget.last_result is not None:
            return widget.last_result, widget
    return None, None


class SpotCheckSection(QGroupBox):
    """The *Spot check* section (module docstring).

    Parameters
    ----------
    viewer : napari.Viewer or None
        The viewer whose layers and last *Adapt & segment* run are used.
    """

    def __init__(self, viewer: napari.viewer.Viewer | None = None) -> None:
        super().__init__("Spot check")
        self.viewer = viewer
        self.last_check: SpotCheck | None = None
        self.how = QLabel("Paint the mitochondria of one slice in a Labels layer (or correct the segmentation "
                          "there), then check the segmentation against it.")
        self.image = ComboBox(label="image", choices=lambda _w: self._layers("image"))
        self.annotation = ComboBox(label="my annotation", choices=lambda _w: self._layers("labels"))
        self.slices = ComboBox(label="annotated slices", choices=[EVERY_LABELLED, SHOWN], value=EVERY_LABELLED,
                               tooltip="'the slice shown' when the annotation is a corrected copy of the "
                               "whole segmentation")
        self.region = ComboBox(label="pixels that count", choices=REGION_CHOICES, value="slice",
                               tooltip="the whole slice: every mitochondrion of it is painted; the box: only the "
                               "rectangle around the painting counts")
        self.compare = CheckBox(text="also compare the adaptation variants (slower)", value=False)
        self.model = Label(value=NO_RUN)
        self.run = PushButton(text="Check against my annotation")
        self.cancel = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(value="")
        self.runner = Runner(self.progress, self.status, self.cancel, [self.run])
        self.buttons = Container(labels=False, widgets=[self.run, self.cancel, self.progress])
        # one form, its labels in one aligned column; the sentences span the section's width
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        for w in (self.image, self.annotation, self.slices, self.region):
            form.addRow(w.label, w.native)
        form.addRow("", self.compare.native)
        for w in (self.image, self.annotation, self.slices, self.region, self.run, self.cancel):
            w.native.setMinimumHeight(w.native.sizeHint().height())  # never squeezed by a crowded panel
        self.how.setWordWrap(True)
        for w in (self.model, self.status):
            w.native.setWordWrap(True)
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.status.native.setMinimumHeight(110)
        self.status.native.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 10, 6, 6)
        layout.addWidget(self.how)
        layout.addLayout(form)
        self.buttons.native.layout().setContentsMargins(0, 0, 0, 0)
        for w in (self.model.native, self.buttons.native, self.status.native):
            layout.addWidget(w)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.run.changed.connect(self.start)
        if viewer is not None:
            for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
                event.connect(self.refresh)
        reports_of(viewer).subscribe(self._on_report)
        self.refresh()

    def _layers(self, kind: str) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_of(self.viewer, kind)] if self.viewer is not None else []

    def _on_report(self, _report: Any, _curve: Any) -> None:
        # the Adapt & segment widget publishes its report before it keeps the run: look once it has
        QTimer.singleShot(0, self.refresh)

    def refresh(self, _event: Any = None) -> None:
        """Update the layer lists and the model line (after a run or a layer change)."""
        for w in (self.image, self.annotation):
            w.reset_choices()
        res, _ = last_run(self.viewer)
        if res is None:
            self.model.value = f"model: {NO_RUN}"
        else:
            self.model.value = (f"model: {res.model_name or 'model'}{' adapted' if res.adapted else ' (not adapted)'},"
                                " from the last 'Adapt & segment' run")

    def _slices(self, layer: Any) -> list[int] | None:
        if self.slices.value == EVERY_LABELLED or layer.data.ndim == 2:
            return None
        return [int(round(layer.world_to_data(self.viewer.dims.point)[0]))]

    def start(self) -> Any:
        """Run the spot check in a thread; returns the worker, or None (the reason is shown)."""
        if self.runner.running:
            return None
        self.refresh()
        try:
            res, adapt_widget = last_run(self.viewer)
            if res is None:
                raise BNAdaptError("there is no segmentation to check yet: run 'Adapt & segment' on this image "
                                   "first, then paint one slice and check")
            image, annotation = self.image.value, self.annotation.value
            if image is None or annotation is None:
                raise BNAdaptError("choose the image and the Labels layer with your annotation "
                                   "(Layers > New Labels layer, then paint the mitochondria of one slice)")
            target = ((getattr(res.model, "meta", None) or {}).get("adaptation") or {}).get("target") or {}
            if target.get("shape") and tuple(target["shape"]) != tuple(image.data.shape):
                raise BNAdaptError(f"the last 'Adapt & segment' run adapted the model to a stack of shape "
                                   f"{tuple(target['shape'])}, not to {image.name!r} {tuple(image.data.shape)}: "
                                   "run it on this image first")
            slices = self._slices(image)
        except BNAdaptError as exc:
            self.runner.say(str(exc), error=True)
            return None
        intensity = res.adapt_report.intensity_range if res.adapt_report is not None else None
        device = getattr(getattr(adapt_widget, "device", None), "value", "auto")
        gen = spot_check_iter(res.model, image, annotation, slices, region=self.region.value,
                              compare=bool(self.compare.value), source=res.source_model, device=device,
                              intensity_range=intensity)

        def job() -> Any:
            return (yield from forward(gen))

        return self.runner.start(job, self._on_done, "spot check")

    def _on_done(self, check: SpotCheck) -> None:
        self.last_check = check
        lines = [check.sentence() + "."]
        if check.variants:
            lines.append("Per variant on the annotated region: "
                         + ", ".join(f"{v.name} {v.iou:.2f}" for v in check.variants) + ".")
        lines += list(check.notes)
        self.runner.say("\n".join(lines))
