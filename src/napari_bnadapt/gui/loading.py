"""Loading EM stacks into napari with their voxel size, optionally cropped and downsampled (lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from magicgui.widgets import Container, LineEdit, PushButton, SpinBox

from ..errors import BNAdaptError
from ..io.crop import crop_and_downsample
from ..io.read import read_stack
from ..io.stack_info import AmbiguousDatasetError
from .layers import unique_name


def parse_range(text: str, axis: str) -> slice | None:
    """``"100:900"`` -> slice(100, 900); ``"100:"`` -> slice(100, None); empty or ``":"`` -> None (whole axis)."""
    text = text.strip()
    if text in ("", ":"):
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(v) if v.strip() else None for v in parts)
    except ValueError:
        raise BNAdaptError(f"crop {axis}: write START:STOP in voxels (e.g. 100:900), not {text!r}") from None
    return slice(start, stop)


def parse_voxel_size(text: str, ndim: int) -> tuple[float, ...]:
    """``"40 5 5"`` (nm, z y x) -> a scale tuple for a layer of ``ndim`` dimensions."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise BNAdaptError(f"voxel size: write numbers in nm, e.g. '40 5 5' (z y x), not {text!r}") from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or any(v <= 0 for v in values):
        raise BNAdaptError(f"voxel size: give {ndim} positive numbers in nm (one per axis of the image)")
    return values


class StackLoader(Container):
    """"Load stack..." controls: file or folder, crop, downsampling, and the voxel size.

    Parameters
    ----------
    viewer : napari.Viewer
    on_loaded : callable
        Called with the new image layer.
    say : callable
        ``say(text, error=False)`` shows a message to the user.
    """

    def __init__(self, viewer: Any, on_loaded: Callable[[Any], None], say: Callable[..., None]) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.on_loaded = on_loaded
        self.say = say
        self.load_file = PushButton(text="Load stack file...")
        self.load_folder = PushButton(text="Load folder of slices...")
        self.crop = LineEdit(label="crop z, y, x", value="", tooltip="START:STOP per axis in voxels, e.g. '0:50, 100:900, :' "
                             "(empty = whole stack); nothing outside is read")
        self.downsample = SpinBox(label="downsample", value=1, min=1, max=32,
                                  tooltip="keep every n-th voxel in every axis (multiplies the voxel size)")
        self.voxel = LineEdit(label="voxel size (nm)", value="",
                              tooltip="voxel size of the chosen image in nm (z y x); press Enter to apply it to the layer")
        self.extend([self.load_file, self.load_folder, self.crop, self.downsample, self.voxel])
        self.load_file.changed.connect(lambda: self._dialog(folder=False))
        self.load_folder.changed.connect(lambda: self._dialog(folder=True))

    def _dialog(self, folder: bool) -> None:
        from qtpy.QtWidgets import QFileDialog

        if folder:
            path = QFileDialog.getExistingDirectory(self.native, "Folder with one image per slice")
        else:
            path, _ = QFileDialog.getOpenFileName(
                self.native, "EM stack", "", "EM stacks (*.tif *.tiff *.btf *.mrc *.rec *.map *.st *.h5 *.hdf5 *.hdf *.png);;All files (*)"
            )
        if path:
            self.load(path)

    def _ask_dataset(self, choices: list[Any]) -> str | None:
        from qtpy.QtWidgets import QInputDialog

        names = [str(c[0]) for c in choices]
        name, ok = QInputDialog.getItem(self.native, "Choose the volume", "This file holds several volumes:", names, 0, False)
        return name if ok else None

    def load(self, path: str | Path, dataset: str | None = None) -> Any:
        """Open ``path`` lazily with the crop/downsampling settings; add it as an image layer."""
        try:
            try:
                array, info = read_stack(path, dataset=dataset)
            except AmbiguousDatasetError as exc:
                dataset = self._ask_dataset(exc.choices)
                if dataset is None:
                    return None
                array, info = read_stack(path, dataset=dataset)
            if array.ndim not in (2, 3):
                raise BNAdaptError(f"{Path(path).name} has axes {info.axes}; load a single-channel 2D image or 3D stack")
            parts = [p for p in self.crop.value.split(",")] if self.crop.value.strip() else []
            axes = "zyx"[-array.ndim:]
            if parts and len(parts) != array.ndim:
                raise BNAdaptError(f"crop: give {array.ndim} ranges separated by commas ({', '.join(axes)})")
            ranges = {a: parse_range(p, a) for a, p in zip(axes, parts)}
            factor = int(self.downsample.value)
            if ranges or factor > 1:
                array, info = crop_and_downsample(array, **ranges, factor=factor, info=info)
        except BNAdaptError as exc:
            self.say(str(exc), error=True)
            return None

        name = Path(path).stem if Path(path).is_file() else Path(path).name
        layer = self.viewer.add_image(array, name=unique_name(self.viewer, name), scale=info.scale,
                                      metadata={"voxel_size_nm": info.voxel_size_nm, "source_format": info.source_format,
                                                "path": str(path), "notes": list(info.notes)})
        known = info.voxel_size_known
        self.show_voxel_size(layer)
        self.say(f"loaded {name}: {tuple(array.shape)} {array.dtype}, "
                 + (f"voxel size {self.voxel.value} nm" if known else "voxel size unknown: enter it below")
                 + ("; " + "; ".join(info.notes) if info.notes else ""))
        self.on_loaded(layer)
        return layer

    def show_voxel_size(self, layer: Any) -> None:
        """Show the layer's voxel size (its scale) in the editable field."""
        self.voxel.value = "" if layer is None else " ".join(f"{v:g}" for v in layer.scale)

    def apply_voxel_size(self, layer: Any) -> None:
        """Set the layer's scale from the field (the user asked for it)."""
        if layer is None:
            return
        try:
            layer.scale = parse_voxel_size(self.voxel.value, layer.ndim)
        except BNAdaptError as exc:
            self.say(str(exc), error=True)
            return
        self.say(f"voxel size of {layer.name!r} set to {self.voxel.value} nm")
