"""Import bioimage.io model packages (``.zip``, or an unpacked ``rdf.yaml`` / ``bioimageio.yaml``).

Nothing from a package is executed except, at most, a TorchScript graph:

- the description is YAML, read with a safe loader and validated by ``bioimageio.spec`` with
  ``perform_io_checks=False`` (schema only: nothing is downloaded, nothing imported);
- a ``pytorch_state_dict`` entry is used only when its architecture is this project's U-Net,
  recognised by the architecture's callable name and keyword arguments; the U-Net is then built from
  napari-bnadapt's own class, and the weights are read with ``torch.load(weights_only=True)``, which
  refuses pickled code. The package's Python source file is never imported. Any other architecture
  (a source file, or a callable to import from an installed library) is refused, with the lines to
  load it from a script for a user who trusts it; TorchScript weights are used instead when present;
- ``torchscript`` weights are read with ``torch.jit.load``. A TorchScript file holds the weights and a
  graph written in TorchScript, a statically typed subset of Python that PyTorch compiles and runs in
  its own interpreter: it cannot import Python modules or call Python functions (no ``open``, ``exec``,
  ``os.system``), only the operators of the installed PyTorch, and the archive is read by TorchScript's
  own unpickler, not Python's ``pickle``. That is why it is not arbitrary Python. It is not a sandbox
  either: the graph runs with the program's rights, a few operators (``aten::save``) write files, and
  ``torch.jit.load`` is not hardened against a crafted archive; load TorchScript from sources you trust.

Every file used is checked against the sha256 the description gives; a missing file, a wrong hash, a
damaged zip, a foreign file or an unsupported description gives a :class:`ModelFileError` that says
what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ModelFileError
from ..io.units import unit_to_nm
from .bioimageio_common import (
    ARCHITECTURE_CALLABLE,
    ARCHITECTURE_KWARGS,
    CONFIG_KEY,
    STATE_PREFIX,
    affine_to_normalization,
    data_range,
    preprocessing_to_affine,
    require_bioimageio,
    same_normalization,
    sha256_hex,
)
from .device import get_device

#: File names of a bioimage.io description (``*.bioimageio.yaml`` too).
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Architecture callables recognised as this project's U-Net.
OUR_CALLABLES = (ARCHITECTURE_CALLABLE, "UNet")

TRUSTED_SCRIPT_HINT = """\
If you trust this package's code, load the network yourself in a script and hand it to napari-bnadapt
(napari-bnadapt accepts PyTorch modules built elsewhere):
    import sys, torch, napari_bnadapt as nb
    sys.path.insert(0, "<the unzipped package folder>")
    from {module} import {callable}      # runs the package's code: only for code you trust
    net = {callable}(**{kwargs!r})
    net.load_state_dict(torch.load("<folder>/{weights}", weights_only=True))
    adapted, report = nb.adapt(net, images, intensity_range="auto")"""


def is_bioimageio_source(path: Path) -> bool:
    """Whether ``path`` is for the bioimage.io importer: a ``.zip``, or an ``rdf.yaml``/``bioimageio.yaml``."""
    name = path.name.lower()
    return name in RDF_NAMES or name.endswith((".zip", ".bioimageio.yaml"))


# ------------------------------------------------------------------ reading a package
class _Package:
    """The files of a package: a zip, or the folder of an unpacked ``rdf.yaml``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.name.lower().endswith(".zip"):
            if not zipfile.is_zipfile(path):
                raise ModelFileError(f"{path.name!r} is not a valid zip file (truncated or damaged?); "
                                     "download the bioimage.io package again")
            try:
                self.zip = zipfile.ZipFile(path)
                names = self.zip.namelist()
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise ModelFileError(f"{path.name!r} is a damaged zip file: {exc}") from exc
            top = [n for n in names if "/" not in n.strip("/")]
            rdf = [n for n in top if n.lower() in RDF_NAMES or n.lower().endswith(".bioimageio.yaml")]
            if not rdf:
                raise ModelFileError(
                    f"{path.name!r} holds no rdf.yaml or bioimageio.yaml: it is not a bioimage.io model package "
                    "(napari-bnadapt reads .safetensors model files, PyTorch state dicts of its U-Net, and "
                    "bioimage.io packages)"
                )
            self.rdf_name = min(rdf, key=lambda n: n.lower() != "rdf.yaml")
        else:
            self.rdf_name = path.name
        self.label = path.name

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str, what: str = "file") -> bytes:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelFileError(f"{self.label!r}: the {what} {name!r} points outside the package")
        try:
            if self.zip is not None:
                return self.zip.read(str(rel))
            return (self.path.parent / rel).read_bytes()
        except (KeyError, FileNotFoundError) as exc:
            raise ModelFileError(f"{self.label!r}: the {what} {name!r} named in the description is missing from "
                                 "the package; download the complete package again") from exc
        except (zipfile.BadZipFile, OSError, zlib.error) as exc:
            raise ModelFileError(f"{self.label!r}: the {what} {name!r} cannot be read ({exc}); the package is "
                                 "damaged") from exc

    def read_checked(self, file_descr: Any, what: str) -> tuple[str, bytes]:
        """(name, bytes) of a described file, after checking its sha256 when the description gives one."""
        name = _local_name(file_descr.source, what, self.label)
        data = self.read(name, what)
        expected = getattr(file_descr, "sha256", None)
        if expected is not None and sha256_hex(data) != str(expected):
            raise ModelFileError(
                f"{self.label!r}: the {what} {name!r} does not match the sha256 in the description (the file is "
                "damaged or was altered); napari-bnadapt does not use it"
            )
        return name, data


def _local_name(source: Any, what: str, label: str) -> str:
    text = str(source)
    if "://" in text:
        raise ModelFileError(
            f"{label!r}: the {what} is on the web ({text}); napari-bnadapt does not download files named in a "
            "description. Download the packaged model (.zip) from bioimage.io and load that."
        )
    return str(getattr(source, "path", text))


def _load_description(pkg: _Package) -> Any:
    require_bioimageio()
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description
    from ruyaml import YAML, YAMLError

    raw = pkg.read(pkg.rdf_name, "description")
    try:
        content = YAML(typ="safe", pure=True).load(raw.decode("utf-8"))
    except (YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{pkg.label!r}: its description {pkg.rdf_name!r} is not readable YAML ({exc})") from exc
    if not isinstance(content, dict):
        raise ModelFileError(f"{pkg.label!r}: its description {pkg.rdf_name!r} is not a bioimage.io description")
    if content.get("type") != "model":
        raise ModelFileError(f"{pkg.label!r} describes a bioimage.io {content.get('type', 'resource')!r}, not a model")
    context = ValidationContext(root=pkg.path.parent, file_name=pkg.rdf_name, perform_io_checks=False)
    with context:
        descr = build_description(content, context=context, format_version="latest")
    if isinstance(descr, InvalidDescr):
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in descr.validation_summary.details
                  for e in d.errors]
        raise ModelFileError(f"{pkg.label!r} is not a valid bioimage.io model description: "
                             + "; ".join(errors[:4]) + (" ..." if len(errors) > 4 else ""))
    if not hasattr(descr, "inputs") or not str(getattr(descr, "format_version", "")).startswith("0.5"):
        raise ModelFileError(f"{pkg.label!r}: unsupported bioimage.io format {getattr(descr, 'format_version', '?')}")
    return descr


# ------------------------------------------------------------------ the model
@dataclass
class _Inputs:
    normalization: dict[str, Any]
    pixel_size_nm: list[float] | None
    notes: list[str]


def _read_inputs(descr: Any, label: str) -> _Inputs:
    if len(descr.inputs) != 1:
        raise ModelFileError(f"{label!r} takes {len(descr.inputs)} input tensors; napari-bnadapt feeds one image")
    tensor = descr.inputs[0]
    _check_axes(tensor, "input", label)
    channel = next(a for a in tensor.axes if type(a).__name__ == "ChannelAxis")
    if len(channel.channel_names) != 1:
        raise ModelFileError(f"{label!r} takes {len(channel.channel_names)} input channels; napari-bnadapt "
                             "feeds one grey channel")
    data = tensor.data if not isinstance(tensor.data, (list, tuple)) else tensor.data[0]
    low, high = data_range({"type": getattr(data, "type", "float32"), "range": getattr(data, "range", None)})
    steps = [{"id": str(p.id), "kwargs": _plain(p.kwargs)} for p in tensor.preprocessing]
    gain, offset, notes = preprocessing_to_affine(steps)
    if notes:  # per-image normalisation: the range is the [0, 1] of intensity_range="auto"
        low, high = 0.0, 1.0
    norm = affine_to_normalization(gain, offset, low, high)
    px = None
    axes = {str(a.id): a for a in tensor.axes}
    factors = [unit_to_nm(getattr(axes[k], "unit", None)) for k in ("y", "x")]
    if all(f is not None for f in factors):
        px = [float(axes[k].scale) * f for k, f in zip(("y", "x"), factors)]
    return _Inputs(norm, px, notes)


def _check_axes(tensor: Any, what: str, label: str) -> None:
    kinds = [(type(a).__name__.replace("Input", "").replace("Output", "").replace("WithHalo", ""), str(a.id))
             for a in tensor.axes]
    if [k for k, _ in kinds] != ["BatchAxis", "ChannelAxis", "SpaceAxis", "SpaceAxis"] or \
            [i for _, i in kinds[2:]] != ["y", "x"]:
        raise ModelFileError(
            f"{label!r}: its {what} has the axes ({', '.join(i for _, i in kinds)}); napari-bnadapt runs 2D "
            "networks on (batch, channel, y, x) tensors"
        )


def _plain(kwargs: Any) -> dict[str, Any]:
    if hasattr(kwargs, "model_dump"):
        return kwargs.model_dump()
    return dict(kwargs or {})


def _output_info(descr: Any, label: str) -> dict[str, Any]:
    if len(descr.outputs) != 1:
        raise ModelFileError(f"{label!r} has {len(descr.outputs)} outputs; napari-bnadapt needs one")
    out = descr.outputs[0]
    _check_axes(out, "output", label)
    data = out.data if not isinstance(out.data, (list, tuple)) else out.data[0]
    post = [str(p.id) for p in out.postprocessing if str(p.id) != "ensure_dtype"]
    channel = next((a for a in out.axes if type(a).__name__ == "ChannelAxis"), None)
    rng = tuple(getattr(data, "range", (None, None)) or (None, None))
    # the raw network output is a probability when the package applies no sigmoid/softmax after it
    # and declares its values in [0, 1]
    probability = not ({"sigmoid", "softmax"} & set(post)) and rng == (0.0, 1.0)
    return {"id": str(out.id), "channels": list(channel.channel_names) if channel else [],
            "postprocessing": post, "range": list(rng), "probability": probability}


def _is_our_architecture(entry: Any) -> bool:
    arch = entry.architecture
    kwargs = dict(arch.kwargs or {})
    return (str(arch.callable) in OUR_CALLABLES and hasattr(arch, "source") and set(kwargs) <= set(ARCHITECTURE_KWARGS))


def _refuse_architecture(entry: Any, label: str) -> ModelFileError:
    arch = entry.architecture
    source = getattr(arch, "source", None)
    where = (f"the Python source file {str(source)!r}" if source is not None
             else f"the library module {getattr(arch, 'import_from', '?')!r}")
    module = PurePosixPath(str(source)).stem if source is not None else getattr(arch, "import_from", "module")
    return ModelFileError(
        f"{label!r}: its PyTorch weights need the architecture {arch.callable!r} from {where}, and the package "
        "has no TorchScript weights. napari-bnadapt never runs Python code named by a downloaded file (it could do "
        "anything on your computer), so it does not load this model.\n"
        + TRUSTED_SCRIPT_HINT.format(module=module, callable=arch.callable, kwargs=dict(arch.kwargs or {}),
                                     weights=str(entry.source))
    )


def _load_our_state_dict(pkg: _Package, entry: Any) -> Any:
    import pickle

    import torch

    from .unet import UNet

    _, data = pkg.read_checked(entry, "weights file")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(f"{pkg.label!r}: its state dict contains Python objects or code, not just weights; "
                             "refused") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelFileError(f"{pkg.label!r}: its state dict is damaged ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{pkg.label!r}: its weights file does not hold a state dict of tensors")
    if all(k.startswith(STATE_PREFIX) for k in state):
        state = {k[len(STATE_PREFIX):]: v for k, v in state.items()}
    kwargs = dict(entry.architecture.kwargs or {})
    try:
        model = UNet(**kwargs)
        model.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{pkg.label!r}: its weights do not fit the napari-bnadapt U-Net "
                             f"({str(exc).splitlines()[0]})") from exc
    return model


def _load_torchscript(pkg: _Package, entry: Any, output: dict[str, Any]) -> Any:
    import torch

    _, data = pkg.read_checked(entry, "TorchScript file")
    try:
        model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFileError(f"{pkg.label!r}: its TorchScript file cannot be read ({str(exc).splitlines()[0]})") from exc
    if output["probability"]:
        model = _probability_to_logits(model)
    return model


def _probability_to_logits(model: Any) -> Any:
    """Wrap a TorchScript network that outputs probabilities so that it outputs logits (what the core expects).

    One channel: ``log(p / (1 - p))`` (sigmoid gives ``p`` back); several: ``log(p)`` (softmax gives ``p``).
    """
    import torch
    from torch import nn

    class ProbabilityToLogits(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.net(x).float().clamp(1e-7, 1.0 - 1e-7)
            if p.shape[1] == 1:
                return torch.log(p) - torch.log1p(-p)
            return torch.log(p)

    return torch.jit.script(ProbabilityToLogits(model))


def _our_card(pkg: _Package, descr: Any, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(card, arrays) from the attachments of a napari-bnadapt package (hash-checked, data only)."""
    attachments = {str(getattr(a.source, "path", a.source)): a for a in (descr.attachments or [])}
    card_name = str(config.get("model_card") or "model_card.json")
    card: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    if card_name in attachments:
        _, data = pkg.read_checked(attachments[card_name], "model card")
        try:
            card = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{pkg.label!r}: its model card is damaged") from exc
    if "source_statistics.safetensors" in attachments:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        _, data = pkg.read_checked(attachments["source_statistics.safetensors"], "source statistics")
        try:
            arrays = load(data)
        except (SafetensorError, ValueError) as exc:
            raise ModelFileError(f"{pkg.label!r}: its source statistics are damaged ({exc})") from exc
    return card, arrays


def load_bioimageio_model(path: str | os.PathLike[str], device: str = "auto", *, weights: str = "auto") -> Any:
    """Load a bioimage.io model package (see the module docstring for what is, and is not, executed).

    Parameters
    ----------
    path : str or path
        A package ``.zip`` or an unpacked ``rdf.yaml`` / ``bioimageio.yaml``.
    device : str, default "auto"
        "auto", "cpu", "cuda" or "mps".
    weights : {"auto", "pytorch_state_dict", "torchscript"}, default "auto"
        Which weights to use. "auto": the state dict when its architecture is this project's
        U-Net (the model is then a :class:`~napari_bnadapt.model.unet.UNet`, with the full model
        card of a napari-bnadapt package), else the TorchScript weights.

    Returns
    -------
    torch.nn.Module
        In eval mode, with its model card in ``model.meta``: the normalisation mapped from the
        package's preprocessing, the pixel size from its axes, the package's facts under
        ``meta["bioimageio"]``.
    """
    path = Path(path).expanduser()
    pkg = _Package(path)
    try:
        descr = _load_description(pkg)
        inputs = _read_inputs(descr, pkg.label)
        output = _output_info(descr, pkg.label)
        sd = descr.weights.pytorch_state_dict
        ts = descr.weights.torchscript
        ours = sd is not None and _is_our_architecture(sd)
        if weights not in ("auto", "pytorch_state_dict", "torchscript"):
            raise ModelFileError(f"weights must be 'auto', 'pytorch_state_dict' or 'torchscript', not {weights!r}")
        if weights == "torchscript" or (weights == "auto" and not ours and ts is not None):
            if ts is None:
                raise ModelFileError(f"{pkg.label!r} has no TorchScript weights")
            model, used = _load_torchscript(pkg, ts, output), "torchscript"
        elif sd is not None and ours:
            model, used = _load_our_state_dict(pkg, sd), "pytorch_state_dict"
        elif sd is not None:
            raise _refuse_architecture(sd, pkg.label)
        else:
            formats = [k for k, v in descr.weights if v is not None]
            raise ModelFileError(
                f"{pkg.label!r} has weights in {', '.join(formats)} only; napari-bnadapt reads TorchScript weights "
                "and state dicts of its own U-Net"
            )
        config = dict((descr.config.model_extra or {}).get(CONFIG_KEY) or {})
        card, arrays = _our_card(pkg, descr, config) if config else ({}, {})
    finally:
        pkg.close()
    model.meta = _meta(descr, inputs, output, card, config, used, path)
    if arrays and used == "pytorch_state_dict":
        model.meta["arrays"] = arrays
    model.eval()
    return model.to(get_device(device))


def _meta(descr: Any, inputs: _Inputs, output: dict[str, Any], card: dict[str, Any], config: dict[str, Any],
          used: str, path: Path) -> dict[str, Any]:
    norm = inputs.normalization
    stored = card.get("normalization") or config.get("normalization")
    if stored and not inputs.notes and same_normalization(stored, norm):
        norm = dict(stored)  # the exact constants (the preprocessing is the same map, up to rounding)
    meta: dict[str, Any] = dict(card) if used == "pytorch_state_dict" else {}
    arch = descr.weights.pytorch_state_dict.architecture if used == "pytorch_state_dict" else None
    meta.update(
        name=card.get("name") or str(descr.name),
        description=card.get("description") or str(descr.description),
        normalization=norm,
        pixel_size_nm=inputs.pixel_size_nm if inputs.pixel_size_nm else card.get("pixel_size_nm"),
    )
    if arch is not None:
        meta["architecture"] = {"name": "UNet", **dict(arch.kwargs or {})}
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    meta["imported_from"] = path.name
    meta["bioimageio"] = {
        "name": str(descr.name), "id": str(descr.id) if descr.id else None, "weights": used,
        "license": str(descr.license) if descr.license else None, "output": output,
        "notes": inputs.notes, "napari_bnadapt_package": bool(config),
    }
    return meta
