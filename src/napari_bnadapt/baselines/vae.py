"""The small convolutional VAE of GLSS (no normalisation layers: one image's search never depends on another's)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BNAdaptError

#: Stride-2 stages of the encoder (and transposed ones of the decoder): the code map is size / 16.
STAGES = 4


class ConvVAE(nn.Module):
    """Images in [0, 1] <-> a Gaussian latent code.

    Parameters
    ----------
    size : int
        Image side (multiple of 16).
    latent : int
        Latent dimensions.
    width : int
        Channels of the first stage (then 2x, 4x, 4x).
    """

    def __init__(self, size: int = 64, latent: int = 32, width: int = 16) -> None:
        super().__init__()
        if size % 16 or size < 16:
            raise BNAdaptError(f"the VAE's image side must be a multiple of 16, not {size}")
        self.size, self.latent, self.width = size, latent, width
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        enc: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.side = size // 2 ** STAGES
        flat = chans[-1] * self.side ** 2
        self.to_stats = nn.Linear(flat, 2 * latent)
        self.from_code = nn.Linear(latent, flat)
        dec: list[nn.Module] = []
        rev = chans[::-1]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < STAGES - 1:
                dec.append(nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(*dec, nn.Sigmoid())

    def config(self) -> dict[str, int]:
        """The constructor arguments."""
        return {"size": self.size, "latent": self.latent, "width": self.width}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the code of (B, 1, size, size) images in [0, 1]."""
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 1, size, size) images in [0, 1] from (B, latent) codes."""
        h = self.from_code(z).view(z.shape[0], 4 * self.width, self.side, self.side)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction from a sampled code, and the code's mean and log-variance."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar
