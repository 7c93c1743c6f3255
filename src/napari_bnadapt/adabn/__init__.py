"""AdaBN: re-estimate a model's BatchNorm statistics on an unlabelled target stack.

- ``adaptation``: the estimators (cumulative, EMA, prior-weighted) and ``adapt`` / ``adapt_iter``.
- ``patches``: where the adaptation (and the latent statistics) sample patches from a stack.
"""
