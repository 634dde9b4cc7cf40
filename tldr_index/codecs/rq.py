"""Residual quantization (FAISS ``ResidualQuantizer``): M codebooks of 256 full-dimension
centroids, each quantizing the residual the previous ones left; the code is M bytes.

The codebooks are exported as one ``(M, 256, d)`` float32 array and copied back into a fresh
``faiss.ResidualQuantizer`` on load (``rq.codebooks`` is a flat ``std::vector<float>`` of
``M x 256 x d``), so no FAISS blob is ever stored. Scores are inner products
``<q, sum_m C_m[code_m]>``: no norm byte is needed for inner-product search (an L2 search would
need ``||x_hat||^2``, which FAISS stores as an extra quantized byte; not offered here).

Cost (measured in ``benchmarks/results/frontier.md``): training runs M rounds of k-means (256
centroids, ``n_iter`` iterations) on the residuals, each followed by a beam search over the
training rows; encoding is a beam search of width ``beam`` (FAISS ``max_beam_size``, default 5) through
precomputed codebook cross-products: about ``n x M x beam x 256 x (d + M)`` operations against
PQ's ``n x 256 x d``, so one to two orders of magnitude slower than PQ at the same bytes (see the
encode rows/s column of the benchmark). Search: FAISS
``IndexResidualQuantizer`` lookup tables (``ST_LUT_nonorm``), ``n_queries x n x M`` adds.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import Codec, check_codes, check_matrix


def _make_rq(dim: int, m: int, beam: int) -> faiss.ResidualQuantizer:
    rq = faiss.ResidualQuantizer(dim, m, 8)
    rq.max_beam_size = beam
    return rq


def _encode_with_tables(rq: faiss.ResidualQuantizer) -> None:
    """Encode through precomputed codebook cross-products (``use_beam_LUT``): the beam search
    then costs ``n x M x beam x 256 x M`` table look-ups instead of ``... x d`` residual updates
    (3x faster at d=384, M=8 here); training keeps FAISS's default residual path."""
    rq.use_beam_LUT = 1
    rq.compute_codebook_tables()


class RQCodec(Codec):
    """``n_bytes`` residual codebooks of 256 centroids (8 bits each), trained on at most
    ``max_train_rows`` rows with ``n_iter`` k-means iterations per codebook."""

    name = "rq"

    def __init__(self, dim: int, n_bytes: int, beam: int = 5, n_iter: int = 10,
                 max_train_rows: int = 20_000):
        super().__init__(dim)
        self.n_bytes, self.beam = int(n_bytes), int(beam)
        self.n_iter, self.max_train_rows = int(n_iter), int(max_train_rows)

    @property
    def code_size(self) -> int:
        return self.n_bytes

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_bytes": self.n_bytes, "beam": self.beam,
                "n_iter": self.n_iter, "max_train_rows": self.max_train_rows}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"codebooks": (self.n_bytes, 256, self.dim)}

    def _fit(self, X: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(X), self.max_train_rows, replace=False)) \
            if len(X) > self.max_train_rows else slice(None)
        rq = _make_rq(self.dim, self.n_bytes, self.beam)
        rq.cp.niter = self.n_iter
        rq.cp.seed = seed
        rq.cp.min_points_per_centroid = 1
        rq.train_type = faiss.ResidualQuantizer.Train_default  # no progressive-dim k-means
        rq.train(np.ascontiguousarray(X[rows]))
        self.codebooks_ = faiss.vector_to_array(rq.codebooks).reshape(
            self.n_bytes, 256, self.dim).copy()
        _encode_with_tables(rq)
        self.rq_ = rq

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.codebooks_ = np.ascontiguousarray(tensors["codebooks"], dtype=np.float32)
        rq = _make_rq(self.dim, self.n_bytes, self.beam)
        faiss.copy_array_to_vector(self.codebooks_.ravel(), rq.codebooks)
        rq.is_trained = True
        _encode_with_tables(rq)
        self.rq_ = rq

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks_}

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self.rq_.compute_codes(X)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.rq_.decode(codes)

    def index(self, codes: np.ndarray) -> faiss.IndexResidualQuantizer:
        """A FAISS inner-product index holding ``codes`` as they are (no re-encoding)."""
        idx = faiss.IndexResidualQuantizer(self.dim, self.n_bytes, 8, faiss.METRIC_INNER_PRODUCT,
                                           faiss.AdditiveQuantizer.ST_LUT_nonorm)
        faiss.copy_array_to_vector(self.codebooks_.ravel(), idx.rq.codebooks)
        idx.rq.max_beam_size = self.beam
        idx.is_trained = idx.rq.is_trained = True
        assert idx.code_size == self.n_bytes
        faiss.copy_array_to_vector(codes.ravel(), idx.codes)
        idx.ntotal = len(codes)
        return idx

    def search(self, queries: Any, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS lookup-table ADC: ``n_queries x n x M`` adds after ``n_queries x M x 256 x d``."""
        self._check_fitted("search")
        Q = check_matrix(queries, "queries", self.dim, "RQCodec.search")
        codes = check_codes(codes, self.code_size, "RQCodec.search")
        return self.index(codes).search(Q, min(k, len(codes)))
