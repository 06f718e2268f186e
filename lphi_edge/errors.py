"""Errors users can act on. Every message says what was wrong and what was expected."""

from __future__ import annotations


class LphiError(Exception):
    """Base class: CLIs print these as one line and exit non-zero, never a traceback."""


class CheckpointError(LphiError):
    """A model directory is missing, incomplete, or not a LLaVA-Phi checkpoint."""


class ImageError(LphiError):
    """An image could not be read or has an unsupported layout."""


class PromptError(LphiError):
    """A prompt is empty or malformed."""


class ContextLengthError(LphiError):
    """Prompt plus image tokens do not fit the model's context window."""


class ConfigError(LphiError, ValueError):
    """A configuration value is invalid; the message names the field."""


class GenerationInProgressError(LphiError):
    """A streamed answer is still open on the same session."""


class EvalInputError(LphiError):
    """An evaluation input (question, answer, annotation file) is malformed; the message names file and line."""
