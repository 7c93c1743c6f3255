"""SSIM with a Gaussian 11 x 11 window (sigma 1.5), differentiable, per image (GLSS' search loss is 1 - SSIM)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

#: Window side and Gaussian sigma (the usual SSIM window; GLSS: "11x11 Gaussian filter").
WINDOW = 11
SIGMA = 1.5
#: Stabilising constants for images in [0, 1]: C1 = (0.01)^2, C2 = (0.03)^2, C3 = C2 / 2.
C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(WINDOW, device=device, dtype=dtype) - (WINDOW - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each pair of images.

    With alpha = beta = gamma = 1 and C3 = C2 / 2 the luminance, contrast and structure terms
    combine into ``(2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
    evaluated in every window position that fits (no padding) and averaged per image.

    Parameters
    ----------
    x, y : torch.Tensor
        (B, 1, H, W) images in [0, 1], H and W at least 11.

    Returns
    -------
    torch.Tensor
        (B,) SSIM values (1 for identical images).
    """
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim needs two (B, 1, H, W) tensors of one shape, not {tuple(x.shape)} and {tuple(y.shape)}")
    w = _window(x.device, x.dtype)
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    num = (2 * mx * my + C1) * (2 * sxy + C2)
    den = (mx * mx + my * my + C1) * (sxx + syy + C2)
    return (num / den).flatten(1).mean(1)
