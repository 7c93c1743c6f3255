"""The source network and everything about it.

- ``unet``: the U-Net with BatchNorm.
- ``files``: model files (safetensors + JSON card, never pickle), bundled and user models.
- ``device``: choosing CPU / CUDA / MPS.
- ``training``: training a source model.
- ``bundled/``: the bundled models' weights (made by ``scripts/make_bundled_models.py`` and
  ``scripts/train_em_models.py``).
"""
