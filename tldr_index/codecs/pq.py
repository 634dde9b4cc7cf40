"""PQ (today's product quantizer) and OPQ (a learnt rotation, then PQ), 8 bits per sub-quantizer.

``bytes`` = M sub-quantizers of 256 centroids each; M must divide d. Training is FAISS k-means
(``n_iter x rows x 256 x d`` multiply-adds); OPQ adds ``opq_iter`` alternations of PQ training
and a d x d Procrustes rotation (``opq_iter x rows x d^2``, minutes for 384-d on 2 cores, hence
the ``opq_train_rows`` cap). Encoding: ``n x 256 x d``. Search: FAISS ``IndexPQ`` lookup tables
(``n_queries x n x M`` adds).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ..quantizer import ProductQuantizer
from .base import Codec, check_codes, check_matrix


class PQCodec(Codec):
    """Product quantization of the vectors as given (inner product). Wraps
    :class:`tldr_index.quantizer.ProductQuantizer` (``metric="ip"``)."""

    name = "pq"

    def __init__(self, dim: int, n_bytes: int, n_iter: int = 20, max_train_rows: int = 65_536):
        super().__init__(dim)
        self.n_bytes, self.n_iter, self.max_train_rows = int(n_bytes), int(n_iter), int(max_train_rows)

    @property
    def code_size(self) -> int:
        return self.n_bytes

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_bytes": self.n_bytes, "n_iter": self.n_iter,
                "max_train_rows": self.max_train_rows}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"centroids": (self.n_bytes, 256, self.dim // max(self.n_bytes, 1))}

    def _rotate(self, X: np.ndarray) -> np.ndarray:
        return X

    def _fit(self, X: np.ndarray, seed: int) -> None:
        self.pq_ = ProductQuantizer(self.n_bytes, metric="ip", n_iter=self.n_iter,
                                    max_train_rows=self.max_train_rows,
                                    random_state=seed).fit(self._rotate(X))

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self.pq_.encode(self._rotate(X))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.pq_.decode(codes)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.pq_.centroids_}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.pq_ = ProductQuantizer.from_centroids(tensors["centroids"], metric="ip")

    def _scores(self, Q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._rotate(Q) @ self.pq_.decode(codes).T

    def search(self, queries: Any, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS ADC (lookup tables of ``<q_m, centroid>``): ``n_queries x n x M`` adds."""
        self._check_fitted("search")
        Q = check_matrix(queries, "queries", self.dim, f"{type(self).__name__}.search")
        codes = check_codes(codes, self.code_size, f"{type(self).__name__}.search")
        D, I = self.pq_.search(self._rotate(Q), codes, min(k, len(codes)))
        return D, I


class OPQCodec(PQCodec):
    """FAISS ``OPQMatrix`` rotation (orthogonal d x d, stored as ``rotation``) followed by PQ.
    Queries are rotated by the same matrix, so inner products are preserved."""

    name = "opq"

    def __init__(self, dim: int, n_bytes: int, n_iter: int = 20, max_train_rows: int = 65_536,
                 opq_iter: int = 10, opq_train_rows: int = 10_000):
        super().__init__(dim, n_bytes, n_iter, max_train_rows)
        self.opq_iter, self.opq_train_rows = int(opq_iter), int(opq_train_rows)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "opq_iter": self.opq_iter,
                "opq_train_rows": self.opq_train_rows}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super()._shapes(), "rotation": (self.dim, self.dim)}

    def _rotate(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X @ self.rotation_.T, dtype=np.float32)

    def _fit(self, X: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(X), self.opq_train_rows, replace=False)) \
            if len(X) > self.opq_train_rows else slice(None)
        opq = faiss.OPQMatrix(self.dim, self.n_bytes)
        opq.niter = self.opq_iter
        opq.max_train_points = self.opq_train_rows
        pq = faiss.ProductQuantizer(self.dim, self.n_bytes, 8)  # alive until train() returns
        pq.cp.min_points_per_centroid = 1
        pq.cp.seed = seed
        opq.pq = pq
        opq.train(np.ascontiguousarray(X[rows]))
        self.rotation_ = faiss.vector_to_array(opq.A).reshape(self.dim, self.dim).copy()
        super()._fit(X, seed)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.pq_.decode(codes) @ self.rotation_  # rotation is orthogonal: inverse = A^T

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.pq_.centroids_, "rotation": self.rotation_}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        super()._restore(tensors)
        self.rotation_ = np.ascontiguousarray(tensors["rotation"], dtype=np.float32)


__all__ = ["PQCodec", "OPQCodec"]
