"""Exceptions raised by tldr-index.

Every error subclasses a built-in so callers can catch it generically, and every message names the
parameter (or input), the rule it broke and the value received.
"""

from __future__ import annotations


class TLDRError(Exception):
    """Base class of all tldr-index errors."""


class InvalidParameterError(TLDRError, ValueError):
    """A constructor or function argument is out of range or of the wrong type."""


class InvalidInputError(TLDRError, ValueError):
    """Input vectors are malformed (wrong shape, dtype, NaN/inf...)."""


class NotFittedError(TLDRError, AttributeError):
    """``transform``/``save`` called before ``fit``."""


class ModelFormatError(TLDRError, ValueError):
    """A file is not a valid tldr-index model (wrong format, tampered, truncated)."""


class CheckpointError(TLDRError, RuntimeError):
    """A training checkpoint cannot be used to resume this run."""
