"""Models built elsewhere: what the core needs from ANY network, and how it checks it.

``adapt``, ``predict``, ``segment`` accept, besides this project's :class:`~napari_bnadapt.model.unet.UNet`,
any PyTorch ``nn.Module`` (a torch-em or BiaPy U-Net, one written in a script) and TorchScript
modules (``torch.jit.script``, or a ``.pt`` written by ``torch.jit.save`` and read with
``torch.jit.load``), as long as

* it takes ``(B, 1, H, W)`` float input (one grey channel) for any H, W that are multiples of 16,
* it returns ``(B, C, H, W)`` with C = 1 (a foreground logit: sigmoid) or C = 2 (background and
  foreground logits: softmax, class 1), the input's height and width,
* for adaptation: it has BatchNorm layers (1d/2d/3d) that keep running statistics, and those layers
  can be switched to train mode (a TRACED TorchScript model cannot: the flag was frozen at trace time).

``adapt`` checks all this on its copy of the model with two dry runs on a (2, 1, 64, 64) ramp (eval,
then BatchNorm in train mode; the statistics are restored) before it reads any patch; ``predict`` checks
the declared input channels, then the first batch. Failures are a :class:`~napari_bnadapt.errors.BNAdaptError`
that says what is wrong. What needs this project's U-Net
(BatchNorm folding at inference, latent spaces by name for the reliability check) falls back or says so
(docs/models.md, 'Adapting a model built elsewhere').

Input normalisation: a model without a model card (``model.meta``) gets the card of :func:`meta_for`,
whose input is the grey values mapped to [0, 1] WITHOUT standardisation (``mean=0, std=1``): pass
``intensity_range=(lo, hi)`` (or ``"auto"``) to ``adapt``/``predict``/``segment`` to map ``lo`` -> 0,
``hi`` -> 1. For another input convention, set ``model.meta = meta_for(model, mean=..., std=...)``.

torch is imported only inside the functions (a network is running anyway when they are called).
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import BNAdaptError

#: The kinds of model :func:`describe` tells apart.
UNET, SCRIPTED, TRACED, MODULE = "unet", "scripted", "traced", "module"
#: ``original_name`` of the BatchNorm modules inside a TorchScript module.
BATCHNORM_NAMES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
                             "LazyBatchNorm2d", "LazyBatchNorm3d"})
#: Side of the dry-run input (pixels): a multiple of 64, so networks with up to six 2x poolings pass.
PROBE_SIDE = 64
#: The model-side normalisation of a model without a card: grey values -> [0, 1], no standardisation.
FOREIGN_NORMALIZATION: dict[str, Any] = {"mode": "fixed", "low": 0.0, "high": 1.0, "mean": 0.0, "std": 1.0}

TRACED_MESSAGE = (
    "this TorchScript model was traced in {mode} mode: its BatchNorm layers cannot re-estimate statistics "
    "(the training flag is a constant of the traced graph{layers}); export it with torch.jit.script, or load "
    "the state dict into the architecture from a script"
)
RELIABILITY_MESSAGE = (
    "the reliability check needs this project's U-Net (named latent spaces) and source statistics in the "
    "model file; this model ({what}) has neither. Adaptation and segmentation work without it."
)


@dataclass(frozen=True)
class ModelKind:
    """What kind of network a model is, as far as this package cares.

    Attributes
    ----------
    kind : str
        ``"unet"`` (this project's U-Net), ``"scripted"`` (a TorchScript module whose BatchNorm
        layers follow their train/eval flag: ``torch.jit.script``), ``"traced"`` (a TorchScript
        module with at least one BatchNorm whose training flag is a constant: ``torch.jit.trace``)
        or ``"module"`` (any other ``torch.nn.Module``).
    name : str
        The class name (for TorchScript, the name of the scripted class).
    n_batchnorm : int
        Number of BatchNorm layers.
    frozen : tuple of (str, bool)
        BatchNorm layers whose training flag is baked into a traced graph, with the baked value.
    """

    kind: str
    name: str
    n_batchnorm: int
    frozen: tuple[tuple[str, bool], ...] = ()

    @property
    def is_unet(self) -> bool:
        return self.kind == UNET

    @property
    def is_torchscript(self) -> bool:
        return self.kind in (SCRIPTED, TRACED)

    def __str__(self) -> str:
        what = {UNET: "a napari-bnadapt U-Net", SCRIPTED: "a scripted TorchScript model",
                TRACED: "a traced TorchScript model", MODULE: "a PyTorch model built elsewhere"}[self.kind]
        return f"{what} ({self.name}, {self.n_batchnorm} BatchNorm layers)"


def require_module(model: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise BNAdaptError(
            f"expected a PyTorch model (torch.nn.Module, e.g. from nb.load_model or torch.jit.load), "
            f"not {type(model).__name__}"
        )


def is_project_unet(model: Any) -> bool:
    """Whether ``model`` is this project's U-Net (BatchNorm folding, named latent spaces, model files)."""
    from .unet import UNet

    return isinstance(model, UNet)


def _is_batchnorm(module: Any) -> bool:
    import torch

    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") in BATCHNORM_NAMES


def batchnorm_layers(model: Any) -> list[tuple[str, Any]]:
    """All BatchNorm (1d/2d/3d, sync) layers with their qualified names, in module order.

    Plain modules are recognised by class; inside a TorchScript module (scripted, traced or
    loaded with ``torch.jit.load``) by the ``original_name`` of the scripted submodule.
    """
    return [(n, m) for n, m in model.named_modules() if _is_batchnorm(m)]


def _baked_training(bn: Any) -> bool | None:
    """The constant training flag of a TorchScript BatchNorm's ``aten::batch_norm`` (None: not a constant)."""
    graph = getattr(bn, "inlined_graph", None)
    if graph is None:
        return None
    for node in graph.nodes():
        if node.kind() == "aten::batch_norm":
            flag = list(node.inputs())[5]
            if flag.node().kind() == "prim::Constant":
                return bool(flag.toIValue())
    return None


def describe(model: Any) -> ModelKind:
    """What kind of network ``model`` is (see :class:`ModelKind`); reads the graph, runs nothing."""
    import torch

    require_module(model)
    layers = batchnorm_layers(model)
    if is_project_unet(model):
        return ModelKind(UNET, "UNet", len(layers))
    script = isinstance(model, torch.jit.ScriptModule)
    name = getattr(model, "original_name", None) if script else None
    frozen = tuple((n, flag) for n, bn in layers if isinstance(bn, torch.jit.ScriptModule)
                   and (flag := _baked_training(bn)) is not None)
    if frozen or isinstance(model, torch.jit.TracedModule):
        return ModelKind(TRACED, name or type(model).__name__, len(layers), frozen)
    if script or any(isinstance(bn, torch.jit.ScriptModule) for _, bn in layers):
        return ModelKind(SCRIPTED, name or type(model).__name__, len(layers))
    return ModelKind(MODULE, type(model).__name__, len(layers))


def traced_error(kind: ModelKind) -> BNAdaptError:
    """The error for a model whose BatchNorm training flags are frozen (see :data:`TRACED_MESSAGE`)."""
    modes = {flag for _, flag in kind.frozen}
    names = [n for n, _ in kind.frozen]
    layers = f": {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else ""
    return BNAdaptError(TRACED_MESSAGE.format(mode="train" if modes == {True} else "eval", layers=layers))


# ------------------------------------------------------------------ output, input, dry run
def output_to_foreground(logits: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """Foreground probability (B, H, W) float32 from the network output (B, C, H, W).

    C = 1: a foreground logit (sigmoid); C = 2: background and foreground logits (softmax,
    class 1). Anything else raises :class:`BNAdaptError`, and so does an output whose height and
    width differ from those of ``input_shape`` (when given).
    """
    import torch

    if not isinstance(logits, torch.Tensor):
        raise BNAdaptError(
            f"the model returned a {type(logits).__name__}, not one tensor; wrap it so that forward() returns "
            "the (B, C, H, W) logits of the last layer only"
        )
    if logits.dim() != 4:
        raise BNAdaptError(f"the model returned a {logits.dim()}-D output {tuple(logits.shape)}; "
                           "expected (batch, channels, height, width) logits of a 2D segmentation network")
    if input_shape is not None and tuple(logits.shape[-2:]) != tuple(input_shape[-2:]):
        raise BNAdaptError(
            f"the model returns {tuple(logits.shape[-2:])} pixels for an input of {tuple(input_shape[-2:])}; only "
            "networks whose output has the input's size (padded convolutions) are supported"
        )
    c = int(logits.shape[1])
    if c == 1:
        return torch.sigmoid(logits[:, 0].float())
    if c == 2:
        return torch.softmax(logits.float(), dim=1)[:, 1]
    raise BNAdaptError(
        f"the model has {c} output channels; napari-bnadapt segments one foreground class and needs 1 output "
        "channel (a foreground logit, sigmoid) or 2 (background and foreground logits, softmax). Wrap the model "
        "so that it returns only the mitochondrion channel(s)."
    )


def input_channels(model: Any) -> int | None:
    """The number of input channels the model declares (``in_channels`` / ``in_chans``), or None."""
    for attr in ("in_channels", "in_chans", "n_channels"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _channels_error(n: int | str) -> BNAdaptError:
    return BNAdaptError(
        f"the model expects {n} input channels; napari-bnadapt feeds one grey channel (B, 1, H, W). "
        "Use a model with 1 input channel (or wrap it to repeat the grey channel)."
    )


def check_declared_channels(model: Any) -> None:
    """Refuse a model that declares (:func:`input_channels`) other than one input channel; runs nothing."""
    declared = input_channels(model)
    if declared is not None and declared != 1:
        raise _channels_error(declared)


_CHANNELS = re.compile(r"to have (\d+) channels")


def _bn_buffers(model: Any) -> list[Any]:
    return [b for _, bn in batchnorm_layers(model) for b in (bn.running_mean, bn.running_var,
                                                                getattr(bn, "num_batches_tracked", None))
            if b is not None]


def probe(model: Any, device: Any, *, train_batchnorm: bool = False) -> tuple[Any, bool]:
    """Run ``model`` once on a (2, 1, 64, 64) ramp on ``device``: (its output, whether BatchNorm buffers moved).

    The BatchNorm buffers and train/eval flags are restored afterwards. Errors of the forward pass
    that mean "not one grey input channel" become a :class:`BNAdaptError` that says so.
    """
    import torch

    x = torch.linspace(-1.0, 1.0, 2 * PROBE_SIDE * PROBE_SIDE, device=device).reshape(2, 1, PROBE_SIDE, PROBE_SIDE)
    buffers = [(b, b.detach().clone()) for b in _bn_buffers(model)]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if train_batchnorm:
            for _, bn in batchnorm_layers(model):
                bn.train()
        with torch.no_grad():
            out = model(x)
        changed = [not torch.equal(b, saved) for b, saved in buffers]
    except RuntimeError as exc:
        raise forward_error(exc, tuple(x.shape)) from exc
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, t in flags:
            m.training = t
    return out, any(changed)


def forward_error(exc: BaseException, shape: tuple[int, ...]) -> BNAdaptError:
    """A forward pass of a model built elsewhere failed on input of ``shape``: say why in words.

    "expected input ... to have 3 channels" (PyTorch's convolution message) becomes "the model expects
    3 input channels"; anything else names the input the model was given and what it must accept.
    """
    msg = str(exc)
    found = _CHANNELS.search(msg)
    if found and found.group(1) != "1":
        return _channels_error(found.group(1))
    first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return BNAdaptError(
        f"the model failed on an input of shape {shape} ({first}); it must take one grey channel (B, 1, H, W) "
        "for any H, W that are multiples of 16 and return (B, 1 or 2, H, W) logits"
    )


def check_io(model: Any, device: Any) -> bool:
    """Check by a dry run that ``model`` maps (B, 1, H, W) to (B, 1 or 2, H, W); raise a clear error if not.

    Returns whether the dry run (in eval mode) moved any BatchNorm running statistic (they are restored).
    """
    check_declared_channels(model)
    out, moved = probe(model, device)
    output_to_foreground(out, (PROBE_SIDE, PROBE_SIDE))
    return moved


def check_adaptable(model: Any, device: Any) -> ModelKind:
    """Check that BatchNorm adaptation can change ``model``'s statistics; raise a clear error if not.

    Refuses traced TorchScript models (training flag frozen, read from the graph), and models whose
    BatchNorm running statistics do not move in train mode or move in eval mode (two dry runs; the
    statistics are restored), after :func:`check_io`. Returns :func:`describe`'s answer.
    """
    kind = describe(model)
    if kind.is_unet:
        return kind
    if kind.kind == TRACED:
        raise traced_error(kind)
    moved_eval = check_io(model, device)
    _, moved_train = probe(model, device, train_batchnorm=True)
    if moved_eval or not moved_train:
        names = [n for n, _ in batchnorm_layers(model)]
        raise traced_error(ModelKind(TRACED, kind.name, kind.n_batchnorm, tuple((n, moved_eval) for n in names)))
    return kind


class BatchStatisticsReader:
    """Per-batch BatchNorm statistics of a TorchScript module, read back from its running buffers.

    A TorchScript module accepts no Python forward hooks and its BatchNorm momentum ``f`` is a
    compiled constant. So, with the BatchNorm layers in train mode: :meth:`reset` sets every running
    mean, variance and batch counter to zero; after one forward pass the buffers hold ``f * mean`` and
    ``f * unbiased variance`` of that batch (``f = 1`` for ``momentum=None``, the cumulative average
    of one batch); :meth:`read` divides them back out. The source statistics are kept in ``source``.
    """

    def __init__(self, model: Any, layers: list[tuple[str, Any]]) -> None:
        self.model, self.layers = model, layers
        self.source = {n: (bn.running_mean.detach().clone(), bn.running_var.detach().clone()) for n, bn in layers}
        self.counters = {n: bn.num_batches_tracked.detach().clone() for n, bn in layers
                         if getattr(bn, "num_batches_tracked", None) is not None}
        self.factors: dict[str, float] = {}
        for name, bn in layers:
            m = getattr(bn, "momentum", 0.0)  # traced modules keep no momentum: refused like frozen ones
            if m is not None and not float(m) > 0:
                raise self._frozen(name)
            self.factors[name] = 1.0 if m is None else float(m)
        model.eval()
        for _, bn in layers:
            bn.train()

    def _frozen(self, name: str) -> BNAdaptError:
        return traced_error(ModelKind(TRACED, type(self.model).__name__, len(self.layers), ((name, False),)))

    def reset(self) -> None:
        """Zero every running mean, variance and batch counter (before a forward pass)."""
        import torch

        with torch.no_grad():
            for name, bn in self.layers:
                bn.running_mean.zero_()
                bn.running_var.zero_()
                if name in self.counters:
                    bn.num_batches_tracked.zero_()

    def read(self, first: bool = False) -> dict[str, tuple[Any, Any]]:
        """``{layer: (mean, unbiased variance)}`` in float64 of the batch just run.

        With ``first``: raise the traced-model error when a layer did not update its statistics
        (batch counter still zero and variance still zero: its training flag is frozen).
        """
        out = {}
        for name, bn in self.layers:
            if first and name in self.counters and not int(bn.num_batches_tracked) and not bn.running_var.any():
                raise self._frozen(name)
            f = self.factors[name]
            out[name] = (bn.running_mean.detach().double() / f, bn.running_var.detach().double() / f)
        return out

    def write(self, target: dict[str, tuple[Any, Any]]) -> None:
        """Set the running statistics to ``target`` (in the buffers' dtype)."""
        import torch

        with torch.no_grad():
            for name, bn in self.layers:
                bn.running_mean.copy_(target[name][0].to(bn.running_mean.dtype))
                bn.running_var.copy_(target[name][1].to(bn.running_var.dtype))

    def finish(self, restore_source: bool) -> None:
        """Restore the batch counters (and the source statistics after a failure); back to eval mode."""
        import torch

        if restore_source:
            self.write(self.source)
        with torch.no_grad():
            for name, c in self.counters.items():
                dict(self.layers)[name].num_batches_tracked.copy_(c)
        self.model.eval()


# ------------------------------------------------------------------ copies and cards
def copy_model(model: Any) -> Any:
    """An independent copy of ``model`` (its ``meta`` card included); the model itself is not touched.

    Plain modules: ``copy.deepcopy``. TorchScript modules: a round trip through ``torch.jit.save`` /
    ``torch.jit.load`` in memory, onto the model's device. (``copy.deepcopy`` of a TorchScript module
    returns parameters that are autograd clones of the original's, not leaves: a copy still tied
    to the model it came from.) Python attributes set on a TorchScript module are not part of its
    graph and are not saved, so ``meta`` is copied explicitly.
    """
    import torch

    if not isinstance(model, torch.jit.ScriptModule):
        return copy.deepcopy(model)
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # new PyTorch deprecates TorchScript; the user chose it, we only copy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(model, buf)
        buf.seek(0)
        out = torch.jit.load(buf, map_location=tensor.device if tensor is not None else None)
    meta = getattr(model, "meta", None)
    if meta is not None:
        out.meta = copy.deepcopy(meta)
    return out


def meta_for(
    model: Any,
    *,
    name: str | None = None,
    normalization: dict[str, Any] | None = None,
    mean: float | None = None,
    std: float | None = None,
) -> dict[str, Any]:
    """A model card for a model built elsewhere (used when it has no ``meta``).

    Parameters
    ----------
    model : torch.nn.Module
    name : str or None
        The name the card gives the model.
    normalization : dict or None
        The model-side input normalisation (``low``, ``high``, ``mean``, ``std``; see
        :class:`~napari_bnadapt.io.stack_view.Normalization`). Default
        :data:`FOREIGN_NORMALIZATION`: the grey values given by ``intensity_range=(lo, hi)``
        mapped to [0, 1], not standardised.
    mean, std : float or None
        Shortcuts: standardise the [0, 1] values with these after the mapping,
        ``x = (x01 - mean) / std`` (e.g. ``mean=0.5, std=0.25`` for this project's models).

    Returns
    -------
    dict
        ``{"name", "architecture", "normalization", "pixel_size_nm", "created"}``; set it as
        ``model.meta`` to make the choice stick to the model (and to its adapted copies).
    """
    import datetime as _dt

    from ..io.stack_view import Normalization

    norm = dict(FOREIGN_NORMALIZATION if normalization is None else normalization)
    if mean is not None:
        norm["mean"] = float(mean)
    if std is not None:
        norm["std"] = float(std)
    norm = Normalization.from_meta(norm).to_meta()  # checked and complete
    kind = describe(model)
    return {
        "name": name,
        "architecture": {"name": kind.name, "kind": kind.kind, "batchnorm_layers": kind.n_batchnorm},
        "normalization": norm,
        "pixel_size_nm": None,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def card_of(model: Any) -> dict[str, Any] | None:
    """``model.meta`` when it is a model card (a dict with a ``normalization``), else None.

    Callers fall back to :func:`napari_bnadapt.model.files.default_meta` (8-bit input for this
    project's U-Net, :func:`meta_for`'s card for any other model): ``card_of(m) or default_meta(m)``.
    """
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and isinstance(meta.get("normalization"), dict):
        return meta
    return None
