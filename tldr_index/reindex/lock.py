"""The job lock of reindex/rollback: :mod:`tldr_index.joblock` (kept here for old imports)."""

from ..joblock import JobLock, LockedError

__all__ = ["JobLock", "LockedError"]
