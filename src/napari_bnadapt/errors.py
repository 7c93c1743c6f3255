"""Errors that speak to the user about their input, not about the code."""

from __future__ import annotations


class BNAdaptError(ValueError):
    """A problem with the user's input (image, model file, settings).

    The message says what is wrong with *their* input and what to do about it,
    in words a biologist understands. The GUI shows it as is; the CLI prints it
    without a traceback.
    """


class ModelFileError(BNAdaptError):
    """A model file that cannot be used: truncated, foreign, or unsafe."""


class CancelledError(RuntimeError):
    """A long run was cancelled by the user; nothing was changed."""
