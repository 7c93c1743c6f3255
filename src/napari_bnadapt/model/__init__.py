"""The source network and everything about it.

- ``unet``: the U-Net with BatchNorm.
- ``files``: model files (safetensors + JSON card, never pickle), bundled and user models.
- ``device``: choosing CPU / CUDA / MPS.
- ``training``: training a source model.
- ``blend``: a model and its fine-tuned copy mixed in weight space (WiSE-FT).
- ``layout``: torch-free facts about the U-Net (size multiple, latent-space names).
- ``card``: the model card as a typed object (``ModelCard``).
- ``foreign``: models built elsewhere (plain ``nn.Module``, TorchScript): checks, copies, cards.
- ``bioimageio_export``, ``bioimageio_import``, ``bioimageio_common``: bioimage.io model packages.
- ``bundled/``: the bundled models' weights (made by ``scripts/make_bundled_models.py`` and
  ``scripts/train_em_models.py``).
"""
