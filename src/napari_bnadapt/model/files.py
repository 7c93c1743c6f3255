"""Model files: safetensors weights plus JSON metadata, in one self-contained file.

A model file is data, never code. ``.safetensors`` files are parsed without any
code execution. A plain PyTorch state dict of the same U-Net (``.pt``/``.pth``)
may be imported, but only through ``torch.load(weights_only=True)``, which
refuses pickled code.

The metadata (the model card) is a JSON document stored in the safetensors
header under the key ``napari_bnadapt``: architecture, input normalisation,
training pixel size, training provenance and metrics, and after adaptation the
adaptation provenance. Extra arrays (e.g. source latent statistics) are stored
as tensors whose names start with ``extra.``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import settings
from ..errors import BNAdaptError, ModelFileError
from .card import ModelCard

if TYPE_CHECKING:
    import torch

    from .unet import UNet
from ..io.stack_view import Normalization
from .device import get_device

FORMAT = "napari-bnadapt-model"
FORMAT_VERSION = 1
_META_KEY = "napari_bnadapt"
_EXTRA = "extra."
_MODEL_SUFFIX = ".safetensors"
BUNDLED_DIR = Path(__file__).parent / "bundled"
#: The toy model: the demo and the toy sample data use it (it knows only the synthetic toy images).
DEMO_MODEL = "toy-perlin"
#: The model the CLI and the widget start with for the user's own EM stacks: trained from scratch on every
#: labelled EM volume of the project (Lucchi++ FIB-SEM and VNC ssTEM at 5 nm) with EM domain randomisation.
#: ``em-generalist`` (its first version, fine-tuned from ``lucchi-pp``) stays bundled so that its published
#: figures can be rerun; ``lucchi-pp`` and ``vnc`` (single-source) for the papers' experiments. See docs/models.md.
DEFAULT_EM_MODEL = "em-generalist-2"


def user_model_dir() -> Path:
    """Folder for the user's own models (``$BNADAPT_MODEL_DIR`` or ``~/.napari-bnadapt/models``).

    Models saved there (e.g. by the training widget) are listed by :func:`list_models`.
    The variable is read through :func:`napari_bnadapt.settings.model_dir`.
    """
    return settings.model_dir() or Path.home() / ".napari-bnadapt" / "models"


def _model_paths() -> dict[str, Path]:
    paths = {}
    for folder in (user_model_dir(), BUNDLED_DIR):  # bundled names win over user ones
        if folder.is_dir():
            for p in sorted(folder.glob(f"*{_MODEL_SUFFIX}")):
                paths[p.name[: -len(_MODEL_SUFFIX)]] = p
    return paths


def list_models() -> list[str]:
    """Names of the models that :func:`load_model` accepts by name.

    Returns
    -------
    list of str
        The bundled models (shipped in the package, e.g. ``"toy-perlin"``), then the
        user's models in :func:`user_model_dir`, sorted by name.
    """
    return sorted(_model_paths())


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Path of a bundled/user model given by name, or the given file path."""
    paths = _model_paths()
    if isinstance(name_or_path, str) and name_or_path in paths:
        return paths[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise BNAdaptError(f"{str(path)!r} is not a file; choose a model file (.safetensors)")
    raise BNAdaptError(
        f"no model named {str(name_or_path)!r}: give a file path or one of {', '.join(sorted(paths)) or '(none installed)'}"
    )


def _read_safetensors_header(path: Path) -> dict[str, Any] | None:
    """The safetensors JSON header, or None when the file is not safetensors at all.

    Raises ModelFileError when it starts like safetensors but is damaged.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        first = fh.read(1)
        if first != b"{" or n < 2 or n > 100 * 2**20:
            return None
        if 8 + n > size:
            raise ModelFileError(f"the model file {path.name!r} is truncated (its header is cut off); download or copy it again")
        raw = first + fh.read(n - 1)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"the model file {path.name!r} is damaged (unreadable header)") from exc
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelFileError(
            f"the model file {path.name!r} is truncated ({size} bytes, {8 + n + end} expected); download or copy it again"
        )
    return header


def model_card(name_or_path: str | os.PathLike[str]) -> ModelCard:
    """The metadata of a model file, read without loading the weights.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`list_models` or a file path.

    Returns
    -------
    ModelCard
        Name, description, pixel size, training record and metrics, adaptation
        provenance, calibration; ``imported=True`` for a plain state dict.
    """
    path = resolve_model_path(name_or_path)
    header = _read_safetensors_header(path)
    if header is None:
        return ModelCard(name=path.stem, path=str(path), imported=True)
    return ModelCard.from_meta(_parse_meta(header.get("__metadata__") or {}, path), path.stem, str(path))


def _parse_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    if _META_KEY not in raw:
        return {"imported": True}
    try:
        meta = json.loads(raw[_META_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"the model file {path.name!r} has damaged metadata") from exc
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path.name!r} is not a napari-bnadapt model file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name!r} was written by a newer napari-bnadapt (format {meta['format_version']}); update the plugin"
        )
    return meta


def load_model(name_or_path: str | os.PathLike[str], device: str = "auto") -> UNet:
    """Load a model by name (see :func:`list_models`) or from a file.

    Parameters
    ----------
    name_or_path : str or path
        A bundled or user model name (e.g. ``"toy-perlin"``), or a path to a
        ``.safetensors`` model file, or to a plain PyTorch state dict
        (``.pt``/``.pth``) of this project's U-Net, read with
        ``torch.load(weights_only=True)`` (no code is ever executed), or a bioimage.io
        model package (``.zip``, ``rdf.yaml``/``bioimageio.yaml``) with TorchScript weights or a
        state dict of this U-Net (see :mod:`napari_bnadapt.model.bioimageio_import`).
    device : str, default "auto"
        Where to put the model: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps".

    Returns
    -------
    UNet
        The model in eval mode, with its model card in ``model.meta``.

    Raises
    ------
    ModelFileError
        The file is truncated, damaged, foreign, or holds code instead of weights.
    """
    path = resolve_model_path(name_or_path)
    from .bioimageio_import import is_bioimageio_source, load_bioimageio_model

    if is_bioimageio_source(path):  # a bioimage.io package (.zip) or its rdf.yaml / bioimageio.yaml
        return load_bioimageio_model(path, device)
    header = _read_safetensors_header(path)
    if header is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = _parse_meta(header.get("__metadata__") or {}, path)
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"the model file {path.name!r} is damaged: {exc}") from exc
    else:
        tensors, meta = _import_state_dict(path), {"imported": True}
    state = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    extras = {k[len(_EXTRA):]: v.numpy() for k, v in tensors.items() if k.startswith(_EXTRA)}
    model = _build(state, meta, path)
    if meta.get("imported"):
        model.meta = default_meta(model, name=path.stem)
        model.meta["imported_from"] = path.name
    else:
        model.meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    model.meta["name"] = model.meta.get("name") or path.stem
    if extras:
        model.meta["arrays"] = extras
    model.eval()
    return model.to(get_device(device))


def _import_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise ModelFileError(
            f"{path.name!r} is not a model file this plugin can read: expected a .safetensors file "
            "(or a PyTorch state dict of the napari-bnadapt U-Net)"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"refused to load {path.name!r}: it contains Python objects or code, not just weights. "
            "Model files are data; only plain weights (safetensors, or a state dict of tensors) are accepted."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelFileError(f"the model file {path.name!r} is truncated or damaged: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path.name!r} does not hold a state dict of tensors")
    return obj


def _build(state: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> UNet:
    from .unet import UNet

    arch = meta.get("architecture")
    try:
        if arch is None:
            arch = _infer_architecture(state)
        if arch.get("name", "UNet") != "UNet":
            raise ModelFileError(f"{path.name!r}: unknown architecture {arch.get('name')!r}")
        model = UNet(**{k: v for k, v in arch.items() if k != "name"})
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path.name!r} does not hold weights of the napari-bnadapt U-Net ({str(exc).splitlines()[0]})"
        ) from exc
    return model


def _infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    w = state["inc.conv1.weight"]
    return {
        "name": "UNet",
        "in_channels": int(w.shape[1]),
        "n_classes": int(state["outc.weight"].shape[0]),
        "width": int(w.shape[0]),
        "bilinear": "up1.up.weight" not in state,
    }


def default_meta(model: UNet, *, name: str | None = None) -> dict[str, Any]:
    """A minimal model card for a model that has none (8-bit input assumed).

    A model that is not this project's U-Net gets
    :func:`napari_bnadapt.model.foreign.meta_for`'s card instead: grey values mapped to [0, 1].
    """
    from .foreign import is_project_unet, meta_for

    if not is_project_unet(model):
        return meta_for(model, name=name)
    return {
        "name": name,
        "architecture": {"name": "UNet", **model.config()},
        "normalization": Normalization().to_meta(),
        "pixel_size_nm": None,
        "created": _now(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in model metadata")


def save_model(model: UNet, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Save a model (weights + model card) to one self-contained ``.safetensors`` file.

    Parameters
    ----------
    model : UNet
        The model; its ``meta`` dict is stored as the model card, and numpy
        arrays in ``meta["arrays"]`` as extra tensors.
    path : str or path
        Destination file (``.safetensors`` is appended when missing).
    overwrite : bool, default False
        Replace an existing file. Without it an existing file is never touched.

    Returns
    -------
    Path
        The file written.
    """
    import torch
    from safetensors.torch import save_file

    from .unet import UNet

    if not isinstance(model, UNet):
        raise BNAdaptError(
            f"save_model writes this project's U-Net; this is a {type(model).__name__}. Save a model built "
            "elsewhere with torch.save(model.state_dict(), ...) or torch.jit.save, or as a bioimage.io package "
            "(napari_bnadapt.export_bioimageio)"
        )
    path = Path(path).expanduser()
    if path.suffix != _MODEL_SUFFIX:
        path = path.with_name(path.name + _MODEL_SUFFIX)
    if path.exists() and not overwrite:
        raise BNAdaptError(f"{str(path)!r} already exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise BNAdaptError(f"the folder {str(path.parent)!r} does not exist")
    meta = copy.deepcopy({k: v for k, v in getattr(model, "meta", {}).items() if k not in ("arrays", "path")})
    arrays = dict(getattr(model, "meta", {}).get("arrays", {}))
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, architecture={"name": "UNet", **model.config()})
    meta.setdefault("normalization", default_meta(model)["normalization"])
    meta.setdefault("saved", _now())
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for k, a in arrays.items():
        tensors[_EXTRA + k] = torch.from_numpy(np.ascontiguousarray(a))
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta, default=_json_default)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
