"""``reindex``: bring a compact collection up to date with its source, incrementally; and
``rollback`` to the version live before. See :mod:`tldr_index.reindex.run` for the steps.

Modules: ``run`` (:func:`reindex`, :func:`rollback`), ``report`` (:class:`ReindexReport`, exit
codes), ``scan`` (the baseline hashes and the one pass over the source), ``drift`` (the drift
check), ``apply`` (publishing the delta, or a refit), ``history`` (``history.json``, the staging
record), ``location`` (where the state lives), ``rowstate`` (row content hashes and their state
files), ``lock`` (one job per target), ``jobfile`` (TOML job files of ``--config``).
"""

from __future__ import annotations

from .apply import model_dim
from .drift import DEFAULT_DRIFT_QUERIES, DEFAULT_DRIFT_THRESHOLD, drift_recall
from .jobfile import load_job
from .location import (default_reindex_dir, has_state, legacy_reindex_dir, reindex_dir,
                       user_state_dir)
from .lock import JobLock, LockedError
from .report import EXIT_CODES, REFIT, ReindexReport
from .rowstate import source_hashes
from .run import reindex, rollback

__all__ = ["reindex", "rollback", "ReindexReport", "REFIT", "EXIT_CODES",
           "DEFAULT_DRIFT_QUERIES", "DEFAULT_DRIFT_THRESHOLD", "drift_recall", "source_hashes",
           "model_dim", "default_reindex_dir", "legacy_reindex_dir", "reindex_dir", "has_state",
           "user_state_dir", "JobLock", "LockedError", "load_job"]
