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
    published (see :func:`tldr_index.oserrors.storage_errors`)."""


# --- Ctrl-C ------------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; still a :class:`KeyboardInterrupt`, so code that catches that
    keeps working. Not a :class:`TLDRError`: nothing is wrong with the input.

    ``stage``: the stage it stopped (``None``: outside any); ``work_dir``: the checkpoints a
    resumed run continues from (``None``: nothing to resume); ``worker_running``: a long native
    call (an index build, k-means) was still running in a worker thread, which stops when the
    process exits (see :func:`tldr_index.threads.run_in_worker`).
    """

    def __init__(self, stage: str | None = None, work_dir: str | None = None,
                 worker_running: bool = False):
        super().__init__(stage)
        self.stage, self.work_dir, self.worker_running = stage, work_dir, worker_running

    @classmethod
    def wrap(cls, exc: KeyboardInterrupt, stage: str | None,
             work_dir: str | None = None) -> Interrupted:
        """``exc`` as an :class:`Interrupted` of ``stage``; an inner one keeps its stage (the
        innermost stage is the one that was running) and worker flag."""
        if isinstance(exc, Interrupted):
            if exc.stage is None:
                exc.stage = stage
            if exc.work_dir is None:
                exc.work_dir = work_dir
            return exc
        return cls(stage, work_dir)
