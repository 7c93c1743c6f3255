"""The "Train a source model" dock widget: image + labels layers in, a model file out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QSizePolicy

from ..errors import BNAdaptError
from ..io.stack_view import layer_data
from ..model.files import save_model, user_model_dir
from ..model.training import train_iter
from ..progress import forward
from .groups import ADVANCED, fold, framed_groups
from .layers import layers_of
from .runner import Runner
from .viewer_state import models_changed

if TYPE_CHECKING:
    import napari


class TrainWidget(Container):
    """Train a source U-Net on an image layer and its labels, and save it to the user's model folder."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)

        self.viewer = viewer
        self.model: Any = None
        self.image = ComboBox(label="image", choices=lambda _w: [(l.name, l) for l in layers_of(viewer, "image")])
        self.labels_layer = ComboBox(label="labels", choices=lambda _w: [(l.name, l) for l in layers_of(viewer, "labels")])
        self.model_name = LineEdit(label="model name", value="my-model")
        self.net_width = SpinBox(label="network width", value=16, min=4, max=64, step=4)
        self.steps = SpinBox(label="training steps", value=1500, min=10, max=1_000_000, step=100)
        self.patch_size = SpinBox(label="crop size (px)", value=128, min=16, max=1024, step=16)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        # the presets of model/augment.py (and of `bnadapt train --augment`); the card records the settings
        self.augment = ComboBox(label="augmentation", value="em", choices=[
            ("EM domain randomisation (grey values, blur, noise, scale)", "em"),
            ("flips and rotations only", "geometric"), ("none", "off")])
        self.augment.tooltip = ("how training crops are varied: the EM domain randomisation makes models that hold up on "
                                "other microscopes and labs (docs/models.md)")
        self.overwrite = CheckBox(text="replace a model of the same name", value=False)
        self.folder = Label(label="saved in", value=str(user_model_dir()))
        self.run = PushButton(text="Train")
        self.cancel = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="choose an image and its labels")
        self.status.native.setWordWrap(True)
        self.status.native.setMinimumHeight(48)
        for w in (self.folder, self.status):  # text labels left at their preferred width drift out of the field column
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.runner = Runner(self.progress, self.status, self.cancel, [self.run])
        # the steps a biologist takes: data, what to train, the run; network details folded away
        self.advanced = CheckBox(text="show advanced settings", value=False)
        self._advanced_widgets = [self.net_width, self.patch_size, self.seed]
        self.groups = framed_groups(self, [
            ("1  Data", Container(labels=True, widgets=[self.image, self.labels_layer])),
            ("2  Model", Container(labels=True, widgets=[self.model_name, self.folder, self.overwrite, self.steps,
                                                         self.augment, self.advanced])),
            (ADVANCED, Container(labels=True, widgets=self._advanced_widgets)),
            ("3  Train", Container(labels=True, widgets=[self.run, self.cancel, self.progress])),
            ("4  Result", Container(labels=True, widgets=[self.status])),
        ])
        fold(self.advanced, self.groups[ADVANCED], self._advanced_widgets)
        self.run.changed.connect(self.start)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self.reset_choices)
        self.reset_choices()

    def target_path(self) -> Path:
        """Where the model will be saved."""
        name = self.model_name.value.strip()
        if not name or any(c in name for c in '/\\:*?"<>|'):
            raise BNAdaptError("give the model a simple name (letters, digits, '-' and '_')")
        return user_model_dir() / f"{name}.safetensors"

    def start(self) -> Any:
        """Start training in a thread; returns the worker, or None on bad input."""
        if self.runner.running:
            return None
        try:
            if self.image.value is None or self.labels_layer.value is None:
                raise BNAdaptError("choose an image layer and a labels layer with its mitochondria")
            images, labels = layer_data(self.image.value), self.labels_layer.value.data
            path = self.target_path()
            if path.exists() and not self.overwrite.value:
                raise BNAdaptError(f"a model named {path.stem!r} exists; choose another name or tick 'replace'")
            scale = tuple(self.image.value.scale[-2:])
        except BNAdaptError as exc:
            self.runner.say(str(exc), error=True)
            return None
        kwargs = dict(width=int(self.net_width.value), steps=int(self.steps.value), patch_size=int(self.patch_size.value),
                      seed=int(self.seed.value), augment=str(self.augment.value), name=path.stem,
                      data_description=f"trained in napari on {self.image.value.name!r}",
                      pixel_size_nm=scale if scale != (1.0, 1.0) else None)
        overwrite = bool(self.overwrite.value)

        def job() -> Any:
            model = yield from forward(train_iter(images, labels, **kwargs))
            return model

        def done(model: Any) -> None:
            self.model = model
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                saved = save_model(model, path, overwrite=overwrite)
            except (BNAdaptError, OSError) as exc:
                self.runner.say(f"trained, but could not save: {exc}", error=True)
                return
            iou = model.meta["training"]["metrics"].get("val_iou")
            self.runner.say(f"saved {saved.name}" + (f" (validation IoU {iou:.3f})" if iou is not None else ""))
            models_changed()

        return self.runner.start(job, done, "training")
