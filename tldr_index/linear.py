"""The linear map of every reducer, as the product applies it.

:func:`linear_map` is the one place that computes ``X @ W.T + b`` for a fitted map: the
reducers' ``transform`` (:mod:`tldr_index.base`), the compact model's ``encode``
(:mod:`tldr_index.compact`) and the QAT validator (:mod:`tldr_index.qat`) all call it, so they
agree to the bit.
"""

from __future__ import annotations

import numpy as np


def linear_map(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``X @ W.T + b`` accumulated in float64, rounded to float32 (``X`` (n, D), ``W`` (d, D),
    ``b`` (d,)). A row's result does not depend on how many rows it is mapped with (float32
    BLAS sums in a block-size-dependent order). Cost: O(n D d) float64 multiply-adds; memory: a
    float64 copy of ``X`` and of the (n, d) result."""
    Y = np.asarray(X, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T
    Y += np.asarray(b, dtype=np.float64)
    return Y.astype(np.float32)
