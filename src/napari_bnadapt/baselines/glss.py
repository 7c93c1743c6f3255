"""GLSS: Generative Latent Search for Segmentation (the supplementary material in ``../shared/seeds/004_*``).

1. **Train a VAE on source images only** (Algorithm 1, first part). Loss per batch: the pixel
   reconstruction error ``L_r`` (mean squared, images in [0, 1]), ``beta`` times the perceptual error
   ``L_p`` and the KL divergence of the code to N(0, I). The paper takes its perceptual model P from
   the trained segmentation U-Net ("the 6th layer of UNet"); here P is the source U-Net's first two
   encoder stages (``inc``, ``down1``: its sixth convolution block output, the latent space ls1),
   frozen, so GLSS needs nothing beyond the source model and source images. The paper's weight
   ``beta = 2`` is relative to its own feature scale; with these features (ReLU outputs of unit-variance
   BatchNorm, mean square ~0.5 per element, against ~0.01 per pixel for [0, 1] images) a trial with
   ``beta = 2`` on the toy data collapsed the VAE to the mean image, so the default is
   ``beta = 0.05``, which keeps the two errors of similar size. The paper updates the encoder with ``L_r + L_p + KL`` and the decoder with
   ``L_r + L_p``; since the KL term does not depend on the decoder, one optimiser on the sum gives
   the same gradients. The KL weight is a setting (``kl_weight``, default 1e-3 per latent dimension
   relative to the per-pixel errors): the paper sums over pixels and dimensions, which at these
   image sizes weights the KL by about the same order.
2. **Nearest clone** (Algorithm 1, inference): for every target image, search the latent code ``z``
   whose decoded image maximises SSIM (11 x 11 Gaussian window) with it, by Adam on ``1 - SSIM``;
   the clone ``h(z)`` is the target image moved into the source distribution. The paper's line 13
   starts from a random code; its Fig. 2 starts from the VAE's reconstruction of the target. The
   default here is the latter (``init="encoder"``: the encoder's mean code), ``init="prior"``
   follows line 13.
3. The unchanged source segmenter runs on the clones.

Images larger than the VAE's side are cut into tiles of that side (reflect-padded to a multiple),
each tile searched on its own, and the clones put back together. The search runs on many tiles at
once, but the loss is a sum of per-tile losses and Adam is per coordinate, so each tile's code moves
exactly as in a search on its own. The cost is reported per image (and per tile).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import BNAdaptError
from ..io.stack_view import Normalization
from ..model.unet import UNet
from .patches import PatchSampler, as_stack
from .ssim import ssim
from .vae import ConvVAE

#: Weight of the perceptual error (the paper: 2 on its feature scale; see the module docstring).
PERCEPTUAL_WEIGHT = 0.05
#: Latent search defaults: Adam steps and learning rate on the code.
SEARCH_STEPS = 50
SEARCH_LR = 0.05


class Perceptual(nn.Module):
    """The source U-Net's first two encoder stages on [0, 1] images (frozen): GLSS' perceptual model."""

    def __init__(self, unet: UNet, norm: Normalization) -> None:
        super().__init__()
        self.inc = copy.deepcopy(unet.inc).eval()
        self.down1 = copy.deepcopy(unet.down1).eval()
        self.mean, self.std = float(norm.mean), float(norm.std)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.down1(self.inc((x01 - self.mean) / self.std))


@dataclass
class GlssModel:
    """A trained GLSS generator: the VAE, the grey-value range it maps to [0, 1], and its training.

    Attributes
    ----------
    vae : ConvVAE
    low, high : float
        Grey values mapped to 0 and 1 (the source model's training range).
    seconds : float
        Training wall time.
    loss : float
        Mean loss of the last 10 % of the steps.
    settings : dict
    """

    vae: ConvVAE = field(repr=False)
    low: float
    high: float
    seconds: float
    loss: float
    settings: dict[str, Any]

    def to01(self, x: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(x, np.float32) - self.low) / (self.high - self.low), 0.0, 1.0)

    def from01(self, x: np.ndarray) -> np.ndarray:
        return (x * (self.high - self.low) + self.low).astype(np.float32)


def train_glss(
    model: UNet,
    source_images: Any,
    *,
    steps: int = 400,
    batch_size: int = 16,
    patch_size: int = 64,
    latent: int = 32,
    width: int = 16,
    lr: float = 1e-3,
    perceptual_weight: float = PERCEPTUAL_WEIGHT,
    kl_weight: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> GlssModel:
    """Train GLSS' VAE on source patches (module docstring). No target data is used.

    Parameters
    ----------
    model : UNet
        The source segmenter: its first two encoder stages are the perceptual model (copied, frozen;
        the model is not changed).
    source_images : array-like
        (N, H, W) source images in the model's grey range.
    steps, batch_size, lr : int, int, float
        Adam steps, patches per step and learning rate.
    patch_size : int, default 64
        The VAE's image side (multiple of 16).
    latent, width : int
        Latent dimensions and the VAE's first-stage channels.
    perceptual_weight : float, default 0.05
        ``beta`` of the perceptual error (module docstring).
    kl_weight : float, default 1e-3
        Weight of the mean KL divergence per latent dimension.
    seed : int, default 0
        Seed of the VAE's initialisation, the patches and the sampled codes.
    device : str, default "cpu"

    Returns
    -------
    GlssModel
    """
    if not isinstance(model, UNet):
        raise BNAdaptError("GLSS' perceptual model is this project's U-Net's encoder; other models are not supported")
    if steps < 1 or batch_size < 1:
        raise BNAdaptError(f"steps and batch_size must be at least 1, not {steps} and {batch_size}")
    t0 = time.perf_counter()
    norm = Normalization.from_meta(model.meta["normalization"])
    dev = torch.device(device)
    torch.manual_seed(seed)
    vae = ConvVAE(patch_size, latent, width).to(dev).train()
    perceptual = Perceptual(model, norm).to(dev)
    sampler = PatchSampler(source_images, patch_size, norm, seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    g = GlssModel(vae, float(norm.low), float(norm.high), 0.0, math.nan, {})
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            x = torch.from_numpy(g.to01(sampler.raw(batch_size))[:, None]).to(dev)
            rec, mu, logvar = vae(x)
            l_r = F.mse_loss(rec, x)
            l_p = F.mse_loss(perceptual(rec), perceptual(x))
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
            loss = l_r + perceptual_weight * l_p + kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    vae.eval()
    g.seconds = time.perf_counter() - t0
    g.loss = float(np.mean(losses[-max(1, steps // 10):]))
    g.settings = {"steps": steps, "batch_size": batch_size, "patch_size": patch_size, "latent": latent,
                  "width": width, "lr": lr, "perceptual_weight": perceptual_weight, "kl_weight": kl_weight,
                  "seed": seed}
    return g


@dataclass
class SearchReport:
    """What :func:`nearest_clones` did: sizes, SSIM before/after the search and its cost.

    Attributes
    ----------
    n_images, n_tiles, steps : int
    ssim_start, ssim_end : float
        Mean SSIM between target tiles and their clones at the starting code and after the search.
    seconds : float
        Wall time of the search (all images).
    seconds_per_image, seconds_per_tile : float
    """

    n_images: int
    n_tiles: int
    steps: int
    ssim_start: float
    ssim_end: float
    seconds: float
    seconds_per_image: float
    seconds_per_tile: float


def _tiles(x: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    n, h, w = x.shape
    ph, pw = -h % size, -w % size
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    ty, tx = x.shape[1] // size, x.shape[2] // size
    t = x.reshape(n, ty, size, tx, size).transpose(0, 1, 3, 2, 4).reshape(n * ty * tx, size, size)
    return np.ascontiguousarray(t), (n, ty, tx, 0)


def _untile(t: np.ndarray, grid: tuple[int, int, int, int], size: int, h: int, w: int) -> np.ndarray:
    n, ty, tx, _ = grid
    x = t.reshape(n, ty, tx, size, size).transpose(0, 1, 3, 2, 4).reshape(n, ty * size, tx * size)
    return np.ascontiguousarray(x[:, :h, :w])


def nearest_clones(
    glss: GlssModel,
    target_images: Any,
    *,
    steps: int = SEARCH_STEPS,
    lr: float = SEARCH_LR,
    init: str = "encoder",
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, SearchReport]:
    """Replace every target image by its nearest clone in the VAE's (source) distribution.

    Parameters
    ----------
    glss : GlssModel
        From :func:`train_glss`.
    target_images : array-like
        (Y, X) or (Z, Y, X) target images in the source model's grey range.
    steps : int, default 50
        Adam steps on the codes (maximising SSIM).
    lr : float, default 0.05
        Adam learning rate.
    init : {"encoder", "prior"}, default "encoder"
        Starting code: the VAE encoder's mean for the target tile, or a draw from N(0, I).
    batch_size : int, default 256
        Tiles searched together (the result does not depend on it).
    seed : int, default 0
        Seed of the prior draws.
    device : str, default "cpu"

    Returns
    -------
    (numpy.ndarray, SearchReport)
        The clones, float32 of the input's shape in its grey range, and the report.
    """
    if init not in ("encoder", "prior"):
        raise BNAdaptError(f"init must be 'encoder' or 'prior', not {init!r}")
    raw = np.asarray(target_images)
    x = as_stack(raw, "target_images")
    t0 = time.perf_counter()
    size = glss.vae.size
    tiles, grid = _tiles(glss.to01(x), size)
    dev = torch.device(device)
    vae = glss.vae.to(dev).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    out = np.empty_like(tiles)
    s0, s1 = [], []
    for i in range(0, len(tiles), batch_size):
        xt = torch.from_numpy(tiles[i:i + batch_size][:, None]).to(dev)
        with torch.no_grad():
            if init == "encoder":
                z0 = vae.encode(xt)[0]
            else:
                z0 = torch.randn(len(xt), vae.latent, generator=gen).to(dev)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for k in range(steps + 1):
                score = ssim(vae.decode(z), xt)
                if k == 0:
                    s0.append(score.detach())
                if k == steps:
                    break
                loss = (1.0 - score).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        s1.append(score.detach())
        with torch.no_grad():
            out[i:i + batch_size] = vae.decode(z)[:, 0].cpu().numpy()
    clones = glss.from01(_untile(out, grid, size, x.shape[1], x.shape[2])).reshape(raw.shape)
    sec = time.perf_counter() - t0
    report = SearchReport(len(x), len(tiles), steps, float(torch.cat(s0).mean()), float(torch.cat(s1).mean()),
                          sec, sec / len(x), sec / len(tiles))
    return clones, report
