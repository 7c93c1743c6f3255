"""The U-Net of the papers (milesial-style layout, BatchNorm everywhere).

DoubleConv = (conv 3x3, padding 1, no bias -> BatchNorm2d -> ReLU) x 2.
inc = DoubleConv; down k = MaxPool 2 -> DoubleConv; up k = transposed conv 2x2
stride 2 (or bilinear upsampling) -> concatenate the skip -> DoubleConv; a final
1x1 conv to two classes (background, mitochondrion).

The latent spaces ls0..ls4 are the outputs of the encoder stages (inc,
down1..down4) taken after the stage's last BatchNorm and BEFORE its ReLU
(docs/method.md, 'Latent spaces'); :meth:`UNet.latent_modules` returns those BatchNorm
modules (plus the decoder's last one, ``dec``) so hooks can read them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .layout import LATENT_SPACES

#: The input side length must be a multiple of this (four 2x poolings).


class DoubleConv(nn.Module):
    """(conv 3x3 -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None) -> None:
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class Down(nn.Module):
    """MaxPool 2 then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsample, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_ch, out_ch, in_ch // 2)
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net for 2D slices with BatchNorm in every convolution block.

    Parameters
    ----------
    in_channels : int, default 1
        Number of input channels (1 for greyscale EM).
    n_classes : int, default 2
        Output classes (background, mitochondrion).
    width : int, default 16
        Channels of the first stage; stages have width * (1, 2, 4, 8, 16).
        The papers used 64 (31 M parameters); 16 runs about 10x faster on a
        2-core CPU (see ``benchmarks/bench_unet_width.py``).
    bilinear : bool, default False
        Bilinear upsampling instead of transposed convolutions (the bottleneck
        then has half the channels, as in the milesial layout).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 16, bilinear: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.width = width
        self.bilinear = bilinear
        #: Model-card metadata (normalisation, pixel size, provenance); saved with the weights.
        self.meta: dict[str, Any] = {}
        w = width
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.down4 = Down(8 * w, 16 * w // factor)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear)
        self.up4 = Up(2 * w, w, bilinear)
        self.outc = nn.Conv2d(w, n_classes, kernel_size=1)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (stored in model files)."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "width": self.width,
            "bilinear": self.bilinear,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (B, n_classes, H, W) for input (B, C, H, W); H, W multiples of 16."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)

    def latent_modules(self) -> OrderedDict[str, nn.BatchNorm2d]:
        """BatchNorm modules whose outputs are the pre-ReLU latent spaces.

        ``ls0``..``ls4`` are the encoder stages (inc, down1..down4); ``dec`` is
        the last BatchNorm of the decoder, just before the output convolution.
        """
        modules = (self.inc.bn2, self.down1.conv.bn2, self.down2.conv.bn2, self.down3.conv.bn2,
                   self.down4.conv.bn2, self.up4.conv.bn2)
        return OrderedDict(zip(LATENT_SPACES, modules, strict=True))


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """All BatchNorm (1d/2d/3d) modules of ``model`` with their qualified names, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
