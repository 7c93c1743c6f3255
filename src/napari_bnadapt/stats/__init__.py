"""Statistics of latent activations and distances between them.

- ``moments``: streaming float64 Gaussian moments (mean, covariance, clusters).
- ``latent_moments``: moments of a model's latent spaces collected with forward hooks.
- ``wasserstein``: W2 between Gaussian fits, with noise floors.
- ``source_statistics``: the source model's statistics stored in its model file.
"""
