"""PCA and whitened PCA with the same face as :class:`tldr_index.TLDR` (fit/transform/save/load)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .validation import check_bool, check_int
from .base import BaseReducer
from .errors import InvalidParameterError
from .pca import moments, pca_map
from .vectors import as_vectors


class PCA(BaseReducer):
    """Principal component analysis computed out of core (one streamed pass).

    Parameters
    ----------
    n_components : int
        Output dimension d, 1 <= d < D.
    whiten : bool, default False
        Scale each component to unit variance (the paper's PCA baseline).
    chunk_rows : int, default 16384
        Rows per block read. Memory: ``chunk_rows * D`` floats plus a D x D float64 covariance.
    """

    method = "pca"

    def __init__(self, n_components: int = 64, *, whiten: bool = False, chunk_rows: int = 16_384):
        self.n_components = n_components
        self.whiten = whiten
        self.chunk_rows = chunk_rows

    def fit(self, X: Any, y: Any = None) -> "PCA":
        """Fit on ``X`` (array, memmap, or vector store). Cost: O(N D^2 + D^3)."""
        owner = type(self).__name__
        d = check_int(self.n_components, "n_components", low=1, owner=owner)
        check_bool(self.whiten, "whiten", owner=owner)
        chunk = check_int(self.chunk_rows, "chunk_rows", low=1, owner=owner)
        v = as_vectors(X)
        if d >= v.dim:
            raise InvalidParameterError(
                f"The 'n_components' parameter of {owner} must be an int in the range "
                f"[1, {v.dim - 1}] (smaller than the input dimension D={v.dim}). Got {d} instead.")
        t0 = time.perf_counter()
        mean, evals, evecs = moments(v, chunk)
        self.mean_ = mean.astype(np.float32)
        self.explained_variance_ = evals[:d].astype(np.float32)
        self.components_, self.bias_ = pca_map(mean, evals, evecs, d, whiten=self.whiten)
        self.n_features_in_, self.n_components_ = v.dim, d
        self.fit_info_ = {"n_rows": v.n_rows, "fit_seconds": time.perf_counter() - t0}
        return self

    @property
    def method_name(self) -> str:
        return "pca-whiten" if self.whiten else "pca"

    def _model_info(self) -> dict[str, Any]:
        info = super()._model_info()
        info["method"] = self.method_name
        return info


class IdentityMap(BaseReducer):
    """The identity map R^D -> R^D (weight = I, bias = 0; ``method="none"``): no training, the
    codec then works on the original vectors. ``fit`` only records D. Cost: O(D^2) memory for
    the stored identity (and O(n D^2) per transform, as every linear map)."""

    method = "none"

    def __init__(self, chunk_rows: int = 16_384):
        self.chunk_rows = chunk_rows

    def fit(self, X: Any, y: Any = None) -> "IdentityMap":
        v = as_vectors(X)
        D = v.dim
        self.components_ = np.eye(D, dtype=np.float32)
        self.bias_ = np.zeros(D, dtype=np.float32)
        self.n_features_in_ = self.n_components_ = D
        self.fit_info_ = {"n_rows": v.n_rows}
        return self

    def _encode_block(self, block: np.ndarray) -> np.ndarray:
        return np.array(block, dtype=np.float32)
