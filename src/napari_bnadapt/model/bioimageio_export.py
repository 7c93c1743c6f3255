"""Export a model as a bioimage.io model package (spec 0.5) for deepImageJ, ilastik, BiaPy, QuPath.

The package (one ``.zip``) holds:

- ``rdf.yaml``: the description (inputs with the model's normalisation as preprocessing and the pixel
  size as axis scale in nanometres, the output, weights, citations, licence, the model card's facts);
- ``torchscript.pt`` (TorchScript, ``torch.jit.script`` of the eval-mode network: its BatchNorm modules
  stay modules, so their training flag stays switchable) and ``state_dict.pt`` (the PyTorch state dict)
  with ``napari_bnadapt_unet.py``, this project's U-Net source (BSD-3-Clause), as its architecture;
- ``test_input.npy`` / ``test_output.npy``: a toy crop (or the caller's image) and what the network
  itself makes of it, and the same as ``sample_input.tif`` / ``sample_output.tif`` for viewers;
  ``cover.png`` (input | probability); ``README.md``;
- attachments: ``model_card.json`` (the whole napari-bnadapt card), ``source_statistics.safetensors``
  (what the reliability check needs) and ``reliability.json`` (the reliability report, when given).

The network in the package outputs the mitochondrion probability (see
:mod:`~napari_bnadapt.model.bioimageio_common`). The description is validated with ``bioimageio.spec``
before the zip is written; nothing is looked up on the network.
"""

from __future__ import annotations

import copy
import datetime as _dt
import inspect
import json
import os
import re
import shutil
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..errors import BNAdaptError
from ..io.stack_view import Normalization
from . import unet as unet_module
from .bioimageio_common import (
    ARCHITECTURE_CALLABLE,
    CONFIG_KEY,
    OUTPUT_DESCRIPTION,
    MitochondrionProbability,
    input_dtype,
    normalization_to_preprocessing,
    require_bioimageio,
)
from .files import _json_default, default_meta
from .layout import LATENT_SPACES, MIN_SIDE, SIZE_MULTIPLE

if TYPE_CHECKING:
    from ..bound.report import ReliabilityReport
    from .unet import UNet

#: The papers to cite (the method, and BatchNorm adaptation).
CITATIONS: list[dict[str, str]] = [
    {"text": "Stenger et al. (2022). Fast and interpretable unsupervised domain adaptation for FIB-SEM cell "
             "segmentation. IEEE ISBI 2022.",
     "url": "https://scholar.google.com/scholar?q=%22Fast+and+interpretable+unsupervised+domain+adaptation+for+"
            "FIB-SEM+cell+segmentation%22"},
    {"text": "Li, Wang, Shi, Liu, Hou (2016). Revisiting batch normalization for practical domain adaptation "
             "(AdaBN). arXiv:1603.04779.",
     "doi": "10.48550/arXiv.1603.04779"},
    {"text": "Li, Wang, Shi, Hou, Liu (2018). Adaptive batch normalization for practical domain adaptation. "
             "Pattern Recognition 80, 109-117.",
     "doi": "10.1016/j.patcog.2018.03.005"},
]
#: Default test image side (the crop of the toy sample written as test tensor).
TEST_SIDE = 256
#: Halo the package asks tiling consumers (ilastik, deepImageJ) to crop from each tile's border, in pixels.
HALO = 32


def export_bioimageio(
    model: UNet,
    path: str | os.PathLike[str],
    *,
    reliability: ReliabilityReport | None = None,
    test_image: np.ndarray | None = None,
    name: str | None = None,
    description: str | None = None,
    authors: list[str] | None = None,
    license: str = "BSD-3-Clause",
    overwrite: bool = False,
) -> Path:
    """Export a model as a bioimage.io model package (a ``.zip`` for deepImageJ, ilastik, BiaPy, QuPath).

    The package's network outputs the mitochondrion probability (softmax channel 1, a float32 map in
    [0, 1]); its input is the raw image, normalised by the package's preprocessing exactly as
    napari-bnadapt normalises it. It holds TorchScript weights and the PyTorch state dict, test
    tensors computed by the model itself, a cover image, a README with the model card (training data,
    pixel size, metrics, adaptation provenance, reliability report) and the citations. The
    description is validated with ``bioimageio.spec`` before the file is written.

    Parameters
    ----------
    model : UNet
        The model (e.g. from :func:`load_model`, or adapted by :func:`adapt`); its ``meta`` is the card.
    path : str or path
        The package file (``.zip`` is appended when missing).
    reliability : ReliabilityReport or None, default None
        The reliability report of the adaptation (``WorkflowResult.reliability``): written to the
        README and attached as ``reliability.json``.
    test_image : ndarray or None, default None
        A 2D image (grey values in the model's range) for the test tensors; cropped to at most
        256 x 256 and a multiple of 16. None: a crop of the toy sample (``nb.sample_data.toy_source``).
    name : str or None, default None
        The package's name (letters, digits, ``_+- ()``); None: the model card's name.
    description : str or None, default None
        One paragraph for the model zoo; None: written from the model card.
    authors : list of str or None, default None
        Author names; None: "napari-bnadapt user".
    license : str, default "BSD-3-Clause"
        An SPDX licence identifier for the package.
    overwrite : bool, default False
        Replace an existing file. Without it an existing file is never touched.

    Returns
    -------
    Path
        The package written.

    Raises
    ------
    BNAdaptError
        The bioimageio libraries are missing, the file exists, the model is not this project's U-Net,
        or the test image does not fit.
    """
    require_bioimageio()
    from .unet import UNet

    if not isinstance(model, UNet):
        raise BNAdaptError(f"only napari-bnadapt U-Nets can be exported as bioimage.io packages, not a "
                           f"{type(model).__name__}")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".zip":
        path = path.with_name(path.name + ".zip")
    if path.exists() and not overwrite:
        raise BNAdaptError(f"{str(path)!r} already exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise BNAdaptError(f"the folder {str(path.parent)!r} does not exist")
    meta = copy.deepcopy({k: v for k, v in (getattr(model, "meta", None) or {}).items() if k != "arrays"})
    meta = {**default_meta(model, name=meta.get("name") or "napari-bnadapt-model"), **meta}
    meta["architecture"] = {"name": "UNet", **model.config()}
    arrays = dict((getattr(model, "meta", None) or {}).get("arrays") or {})
    with tempfile.TemporaryDirectory(prefix="bnadapt-bioimageio-") as tmp:
        folder = Path(tmp)
        rdf = _write_package_files(model, meta, arrays, folder, reliability, test_image, name, description,
                                   authors or ["napari-bnadapt user"], license)
        _save_package(rdf, folder, path)
    return path


# ------------------------------------------------------------------ the files
def _write_package_files(model: UNet, meta: dict[str, Any], arrays: dict[str, np.ndarray], folder: Path,
                         reliability: ReliabilityReport | None, test_image: np.ndarray | None, name: str | None,
                         description: str | None, authors: list[str], license: str) -> dict[str, Any]:
    import torch

    norm_meta = meta["normalization"]
    net = MitochondrionProbability(**model.config())
    net.unet.load_state_dict({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
    net.eval()
    torch.save(net.state_dict(), folder / "state_dict.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice: TorchScript is what the zoo runs
        torch.jit.save(torch.jit.script(net), str(folder / "torchscript.pt"))
    (folder / "napari_bnadapt_unet.py").write_text(architecture_source())

    image = _test_image(test_image, norm_meta)
    x = torch.from_numpy(Normalization.from_meta(norm_meta).apply(image)[None, None])
    with torch.no_grad():
        prob = net(x).numpy().astype(np.float32)
    np.save(folder / "test_input.npy", image[None, None])
    np.save(folder / "test_output.npy", prob)
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", image)  # for people (covers, the zoo's preview)
    tifffile.imwrite(folder / "sample_output.tif", prob[0, 0])
    _write_png(folder / "cover.png", _cover(image, prob[0, 0], norm_meta))

    attachments = ["model_card.json"]
    (folder / "model_card.json").write_text(json.dumps(meta, default=_json_default, indent=1))
    if arrays:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "source_statistics.safetensors"))
        attachments.append("source_statistics.safetensors")
    if reliability is not None:
        (folder / "reliability.json").write_text(json.dumps(reliability.to_dict(), default=_json_default, indent=1))
        attachments.append("reliability.json")
    pkg_name = _package_name(name or meta.get("name") or "napari-bnadapt model")
    (folder / "README.md").write_text(_readme(pkg_name, meta, reliability, license))
    return _rdf(model, meta, pkg_name, description, authors, license, image, attachments)


def architecture_source() -> str:
    """The source file shipped as the state dict's architecture: unet.py, self-contained, plus the output head."""
    text = Path(inspect.getsourcefile(unet_module) or "").read_text()
    text = text.replace("from .layout import LATENT_SPACES", f"LATENT_SPACES = {LATENT_SPACES!r}")
    if re.search(r"^from \.", text, flags=re.MULTILINE):
        raise RuntimeError("unet.py has a relative import the packaged architecture cannot resolve")
    head = inspect.getsource(MitochondrionProbability)
    return (f"# napari-bnadapt {__version__}: the U-Net (BSD-3-Clause), self-contained for bioimage.io packages.\n"
            + text + "\n\n" + head)


def _test_image(test_image: np.ndarray | None, norm: dict[str, Any]) -> np.ndarray:
    """A 2D crop (side a multiple of 16, at most TEST_SIDE) in the model's grey-value range and input dtype."""
    low, high = float(norm.get("low", 0.0)), float(norm.get("high", 255.0))
    dtype = np.dtype(input_dtype(norm))
    if test_image is None:
        from ..synthetic.samples import toy_source

        toy = toy_source()[0][0].astype(np.float64)
        image = low + toy / 255.0 * (high - low)
    else:
        image = np.asarray(test_image)
        if image.ndim == 3 and image.shape[0] >= 1:
            image = image[image.shape[0] // 2]
        if image.ndim != 2:
            raise BNAdaptError(f"the test image must be 2D (Y, X), not of shape {image.shape}")
        if not np.isfinite(image).all() or image.min() < low or image.max() > high:
            raise BNAdaptError(f"the test image's grey values must lie in the model's range {low:g}..{high:g}")
    h, w = (min(TEST_SIDE, s) // SIZE_MULTIPLE * SIZE_MULTIPLE for s in image.shape)
    if min(h, w) < max(MIN_SIDE, 2 * HALO + SIZE_MULTIPLE):
        raise BNAdaptError(f"the test image is {image.shape[0]} x {image.shape[1]} pixels; at least "
                           f"{2 * HALO + SIZE_MULTIPLE} x {2 * HALO + SIZE_MULTIPLE} are needed")
    y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    crop = image[y0:y0 + h, x0:x0 + w]
    if dtype.kind == "u":
        crop = np.clip(np.rint(crop), low, high)
    return np.ascontiguousarray(crop.astype(dtype))


def _package_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", str(name)).strip()[:64]
    return clean if len(clean) >= 5 else f"napari-bnadapt {clean}".strip()


# ------------------------------------------------------------------ the description
def _axes(px: list[float] | None, *, output: bool) -> list[dict[str, Any]]:
    channel = {"type": "channel", "channel_names": ["mitochondrion_probability" if output else "em"]}
    axes: list[dict[str, Any]] = [{"type": "batch"}, channel]
    for i, ax in enumerate(("y", "x")):
        a: dict[str, Any] = {"type": "space", "id": ax}
        if output:
            a.update(size={"tensor_id": "raw", "axis_id": ax}, halo=HALO)
        else:
            a["size"] = {"min": 2 * HALO + SIZE_MULTIPLE, "step": SIZE_MULTIPLE}
        if px:
            a.update(scale=float(px[i]), unit="nanometer")
        axes.append(a)
    return axes


def _rdf(model: UNet, meta: dict[str, Any], pkg_name: str, description: str | None, authors: list[str],
         license: str, image: np.ndarray, attachments: list[str]) -> dict[str, Any]:
    import torch

    norm = meta["normalization"]
    low, high = float(norm.get("low", 0.0)), float(norm.get("high", 255.0))
    px = meta.get("pixel_size_nm")
    training = meta.get("training") or {}
    recipe, metrics = training.get("recipe") or {}, training.get("metrics") or {}
    adaptation = meta.get("adaptation")
    torch_version = torch.__version__.split("+")[0]
    if description is None:
        description = ("U-Net segmenting mitochondria in electron-microscopy images (napari-bnadapt). "
                       + (f"Trained on: {meta['description']}. " if meta.get("description") else "")
                       + (f"Adapted to a new volume by BatchNorm adaptation (AdaBN) from {adaptation.get('source_model')}. "
                          if adaptation else "")
                       + "Output: " + OUTPUT_DESCRIPTION + ".")
    bio_training = {k: v for k, v in {
        "training_preprocessing": "grey values -> (x - mean) / std with the model's fixed constants",
        "training_batch_size": recipe.get("batch_size"), "initial_learning_rate": recipe.get("lr"),
        "learning_rate_schedule": recipe.get("schedule"), "loss_function": recipe.get("loss"),
        "optimizer": recipe.get("optimizer"), "training_duration": training.get("seconds"),
    }.items() if v is not None}
    return {
        "format_version": "0.5.12",
        "type": "model",
        "name": pkg_name,
        "description": description,
        "authors": [{"name": a} for a in authors],
        "packaged_by": [{"name": f"napari-bnadapt {__version__}"}],
        "cite": CITATIONS,
        "license": license,
        "tags": ["napari-bnadapt", "unet", "2d", "electron-microscopy", "fib-sem", "mitochondria",
                 "semantic-segmentation", "pytorch", "domain-adaptation", "adabn"],
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "attachments": [{"source": a} for a in attachments],
        "version": "1.0",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "inputs": [{
            "id": "raw",
            "description": f"EM grey values ({low:g}..{high:g}), one 2D image or a batch of them",
            "axes": _axes(px, output=False),
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": input_dtype(norm), "range": [low, high]},
            "preprocessing": normalization_to_preprocessing(norm),
        }],
        "outputs": [{
            "id": "mitochondrion_probability",
            "description": OUTPUT_DESCRIPTION[:128],
            "axes": _axes(px, output=True),
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "state_dict.pt",
                "architecture": {"source": "napari_bnadapt_unet.py", "callable": ARCHITECTURE_CALLABLE,
                                 "kwargs": dict(model.config())},
                "pytorch_version": torch_version,
            },
            "torchscript": {"source": "torchscript.pt", "pytorch_version": torch_version,
                            "parent": "pytorch_state_dict",
                            "comment": "torch.jit.script of the eval-mode network (BatchNorm modules kept)"},
        },
        "config": {
            "bioimageio": {
                "architecture_type": "U-Net",
                "modality": "electron microscopy (FIB-SEM, SBF-SEM, TEM)",
                "target_structure": ["mitochondria"],
                "task": "semantic segmentation",
                "model_parameter_count": int(sum(p.numel() for p in model.parameters())),
                "training": bio_training,
            },
            CONFIG_KEY: {
                "format": "napari-bnadapt-bioimageio", "format_version": 1, "version": __version__,
                "architecture": meta["architecture"], "normalization": norm, "pixel_size_nm": px,
                "output": "softmax channel 1 of the U-Net's (background, mitochondrion) logits",
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)},
                "adapted": bool(adaptation), "model_card": "model_card.json",
            },
        },
    }


def _validation_context(folder: Path) -> Any:
    from bioimageio.spec import ValidationContext

    # the citation URLs are links for readers: never fetched while validating
    return ValidationContext(root=folder, perform_io_checks=True, known_files={c["url"]: None for c in CITATIONS
                                                                                if "url" in c})


def _save_package(rdf: dict[str, Any], folder: Path, path: Path) -> None:
    from bioimageio.spec import InvalidDescr, build_description, save_bioimageio_package

    with _validation_context(folder):
        descr = build_description(rdf, context=_validation_context(folder))
        if isinstance(descr, InvalidDescr):
            if any(e.loc and e.loc[0] == "license" for d in descr.validation_summary.details for e in d.errors):
                raise BNAdaptError(f"{rdf['license']!r} is not an SPDX licence identifier (for example "
                                   "'BSD-3-Clause', 'MIT', 'CC-BY-4.0')")
            raise BNAdaptError(f"the bioimage.io description would not be valid: "
                               f"{_first_errors(descr)}")
        fd, tmp = tempfile.mkstemp(suffix=".zip.tmp", dir=path.parent)
        os.close(fd)
        try:
            save_bioimageio_package(descr, output_path=Path(tmp), compression_level=6)
            shutil.move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _first_errors(descr: Any, n: int = 3) -> str:
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg[:200]}" for d in descr.validation_summary.details
              for e in d.errors]
    return "; ".join(errors[:n]) or "no details"


# ------------------------------------------------------------------ README, cover
def _readme(name: str, meta: dict[str, Any], reliability: ReliabilityReport | None, license: str) -> str:
    norm = meta["normalization"]
    pre = normalization_to_preprocessing(norm)[1]["kwargs"]
    px = meta.get("pixel_size_nm")
    training = meta.get("training") or {}
    metrics = training.get("metrics") or {}
    data = training.get("data") or {}
    size = 2 * HALO + SIZE_MULTIPLE
    pixel = " x ".join(f"{v:g}" for v in px) + " nm (y, x)" if px else "unknown"
    lines = [
        f"# {name}", "",
        f"A U-Net that segments mitochondria in 2D electron-microscopy images, exported by napari-bnadapt {__version__}.",
        "", "## Input and output", "",
        (f"- Input `raw`: grey values {norm.get('low', 0):g}..{norm.get('high', 255):g}, axes (batch, channel, y, x), "
         f"y and x multiples of {SIZE_MULTIPLE} pixels (at least {size})."),
        (f"- Preprocessing: `(x - {pre['mean']:.6g}) / {pre['std']:.6g}` (fixed_zero_mean_unit_variance), exactly "
         "the normalisation the model was trained with."),
        f"- Pixel size: {pixel}. Rescale images with a different pixel size before segmenting them.",
        (f"- Output `mitochondrion_probability`: {OUTPUT_DESCRIPTION}; threshold at 0.5 for labels. When tiling, "
         f"crop a halo of {HALO} pixels from each tile's border."),
        "", "## Training data", "",
        meta.get("description") or data.get("description") or "Not recorded.", "",
    ]
    if data.get("shape"):
        lines += [f"Training volume: {' x '.join(map(str, data['shape']))} ({data.get('dtype', '?')}).", ""]
    lines += ["## Validation", ""]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    lines += [f"- {k}: {v:.4g}" for k, v in shown.items()] or ["No metrics recorded."]
    lines += ["", ("The test tensors (`test_input.npy`, `test_output.npy`) were computed by the model itself; "
                   "bioimage.io tools reproduce them to check an installation."), ""]
    adaptation = meta.get("adaptation")
    if adaptation:
        rep = adaptation.get("report") or {}
        lines += ["## Adaptation (AdaBN)", "",
                  (f"Adapted from `{adaptation.get('source_model')}` by re-estimating its BatchNorm statistics on an "
                   f"unlabelled target volume {adaptation.get('target', {}).get('shape')} ({rep.get('mode', '?')} "
                   f"estimator, {rep.get('n_patches', '?')} patches of {rep.get('patch_size', '?')}, target grey "
                   f"range {rep.get('intensity_range', '?')})."), ""]
    if reliability is not None:
        lines += ["## Reliability of the adaptation", "", "```", str(reliability), "```", "",
                  "The full report is attached as `reliability.json`.", ""]
    lines += ["## How to use", "",
              "- deepImageJ / ilastik / BiaPy / QuPath: import this .zip as a bioimage.io model.",
              ("- napari-bnadapt: `nb.load_model('this.zip')` (the whole model card comes back from "
               "`model_card.json`); adapt it to your data with `nb.adapt`."), "",
              "## Citations", ""]
    lines += [f"- {c['text']}" for c in CITATIONS]
    lines += ["", "## Licence", "", license, ""]
    return "\n".join(lines)


def _cover(image: np.ndarray, prob: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """RGB uint8 cover, 2:1: the input, and the input with the probability in magenta."""
    low, high = float(norm.get("low", 0.0)), float(norm.get("high", 255.0))
    grey = np.clip((image.astype(np.float32) - low) / (high - low), 0, 1)
    left = np.repeat(grey[..., None], 3, axis=-1)
    right = left * 0.5
    right[..., 0] += 0.5 * prob
    right[..., 2] += 0.5 * prob
    return (np.concatenate([left, right], axis=1) * 255 + 0.5).astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """A minimal PNG writer (8-bit RGB), so export needs no imaging library."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path.write_bytes(png)

