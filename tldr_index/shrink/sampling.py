"""The training sample of a run: which rows, and where they are stored.

Both engines draw the same rows (:func:`sample_rows`), so the local and the Ray scan train the
same model; :mod:`tldr_index.evaluate` redraws them to tell training rows from held-out ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..vectors import VectorStore


def sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    """Sorted positions of ``sample`` of ``n`` rows, drawn without replacement from ``seed``
    (every row when ``sample >= n``). Cost: O(n) time and 8 bytes per row."""
    rng = np.random.default_rng([seed, 0x5A5])
    return np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)


def train_store(work_root: Path) -> VectorStore:
    """The training sample of the run in ``work_root``: ``knn/train``, the Ray scan's
    ``scan/sample``, or the scan store itself when every row is used."""
    for sub in (work_root / "knn" / "train", work_root / "scan" / "sample"):
        if (sub / VectorStore.META).exists():
            return VectorStore.open(sub)
    return VectorStore.open(work_root / "scan" / "vectors")


def held_out(n: int, train_rows: np.ndarray, n_queries: int, seed: int
             ) -> tuple[np.ndarray, str]:
    """Up to ``n_queries`` sorted positions of rows outside ``train_rows`` (all rows when every
    row is a training row) and a phrase naming which."""
    pool = np.setdiff1d(np.arange(n), train_rows, assume_unique=True)
    kind = "held-out rows"
    if len(pool) == 0:
        pool, kind = np.arange(n), "training rows (every row is in the training sample)"
    pick = np.random.default_rng([seed, 0x5E1]).choice(len(pool), min(n_queries, len(pool)),
                                                       replace=False)
    return np.sort(pool[pick]), kind
