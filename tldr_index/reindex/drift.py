"""The drift check of ``reindex``: does the current map keep the neighbours of new rows about as
well as those of unchanged rows? Cost: two exact searches of at most ``2 x drift_queries`` queries
in a reference set of at most ``2 x drift_queries + DRIFT_REFERENCE_ROWS`` rows, in the original
and in the reduced space."""

from __future__ import annotations

import numpy as np

from ..compact import CompactModel

DEFAULT_DRIFT_THRESHOLD = 0.7
DEFAULT_DRIFT_QUERIES = 200
DRIFT_MIN_ROWS = 30          # fewer new/changed rows: no drift check (too noisy)
DRIFT_REFERENCE_ROWS = 5000  # random source rows added to the reference set


def drift_recall(model: CompactModel, Qnew: np.ndarray, Qold: np.ndarray, ref: np.ndarray,
                 k: int = 10) -> dict:
    """recall@k of exact search in the reduced space vs the original space, for new rows and for
    unchanged rows, each searched in ``[ref; Qnew; Qold]`` with itself excluded."""
    from ..knn import exact_search
    from ..search import recall_at_k

    db = np.vstack([ref, Qnew, Qold]).astype(np.float32)
    k = min(k, len(db) - 1)
    Z = model.prepare(model.encode(db))
    metric = model.metric
    out = {}
    for name, start, rows in (("new", len(ref), len(Qnew)), ("old", len(ref) + len(Qnew),
                                                               len(Qold))):
        if rows == 0 or k < 1:
            out[f"recall_{name}"] = None
            continue
        own = np.arange(start, start + rows)
        _, truth = exact_search(db, db[own], k, metric=metric, exclude=own)
        _, got = exact_search(Z, Z[own], k, metric=metric, exclude=own)
        out[f"recall_{name}"] = recall_at_k(got, truth)
    return out


def pick_rows(parts: list, limit: int, rng: np.random.Generator, dim: int) -> np.ndarray:
    """The rows of ``parts`` (a list of ``(n_i, dim)`` arrays) stacked, at most ``limit`` of
    them drawn at random (in their original order)."""
    X = np.vstack(parts) if parts else np.empty((0, dim), dtype=np.float32)
    if len(X) > limit:
        X = X[np.sort(rng.choice(len(X), limit, replace=False))]
    return X
