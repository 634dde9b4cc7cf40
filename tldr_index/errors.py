"""Exceptions raised by tldr-index.

Every error subclasses a built-in so callers can catch it generically, and every message names the
parameter (or input), the rule it broke and the value received.
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SkNotFittedError


class TLDRError(Exception):
    """Base class of all tldr-index errors."""


class InvalidParameterError(TLDRError, ValueError):
    """A constructor or function argument is out of range or of the wrong type."""


class InvalidInputError(TLDRError, ValueError):
    """Input vectors are malformed (wrong shape, dtype, NaN/inf...)."""


class NotFittedError(TLDRError, _SkNotFittedError):
    """``transform``/``save`` called before ``fit``."""


class ModelFormatError(TLDRError, ValueError):
    """A file is not a valid tldr-index model (wrong format, tampered, truncated)."""


class CheckpointError(TLDRError, RuntimeError):
    """A training checkpoint cannot be used to resume this run."""


# --- I/O edges (connectors/) -------------------------------------------------------------------

class MissingColumnError(TLDRError, KeyError):
    """A column the caller named (or that must exist) is not in the source or batch schema."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(InvalidInputError):
    """Two rows of a source share the same id."""


class UnsupportedURIError(InvalidParameterError):
    """A source/target URI has a scheme (or shape) that no connector handles."""


class SourceNotFoundError(TLDRError, LookupError):
    """The path, table or collection a URI points to does not exist."""


class StoreUnavailableError(TLDRError, ConnectionError):
    """A vector store cannot be reached (network error, exhausted retries)."""


class TargetExistsError(TLDRError, FileExistsError):
    """The target already exists and ``overwrite`` was not requested."""


class VerificationError(TLDRError, RuntimeError):
    """A written target does not hold what was written (row count, ids, model checksum)."""


class SinkStateError(TLDRError, RuntimeError):
    """Sink methods called out of order (e.g. ``publish`` before ``verify``)."""


class StorageError(TLDRError, OSError):
    """The disk is full or a path is not writable (work directory or target); nothing was
    published (see :func:`tldr_index._oserrors.storage_errors`)."""
