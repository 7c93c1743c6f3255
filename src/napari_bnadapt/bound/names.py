"""Names and thresholds of the reliability bound, defined once: latent spaces, distance keys and
labels, verdict thresholds, calibration format version."""

from __future__ import annotations

from ..model.layout import LATENT_SPACES

#: Latent spaces measured: the U-Net's BatchNorm outputs and the output logits ``out``.
SPACES: tuple[str, ...] = (*LATENT_SPACES, "out")


_NORM_ARG = {"source": "source", "target": "target", "plain": None}


_NORM_LABEL = {"source": "snW2²", "target": "tnW2²", "plain": "W2²"}


RELIABLE_AT = 0.8


UNRELIABLE_BELOW = 0.5


def candidate_key(space: str, normalize: str, form: str) -> str:
    """``"ls0|source|full"``: the key of one distance candidate."""
    return f"{space}|{normalize}|{form}"


def parse_key(key: str) -> tuple[str, str, str]:
    space, norm, form = key.split("|")
    return space, norm, form


def distance_label(space: str, normalize: str, form: str) -> str:
    """Readable name of a distance, e.g. ``snW2² of dec (full)``."""
    return f"{_NORM_LABEL[normalize]} of {space}" + (" (diagonal)" if form == "diagonal" else "")


CALIBRATION_VERSION = 1


#: Normalisations: by the source Gaussian, by the target Gaussian, none.
NORMALIZATIONS = ("source", "target", "plain")


FORMS = ("full", "diagonal")


#: Cases with an adapted IoU at least this count as successes when the gate is set.
SUCCESS_IOU = 0.7
