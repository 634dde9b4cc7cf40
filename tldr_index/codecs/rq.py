"""Residual quantization (FAISS ``ResidualQuantizer``): M codebooks of 256 full-dimension
centroids, each quantizing the residual the previous ones left; the code is M bytes.

The codebooks are exported as one ``(M, 256, d)`` float32 array and copied back into a fresh
``faiss.ResidualQuantizer`` on load (``rq.codebooks`` is a flat ``std::vector<float>`` of
``M x 256 x d``), so no FAISS blob is ever stored. Scores are inner products
``<q, sum_m C_m[code_m]>``: no norm byte is needed for inner-product search (an L2 search would
need ``||x_hat||^2``, which FAISS stores as an extra quantized byte; not offered here).

Cost: training runs M rounds of k-means (256 centroids, ``n_iter`` iterations) on the residuals,
each followed by a beam search over the training rows. Encoding (:func:`lut_encode`, every beam)
is FAISS's beam search of width ``beam`` (the ``beam`` best partial codes are kept after each
codebook, FAISS's ``max_beam_size``) through precomputed codebook cross-products
(``refine_beam_LUT_mp``: ``n x M x beam x 256 x M`` table look-ups) after one float64 GEMM of the
rows with the codebooks (``n x M x 256 x d`` multiply-adds), on row chunks in single-threaded
worker threads (the caller's :func:`tldr_index.threads.thread_limit`), so no OpenMP team
spin-waits on a shared machine. The GEMM is ours, not FAISS's float32 one, because its rounding
must not depend on the batch: a row gets the same code whichever rows it is encoded with (the
single-process and the Ray engine, ``add`` and a full shrink agree byte for byte).

:func:`beam_encode` is a pure-torch beam search (one GEMM per codebook), kept as the reference the
encoder is checked against and measured beside it in ``benchmarks/rq_encode.py``; its float32
GEMMs round differently in small batches, so the codec does not use it.

CPU seconds per 1M rows for d = 64 / 128, 8 / 16 / 32 B and beams 1-5, 1 and 2 threads:
``benchmarks/rq_encode.py`` and ``benchmarks/results/rq_encode.md``. Search: RQ's look-up tables
(``<q, C_m[k]>``) scanned by a FAISS ``IndexPQ`` over the same codes (:meth:`RQCodec.table_index`),
``n_queries x n x M`` adds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from ..validation import check_int
from .base import Codec, check_codes, check_matrix

#: Candidate distances held per worker and step (float32): a chunk is ``CANDIDATE_FLOATS //
#: (beam x 256)`` rows, so memory per worker is about 4 MiB for the candidates plus
#: ``chunk x beam x d`` float32 residuals, whatever the beam.
CANDIDATE_FLOATS = 1 << 20
#: Widest beam :class:`RQCodec` accepts (candidates and memory grow linearly with it).
MAX_BEAM = 256
#: Row-codebook inner products per chunk of :func:`lut_encode` (a chunk is ``CROSS_FLOATS //
#: (M x 256)`` rows: 512 at 16 B; 24 MiB per worker in float64 + float32).
CROSS_FLOATS = 1 << 21
_TABLES_LOCK = threading.Lock()  # a restored codec builds its tables once, on its first encode


def _chunks(n: int, rows: int) -> Iterator[slice]:
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def _beam_chunk(X: np.ndarray, books, norms, beam: int) -> np.ndarray:
    """Beam search of one chunk (torch, single-threaded ops); see :func:`beam_encode`."""
    import torch

    M, K, d = books.shape
    x = torch.from_numpy(X)
    n = len(x)
    res = x.clone()                                     # (n x width, d) residuals
    dist = (x * x).sum(1, keepdim=True)                 # (n, width) squared residual norms
    width = 1
    parents, picks = [], []
    for m in range(M):
        # ||r - c||^2 = ||r||^2 - 2 <r, c> + ||c||^2 for every (row, beam entry, centroid)
        cand = torch.addmm(norms[m], res, books[m].T, alpha=-2.0).view(n, width, K)
        cand = cand.add_(dist[:, :, None]).view(n, width * K)
        new = min(beam, width * K)
        if new == 1:  # argmin through amin (vectorised) and the first index reaching it
            val = cand.amin(1, keepdim=True)
            idx = torch.where(cand == val, torch.arange(width * K, dtype=cand.dtype),
                              float(width * K)).amin(1, keepdim=True).long()
        else:
            val, idx = torch.topk(cand, new, dim=1, largest=False, sorted=True)
        par, k = torch.div(idx, K, rounding_mode="floor"), idx % K
        if width > 1:
            res = res.view(n, width, d)[torch.arange(n)[:, None], par].view(n * new, d)
        elif new > 1:
            res = res[:, None, :].expand(n, new, d).reshape(n * new, d)
        res = res - books[m][k.view(-1)]
        parents.append(par)
        picks.append(k)
        dist, width = val, new
    codes = torch.empty((n, M), dtype=torch.uint8)
    j = torch.zeros((n, 1), dtype=torch.long)          # the best entry of the last beam
    for m in range(M - 1, -1, -1):                      # follow the parents back
        codes[:, m] = picks[m].gather(1, j)[:, 0].to(torch.uint8)
        j = parents[m].gather(1, j)
    return codes.numpy()


def encode_threads() -> int:
    """Worker threads for encoding: the caller's FAISS/torch thread count (what
    :func:`tldr_index.threads.thread_limit` set; :func:`tldr_index.threads.run_in_worker`
    passes it on to its worker)."""
    return max(1, faiss.omp_get_max_threads())


def split_rows(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, rows: int, width: int,
               workers: int) -> np.ndarray:
    """``fn`` over chunks of ``rows`` rows of ``X`` -> ``(n, width)`` uint8, in ``workers``
    Python threads that each run with one torch and one FAISS (OpenMP) thread. The native code
    releases the GIL, so the chunks run in parallel, and no OpenMP team spin-waits for a
    descheduled member on a shared machine (FAISS's own 2-thread encode used 1.1-1.3x the CPU
    seconds of its 1-thread run at d=64 under a load of 6, and 8x on a 2,000-row input; see
    ``benchmarks/results/rq_encode.md``). The thread settings of the calling thread are restored."""
    import torch

    out = np.empty((len(X), width), dtype=np.uint8)
    chunks = list(_chunks(len(X), rows))
    workers = max(1, min(workers, len(chunks)))
    before_torch, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()

    def work(sl: slice) -> None:
        torch.set_num_threads(1)       # per thread: its own OpenMP setting
        faiss.omp_set_num_threads(1)
        out[sl] = fn(X[sl])

    try:
        if workers == 1:
            for sl in chunks:
                work(sl)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="tldr-rq") as pool:
                list(pool.map(work, chunks))
    finally:
        torch.set_num_threads(before_torch)
        faiss.omp_set_num_threads(before_faiss)
    return out


def beam_encode(X: np.ndarray, codebooks: np.ndarray, beam: int,
                threads: int | None = None) -> np.ndarray:
    """Residual-quantization codes of the rows of ``X`` by beam search: after codebook m keep the
    ``beam`` (partial code, residual) pairs of smallest squared residual among every extension
    of the previous ``beam`` by the 256 centroids of codebook m; return the best final code.

    ``X``: ``(n, d)`` float32, ``codebooks``: ``(M, 256, d)`` float32; returns ``(n, M)`` uint8.
    Cost: ``n x M x beam x 256 x d`` multiply-adds (one GEMM per codebook and chunk) plus a
    top-``beam`` selection over ``beam x 256`` candidates per row and codebook; memory about
    ``CANDIDATE_FLOATS`` float32 plus ``chunk x beam x d`` per worker. ``threads`` workers (default
    :func:`encode_threads`) each encode whole chunks with single-threaded torch ops
    (:func:`split_rows`). Equal to FAISS's ``ResidualQuantizer.compute_codes`` with
    ``max_beam_size=beam`` up to float ties.
    """
    import torch

    X = np.ascontiguousarray(X, dtype=np.float32)
    books = torch.from_numpy(np.ascontiguousarray(codebooks, dtype=np.float32))
    norms = (books * books).sum(-1)
    M, K, _ = books.shape
    rows = max(1, CANDIDATE_FLOATS // (beam * K))
    return split_rows(lambda x: _beam_chunk(x, books, norms, beam), X, rows, M,
                      threads or encode_threads())


def _make_rq(dim: int, m: int, beam: int) -> faiss.ResidualQuantizer:
    rq = faiss.ResidualQuantizer(dim, m, 8)
    rq.max_beam_size = beam
    return rq


def codebook_tables(codebooks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(centroid_norms, cross_products)`` of ``(M, 256, d)`` codebooks in FAISS's layout
    (``ResidualQuantizer.compute_codebook_tables``): ``||C_m[k]||^2`` for every entry (``M x 256``)
    and, for m = 1..M-1, the ``(m x 256, 256)`` block of inner products of the entries of
    codebooks 0..m-1 with those of codebook m, concatenated. Summed in float64 and rounded to
    float32, so every process (whatever its BLAS threads) builds the same tables.
    Cost: ``256^2 x d x M (M - 1) / 2`` multiply-adds."""
    books = np.ascontiguousarray(codebooks, dtype=np.float64)
    M, K, d = books.shape
    flat = books.reshape(M * K, d)
    norms = np.einsum("nd,nd->n", flat, flat).astype(np.float32)
    blocks = [(flat[:m * K] @ books[m].T).astype(np.float32).ravel() for m in range(1, M)]
    cross = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return norms, cross


def _use_tables(rq: faiss.ResidualQuantizer, codebooks: np.ndarray) -> None:
    """Encode through precomputed codebook tables (``use_beam_LUT``, :func:`codebook_tables`):
    the beam search then costs ``n x M x beam x 256 x M`` table look-ups instead of ``... x d``
    residual updates (3x faster at d=384, M=8 here); training keeps FAISS's residual path."""
    norms, cross = codebook_tables(codebooks)
    rq.use_beam_LUT = 1
    faiss.copy_array_to_vector(norms, rq.centroid_norms)
    faiss.copy_array_to_vector(cross, rq.codebook_cross_products)


def _lut_chunk(X: np.ndarray, rq: faiss.ResidualQuantizer, books_t, beam: int) -> np.ndarray:
    """FAISS's table beam search (``refine_beam_LUT_mp``) of one chunk, fed with the row norms
    and row-codebook inner products computed here in float64 and rounded to float32."""
    import torch

    n, M = len(X), rq.M
    x = torch.from_numpy(X).double()
    cp = torch.mm(x, books_t).float().numpy()                 # (n, M x 256)
    qn = np.einsum("nd,nd->n", X.astype(np.float64), X.astype(np.float64)).astype(np.float32)
    width = min(beam, 256 ** M)
    codes = np.empty((n, width, M), dtype=np.int32)
    dist = np.empty((n, width), dtype=np.float32)
    faiss.refine_beam_LUT_mp(rq, n, faiss.swig_ptr(qn), faiss.swig_ptr(cp), beam,
                             faiss.swig_ptr(codes), faiss.swig_ptr(dist),
                             faiss.RefineBeamLUTMemoryPool())
    return codes[:, 0].astype(np.uint8)                        # the best code of the beam


def lut_encode(X: np.ndarray, rq: faiss.ResidualQuantizer, codebooks: np.ndarray, beam: int,
               threads: int | None = None) -> np.ndarray:
    """Residual-quantization codes of the rows of ``X`` by FAISS's look-up-table beam search of
    width ``beam`` (``rq``: a ``faiss.ResidualQuantizer`` holding ``codebooks`` with its tables
    set by :func:`_use_tables`), a row's code independent of the other rows encoded with it.

    FAISS's own ``compute_codes`` takes the row-codebook inner products from one float32 GEMM
    over the batch, whose rounding depends on where a row sits in it (BLAS edge tiles and
    small-matrix kernels); a near-tie in the beam then flips with the batching (4 of 1,995 rows
    at d=8, 4 B in the Ray-vs-local test; none of 20,000 at d=64, 16 B in
    ``benchmarks/rq_encode.py``), so two engines batching the same rows differently wrote
    different codes. Here the
    inner products (``n x M x 256 x d`` multiply-adds) are summed in float64 and rounded to
    float32, which makes them the same in any batch (a float64 difference of ~1e-16 relative
    would have to straddle a float32 rounding boundary), and the rest of FAISS's search is
    row by row. Rows are encoded in chunks of ``CROSS_FLOATS // (M x 256)`` in
    :func:`split_rows` workers (``threads``, default :func:`encode_threads`).
    Returns ``(n, M)`` uint8; memory per worker: a chunk's ``rows x M x 256`` float64 + float32.
    """
    import torch

    X = np.ascontiguousarray(X, dtype=np.float32)
    books = np.ascontiguousarray(codebooks, dtype=np.float64)
    M, K, d = books.shape
    books_t = torch.from_numpy(books.reshape(M * K, d).T.copy())     # (d, M x 256) float64
    rows = max(1, CROSS_FLOATS // (M * K))
    return split_rows(lambda x: _lut_chunk(x, rq, books_t, beam), X, rows, M,
                      threads or encode_threads())


class RQCodec(Codec):
    """``n_bytes`` residual codebooks of 256 centroids (8 bits each), trained on at most
    ``max_train_rows`` rows with ``n_iter`` k-means iterations per codebook."""

    name = "rq"

    def __init__(self, dim: int, n_bytes: int, beam: int = 5, n_iter: int = 10,
                 max_train_rows: int = 20_000):
        super().__init__(dim)
        beam = check_int(beam, "beam", low=1, high=MAX_BEAM, owner="RQCodec")
        self.n_bytes, self.beam = int(n_bytes), beam
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
        _use_tables(rq, self.codebooks_)
        self._rq, self._tables_built = rq, True

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        """Codebooks only: the encoder's tables (:func:`codebook_tables`, 0.5 s at d=64, 16 B)
        are built on the first use of :attr:`rq_` (an encode), which search and decode never
        need, so opening a target to search it does not pay for them."""
        self.codebooks_ = np.ascontiguousarray(tensors["codebooks"], dtype=np.float32)
        rq = _make_rq(self.dim, self.n_bytes, self.beam)
        faiss.copy_array_to_vector(self.codebooks_.ravel(), rq.codebooks)
        rq.is_trained = True
        self._rq, self._tables_built = rq, False

    @property
    def rq_(self) -> faiss.ResidualQuantizer:
        """The FAISS quantizer holding the codebooks, with its codebook tables set
        (:func:`_use_tables`; built here on first use after a restore, once, thread-safe)."""
        if not self._tables_built:
            with _TABLES_LOCK:
                if not self._tables_built:
                    _use_tables(self._rq, self.codebooks_)
                    self._tables_built = True
        return self._rq

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks_}

    def _encode(self, X: np.ndarray) -> np.ndarray:
        """:func:`lut_encode` (a row's code does not depend on the batch it is in)."""
        return lut_encode(X, self.rq_, self.codebooks_, self.beam)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._rq.decode(codes)  # the codebooks only: no tables needed

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

    def table_index(self, codes: np.ndarray) -> faiss.IndexPQ:
        """A FAISS ``IndexPQ`` over ``codes`` (as they are) that scores a query tiled ``M`` times
        (:meth:`search`) by ``<q, sum_m C_m[code_m]>``: sub-quantizer m of the ``M x d``-dim PQ
        holds codebook m, so its inner-product table is ``<q, C_m[k]>``, RQ's look-up table, and
        the code layout (one byte per codebook) is PQ's. It scans with PQ's unrolled loops: 2.9x
        faster than FAISS's ``IndexResidualQuantizer`` on 200 queries x 200,000 rows at d=64,
        16 B, same top 100 up to float ties."""
        idx = faiss.IndexPQ(self.n_bytes * self.dim, self.n_bytes, 8,
                            faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(self.codebooks_.ravel(), idx.pq.centroids)
        idx.is_trained = True
        faiss.copy_array_to_vector(codes.ravel(), idx.codes)
        idx.ntotal = len(codes)
        return idx

    def search(self, queries: Any, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS lookup-table ADC (:meth:`table_index`): ``n_queries x M x 256 x d``
        multiply-adds for the tables, then ``n_queries x n x M`` adds."""
        self._check_fitted("search")
        Q = check_matrix(queries, "queries", self.dim, "RQCodec.search")
        codes = check_codes(codes, self.code_size, "RQCodec.search")
        return self.table_index(codes).search(np.tile(Q, (1, self.n_bytes)),
                                              min(k, len(codes)))
