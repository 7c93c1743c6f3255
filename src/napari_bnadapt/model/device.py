"""Choosing the compute device (cuda, then mps, then cpu)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import BNAdaptError

if TYPE_CHECKING:
    import torch
from ..segmentation.allocator import tune_cpu_allocator


def available_devices() -> list[str]:
    """Devices that really work on this machine, best first (always ends with ``"cpu"``)."""
    import torch

    devices = []
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def get_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """Resolve a device request to a :class:`torch.device`.

    Parameters
    ----------
    device : str, torch.device or None, default "auto"
        ``"auto"`` (or None) picks CUDA when available, then Apple MPS, then the
        CPU. An explicit choice (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``)
        is honoured, or refused with a clear message when this machine lacks it.

    Returns
    -------
    torch.device
        The device to compute on. When it is the CPU and ``BNADAPT_MALLOC=tuned`` is set, glibc's
        allocator is tuned for forward passes first, once per process
        (:func:`napari_bnadapt.segmentation.allocator.tune_cpu_allocator`).
    """
    dev = _resolve(device)
    if dev.type == "cpu":

        tune_cpu_allocator()
    return dev


def _resolve(device: "str | torch.device | None") -> "torch.device":
    import torch

    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BNAdaptError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BNAdaptError(
                f"device {device!r} was asked for, but no CUDA GPU is usable on this machine "
                "(PyTorch sees none). Use device='auto' or 'cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BNAdaptError(f"device {device!r}: this machine has only {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BNAdaptError(f"device {device!r} was asked for, but Apple MPS is not available here. Use 'auto' or 'cpu'.")
    elif dev.type != "cpu":
        raise BNAdaptError(f"device {device!r} is not supported: use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


def _same_device(a: "torch.device", b: "torch.device") -> bool:
    """Whether two devices are the same one: ``cuda`` (no index) is the current CUDA device, e.g. ``cuda:0``."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        import torch

        current = torch.cuda.current_device() if a.type == "cuda" else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


@contextmanager
def model_on(model: "torch.nn.Module", device: "torch.device") -> "Iterator[torch.nn.Module]":
    """Use ``model`` in eval mode on ``device`` without changing the caller's model.

    The model is used as is when it already lives on ``device`` (the train/eval
    flag of every submodule is restored afterwards, one by one: a wrapper in train
    mode around a model in eval mode stays so); otherwise a copy is moved there, so
    the caller's model never changes device behind their back.
    """
    from .foreign import copy_model  # TorchScript modules too, with their card

    try:
        current = next(model.parameters()).device
    except StopIteration:
        current = device
    m = model if _same_device(current, device) else copy_model(model).to(device)
    flags = [(sub, sub.training) for sub in m.modules()]
    m.eval()
    try:
        yield m
    finally:
        for sub, training in flags:
            sub.training = training
