"""Facts about the U-Net's layout that torch-free code needs (tiling, input checks, statistics).

Defined once here; :mod:`napari_bnadapt.model.unet` builds the network to match.
"""

from __future__ import annotations

#: Four 2x down-samplings: image sides are padded to a multiple of this.
SIZE_MULTIPLE = 16
#: The smallest image side the network accepts, in pixels.
MIN_SIDE = SIZE_MULTIPLE
#: Names of the pre-ReLU latent spaces (BatchNorm outputs): the encoder stages
#: ``ls0``..``ls4`` (inc, down1..down4) and ``dec``, the decoder's last BatchNorm.
LATENT_SPACES: tuple[str, ...] = ("ls0", "ls1", "ls2", "ls3", "ls4", "dec")
