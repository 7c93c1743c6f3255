"""An inference copy of a U-Net: BatchNorm folded into the convolutions, channels-last layout.

In eval mode a BatchNorm layer is an affine map per channel, so it can be folded
into the convolution before it: ``W' = W * g / sqrt(var + eps)``, ``b' = beta -
mean * g / sqrt(var + eps)``. The folded network computes the same function (up to
float rounding, ~1e-6 relative) with one memory pass less per layer, which matters
on CPUs where these small convolutions are memory-bound. Channels-last (NHWC) is
the layout oneDNN (CPU) and cuDNN (GPU) convolutions prefer.

The decoder's concatenation is removed too: a convolution of ``cat([skip, up])`` is
the sum of two convolutions, one over ``skip`` with the first half of the kernel's
input channels and one over ``up`` with the second half. In channels-last layout the
concatenation interleaves every pixel's channels, a full memory pass (15 % of a
forward pass of the width-8 toy model in a profile); the split form is 4-14 % faster
(``benchmarks/bench_cpu_throughput.py``, variant ``folded+cl+split``).

The copy is for inference only: it has no BatchNorm left, so it must never be
adapted, trained or saved. The caller's model is never changed.
"""

from __future__ import annotations

import copy
from typing import Any


def fold_batchnorm(model: Any) -> Any:
    """Return an eval-mode copy of ``model`` with every conv -> BatchNorm pair of its DoubleConv blocks folded.

    Parameters
    ----------
    model : UNet
        Any module built from :class:`~napari_bnadapt.model.unet.DoubleConv` blocks; other
        modules are copied unchanged.

    Returns
    -------
    torch.nn.Module
        The folded copy, in eval mode, on the model's device.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from ..model.unet import DoubleConv

    out = copy.deepcopy(model).eval()
    for block in out.modules():
        if isinstance(block, DoubleConv):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                setattr(block, conv, fuse_conv_bn_eval(getattr(block, conv), getattr(block, bn)))
                setattr(block, bn, nn.Identity())
    return out


def _split_up_class() -> type:
    """The concatenation-free ``Up`` block (built on first use: this module must not import torch at import)."""
    from torch import nn

    class SplitConcatUp(nn.Module):
        """An ``Up`` block whose first convolution acts on ``skip`` and ``up(x)`` separately (no concatenation)."""

        def __init__(self, up: nn.Module) -> None:
            super().__init__()
            conv1 = up.conv.conv1  # folded: has a bias
            cs = conv1.in_channels // 2  # both U-Net layouts concatenate equal halves: [skip, up(x)]
            kw = dict(kernel_size=conv1.kernel_size, padding=conv1.padding, device=conv1.weight.device)
            self.up = up.up
            self.conv_skip = nn.Conv2d(cs, conv1.out_channels, bias=True, **kw)
            self.conv_up = nn.Conv2d(conv1.in_channels - cs, conv1.out_channels, bias=False, **kw)
            self.conv_skip.weight.data = conv1.weight.data[:, :cs].clone()
            self.conv_skip.bias.data = conv1.bias.data.clone()
            self.conv_up.weight.data = conv1.weight.data[:, cs:].clone()
            self.conv2 = up.conv.conv2

        def forward(self, x: Any, skip: Any) -> Any:
            y = self.conv_skip(skip)
            y += self.conv_up(self.up(x))
            return self.conv2(y.relu_()).relu_()

    return SplitConcatUp


def split_concatenations(folded: Any) -> Any:
    """Replace, in place, the ``up1``..``up4`` blocks of a folded U-Net by concatenation-free equivalents."""
    cls = _split_up_class()
    for name in ("up1", "up2", "up3", "up4"):
        setattr(folded, name, cls(getattr(folded, name)))
    return folded


def inference_copy(model: Any, device: Any, channels_last: bool = True) -> Any:
    """The fastest equivalent of ``model`` for inference on ``device``.

    BatchNorm folded into the convolutions, the decoder's concatenations split into
    sums of convolutions, channels-last layout. A model that is not a U-Net of this
    package (a TorchScript module, any model built elsewhere: its layout is unknown) is
    returned as it is, not copied: the engine runs it in eval mode under
    :func:`~napari_bnadapt.model.device.model_on`, which restores its flags.
    """
    import torch

    from ..model.unet import UNet

    if not isinstance(model, UNet):
        return model
    fast = split_concatenations(fold_batchnorm(model)).to(device)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
