"""PCA and whitened PCA computed out of core (the baselines every stage can run instead of TLDR).

The covariance is accumulated in float64 over streamed blocks, then eigendecomposed:
cost O(N * D^2) time, O(D^2) memory, one pass over the data.
"""

from __future__ import annotations

import numpy as np

from .vectors import Vectors


def moments(vectors: Vectors, chunk_rows: int = 16_384, name: str = "X",
            check_finite: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvalues (descending) and eigenvectors (rows) of the covariance of ``vectors``."""
    D = vectors.dim
    s = np.zeros(D, dtype=np.float64)
    ss = np.zeros((D, D), dtype=np.float64)
    n = 0
    for _, block in vectors.iter_chunks(chunk_rows, check_finite=check_finite, name=name):
        b = block.astype(np.float64)
        s += b.sum(0)
        ss += b.T @ b
        n += len(b)
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evecs = evecs[:, order].T
    # deterministic sign: largest-magnitude coordinate of each component is positive
    signs = np.sign(evecs[np.arange(len(evecs)), np.abs(evecs).argmax(1)])
    signs[signs == 0] = 1
    return mean, np.clip(evals[order], 0, None), evecs * signs[:, None]


def pca_map(mean: np.ndarray, evals: np.ndarray, evecs: np.ndarray, d: int,
            whiten: bool = False, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` with ``x @ W.T + b`` = the first ``d`` principal coordinates (optionally whitened)."""
    W = evecs[:d].copy()
    if whiten:
        W /= np.sqrt(evals[:d] + eps)[:, None]
    b = -mean @ W.T
    return W.astype(np.float32), b.astype(np.float32)
