"""From probabilities to labels: a threshold, and optionally one label per connected object."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result


def to_labels(
    probabilities: np.ndarray, threshold: float = 0.5, instances: bool = False
) -> Iterator[Progress | Result[np.ndarray]]:
    """Threshold a probability map into labels; yields Progress, finally a Result.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Foreground probabilities in [0, 1], (Y, X) or (Z, Y, X).
    threshold : float, default 0.5
        Probability above which a pixel is foreground (strictly between 0 and 1).
    instances : bool, default False
        False: uint8 semantic labels (1 = mitochondrion). True: uint32, one label
        per connected object (3D connectivity in stacks).

    Yields
    ------
    Progress, then Result[numpy.ndarray]
    """
    if not 0.0 < threshold < 1.0:
        raise BNAdaptError(f"threshold must be between 0 and 1, not {threshold}")
    mask = (np.asarray(probabilities) > threshold).astype(np.uint8)
    if not instances:
        yield Result(mask)
        return
    from scipy import ndimage  # scipy only when objects are labelled

    yield Progress("labelling objects", 0, 1)
    labelled, _ = ndimage.label(mask, output=np.uint32)
    yield Progress("labelling objects", 1, 1)
    yield Result(labelled)
