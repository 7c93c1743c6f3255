"""Research baselines that BatchNorm adaptation is compared with (``bnadapt experiment compare``).

Not part of the plugin's workflow and not defaults of anything: they exist so the comparison in
``docs/experiments.md`` can be rerun. Each is implemented from its description in the source
documents (``../shared/seeds/``), on this project's U-Net:

``tent``     AdaBN followed by :func:`napari_bnadapt.adabn.entropy.entropy_step` (TENT-style entropy
             minimisation of the BatchNorm affine parameters); a thin wrapper, the step itself lives
             in ``adabn/entropy.py``.
``adda``     adversarial discriminative domain adaptation of the U-Net's encoder against per-stage
             domain discriminators, the source decoder frozen; optional momentum reset of the Adam
             moments; the label-free confusion score to choose the checkpoint.
``glss``     Generative Latent Search for Segmentation: a VAE trained with a perceptual loss on
             source images only; every target image is replaced by its nearest source-like clone
             (gradient search in the latent space, loss 1 - SSIM) before the unchanged source model
             segments it.
``vae``      the small convolutional VAE of GLSS.
``ssim``     the SSIM (Gaussian 11 x 11 window) that GLSS' latent search maximises.
``patches``  random training patches from image stacks, as network inputs.

Every function works on a copy: the source model given is never changed (tested byte for byte).
"""

from __future__ import annotations
