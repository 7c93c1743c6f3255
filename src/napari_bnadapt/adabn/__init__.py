"""AdaBN: re-estimate a model's BatchNorm statistics on an unlabelled target stack.

- ``adaptation``: ``adapt`` / ``adapt_iter`` and the ``AdaptReport``.
- ``estimators``: the cumulative, EMA and prior-weighted estimators of the BatchNorm statistics.
- ``patches``: where the adaptation (and the latent statistics) sample patches from a stack.
"""
