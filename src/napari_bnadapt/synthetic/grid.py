"""The thesis' 1-800 toy grid (section 5.4), defined once.

One source (mu0, sigma0, mu1, sigma1) = (96, 18, 138, 18) and targets with
mu0 in ``GRID_MU0``, mu1 = mu0 + d for d in ``GRID_D`` with mu1 <= ``GRID_MU_MAX``,
and sigma0, sigma1 in ``GRID_SIGMA``: 32 mean pairs x 25 sigma pairs = 800 targets.
Used by the ``grid800`` experiment and by the toy calibration shifts.
"""

from __future__ import annotations

from .checks import SAFE_MU_RANGE
from .samples import SOURCE_PARAMETERS

#: The source's (mu0, sigma0, mu1, sigma1).
GRID_SOURCE: tuple[int, int, int, int] = (
    SOURCE_PARAMETERS["mu0"], SOURCE_PARAMETERS["sigma0"], SOURCE_PARAMETERS["mu1"], SOURCE_PARAMETERS["sigma1"]
)
GRID_MU0: tuple[int, ...] = (64, 80, 96, 112, 128, 144, 160)
#: Distances mu1 - mu0.
GRID_D: tuple[int, ...] = (24, 32, 42, 55, 73, 97, 128)
GRID_SIGMA: tuple[int, ...] = (6, 12, 18, 24, 30)
#: Largest mu1 of a target (the top of the generator's safe range).
GRID_MU_MAX: int = SAFE_MU_RANGE[1]
