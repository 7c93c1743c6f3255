"""From probabilities to labels: a threshold, and optionally one label per connected object."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import BNAdaptError
from ..progress import Progress, Result


def check_threshold(threshold: float) -> None:
    """Refuse a probability threshold outside (0, 1) with a clear message."""
    if not 0.0 < threshold < 1.0:
        raise BNAdaptError(f"threshold must be between 0 and 1, not {threshold}")


def label_objects(mask: np.ndarray, into: np.ndarray | None = None) -> Iterator[Progress | Result[np.ndarray]]:
    """One uint32 label per connected object of ``mask`` (3D connectivity in stacks).

    ``into``: a preallocated uint32 array of the mask's shape to write into (e.g. a zarr array).
    Yields Progress, finally a Result with the labels (``into`` when given).
    """
    from scipy import ndimage  # scipy only when objects are labelled

    yield Progress("labelling objects", 0, 1)
    labelled, _ = ndimage.label(mask, output=np.uint32)
    if into is not None:
        into[...] = labelled
        labelled = into
    yield Progress("labelling objects", 1, 1)
    yield Result(labelled)


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
    check_threshold(threshold)
    mask = (np.asarray(probabilities) > threshold).astype(np.uint8)
    if instances:
        yield from label_objects(mask)
    else:
        yield Result(mask)
