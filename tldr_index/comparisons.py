"""The alternatives a user would pick instead of TLDR, searched the same way, out of core.

* :func:`reduced_search`: a fitted linear reducer (PCA, whitened PCA, TLDR) applied to every row,
  then exact search of the reduced float vectors and ADC search of their PQ codes;
* :func:`original_pq_search`: PQ or OPQ + PQ of the *original* vectors at the same bytes per
  vector (FAISS ``OPQ{M},PQ{M}``).

Every function returns database row positions ``(n_queries, k)``, best first, searched in the
metric of the source (cosine: rows and queries L2-normalised, inner product). ``exclude[i]`` is a
row query ``i`` must not return (held-out queries that are themselves rows of the collection).

Memory: the PQ codes (``N x M`` bytes) and one block of rows; the reduced float vectors are never
materialised (each block is reduced as it is read).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np

from .threads import run_in_worker
from .knn import drop_own, exact_search
from .quantizer import ProductQuantizer, normalize_rows
from .vectors import Vectors, as_vectors

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 16_384
OPQ_TRAIN_ROWS = 20_000  # OPQ training dominates its cost (O(iterations x rows x D^2))


class MappedVectors(Vectors):
    """``fn`` applied to every block of ``base`` (e.g. a reducer's ``transform``): out-of-core
    reduced vectors. Cost: one ``fn`` call per block read."""

    def __init__(self, base: Vectors, fn: Callable[[np.ndarray], np.ndarray], dim: int):
        self.base, self.fn = base, fn
        self.n_rows, self.dim, self.dtype = base.n_rows, dim, np.dtype(np.float32)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.fn(self.base.read(start, stop)), dtype=np.float32)

    def iter_chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS, *, check_finite: bool = False,
                    name: str = "X"):
        for start, block in self.base.iter_chunks(chunk_rows, check_finite=check_finite,
                                                  name=name):
            yield start, np.ascontiguousarray(self.fn(block), dtype=np.float32)


def topk_excluding(search: Callable[[int], np.ndarray], k: int,
                   exclude: np.ndarray | None) -> np.ndarray:
    """``search(k)`` (positions), or ``search(k + 1)`` without each query's own row."""
    if exclude is None:
        return search(k)
    return drop_own(search(k + 1), np.asarray(exclude, dtype=np.int64), k)


def pq_codes(pq: ProductQuantizer, database: Vectors, chunk_rows: int = DEFAULT_CHUNK_ROWS,
             progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, M)`` uint8 codes of every row of ``database`` (encoded block by block);
    ``progress(done_rows)`` after each block."""
    codes = np.empty((database.n_rows, pq.n_bytes), dtype=np.uint8)
    for start, block in database.iter_chunks(chunk_rows):
        codes[start:start + len(block)] = pq.encode(block)
        if progress is not None:
            progress(start + len(block))
    return codes


def _phase(on_phase: Callable[[str, int | None], None] | None, name: str,
           total: int | None) -> None:
    if on_phase is not None:
        on_phase(name, total)


def reduced_search(transform: Callable[[np.ndarray], np.ndarray], dim: int, database: Any,
                   train: np.ndarray, queries: np.ndarray, k: int, *, metric: str,
                   pq_bytes: Sequence[int] = (), exclude: np.ndarray | None = None,
                   float_search: bool = True, random_state: int = 0,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   on_phase: Callable[[str, int | None], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Search the rows of ``database`` reduced by ``transform`` (to ``dim`` columns).

    Returns ``{"float": positions, "pq8": positions, ...}``: exact search of the reduced float
    vectors (``float_search``) and ADC search of PQ codes trained on ``transform(train)`` for each
    ``pq_bytes`` that divides ``dim`` (the others are skipped). Cost: one pass over ``database``
    per representation, ``n_queries x N x dim`` multiply-adds for the float search.
    ``on_phase(name, total_rows or None)`` names each step as it starts and ``progress(done)``
    counts its rows (for a progress display).
    """
    db = as_vectors(database, "database")
    mapped = MappedVectors(db, transform, dim)
    Yq = np.ascontiguousarray(transform(queries), dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    if float_search:
        _phase(on_phase, "exact search of the reduced vectors", db.n_rows)
        # progress in database rows: few queries, the pass over the database is the work
        prog = None if progress is None else (
            lambda done, total: progress(int(db.n_rows * done / max(total, 1))))
        out["float"] = topk_excluding(
            lambda kk: exact_search(mapped, Yq, kk, metric=metric, chunk_rows=chunk_rows,
                                    progress=prog)[1],
            k, exclude)
    Ztrain = transform(train)
    for m in pq_bytes:
        if dim % m:
            log.info("PQ %d bytes skipped at d=%d (must divide d).", m, dim)
            continue
        _phase(on_phase, f"PQ training ({len(Ztrain):,} rows)", None)
        pq = run_in_worker(ProductQuantizer(m, metric=metric, random_state=random_state).fit,
                           Ztrain, name="pq-train")
        _phase(on_phase, "PQ encoding", db.n_rows)
        codes = pq_codes(pq, mapped, chunk_rows, progress)
        out[f"pq{m}"] = topk_excluding(lambda kk, pq=pq, codes=codes: pq.search(Yq, codes, kk)[1],
                                        k, exclude)
    return out


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def original_pq_search(database: Any, train: np.ndarray, queries: np.ndarray, n_bytes: int,
                       k: int, *, metric: str, opq: bool = True,
                       exclude: np.ndarray | None = None, random_state: int = 0,
                       opq_iterations: int = 10, max_train_rows: int = OPQ_TRAIN_ROWS,
                       chunk_rows: int = DEFAULT_CHUNK_ROWS,
                       on_phase: Callable[[str, int | None], None] | None = None,
                       progress: Callable[[int], None] | None = None
                       ) -> tuple[np.ndarray, float]:
    """PQ (``opq=False``) or OPQ + PQ (FAISS ``OPQ{M},PQ{M}``) of the original vectors at
    ``n_bytes`` per vector, trained on at most ``max_train_rows`` rows of ``train``.

    Returns ``(positions (n_queries, k), train + add seconds)``. ``n_bytes`` must divide the
    dimension D. Cost: OPQ training ``opq_iterations x rows x D^2`` (minutes for 384-d at 20k
    rows on 2 cores), then one pass over ``database``; memory: ``N x n_bytes`` codes.
    ``on_phase``/``progress`` as :func:`reduced_search`; the training runs in a worker thread
    (:func:`tldr_index.threads.run_in_worker`) so Ctrl-C is handled at once.
    """
    db = as_vectors(database, "database")
    D = db.dim
    prep = normalize_rows if metric == "cosine" else (lambda x: x)
    if len(train) > max_train_rows:
        rng = np.random.default_rng(random_state)
        train = train[np.sort(rng.choice(len(train), max_train_rows, replace=False))]
    t0 = time.perf_counter()
    if opq:
        index = faiss.index_factory(D, f"OPQ{n_bytes},PQ{n_bytes}", _faiss_metric(metric))
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = opq_iterations
        _phase(on_phase, f"OPQ training ({len(train):,} rows, {opq_iterations} iterations)", None)
        run_in_worker(index.train, np.ascontiguousarray(prep(np.asarray(train, dtype=np.float32))),
                      name="opq-train")
        _phase(on_phase, "OPQ encoding", db.n_rows)
        for start, block in db.iter_chunks(chunk_rows):
            index.add(np.ascontiguousarray(prep(block)))
            if progress is not None:
                progress(start + len(block))
        secs = time.perf_counter() - t0

        def search(kk: int) -> np.ndarray:
            return index.search(np.ascontiguousarray(prep(queries.astype(np.float32))), kk)[1]
    else:
        _phase(on_phase, f"PQ training ({len(train):,} rows)", None)
        pq = run_in_worker(ProductQuantizer(n_bytes, metric=metric, random_state=random_state).fit,
                           train, name="pq-train")
        _phase(on_phase, "PQ encoding", db.n_rows)
        codes = pq_codes(pq, db, chunk_rows, progress)
        secs = time.perf_counter() - t0

        def search(kk: int) -> np.ndarray:
            return pq.search(queries, codes, kk)[1]
    return topk_excluding(search, k, exclude), secs
