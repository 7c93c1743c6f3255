"""Moments of a model's latent spaces (BatchNorm inputs, pre-ReLU), collected with forward hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import BNAdaptError
from ..progress import Progress, Result, run_to_end
from .moments import GaussianMoments


# -------------------------------------------------------------------- hooks
class LatentMoments:
    """Forward hooks that accumulate :class:`GaussianMoments` of module outputs.

    Use as a context manager around forward passes; the hooks are removed on
    exit, also on error. The statistics are updated INSIDE each hook, before the
    next operation (an in-place ReLU in the U-Net) can overwrite the output.

    Parameters
    ----------
    modules : mapping of str to torch.nn.Module
        Name -> module whose output is a latent space (N, C, ...).
    full_cov_max_dim : int
        Full covariance for C <= this, per-channel variances otherwise.
    device : optional
        Where to accumulate (default: the activations' device).

    Examples
    --------
    >>> with LatentMoments(model.latent_modules()) as lm:  # doctest: +SKIP
    ...     model(x)
    >>> lm.moments["ls0"].mean  # doctest: +SKIP
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], *, full_cov_max_dim: int = 256, device: Any = None):
        if not modules:
            raise BNAdaptError("no latent modules given")
        self.modules = dict(modules)
        self.full_cov_max_dim = int(full_cov_max_dim)
        self.device = device
        self.moments: dict[str, GaussianMoments] = {}
        self._handles: list[Any] = []

    def _make_hook(self, name: str):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise BNAdaptError(f"latent module {name!r} did not return a tensor")
            gm = self.moments.get(name)
            if gm is None:
                c = int(output.shape[1])
                gm = GaussianMoments(c, full_covariance=c <= self.full_cov_max_dim, device=self.device)
                self.moments[name] = gm
            gm.update(output.detach())  # consumed now; no reference is kept

        return hook

    def attach(self) -> LatentMoments:
        """Register the hooks (idempotent)."""
        if not self._handles:
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the hooks."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def __enter__(self) -> LatentMoments:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def collect_latent_moments_iter(
    model: torch.nn.Module,
    batches: Iterable[Any],
    modules: Mapping[str, torch.nn.Module] | None = None,
    *,
    full_cov_max_dim: int = 256,
    device: Any = None,
    stage: str = "measuring latent statistics",
) -> Iterator[Progress | Result[dict[str, GaussianMoments]]]:
    """Generator twin of :func:`collect_latent_moments`.

    Yields ``Progress(stage, done, total)`` after every batch (total = len(batches)
    when known, else 0) and finally ``Result({name: GaussianMoments})``. The
    model's train/eval flags are restored and the hooks removed at the end,
    also when the generator is closed early (cancelled) or fails.
    """
    if modules is None:
        if not hasattr(model, "latent_modules"):
            raise BNAdaptError("the model does not name its latent modules; pass modules=")
        modules = model.latent_modules()
    run_device = torch.device(device) if device is not None else _model_device(model)
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        total = 0
    flags = [(m, m.training) for m in model.modules()]
    collector = LatentMoments(modules, full_cov_max_dim=full_cov_max_dim)
    done = 0
    try:
        model.eval()
        collector.attach()
        for batch in batches:
            x = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
            if not x.is_floating_point():
                x = x.float()
            x = x.to(run_device)
            with torch.inference_mode():
                model(x)
            done += 1
            yield Progress(stage, done, total)
    finally:
        collector.detach()
        for m, t in flags:
            m.training = t
    if done == 0:
        raise BNAdaptError("no images were given to measure the latent statistics")
    missing = [n for n in modules if n not in collector.moments]
    if missing:
        raise BNAdaptError(f"the latent module(s) {', '.join(missing)} were not used by the model's forward pass")
    yield Result({name: collector.moments[name] for name in modules})


def collect_latent_moments(
    model: torch.nn.Module,
    batches: Iterable[Any],
    modules: Mapping[str, torch.nn.Module] | None = None,
    *,
    full_cov_max_dim: int = 256,
    device: Any = None,
) -> dict[str, GaussianMoments]:
    """Fit a Gaussian to each latent space of ``model`` over ``batches``.

    Parameters
    ----------
    model : torch.nn.Module
        Run in ``eval()`` under ``torch.inference_mode()`` (its flags are restored).
    batches : iterable of tensors
        Float tensors (B, 1, H, W) (numpy arrays are accepted).
    modules : mapping of str to torch.nn.Module, optional
        Name -> module whose OUTPUT is the latent (pre-ReLU BatchNorm output).
        Default: ``model.latent_modules()``.
    full_cov_max_dim : int
        Full covariance for C <= this, diagonal otherwise.
    device : optional
        Device to run the model on (default: the model's device).

    Returns
    -------
    dict of str to GaussianMoments
        In the order of ``modules``.
    """
    return run_to_end(
        collect_latent_moments_iter(
            model, batches, modules, full_cov_max_dim=full_cov_max_dim, device=device
        )
    )
