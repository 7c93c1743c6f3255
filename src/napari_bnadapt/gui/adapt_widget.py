"""The "Adapt & segment" dock widget: one click adapts the model to the image and segments it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QSizePolicy

from ..adabn.estimators import MODES
from ..bound.curve import calibration_curve
from ..errors import BNAdaptError
from ..io.pixel_size import pixel_size_nm, rescale_iter, size_ratio
from ..io.resample import model_pixel_size, resolve_grid
from ..io.stack_view import check_stack, layer_data, resolve_normalization
from ..model.device import available_devices
from ..model.files import (
    DEFAULT_EM_MODEL,
    list_models,
    load_model,
    model_card,
    resolve_model_path,
    save_model,
)
from ..progress import Progress, forward
from ..workflow import WorkflowResult, run_iter
from .groups import ADVANCED, fold, framed_groups
from .layers import layers_of, transform_kwargs, unique_name
from .loading import StackLoader
from .runner import Runner
from .samples import MODEL_HINT_KEY
from .viewer_state import MODEL_LIST, reports_of

if TYPE_CHECKING:
    import napari

NO_TRUTH = "(none)"
INTENSITY_CHOICES = {"model's range (8-bit)": None, "auto (0.5-99.5 percentiles)": "auto"}


class AdaptSegmentWidget(Container):
    """Adapt a model to the chosen image by BatchNorm adaptation, and segment it.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are read and to which results are added.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)

        self.viewer = viewer
        self._extra_models: list[str] = []
        self._model_picked = False  # once the user picks a model, choosing an image no longer suggests one
        self._suggesting = False
        self._models: dict[str, Any] = {}
        self.adapted_model: Any = None
        self.last_result: WorkflowResult | None = None

        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.model = ComboBox(label="model", choices=lambda _w: list_models() + self._extra_models)
        self.browse = PushButton(text="Browse for a model file...")
        self.card = Label(label="model card")
        self.scale_note = Label(label="pixel size", value="")
        self.rescale = PushButton(text="Rescale the image to the model's pixel size (new layer)", visible=False)
        self.device = ComboBox(label="device", choices=["auto", *available_devices()], value="auto")
        self.truth = ComboBox(label="ground truth", choices=self._truth_choices)
        self.add_probabilities = CheckBox(text="also add the probability map", value=False)
        self.assess = CheckBox(text="assess reliability after adapting (no labels needed)", value=True)

        self.advanced = CheckBox(text="show advanced settings", value=False)
        self.mode = ComboBox(label="mode", choices=list(MODES), value="cumulative",
                             tooltip="cumulative: every target pixel alike (default); ema: the paper's moving average; "
                             "prior: mixed with the source statistics; balanced: cumulative, reweighted so the share "
                             "of mitochondria counts as in the training data")
        self.alpha = FloatSpinBox(label="EMA alpha", value=0.1, min=0.001, max=1.0, step=0.05)
        self.prior = FloatSpinBox(label="prior N", value=16.0, min=0.0, max=1e6)
        self.n_patches = SpinBox(label="patches (0 = auto)", value=0, min=0, max=100000,
                                 tooltip="target patches AdaBN reads; auto: the whole stack up to a budget, else that "
                                 "budget in random patches")
        self.patch_size = SpinBox(label="patch size (px)", value=256, min=16, max=4096, step=16)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=512)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.intensity = ComboBox(label="grey values", choices=list(INTENSITY_CHOICES))
        self.tile_size = SpinBox(label="tile size (0 = auto)", value=0, min=0, max=8192, step=16,
                                 tooltip="largest tile side; auto: 576 px on CPU (bundled models), 1024 px on GPU")
        self.tta = ComboBox(label="flip averaging", choices=[("off", 1), ("2 views", 2), ("4 views", 4), ("8 views", 8)],
                            value=1, tooltip="test-time augmentation: average the probabilities over flipped and "
                            "rotated views (segmentation takes that many times longer)")
        self.search_scale = CheckBox(text="search the scale (no labels)", value=False,
                                     tooltip="choose the zoom at which the predicted mitochondria have the sizes the "
                                     "model was trained on")
        self.guard = CheckBox(text="keep the source statistics when the image already matches", value=True)
        self.content_floor = CheckBox(text="... allowing for a small stack's content", value=False,
                                      tooltip="also keep them when the stack lies no farther from the training data "
                                      "than crops of its size of the training data do (the generalist models, the "
                                      "image's pixel size known); for a small stack of a kind the model was trained "
                                      "on (docs/real-data.md)")
        self.choose_statistics = CheckBox(text="choose source or adapted statistics (no labels)", value=False,
                                          tooltip="after adapting, keep the source statistics when the model "
                                          "without adaptation agrees more with itself under flips and finds a share "
                                          "of mitochondria closer to its training data's (docs/real-data.md)")
        self.choose_depth = CheckBox(text="choose the adaptation depth (no labels)", value=False,
                                     tooltip="adapt only the first blocks of the network, as many as make the "
                                     "segmentation agree best with itself on the image turned 180 degrees "
                                     "(docs/real-data.md)")
        self.smooth = CheckBox(text="smooth to the training data's sharpness (no labels)", value=False,
                               tooltip="see the image through the Gaussian blur that makes it look most like the "
                               "model's training data to its first layer; helps where the image is sharper than "
                               "the training data (docs/real-data.md)")
        self.self_train = CheckBox(text="self-training after adaptation (minutes)", value=False,
                                   tooltip="a short pass of a copy on the pixels it segments confidently: it "
                                   "adds foreground, which helped where the adapted model missed mitochondria "
                                   "and hurt elsewhere (docs/real-data.md)")
        self.remove_oversized = CheckBox(text="remove objects far larger than any training mitochondrion", value=True,
                                         tooltip="a nucleus or cell body segmented as a mitochondrion: objects over 3x "
                                         "the diameter 95 % of the model's training mitochondria stay below are "
                                         "removed, and the status says how many")
        self._advanced_widgets = [self.mode, self.alpha, self.prior, self.n_patches, self.patch_size,
                                  self.batch_size, self.seed, self.intensity, self.tile_size, self.tta,
                                  self.search_scale, self.guard, self.content_floor, self.choose_statistics,
                                  self.choose_depth, self.smooth, self.self_train,
                                  self.remove_oversized]

        self.run_adapt = PushButton(text="Adapt && segment")
        self.run_plain = PushButton(text="Segment without adaptation")
        self.cancel = PushButton(text="Cancel")
        self.save = PushButton(text="Save adapted model...", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="")
        self._hint = ""
        self.runner = Runner(self.progress, self.status, self.cancel, [self.run_adapt, self.run_plain])
        self.loader = StackLoader(viewer, on_loaded=self._select_image, say=self.runner.say)

        # the steps a biologist takes, top to bottom; the advanced settings folded away in their own box
        self.groups = framed_groups(self, [
            ("1  Image", Container(labels=True, widgets=[self.loader, self.image, self.scale_note, self.rescale,
                                                         self.truth])),
            ("2  Model", Container(labels=True, widgets=[self.model, self.browse, self.card, self.device])),
            ("3  Run", Container(labels=True, widgets=[self.add_probabilities, self.assess, self.advanced])),
            (ADVANCED, Container(labels=True, widgets=self._advanced_widgets)),
            ("4  Segment", Container(labels=True, widgets=[self.run_adapt, self.run_plain, self.cancel,
                                                           self.progress])),
            ("5  Result", Container(labels=True, widgets=[self.status, self.save])),
        ])
        for w in (self.card, self.scale_note, self.status):
            w.native.setWordWrap(True)
            # a wrapped label left at its preferred width pushes its row's name out of the label column
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.status.native.setMinimumHeight(64)
        fold(self.advanced, self.groups[ADVANCED], self._advanced_widgets)

        self.image.changed.connect(self.loader.show_voxel_size)
        self.image.changed.connect(self.check_pixel_size)
        self.loader.voxel.native.editingFinished.connect(self._apply_voxel_size)
        self.model.changed.connect(self._update_card)
        self.guard.changed.connect(lambda on: setattr(self.content_floor, "enabled", bool(on)))  # a refinement of it
        self.mode.changed.connect(self._enable_estimator_settings)
        self._enable_estimator_settings()
        self.model.changed.connect(self._note_model_pick)
        self.image.changed.connect(self.suggest_model)
        self.image.changed.connect(self._show_hint)
        self.rescale.changed.connect(self.rescale_to_model)
        self.browse.changed.connect(self._browse)
        self.run_adapt.changed.connect(lambda: self.start(adapt=True))
        self.run_plain.changed.connect(lambda: self.start(adapt=False))
        self.save.changed.connect(self._save_dialog)

        MODEL_LIST.add(self.model.reset_choices)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.inserted.connect(self._preselect_image)
        viewer.layers.events.removed.connect(self.reset_choices)
        viewer.layers.events.moved.connect(self.reset_choices)
        self.reset_choices()
        self._preselect_image()
        self._show_hint()
        self.suggest_model()
        self._update_card()
        self.loader.show_voxel_size(self.image.value)

    def _enable_estimator_settings(self, *_: Any) -> None:
        """EMA alpha only for the moving average, prior N only for the source prior: the others ignore them."""
        self.alpha.enabled = self.mode.value == "ema"
        self.prior.enabled = self.mode.value == "prior"

    # --- choices -------------------------------------------------------
    def _image_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_of(self.viewer, "image")]

    def _truth_choices(self, _w: Any = None) -> list[tuple[str, Any]]:
        return [(NO_TRUTH, None)] + [(layer.name, layer) for layer in layers_of(self.viewer, "labels")]

    def _preselect_image(self, *_: Any) -> None:
        """Offer an image when none is chosen: the viewer's active layer if it is an image, else the top one.

        A chosen image is never replaced (a new layer, such as this widget's probability map, leaves it), and
        removing the chosen layer leaves the choice empty rather than moving it to another layer unasked.
        """
        if self.image.value is not None:
            return
        self.image.reset_choices()
        images = layers_of(self.viewer, "image")
        if not images:
            return
        active = self.viewer.layers.selection.active
        self.image.value = active if any(active is layer for layer in images) else images[-1]

    def _show_hint(self, *_: Any) -> None:
        """Say what the next step is, while the status area shows nothing else (a run's messages stay)."""
        if self.status.value != self._hint:
            return
        layer = self.image.value
        self._hint = (f"ready: click 'Adapt & segment' to segment '{layer.name}'" if layer is not None
                      else "open a stack (or choose an image layer), then click 'Adapt & segment'")
        self.status.value = self._hint

    def _select_image(self, layer: Any) -> None:
        self.image.reset_choices()
        self.image.value = layer

    def suggest_model(self, *_: Any) -> str | None:
        """Select the model suited to the chosen image, until the user picks one.

        A layer from this plugin's toy sample data names its model (``toy-perlin``) in its metadata;
        any other image gets :data:`~napari_bnadapt.model.files.DEFAULT_EM_MODEL`. Returns the model
        selected, or None when the user's own choice is kept (or the model is not installed).
        """
        if self._model_picked:
            return None
        layer = self.image.value
        hint = getattr(layer, "metadata", {}).get(MODEL_HINT_KEY) if layer is not None else None
        name = hint or DEFAULT_EM_MODEL
        if name not in self.model.choices:
            return None
        self._suggesting = True
        try:
            self.model.value = name
        finally:
            self._suggesting = False
        return name

    def _note_model_pick(self, *_: Any) -> None:
        if not self._suggesting:
            self._model_picked = True

    def add_model_file(self, path: str | Path) -> None:
        """Add a model file to the model list and select it."""
        path = str(Path(path).expanduser())
        if path not in self._extra_models:
            self._extra_models.append(path)
        self.model.reset_choices()
        self.model.value = path

    def _browse(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Choose a model file", "", "Models (*.safetensors *.pt *.pth)")
        if path:
            self.add_model_file(path)

    def _update_card(self, *_: Any) -> None:
        if not self.model.value:
            self.card.value = "no model"
            return
        try:
            self.card.value = model_card(self.model.value).describe()
        except BNAdaptError as exc:
            self.card.value = f"cannot use this model: {exc}"
        self.check_pixel_size()

    # --- pixel size ----------------------------------------------------------
    def _apply_voxel_size(self) -> None:
        self.loader.apply_voxel_size(self.image.value)
        self.check_pixel_size()

    def _pixel_sizes(self) -> tuple[Any, Any]:
        """(image pixel size in nm or None, model pixel size in nm or None)."""
        layer = self.image.value
        image_nm = None if layer is None else pixel_size_nm(layer.scale, getattr(layer, "units", None))
        try:
            model_nm = model_card(self.model.value).pixel_size_nm if self.model.value else None
        except BNAdaptError:
            model_nm = None
        return image_nm, model_nm

    def check_pixel_size(self, *_: Any) -> str | None:
        """Compare the image's pixel size with the model's, and say what a run does with them.

        A run passes the layer's pixel size to the workflow: when it differs from the model's by more
        than :data:`~napari_bnadapt.io.pixel_size.RESAMPLE_TOLERANCE`, the stack is resampled to the
        model's pixel size internally and the results land on the layer's own grid. The rescale button
        still offers a resampled copy as a new layer. Returns the note when a run resamples, else None.
        """
        image_nm, model_nm = self._pixel_sizes()
        grid = resolve_grid(image_nm, model_nm)
        msg = None
        if grid.resamples:
            msg = (f"pixel size differs from the model's ({size_ratio(image_nm, model_nm):.2f}x): this layer has "
                   f"{' x '.join(f'{v:g}' for v in image_nm)} nm pixels; resampled internally to the model's "
                   f"{' x '.join(f'{v:g}' for v in model_nm)} nm; results on your layer's grid")
            self.scale_note.value = msg
        elif model_nm and not image_nm:
            self.scale_note.value = (f"the model was trained at {' x '.join(f'{v:g}' for v in model_nm)} nm; "
                                     "this image's pixel size is unknown, so it runs as it is (enter its voxel "
                                     "size above to check it)")
        elif model_nm:
            self.scale_note.value = "matches the model's pixel size"
        else:
            self.scale_note.value = "the model's pixel size is unknown, so the image runs as it is"
        self.rescale.visible = msg is not None
        return msg

    def rescale_to_model(self) -> Any:
        """Resample the chosen image to the model's pixel size as a NEW layer (the original is kept)."""
        layer = self.image.value
        image_nm, model_nm = self._pixel_sizes()
        if layer is None or size_ratio(image_nm, model_nm) is None or self.runner.running:
            return None
        factor = (image_nm[0] / model_nm[0], image_nm[1] / model_nm[1])
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data

        def job() -> Any:
            return (yield from forward(rescale_iter(data, factor)))

        def done(arr: Any) -> None:
            kw = transform_kwargs(layer)
            old = tuple(float(v) for v in layer.scale)
            new_yx = (old[-2] / factor[0], old[-1] / factor[1])  # the model's pixel size, in the layer's units
            kw["scale"] = (*old[:-2], *new_yx)
            # pixel centres: new pixel 0 covers the same physical edge as the old pixel 0
            t = tuple(float(v) for v in layer.translate)
            kw["translate"] = (*t[:-2], t[-2] + 0.5 * (new_yx[0] - old[-2]), t[-1] + 0.5 * (new_yx[1] - old[-1]))
            name = unique_name(self.viewer, f"{layer.name} [{model_nm[1]:g} nm]")
            new = self.viewer.add_image(arr, name=name, **kw)
            self.image.reset_choices()
            self.image.value = new
            self.runner.say(f"rescaled {layer.name!r} by {factor[1]:.3f} to {model_nm[1]:g} nm pixels as {name!r} "
                            f"{tuple(arr.shape)}; the original layer is unchanged")

        return self.runner.start(job, done, "rescaling to the model's pixel size")

    def _load_model(self) -> Any:
        name = self.model.value
        if not name:
            raise BNAdaptError("choose a model first")
        key = (name, resolve_model_path(name).stat().st_mtime_ns)
        if key not in self._models:
            self._models[key] = load_model(name, device="cpu")
        return self._models[key]

    def adapt_settings(self) -> dict[str, Any]:
        """The advanced adaptation settings as keyword arguments of :func:`adapt`."""
        return {
            "mode": self.mode.value,
            "alpha": float(self.alpha.value),
            "prior": float(self.prior.value),
            "n_patches": int(self.n_patches.value) or None,
            "patch_size": int(self.patch_size.value),
            "batch_size": int(self.batch_size.value),
            "seed": int(self.seed.value),
        }

    # --- running ---------------------------------------------------------
    def start(self, adapt: bool = True) -> Any:
        """Start a run (adapt & segment, or segment only); returns the worker, or None on bad input."""
        if self.runner.running:
            return None
        try:
            layer = self.image.value
            if layer is None:
                raise BNAdaptError("there is no image to segment: open an EM stack (File > Open) or a sample first")
            data = layer_data(layer)
            model = self._load_model()
            view = check_stack(data)
            intensity = INTENSITY_CHOICES[self.intensity.value]
            resolve_normalization(view, model.meta["normalization"], intensity)
            # the layer's pixel size: the workflow resamples to the model's and returns labels on the
            # layer's grid; an unknown one runs as it is (the pixel-size note says so, not a warning)
            pixel_size = resolve_grid(self._pixel_sizes()[0], model_pixel_size(model)).pass_on()
            truth_layer = self.truth.value
            truth = None
            if truth_layer is not None:
                truth = truth_layer.data
                if tuple(truth.shape) != tuple(data.shape):
                    raise BNAdaptError(
                        f"the ground truth {truth_layer.name!r} {tuple(truth.shape)} does not match the image "
                        f"{tuple(data.shape)}; choose another or '(none)'"
                    )
        except BNAdaptError as exc:
            self.runner.say(str(exc), error=True)
            return None
        gen = run_iter(
            model, data, adapt=adapt, assess=adapt and bool(self.assess.value), truth=truth,
            keep_probabilities=bool(self.add_probabilities.value), device=self.device.value,
            intensity_range=intensity, pixel_size_nm=pixel_size, tile_size=int(self.tile_size.value) or None,
            adapt_options=self.adapt_settings(), guard=bool(self.guard.value),
            content_floor=bool(self.guard.value) and bool(self.content_floor.value), tta=int(self.tta.value),
            search_scale=bool(self.search_scale.value), choose_statistics=bool(self.choose_statistics.value),
            choose_depth=bool(self.choose_depth.value),
            smooth="auto" if self.smooth.value else None, self_train=bool(self.self_train.value),
            remove_oversized=bool(self.remove_oversized.value),
        )

        def job() -> Any:
            return (yield from forward(gen))

        return self.runner.start(job, lambda res: self._on_done(res, layer),
                                 "adapting and segmenting" if adapt else "segmenting")

    def _on_done(self, res: WorkflowResult, layer: Any) -> None:
        tag = f"{res.model_name}{' adapted' if res.adapted and not res.source_statistics_kept else ''}"
        kw = transform_kwargs(layer)
        self.viewer.add_labels(res.labels, name=unique_name(self.viewer, f"{layer.name} [{tag}]"), **kw)
        if res.probabilities is not None:
            self.viewer.add_image(res.probabilities, name=unique_name(self.viewer, f"{layer.name} [{tag} probability]"),
                                  colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", **kw)
        if res.adapted:
            self.adapted_model = res.model
            self.save.enabled = True
        if res.reliability is not None:
            reports_of(self.viewer).publish(res.reliability, calibration_curve(res.source_model))
        msg = res.summary()
        if res.reliability is not None:
            msg[msg.index(next(m for m in msg if m.startswith("reliability:")))] += " (see the Reliability panel)"
        self.last_result = res
        self.runner.say("; ".join(msg))

    # --- saving ------------------------------------------------------------
    def save_adapted_model(self, path: str | Path, overwrite: bool = False, *, wait: bool = True) -> Path | None:
        """Save the last adapted model to ``path`` (never over an existing file unless ``overwrite``).

        A ``.zip`` path exports a bioimage.io package (for deepImageJ, ilastik, ...), with the last
        run's reliability report when it assessed this model; anything else a ``.safetensors`` model file.
        With ``wait=False`` (the save dialog) a package is exported in a worker thread, so the window
        stays responsive for the seconds it takes; the status line says when it is written.
        """
        if self.adapted_model is None:
            self.runner.say("adapt a model first", error=True)
            return None
        try:
            if str(path).lower().endswith(".zip"):
                from ..model.bioimageio_export import export_bioimageio  # torch: only when exporting

                res = self.last_result
                report = res.reliability if res is not None and res.model is self.adapted_model else None
                if not wait:
                    self._export_in_background(path, overwrite, report)
                    return None
                saved = export_bioimageio(self.adapted_model, path, reliability=report, overwrite=overwrite)
            else:
                saved = save_model(self.adapted_model, path, overwrite=overwrite)
        except BNAdaptError as exc:
            self.runner.say(str(exc), error=True)
            return None
        self.runner.say(f"saved the adapted model to {saved}")
        return saved

    def _export_in_background(self, path: str | Path, overwrite: bool, report: Any) -> Any:
        model, what = self.adapted_model, "exporting a bioimage.io package"

        def job() -> Any:
            from ..model.bioimageio_export import export_bioimageio  # torch: only when exporting

            yield Progress(what, 0, 1)
            saved = export_bioimageio(model, path, reliability=report, overwrite=overwrite)
            yield Progress(what, 1, 1)
            return saved

        return self.runner.start(job, lambda saved: self.runner.say(f"saved the adapted model to {saved}"), what)

    def _save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        # Qt's save dialog asks before replacing an existing file
        path, chosen = QFileDialog.getSaveFileName(
            self.native, "Save adapted model", "adapted.safetensors",
            "napari-bnadapt model (*.safetensors);;bioimage.io package (*.zip)")
        if path:
            suffix = ".zip" if "*.zip" in chosen or path.lower().endswith(".zip") else ".safetensors"
            # the dialog confirmed replacing exactly this name; a name we extend is checked again
            exact = path.lower().endswith(suffix)
            self.save_adapted_model(path if exact else path + suffix, overwrite=exact, wait=False)
