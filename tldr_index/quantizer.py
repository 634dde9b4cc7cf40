"""Product quantization of (reduced) vectors, with codebooks kept as plain arrays.

The codebook is a ``(M, 256, d / M)`` float32 array that lives in the safetensors model file next
to the linear map: loading a model never deserialises a FAISS binary. FAISS does the k-means
training, the encoding and the asymmetric-distance (ADC) search.

With ``metric="cosine"`` rows are L2-normalised before training/encoding and searched by inner
product, so PQ approximates unit vectors.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .validation import check_choice, check_int
from .errors import InvalidParameterError, NotFittedError

METRICS = ("cosine", "ip", "l2")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), as a new float array. Cost: O(n x d)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


class ProductQuantizer:
    """``n_bytes`` sub-quantizers of 256 centroids each (8 bits): ``n_bytes`` bytes per vector.

    Parameters
    ----------
    n_bytes : int
        Code size M; must divide the vector dimension d.
    metric : {"cosine", "ip", "l2"}
    n_iter : int, default 20 k-means iterations.
    max_train_rows : int, default 65536
        Training rows used (a uniform random sample beyond that). Cost: O(n_iter x rows x 256 x d).
    random_state : int or None
    """

    def __init__(self, n_bytes: int = 16, *, metric: str = "cosine", n_iter: int = 20,
                 max_train_rows: int = 65_536, random_state: Any = None):
        self.n_bytes = n_bytes
        self.metric = metric
        self.n_iter = n_iter
        self.max_train_rows = max_train_rows
        self.random_state = random_state

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return normalize_rows(x) if self.metric == "cosine" else x

    def fit(self, Z: np.ndarray) -> "ProductQuantizer":
        o = "ProductQuantizer"
        M = check_int(self.n_bytes, "n_bytes", low=1, owner=o)
        check_choice(self.metric, "metric", METRICS, owner=o)
        check_int(self.n_iter, "n_iter", low=1, owner=o)
        check_int(self.max_train_rows, "max_train_rows", low=256, owner=o)
        n, d = Z.shape
        if d % M:
            raise InvalidParameterError(
                f"The 'n_bytes' parameter of {o} must divide the vector dimension {d} (one "
                f"sub-vector per byte). Got {M} instead.")
        if n < 256:
            raise InvalidParameterError(
                f"{o} needs at least 256 training rows (256 centroids per sub-quantizer). Got {n}.")
        seed = self.random_state if isinstance(self.random_state, int) else 0
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, self.max_train_rows, replace=False)) \
            if n > self.max_train_rows else slice(None)
        pq = faiss.ProductQuantizer(d, M, 8)
        pq.cp.niter = self.n_iter
        pq.cp.seed = int(seed)
        pq.cp.min_points_per_centroid = 1  # small tables: no FAISS warning spam
        pq.train(self._prep(Z[rows]))
        self.centroids_ = faiss.vector_to_array(pq.centroids).reshape(M, 256, d // M).copy()
        self.dim_ = d
        self._pq = pq
        return self

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, metric: str = "cosine") -> "ProductQuantizer":
        """Rebuild a fitted quantizer from a stored ``(M, 256, dsub)`` codebook."""
        M, ksub, dsub = centroids.shape
        if ksub != 256:
            raise InvalidParameterError(f"PQ codebook must have 256 centroids per sub-quantizer. "
                                        f"Got {ksub}.")
        obj = cls(M, metric=metric)
        obj.centroids_ = np.ascontiguousarray(centroids, dtype=np.float32)
        obj.dim_ = M * dsub
        obj._pq = faiss.ProductQuantizer(obj.dim_, M, 8)
        faiss.copy_array_to_vector(obj.centroids_.ravel(), obj._pq.centroids)
        return obj

    def _check(self) -> None:
        if not hasattr(self, "centroids_"):
            raise NotFittedError("This ProductQuantizer instance is not fitted yet. Call 'fit' "
                                 "before using 'encode'.")

    def encode(self, Z: np.ndarray) -> np.ndarray:
        """``(n, n_bytes)`` uint8 codes. Cost: O(n x 256 x d)."""
        self._check()
        return self._pq.compute_codes(self._prep(Z))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check()
        return self._pq.decode(np.ascontiguousarray(codes, dtype=np.uint8))

    def index(self, codes: np.ndarray) -> faiss.IndexPQ:
        """A FAISS IndexPQ holding ``codes`` (no re-encoding), for ADC search."""
        self._check()
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        idx = faiss.IndexPQ(self.dim_, self.centroids_.shape[0], 8, metric)
        faiss.copy_array_to_vector(self.centroids_.ravel(), idx.pq.centroids)
        idx.is_trained = True
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        faiss.copy_array_to_vector(codes.ravel(), idx.codes)
        idx.ntotal = len(codes)
        return idx

    def search(self, queries: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``codes`` for float ``queries`` by asymmetric distance."""
        return self.index(codes).search(self._prep(queries), k)
