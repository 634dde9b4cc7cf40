"""An inverted-file (IVF) index over the codes of a compact collection.

A coarse partition of the reduced vectors into ``nlist`` lists (FAISS k-means of 6 iterations on
24 rows per list; default ``nlist = 2 sqrt(N)``, clamped to ``[1, N / 39]``, see
:func:`default_nlist`); each list holds its rows' codes and row
positions (their index in the code array the index was built from). :meth:`CodeIndex.search`
ranks the ``nlist`` centroids for each query, visits the ``nprobe`` best lists and scores only
their codes, so a query costs about ``nlist x d`` (centroids) plus ``nprobe / nlist`` of the
exhaustive code scan.

Two ways to score the lists (``scan``). ``"fastscan"``, the default: each list holds its rows
re-encoded as 4-bit fast-scan codes of the index's own (:mod:`tldr_index.fastscan_lists`,
:func:`default_scan_bytes` bytes, FAISS ``IndexIVFPQFastScan`` over the same centroids), which
score about 3x faster than 8-bit PQ and need no copy of the collection's codes; its scores are its
own estimate (an exhaustive scan of it is ``nprobe = nlist``), so a search that wants the
collection codes' ranking re-ranks its shortlist (``search --rescore``) or scans every code
(``--exhaustive``). ``"codes"``: the lists score the collection's own codes, as follows.

Scoring is the codec's own estimate of the inner product (``score = <q, x>``; cosine: the index
L2-normalises the queries, the vectors given must be the normalised rows that were encoded; l2:
``score = -||q - x||^2``). PQ and OPQ codes (8-bit sub-quantizers) are scored through FAISS
``IndexIVFPQ`` over the existing codebook (``by_residual = False``: one lookup table per query,
the codes are copied in as they are, never re-encoded); 8-bit PQ cannot use FAISS's 4-bit SIMD
fast-scan layout. Every other codec (rq, rabitq, sign, sq8, sq4) scores the probed lists with
:meth:`~tldr_index.codecs.Codec.scores` (decoding, block by block).

Memory per vector (:meth:`CodeIndex.bytes_per_vector`, the index alone; fast-scan lists: see
there; the searcher of an open collection holds the index only, the collection's codes only after
an exhaustive scan, see :meth:`tldr_index.searcher.CodeSearcher.bytes_per_vector`) of lists over
the codes: ``code_size`` bytes of code plus the row
position: 8 bytes for PQ/OPQ (FAISS inverted lists hold int64 ids), 4 (int32, N < 2^31) for the
other codecs, plus 4 bytes (float32 norm of the decoded row) for non-PQ codecs under l2; the
centroids add ``nlist x d x 4`` bytes in all. The list of each row is not kept in RAM (rebuilt
from the lists when saved). Files: one safetensors file (tensors + JSON metadata, no pickle):
the centroids, each row's list (int32, 4 bytes per vector), the recall table, and the row count
and SHA-256 of the code array indexed; the codes themselves are not duplicated on disk:
:meth:`CodeIndex.load` takes the code array and rebuilds the lists (FAISS structures included)
from it after checking its size and hash (format 3 hashes the raw code bytes, so that
:meth:`CodeIndex.add` extends the hash without the earlier codes; formats 1 and 2, the shape and
the bytes). Fast-scan lists are stored as they are in RAM (their packed blocks), since they cannot
be rebuilt from the collection's codes.

>>> index = CodeIndex.build(Z, codes, codec, metric="cosine")          # doctest: +SKIP
>>> scores, rows = index.search(queries, k=10, nprobe=index.default_nprobe())  # doctest: +SKIP

The recall table stored with the index (:mod:`tldr_index.recall_table`) says, per nprobe and
shortlist, the recall@10 raw and after exact rescoring against the true neighbours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .artifact import atomic_write_bytes, canonical_header
from .codecs import Codec, OPQCodec, PQCodec
from .codecs.base import check_codes, check_matrix
from .errors import InvalidInputError, InvalidParameterError, ModelFormatError, NotFittedError
from .fastscan_lists import FastScanLists
from .recall_table import (RECALL_K, RECALL_NPROBES, RecallTable, check_eval, drop_self,
                           measure)
from .threads import faiss_threads
from .vectors import Vectors
from .validation import check_bool, check_choice, check_float, check_int

log = logging.getLogger(__name__)

FORMAT = "tldr-index/code-index"
FORMAT_VERSION = "3"  # 3: fast-scan lists, raw-bytes code hash; 2: the recall table per
#                        (nprobe, shortlist); 1 and 2 still load
READ_VERSIONS = ("1", "2", "3")
#: how the lists are scored: "codes" (the collection's own codes, see the module docstring) or
#: "fastscan" (:mod:`tldr_index.fastscan_lists`: 4-bit fast-scan codes of the index's own)
SCANS = ("codes", "fastscan")
#: the scan :meth:`CodeIndex.build` uses by default (and shrink / reindex store)
DEFAULT_SCAN = "fastscan"
#: fewest rows a fast-scan index is built from (its sub-quantizers have 16 centroids)
FS_MIN_ROWS = 16
METRICS = ("cosine", "ip", "l2")
#: points per centroid below which FAISS k-means warns; the default nlist keeps above it
MIN_POINTS_PER_LIST = 39
#: rows assigned to their lists per block (a :class:`~tldr_index.vectors.Vectors` input is read
#: block by block: memory ``ADD_BLOCK_ROWS x d x 4`` bytes, 16 MB at d = 64)
ADD_BLOCK_ROWS = 65_536
#: k-means training rows per list (FAISS's default cap is 256)
TRAIN_ROWS_PER_LIST = 24
#: k-means iterations
KMEANS_ITER = 6
#: rows from which shrink builds a code index (smaller collections use the exhaustive scan)
INDEX_MIN_ROWS = 20_000
#: the name of the index among a target's artifacts (:meth:`connectors.Target.artifact`)
ARTIFACT_NAME = "code_index"


def default_nlist(n: int) -> int:
    """``round(2 sqrt(n))`` lists, clamped to ``[1, n // 39]`` (at least 39 rows per list).

    Measured at 1M x 64 (PCA of interpolated MiniLM rows, PQ16; /tmp experiment, one core,
    shared machine, CPU seconds): 2,000 lists (24 training rows per list, 6 iterations) build in
    ~6 s and reach rescored recall@10 0.942 at nprobe 64 with a shortlist of 1,000; 4,000 lists
    (64 rows per list, 10 iterations, the previous default) took 32 s (116 s wall in the
    1M benchmark) and reach 0.949 at nprobe 64 (half the codes scanned) / 0.941 at nprobe 32."""
    return int(max(1, min(round(2 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_LIST)))


#: codes of at least this many bytes get a fast-scan code 4 bytes shorter (default_scan_bytes)
SHORTER_FROM_BYTES = 12


def default_scan_bytes(code_size: int) -> int:
    """Bytes of the fast-scan code of a row: ``code_size - 4`` from :data:`SHORTER_FROM_BYTES`
    up, so that with FAISS's 8-byte ids the lists hold ``code_size + 4`` bytes per row, what the
    collection's codes with int32 row positions would take (16 B codes: 12 B = 24 sub-quantizers
    of 4 bits, recall@10 0.952 after re-ranking 1,000 at 1M rows, see
    :mod:`tldr_index.fastscan_lists`); smaller codes keep their size (at 8 B and below the
    8-byte id is most of the row anyway, and fewer 4-bit sub-quantizers lose too much)."""
    code_size = int(code_size)
    return code_size - 4 if code_size >= SHORTER_FROM_BYTES else code_size


def raw_digest(codes: np.ndarray) -> "hashlib._Hash":
    """A running SHA-256 of a uint8 code array's bytes in row order (rows and code size are
    checked apart): :meth:`CodeIndex.add` extends it without the earlier codes."""
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(codes).reshape(-1)))
    return h


def codes_digest(codes: np.ndarray) -> str:
    """SHA-256 of a uint8 code array's shape and bytes (row order). Cost: one pass, ~1 GB/s."""
    codes = np.ascontiguousarray(codes)
    h = hashlib.sha256(f"{codes.shape}|".encode())
    h.update(memoryview(codes.reshape(-1)))
    return h.hexdigest()


class CodeIndex:
    """IVF lists over a code array (see the module docstring). Build with :meth:`build`, load
    with :meth:`load`; :meth:`exhaustive` is the one-list index (an exhaustive scan)."""

    def __init__(self, codec: Codec, centroids: np.ndarray, metric: str, *, scan: str = "codes",
                 fastscan: FastScanLists | None = None):
        self.codec = codec
        self.scan = check_choice(scan, "scan", SCANS, owner="CodeIndex")
        self.metric = check_choice(metric, "metric", METRICS, owner="CodeIndex")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.nlist, self.dim = self.centroids.shape
        if self.dim != codec.dim:
            raise InvalidParameterError(
                f"The 'centroids' parameter of CodeIndex must have {codec.dim} columns (the "
                f"codec's dimension). Got {self.dim} instead.")
        self.recall_table = RecallTable()
        self.exhaustive_only = False
        self.n = 0
        self._hash = hashlib.sha256()
        self._fs = fastscan
        self._pq = isinstance(codec, PQCodec) and scan == "codes"  # FAISS IndexIVFPQ
        self._quantizer = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(self.dim)
        self._quantizer.add(self.centroids)
        if scan == "fastscan":
            if fastscan is None:
                raise InvalidParameterError("The 'fastscan' parameter of CodeIndex must be the "
                                            "lists of a scan='fastscan' index. Got None instead.")
        elif self._pq:
            self._ivf = self._new_ivfpq()
        else:
            self._codes = [np.empty((0, codec.code_size), np.uint8) for _ in range(self.nlist)]
            self._rows = [np.empty(0, np.int32) for _ in range(self.nlist)]
            self._norms = [np.empty(0, np.float32) for _ in range(self.nlist)]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, codes: Any, codec: Codec, *, metric: str = "cosine",
              nlist: int | None = None, seed: int = 0, n_iter: int = KMEANS_ITER,
              recall_queries: int = 200, exact_recall: bool = True,
              eval_rows: Any = None, eval_truth: Any = None,
              threads: int | None = None, scan: str | None = None,
              scan_bytes: int | None = None) -> "CodeIndex":
        """Train the partition on a sample of ``vectors`` (the reduced ``(N, d)`` rows that were
        encoded into ``codes``, same order), fill the lists and measure the recall table
        (:mod:`tldr_index.recall_table`).

        The table's queries and truth: ``eval_rows`` (row positions) with ``eval_truth``
        (``(len(eval_rows), 10)`` positions of their true neighbours in the original space, self
        excluded: what shrink's recall estimate computes); else ``recall_queries`` rows not in
        the k-means sample (where N allows) with, when ``exact_recall``, their exact neighbours
        among ``vectors`` (self excluded) as truth, or no truth (``vs_exhaustive`` only);
        ``recall_queries=0`` (and no ``eval_rows``) skips the table.

        ``scan``: "fastscan" (default: :data:`DEFAULT_SCAN`, read at each call) scores the lists
        with 4-bit fast-scan codes of the index's own (``scan_bytes`` per row, default
        :func:`default_scan_bytes`; trained on the k-means sample, see
        :mod:`tldr_index.fastscan_lists`); "codes" with the collection's codes.

        Cost: k-means ``n_iter x (TRAIN_ROWS_PER_LIST nlist) x nlist x d`` multiply-adds,
        assignment ``N x nlist x d`` (at 1M x 64 with nlist = 2,000: ~5 s of one core), and the
        table: one exact scan of ``vectors`` per query without ``eval_truth`` and about 1.5
        exhaustive code scans of the queries (every nprobe up to 256, and ``nlist``)."""
        o = "CodeIndex.build"
        if not getattr(codec, "fitted", False):
            raise NotFittedError(f"This {type(codec).__name__} instance is not fitted yet. Call "
                                 f"'fit' before using '{o}'.")
        metric = check_choice(metric, "metric", METRICS, owner=o)
        store = vectors if isinstance(vectors, Vectors) else None
        if store is not None and store.dim != codec.dim:
            raise InvalidInputError(f"The 'vectors' input of {o} must have {codec.dim} columns "
                                    f"(the codec's dimension). Got {store.dim} instead.")
        X = store if store is not None else check_matrix(vectors, "vectors", codec.dim, o)
        codes = check_codes(codes, codec.code_size, o)
        if len(codes) != len(X):
            raise InvalidInputError(f"The 'codes' input of {o} must have one row per vector "
                                    f"({len(X)}). Got {len(codes)} rows instead.")
        if not len(X):
            raise InvalidInputError(f"The 'vectors' input of {o} must hold at least one row. "
                                    f"Got 0 rows instead.")
        n = len(X)
        nlist = default_nlist(n) if nlist is None else check_int(nlist, "nlist", low=1, high=n,
                                                                  owner=o)
        seed = check_int(seed, "seed", low=0, owner=o)
        n_iter = check_int(n_iter, "n_iter", low=1, owner=o)
        recall_queries = check_int(recall_queries, "recall_queries", low=0, owner=o)
        scan = check_choice(DEFAULT_SCAN if scan is None else scan, "scan", SCANS, owner=o)
        scan_bytes = default_scan_bytes(codec.code_size) if scan_bytes is None else check_int(
            scan_bytes, "scan_bytes", low=1, high=256, owner=o)
        exact_recall = check_bool(exact_recall, "exact_recall", owner=o)
        if scan == "fastscan" and n < FS_MIN_ROWS:
            raise InvalidInputError(
                f"The 'vectors' input of {o} must hold at least {FS_MIN_ROWS} rows with "
                f"scan='fastscan' (its 16-centroid sub-quantizers are trained on them). Got {n} "
                f"rows instead; pass scan='codes'.")
        eval_rows, eval_truth = check_eval(eval_rows, eval_truth, n, o)
        if store is not None and eval_rows is None and recall_queries and exact_recall:
            X, store = store.read(0, n), None  # the reduced-space truth scans every row anyway
        prep = _unit if metric == "cosine" else (lambda a: np.asarray(a, np.float32))
        if store is None:
            X = prep(X)
            rows_of = X.__getitem__
        else:
            def rows_of(idx):
                return prep(store.take(idx))
        rng = np.random.default_rng(seed)
        n_train = min(n, TRAIN_ROWS_PER_LIST * nlist)
        perm = rng.permutation(n)
        train = np.sort(perm[:n_train])
        with faiss_threads(threads):
            sample = np.ascontiguousarray(rows_of(train))
            if nlist == 1:
                cent = sample.mean(axis=0, keepdims=True)
            else:
                km = faiss.Kmeans(codec.dim, nlist, niter=n_iter, seed=seed,
                                  spherical=metric == "cosine", min_points_per_centroid=1,
                                  max_points_per_centroid=TRAIN_ROWS_PER_LIST)
                km.train(sample)
                cent = km.centroids
            fs = FastScanLists.train(cent, metric, scan_bytes, sample, seed) \
                if scan == "fastscan" else None
            del sample
            index = cls(codec, cent, metric, scan=scan, fastscan=fs)
            index._hash = raw_digest(codes)
            if store is not None:  # block by block: memory stays one block of float32
                for start, block in store.iter_chunks(ADD_BLOCK_ROWS):
                    index._add(codes[start:start + len(block)], prep(block))
            else:
                index._add(codes, X)
            if eval_rows is not None:
                index.recall_table = index.measure_recall(rows_of(eval_rows), eval_rows,
                                                          eval_truth, truth_space="original")
            elif recall_queries:
                held = perm[n_train:] if n - n_train >= recall_queries else perm
                q_rows = np.sort(held[:recall_queries])
                truth = _exact_truth(X, q_rows, metric) if exact_recall else None
                index.recall_table = index.measure_recall(rows_of(q_rows), q_rows, truth,
                                                          truth_space="reduced")
        log.info("code index: %d rows in %d lists (%s, %s)", n, nlist, codec.name, metric)
        return index

    @classmethod
    def exhaustive(cls, codes: Any, codec: Codec, *, metric: str = "cosine") -> "CodeIndex":
        """The one-list index: every search scans every code (what small collections use, and
        the fallback of :meth:`load`). Cost: a copy of the codes; no training."""
        codes = check_codes(codes, codec.code_size, "CodeIndex.exhaustive")
        index = cls(codec, np.zeros((1, codec.dim), np.float32), metric)
        index.exhaustive_only = True
        index._append(codes, np.zeros(len(codes), np.int32))
        index._hash = raw_digest(codes)
        return index

    def _new_ivfpq(self) -> Any:
        pq = self.codec.pq_
        M, ksub, dsub = pq.centroids_.shape
        fm = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        quantizer = self._quantizer
        if isinstance(self.codec, OPQCodec):  # queries arrive rotated: rotate the centroids too
            quantizer = (faiss.IndexFlatL2 if self.metric == "l2" else faiss.IndexFlatIP)(self.dim)
            quantizer.add(np.ascontiguousarray(self.centroids @ self.codec.rotation_.T,
                                               dtype=np.float32))
        self._ivf_quantizer = quantizer  # the IVF does not own it: keep it alive
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, M, 8, fm)
        ivf.by_residual = False
        faiss.copy_array_to_vector(pq.centroids_.ravel(), ivf.pq.centroids)
        ivf.is_trained = True
        ivf.use_precomputed_table = 0
        return ivf

    @property
    def fastscan_lists(self) -> FastScanLists | None:
        """The fast-scan lists (``scan="fastscan"``), else None."""
        return self._fs

    def copy(self) -> "CodeIndex":
        """An independent copy (same lists and recall table), e.g. to :meth:`add` rows while
        other threads search this one. Cost: a hash of the codes and one pass to fill lists
        (fast-scan lists: a copy of them)."""
        if self._fs is not None:
            out = CodeIndex(self.codec, self.centroids, self.metric, scan=self.scan,
                            fastscan=self._fs.clone())
            out.n, out._hash = self.n, self._hash.copy()
            out.exhaustive_only = self.exhaustive_only
            out.recall_table = RecallTable.from_json(self.recall_table.to_json())
            return out
        codes = self.codes_in_row_order()
        return CodeIndex.from_bytes(self.to_bytes(), codes, self.codec, owner="CodeIndex.copy")

    # -- adding rows ---------------------------------------------------------------------------
    def add(self, codes: Any, vectors: Any, threads: int | None = None) -> np.ndarray:
        """Append rows (``codes`` of ``vectors``, in the order the code array grows): row
        positions ``n .. n + len - 1``. Returns them. Cost: ``len x nlist x d`` to assign."""
        o = "CodeIndex.add"
        X = check_matrix(vectors, "vectors", self.dim, o)
        codes = check_codes(codes, self.codec.code_size, o)
        if len(codes) != len(X):
            raise InvalidInputError(f"The 'codes' input of {o} must have one row per vector "
                                    f"({len(X)}). Got {len(codes)} rows instead.")
        start = self.n
        with faiss_threads(threads):
            self._add(codes, _unit(X) if self.metric == "cosine" else X)
        self._hash.update(memoryview(np.ascontiguousarray(codes).reshape(-1)))
        return np.arange(start, self.n, dtype=np.int64)

    def _add(self, codes: np.ndarray, X: np.ndarray) -> None:
        if self._fs is not None:
            for s in range(0, len(X), ADD_BLOCK_ROWS):
                block = np.ascontiguousarray(X[s:s + ADD_BLOCK_ROWS], dtype=np.float32)
                self._fs.add(block, np.arange(self.n, self.n + len(block)))
                self.n += len(block)
            return
        if self.nlist == 1:
            lists = np.zeros(len(X), np.int32)
        else:
            lists = np.empty(len(X), np.int32)
            for s in range(0, len(X), ADD_BLOCK_ROWS):
                _, a = self._quantizer.search(np.ascontiguousarray(X[s:s + ADD_BLOCK_ROWS]), 1)
                lists[s:s + ADD_BLOCK_ROWS] = a[:, 0]
        self._append(codes, lists)

    def _append(self, codes: np.ndarray, lists: np.ndarray) -> None:
        """Put row ``n + i`` (code ``codes[i]``) into list ``lists[i]``."""
        rows = np.arange(self.n, self.n + len(codes), dtype=np.int64)
        if not self._pq:
            rows = rows.astype(np.dtype(np.int32 if self.n + len(codes) < 2**31 else np.int64))
        order = np.argsort(lists, kind="stable")
        bounds = np.searchsorted(lists[order], np.arange(self.nlist + 1))
        need_norms = self.metric == "l2" and not self._pq
        for li in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[li]:bounds[li + 1]]
            c, r = np.ascontiguousarray(codes[sel]), np.ascontiguousarray(rows[sel])
            if self._pq:
                self._ivf.invlists.add_entries(int(li), len(sel), faiss.swig_ptr(r),
                                               faiss.swig_ptr(c))
            else:
                self._codes[li] = np.concatenate([self._codes[li], c])
                self._rows[li] = np.concatenate([self._rows[li], r])
                if need_norms:
                    nr = np.einsum("ij,ij->i", *(2 * [self.codec.decode(c)]))
                    self._norms[li] = np.concatenate([self._norms[li], nr.astype(np.float32)])
        if self._pq:
            self._ivf.ntotal += len(codes)
        self.n += len(codes)

    # -- search --------------------------------------------------------------------------------
    def check_nprobe(self, nprobe: Any, owner: str = "CodeIndex.search") -> int:
        """``nprobe`` as an int in ``[1, nlist]``, or one clear error."""
        return check_int(nprobe, "nprobe", low=1, high=self.nlist, owner=owner)

    def search(self, queries: Any, k: int = 10, nprobe: int | None = None,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best-first ``(scores, row positions)``, each ``(n_queries, k)``, of the rows of the
        ``nprobe`` lists nearest each query (default: the smallest stored nprobe reaching recall
        0.95 against the exhaustive scan, else all lists). Fewer than ``k`` candidates: the rest
        is id -1, score -inf. Cost per query: ``nlist x d`` plus ``nprobe / nlist`` of an
        exhaustive scan (PQ: ``M`` lookups per code; others: a decode and a dot per code).
        Thread-safe (no state is changed)."""
        o = "CodeIndex.search"
        k = check_int(k, "k", low=1, owner=o)
        if nprobe is None:
            nprobe = self.default_nprobe()
        nprobe = self.check_nprobe(nprobe, o)
        Q = check_matrix(queries, "queries", self.dim, o)
        if self.metric == "cosine":
            Q = _unit(Q)
        with faiss_threads(threads):
            if self._fs is not None:
                return self._fs.search(Q, k, nprobe)
            if self._pq:
                return self._search_pq(Q, k, nprobe)
            return self._search_codec(Q, k, nprobe)

    def default_nprobe(self) -> int:
        """nprobe used when none is given: with a format-2 table the smallest whose raw recall is
        within :data:`~tldr_index.recall_table.SATURATION_GAP` of every list's; with a format-1
        table :meth:`nprobe_for` ``(0.95)`` where it reaches it; else every list."""
        t = self.recall_table
        if t.has_rescored:
            return t.raw_nprobe(None, "CodeIndex.search")
        ok = [p for p, r in zip(t.nprobe, t.vs_exhaustive) if r >= 0.95 and p <= self.nlist]
        return min(ok) if ok else self.nlist

    def _search_pq(self, Q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.codec, OPQCodec):
            Q = np.ascontiguousarray(Q @ self.codec.rotation_.T, dtype=np.float32)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        D, I = self._ivf.search(Q, k, params=params)
        D = D.astype(np.float32)
        if self.metric == "l2":
            D = -D
        D[I < 0] = -np.inf
        return D, I.astype(np.int64)

    def _search_codec(self, Q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        nq = len(Q)
        if self.nlist == 1:
            probe = np.zeros((nq, 1), np.int64)
        else:
            _, probe = self._quantizer.search(Q, nprobe)
        cand_s = np.full((nq, nprobe * k), -np.inf, np.float32)
        cand_i = np.full((nq, nprobe * k), -1, np.int64)
        qsq = np.einsum("ij,ij->i", Q, Q) if self.metric == "l2" else None
        flat_q = np.repeat(np.arange(nq), probe.shape[1])
        flat_slot = np.tile(np.arange(probe.shape[1]), nq)
        flat_l = probe.reshape(-1)
        order = np.argsort(flat_l, kind="stable")
        bounds = np.searchsorted(flat_l[order], np.arange(self.nlist + 1))
        for li in np.flatnonzero(np.diff(bounds)):
            if not len(self._rows[li]) or li < 0:
                continue
            sel = order[bounds[li]:bounds[li + 1]]
            qs, slots = flat_q[sel], flat_slot[sel]
            S = self.codec.scores(Q[qs], self._codes[li])
            if qsq is not None:
                S = 2 * S - self._norms[li][None, :] - qsq[qs, None]
            kk = min(k, S.shape[1])
            part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            cols = slots[:, None] * k + np.arange(kk)[None, :]
            cand_s[qs[:, None], cols] = np.take_along_axis(S, part, axis=1)
            cand_i[qs[:, None], cols] = self._rows[li][part]
        kk = min(k, cand_s.shape[1])
        part = np.argpartition(-cand_s, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(cand_s, part, axis=1)
        ids = np.take_along_axis(cand_i, part, axis=1)
        o = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -vals), axis=1)
        D, I = np.take_along_axis(vals, o, axis=1), np.take_along_axis(ids, o, axis=1)
        if kk < k:
            D = np.pad(D, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
        return D.astype(np.float32), I

    def search_exhaustive(self, queries: Any, k: int = 10,
                          threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The same scores over every list (``nprobe = nlist``): the exhaustive code scan."""
        return self.search(queries, k, nprobe=self.nlist, threads=threads)

    # -- recall table --------------------------------------------------------------------------
    def measure_recall(self, queries: np.ndarray, own: np.ndarray, truth: np.ndarray | None,
                       *, truth_space: str | None = None,
                       nprobes: tuple[int, ...] = RECALL_NPROBES) -> RecallTable:
        """The recall table (:func:`tldr_index.recall_table.measure`) of ``queries`` (the
        indexed rows ``own``, as searched) against ``truth`` (their true top 10, self
        excluded; None: ``vs_exhaustive`` only)."""
        return measure(lambda Q, n, p: self.search(Q, min(n, self.n), nprobe=p)[1], self.nlist,
                       self.n, queries, own, truth, truth_space=truth_space, nprobes=nprobes)

    def nprobe_for(self, target_recall: float, against: str = "exhaustive",
                   owner: str = "CodeIndex.nprobe_for") -> int:
        """The smallest stored nprobe whose recall@10 (``against`` "exhaustive" or "exact")
        reaches ``target_recall``; one clear error naming the best reachable one otherwise."""
        o = owner
        against = check_choice(against, "against", ("exhaustive", "exact"), owner=o)
        target_recall = check_float(target_recall, "target_recall", low=0.0, high=1.0, owner=o)
        t = self.recall_table
        col = t.vs_exhaustive if against == "exhaustive" else (
            t.raw if t.raw is not None else t.vs_exact)
        if not t.nprobe or col is None:
            raise InvalidParameterError(
                f"The 'target_recall' parameter of {o} needs a stored recall table against "
                f"{against} search; this index has none (built with recall_queries=0"
                f"{' or exact_recall=False' if against == 'exact' else ''}). Pass nprobe instead.")
        return t.smallest_nprobe(col, target_recall, o, against)

    def matches(self, codes: np.ndarray) -> bool:
        """Whether ``codes`` are the code array indexed (rows, SHA-256; ~1 GB/s)."""
        codes = np.asarray(codes)
        return len(codes) == self.n and raw_digest(codes).hexdigest() == self._hash.hexdigest()

    # -- memory --------------------------------------------------------------------------------
    def bytes_per_vector(self) -> float:
        """RAM of the index alone per indexed row (what an open collection's searcher holds
        besides: :meth:`tldr_index.searcher.CodeSearcher.resident`).
        The lists: code bytes + the row position (PQ/OPQ: 8, FAISS's
        int64 ids; other codecs: 4, int32 while N < 2^31) [+ 4 (float32 norm, l2, non-PQ)],
        plus the centroids (``nlist x d x 4``) spread over the rows. Fast-scan lists: their
        code bytes + 8 (FAISS ids) + the padding of each list's last 32-row block, plus the
        centroids, rotation and sub-quantizer centroids spread over the rows."""
        if self._fs is not None:
            packed = self._fs.packed_bytes()
            fixed = self.centroids.nbytes + self._fs.fixed_bytes()
            return (packed + 8 * self.n + fixed) / max(self.n, 1)
        per = self.codec.code_size + (8 if self._pq else self._rows_dtype().itemsize)
        if self.metric == "l2" and not self._pq:
            per += 4
        return per + self.centroids.nbytes / max(self.n, 1)

    def _rows_dtype(self) -> np.dtype:
        return np.dtype(np.int32 if self.n < 2**31 - 2**20 else np.int64)

    def assignments(self) -> np.ndarray:
        """The list of every row, ``(n,)`` int32 (rebuilt from the lists: not kept in RAM)."""
        out = np.zeros(self.n, np.int32)
        for li in range(self.nlist):
            out[self._list_rows(li)] = li
        return out

    def _list_rows(self, li: int) -> np.ndarray:
        if self._fs is not None:
            return self._fs.list_rows(li)
        if self._pq:
            size = self._ivf.invlists.list_size(li)
            if not size:
                return np.empty(0, np.int64)
            return faiss.rev_swig_ptr(self._ivf.invlists.get_ids(li), size).copy()
        return self._rows[li]

    # -- persistence ---------------------------------------------------------------------------
    def codes_in_row_order(self) -> np.ndarray:
        """The ``(n, code_size)`` uint8 codes indexed, in row order (a copy). Fast-scan lists do
        not hold the collection's codes: InvalidParameterError."""
        if self._fs is not None:
            raise InvalidParameterError(
                "codes_in_row_order needs an index with scan='codes'; this one has scan="
                "'fastscan' (its lists hold codes of their own, not the collection's).")
        out = np.empty((self.n, self.codec.code_size), np.uint8)
        for li in range(self.nlist):
            if self._pq:
                size = self._ivf.invlists.list_size(li)
                if not size:
                    continue
                rows = faiss.rev_swig_ptr(self._ivf.invlists.get_ids(li), size).copy()
                c = faiss.rev_swig_ptr(self._ivf.invlists.get_codes(li),
                                       size * self.codec.code_size).copy()
                out[rows] = c.reshape(size, -1)
            elif len(self._rows[li]):
                out[self._rows[li]] = self._codes[li]
        return out

    def to_bytes(self) -> bytes:
        """The index as safetensors bytes (see the module docstring for what is stored)."""
        from safetensors.numpy import save

        info = {"metric": self.metric, "nlist": self.nlist, "dim": self.dim, "rows": self.n,
                "code_size": self.codec.code_size, "codec": self.codec.config(),
                "codes_raw_sha256": self._hash.hexdigest(), "scan": self.scan,
                "exhaustive_only": self.exhaustive_only,
                "recall_table": self.recall_table.to_json()}
        tensors = {"centroids": self.centroids, "assign": self.assignments()}
        if self._fs is not None:
            info["scan_bytes"] = self._fs.code_bytes
            tensors.update(self._fs.tensors())
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "info": json.dumps(info, sort_keys=True)}
        return canonical_header(save(tensors, metadata=meta))

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_bytes` atomically to ``path``."""
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, codes: Any, codec: Codec, *,
             fallback_exhaustive: bool = False) -> "CodeIndex":
        """Rebuild an index saved by :meth:`save` over ``codes`` (the code array it indexes).
        A file whose row count or code hash does not match ``codes`` raises
        :class:`ModelFormatError`, or, with ``fallback_exhaustive``, logs a warning and returns
        :meth:`exhaustive`. Cost: a hash of the codes and one pass to fill the lists."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelFormatError(f"Code index file '{path}' does not exist.") from None
        return cls.from_bytes(data, codes, codec, fallback_exhaustive=fallback_exhaustive,
                              where=f"'{path}'", owner="CodeIndex.load")

    @classmethod
    def from_bytes(cls, data: bytes, codes: Any, codec: Codec, *,
                   fallback_exhaustive: bool = False, where: str = "<bytes>",
                   owner: str = "CodeIndex.from_bytes",
                   fallback_hint: str = "pass fallback_exhaustive=True") -> "CodeIndex":
        """:meth:`load` of the bytes of :meth:`to_bytes`; ``where`` names them in errors and
        ``fallback_hint`` says how to ask for the exhaustive fallback."""
        from safetensors.numpy import load

        o = owner
        fallback_exhaustive = check_bool(fallback_exhaustive, "fallback_exhaustive", owner=o)
        codes = check_codes(codes, codec.code_size, o)
        path = where
        try:
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
            tensors = load(data)
            info = json.loads(meta["info"])
        except Exception as exc:  # noqa: BLE001 - any parse failure is one format error
            raise ModelFormatError(f"{path} is not a tldr-index code index: {exc}.") from None
        if meta.get("format") != FORMAT:
            raise ModelFormatError(f"{path} is not a tldr-index code index (format "
                                   f"{meta.get('format')!r}).")
        version = str(meta.get("format_version", "1"))
        if version not in READ_VERSIONS:
            raise ModelFormatError(
                f"{path} is a code index of format version {version!r}; this tldr-index reads "
                f"versions {', '.join(READ_VERSIONS)}. Upgrade tldr-index or rebuild the index.")
        h = raw_digest(codes)
        problem = None
        if info["code_size"] != codec.code_size or info["dim"] != codec.dim:
            problem = (f"it indexes {info['code_size']}-byte codes of {info['dim']}-d vectors, "
                       f"the codec has {codec.code_size}-byte codes of {codec.dim}-d vectors")
        elif info["rows"] != len(codes):
            problem = f"it indexes {info['rows']} rows, the code array has {len(codes)}"
        elif (info["codes_raw_sha256"] != h.hexdigest() if "codes_raw_sha256" in info
              else info["codes_sha256"] != codes_digest(codes)):
            problem = "the SHA-256 of the code array differs from the one it indexed"
        if problem:
            if fallback_exhaustive:
                log.warning("code index %s does not match the codes (%s): exhaustive scan",
                            path, problem)
                return cls.exhaustive(codes, codec, metric=info["metric"])
            raise ModelFormatError(
                f"Code index {path} does not match the codes it is loaded with: {problem}. "
                f"Rebuild it, or {fallback_hint} to search every code.")
        cent = np.asarray(tensors["centroids"], np.float32)
        assign = np.asarray(tensors["assign"], dtype=np.int32)
        if assign.shape != (len(codes),) or (len(assign) and (assign.min() < 0
                                                              or assign.max() >= len(cent))):
            raise ModelFormatError(f"{path} is a corrupt code index: the list of each row must "
                                   f"be {len(codes)} ints in [0, {len(cent)}).")
        scan = info.get("scan", "codes")
        fs = None
        if scan == "fastscan":
            try:
                fs = FastScanLists.restore(cent, info["metric"], int(info["scan_bytes"]),
                                           tensors, assign)
            except (KeyError, ValueError) as exc:
                raise ModelFormatError(f"{path} is a corrupt code index: its fast-scan lists "
                                       f"do not load ({exc}).") from None
        index = cls(codec, cent, info["metric"], scan=scan, fastscan=fs)
        index.exhaustive_only = bool(info["exhaustive_only"])
        if fs is None:
            index._append(codes, assign)
        else:
            index.n = len(codes)
        index._hash = h
        index.recall_table = RecallTable.from_json(info["recall_table"])
        return index

    def __repr__(self) -> str:
        return (f"CodeIndex({self.codec.name}, rows={self.n}, nlist={self.nlist}, "
                f"metric={self.metric!r}, scan={self.scan!r})")


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.where(norms > 0, norms, 1), dtype=np.float32)


def _exact_truth(X: np.ndarray, rows: np.ndarray, metric: str, k: int = RECALL_K) -> np.ndarray:
    """Exact top ``k`` of rows ``rows`` among ``X`` (as searched), self excluded.
    Cost: ``len(rows) x N x d``."""
    flat = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(X.shape[1])
    flat.add(np.ascontiguousarray(X, dtype=np.float32))
    _, I = flat.search(np.ascontiguousarray(X[rows]), min(k + 1, len(X)))
    return drop_self(I, rows, min(k, len(X) - 1))


__all__ = ["CodeIndex", "RecallTable", "INDEX_MIN_ROWS", "ARTIFACT_NAME", "default_nlist",
           "codes_digest", "raw_digest", "default_scan_bytes", "SCANS", "DEFAULT_SCAN"]
