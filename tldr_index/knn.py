"""k-nearest-neighbour graphs for TLDR training, out of core, and exact ground truth.

* :func:`knn_graph` — the ``(N, k)`` neighbour table of a collection with each row's own id
  removed (by id, so a duplicate of a row is a legitimate neighbour). ``method="exact"`` streams
  blocks through a GEMM kernel; ``method="opq"`` builds an ``OPQ{m}_{dout},IVF{nlist},PQ{m}np``
  FAISS index from a random sample, searches it block by block and re-ranks a shortlist with exact
  distances.
* :func:`exact_search` — exact top-k of query rows against a streamed database.
* :func:`graph_recall` — recall@k of a graph against exact search on a sample of rows.

Scores: ``"l2"`` is the squared euclidean distance (ascending), ``"ip"`` the inner product
(descending), ``"cosine"`` the inner product of L2-normalised rows (zero rows stay zero).
Every reader goes through :class:`tldr_index.vectors.Vectors`, so a file-backed ``X`` is never
loaded whole (the one exception: the opq re-ranking gathers scattered candidate rows of a raw
file through a read-only memory map held for one block of queries, about 5x faster than one
``pread`` per row); rows are checked for NaN/inf block by block during the first pass.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import faiss_utils as fu
from .threads import faiss_threads, run_in_worker
from .validation import check_choice, check_int
from .errors import InvalidInputError, InvalidParameterError
from .vectors import Vectors, as_vectors, check_finite_block

logger = logging.getLogger(__name__)

METHODS = ("auto", "exact", "opq")
METRICS = ("l2", "ip", "cosine")
DEVICES = ("auto", "cpu", "cuda")
#: ``method="auto"`` uses exact search up to this many rows, OPQ above. Exact costs N^2 * dim / 2
#: multiply-adds; with the cheap OPQ training below, on the dev corpus (38,000 x 384, k=3, one
#: thread) opq took 10.6-12.5 CPU s (recall@3 0.89) against 16.7 s for exact, and the TLDR fit
#: hardly depends on the graph's recall (issue 17: d=64 0.676 with an OPQ graph, 0.673 exact).
EXACT_MAX_ROWS = 30_000
#: ... and up to this many on a GPU (exact costs N^2 * dim flops: 1M x 768 is ~1.5e15, seconds
#: on a data-centre GPU, where OPQ would lose ~15% of the neighbours).
EXACT_MAX_ROWS_GPU = 1_000_000
#: Default PQ code size (bytes per vector = number of 8-bit sub-quantizers). The paper used 16;
#: on 100k tiled text embeddings (nprobe 16, refine 40) recall@10 was 0.84 with OPQ32_128 vs 0.71
#: with OPQ16_64 and 0.78 with OPQ16_128, for ~1.5x the search time.
DEFAULT_BYTES_PER_VECTOR = 32
#: Default rows per streamed block: about 64 MiB of float32 per block, between 1024 and 65536.
BLOCK_BYTES = 64 * 2**20
#: With a GPU kernel: about 1 GiB per block, at most 262,144 rows (a query tile then scores
#: 2048 x 262144 float32 = 2 GiB at most on the GPU).
GPU_BLOCK_BYTES = 2**30
GPU_MAX_CHUNK_ROWS = 262_144
# OPQ defaults, chosen by measurement (see benchmarks/knn.py and benchmarks/results/knn.md).
DEFAULT_NPROBE = 16
DEFAULT_REFINE_FACTOR = 4          # refine = max(4*k, 40) candidates re-ranked exactly
MIN_REFINE = 40
# Training effort (issue 17): OPQ on 4,096 sampled rows with 4 iterations, k-means with 8 (IVF)
# and 5 (PQ) iterations on at most 64 rows per centroid. On the dev corpus (38,000 rows, k=3,
# cosine) the graph kept its recall@3 (0.891 vs 0.890) while training went from 206 s to 14 s
# under a load of ~9 (OPQ on 10,000 rows with 10 iterations was most of it).
OPQ_NITER = 4
OPQ_NITER_PQ_0 = 4
OPQ_MAX_TRAIN_POINTS = 4096
KMEANS_NITER = 8
PQ_NITER = 5
MAX_POINTS_PER_CENTROID = 64
MIN_POINTS_PER_LIST = 39           # below this faiss k-means warns and lists get noisy
MIN_TRAIN_ROWS = 16_384
TRAIN_ROWS_PER_LIST = 40
MIN_OPQ_ROWS = 256                 # PQ codebooks have 256 centroids
#: Query rows per FAISS search call of the opq pass, re-ranked 256 at a time: the pass's peak
#: memory on 100k x 384 rows (a file-backed store) fell from +486 MB (one 43k-row chunk, 1,024-row
#: re-rank blocks) to +336 MB (maxrss); FAISS still spreads each call over its threads.
OPQ_SEARCH_ROWS = 8192

Progress = Callable[[int, int], Any]


@dataclass
class KnnGraph:
    """A kNN graph: ``neighbors[i]`` are the row positions of the ``k`` nearest rows to row ``i``,
    best first, never ``i`` itself; ``-1`` pads rows where fewer than ``k`` were found."""

    neighbors: np.ndarray
    method: str
    metric: str
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    n_incomplete: int = 0

    @property
    def k(self) -> int:
        return int(self.neighbors.shape[1])

    def __repr__(self) -> str:
        return (f"KnnGraph(shape={tuple(self.neighbors.shape)}, method={self.method!r}, "
                f"metric={self.metric!r}, seconds={self.seconds:.1f}, "
                f"n_incomplete={self.n_incomplete})")


# --------------------------------------------------------------------------------------------
# argument checks


def _default_chunk_rows(dim: int, kernel: Any) -> int:
    """About ``BLOCK_BYTES`` of float32 per block, 1024..65536 rows; for a GPU kernel about
    ``GPU_BLOCK_BYTES``, up to ``GPU_MAX_CHUNK_ROWS`` (fewer, larger blocks keep the GPU busy and
    re-read the database fewer times)."""
    if isinstance(kernel, fu.CpuKernel):
        return int(min(65_536, max(1_024, BLOCK_BYTES // (4 * dim))))
    return int(min(GPU_MAX_CHUNK_ROWS, max(1_024, GPU_BLOCK_BYTES // (4 * dim))))


def _check_common(metric: str, chunk_rows: Any, device: str, dim: int, owner: str
                  ) -> tuple[int, Any]:
    check_choice(metric, "metric", METRICS, owner=owner)
    check_choice(device, "device", DEVICES, owner=owner)
    chunk_rows = check_int(chunk_rows, "chunk_rows", low=1, owner=owner, allow_none=True)
    if device == "cuda" and not (fu.gpu_available() or fu.torch_cuda_available()):
        raise InvalidParameterError(
            f"The 'device' parameter of {owner} is 'cuda' but no GPU is visible (neither to "
            f"FAISS nor to torch). Use device='cpu' or 'auto'.")
    kernel = fu.make_kernel(device)
    return chunk_rows or _default_chunk_rows(dim, kernel), kernel


def _rng(random_state: Any, owner: str) -> np.random.Generator:
    if random_state is None or isinstance(random_state, np.random.Generator) or (
            isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool)
            and random_state >= 0):
        return np.random.default_rng(random_state)
    raise InvalidParameterError(
        f"The 'random_state' parameter of {owner} must be None, an int in the range [0, inf) or "
        f"a numpy Generator. Got {random_state!r} instead.")


def _check_progress(progress: Any, owner: str) -> None:
    if progress is not None and not callable(progress):
        raise InvalidParameterError(
            f"The 'progress' parameter of {owner} must be a callable progress(done_rows, "
            f"total_rows) or None. Got {progress!r} instead.")


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------
# exact search


def exact_search(database: Any, queries: Any, k: int, *, metric: str = "l2",
                 exclude: Any = None, chunk_rows: int | None = None, device: str = "auto",
                 progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` database rows for every query row.

    Parameters
    ----------
    database, queries : anything :func:`tldr_index.vectors.as_vectors` accepts, same width.
    k : int in ``[1, n_database]``.
    metric : ``"l2"`` (squared distances, ascending), ``"ip"`` or ``"cosine"`` (similarities,
        descending).
    exclude : optional int array of shape ``(n_queries,)``: a database id that query ``i`` must not
        get (``-1``: none). Used for self-search; it excludes by id, so duplicates of the row stay.
    chunk_rows : rows per streamed block of queries and of the database (default ~64 MiB).
    device : ``"auto"`` (a GPU when one is visible: FAISS GPU, else torch CUDA), ``"cpu"`` or
        ``"cuda"`` (error without a GPU).

    Returns
    -------
    (scores, ids) : float32 and int64 arrays of shape ``(n_queries, k)``, best first; ``-1`` ids
    (with ``inf``/``-inf`` scores) only when fewer than ``k`` rows are eligible.

    Cost: ``n_queries * n_database * dim`` multiply-adds (about 30-80 GFLOP/s on 2 cores); the
    database is read once per block of ``chunk_rows`` queries. Memory: two blocks of ``chunk_rows
    x dim`` float32, one 64 MiB tile and the ``n_queries x k`` result (12 bytes per entry).
    """
    owner = "exact_search"
    db = as_vectors(database, "database")
    qv = as_vectors(queries, "queries")
    if qv.dim != db.dim:
        raise InvalidInputError(
            f"Input 'queries' must have the same number of columns as 'database'. Got "
            f"{qv.dim} instead of {db.dim}.")
    k = check_int(k, "k", low=1, high=db.n_rows, owner=owner)
    chunk_rows, kernel = _check_common(metric, chunk_rows, device, db.dim, owner)
    _check_progress(progress, owner)
    excl = None
    if exclude is not None:
        excl = np.asarray(exclude)
        if excl.shape != (qv.n_rows,) or excl.dtype.kind not in "iu":
            raise InvalidParameterError(
                f"The 'exclude' parameter of {owner} must be an int array of shape "
                f"({qv.n_rows},). Got {_describe(excl)} instead.")
        excl = excl.astype(np.int64)
    return _exact_generic(db, qv, k, metric, excl, chunk_rows, kernel, progress)


def _describe(a: np.ndarray) -> str:
    return f"an array of shape {a.shape} and dtype {a.dtype}"


def _exact_generic(db: Vectors, qv: Vectors, k: int, metric: str, excl: np.ndarray | None,
                   chunk_rows: int, kernel: Any, progress: Progress | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Queries block by block, each against all database blocks, merged in one heap."""
    heap = fu.new_heap(qv.n_rows, k, metric)
    first_pass = True
    for q0, Q in qv.iter_chunks(chunk_rows, check_finite=True, name="queries"):
        Q = fu.prepare(Q, metric)
        ex = None if excl is None else excl[q0:q0 + len(Q)]
        for b0, B in db.iter_chunks(chunk_rows, check_finite=first_pass, name="database"):
            kernel.add(heap, q0, Q, b0, fu.prepare(B, metric), metric, ex)
            if progress is not None and b0 + len(B) < db.n_rows:  # within a block of queries
                progress(q0 + int(len(Q) * (b0 + len(B)) / db.n_rows), qv.n_rows)
        first_pass = False
        if progress is not None:
            progress(q0 + len(Q), qv.n_rows)
    return fu.finalize(heap, metric)


def _exact_self_graph(vec: Vectors, k: int, metric: str, chunk_rows: int, kernel: Any,
                      progress: Progress | None) -> np.ndarray:
    """Exact self-graph. On CPU each pair of blocks is multiplied once and pushed both ways
    (half the flops of a query-by-database loop); the own id is masked inside the kernel."""
    n = vec.n_rows
    if not isinstance(kernel, fu.CpuKernel):
        _, I = _exact_generic(vec, vec, k, metric, np.arange(n), chunk_rows, kernel, progress)
        return I
    heap = fu.new_heap(n, k, metric)
    starts = list(range(0, n, chunk_rows))
    sizes = [min(chunk_rows, n - s) for s in starts]
    # work of block i: its rows times the rows of blocks i, i+1, ... (each pair multiplied once)
    work = [sizes[i] * sum(sizes[i:]) for i in range(len(starts))]
    total_work, done_work = sum(work), 0

    def tick(pairs: int) -> None:  # after each tile: rows' worth of the work done (ends at n)
        nonlocal done_work
        done_work += pairs
        if progress is not None:
            progress(min(n, int(n * done_work / total_work)), n)

    for i, a0 in enumerate(starts):
        A = vec.read(a0, min(a0 + chunk_rows, n))
        if i == 0:
            check_finite_block(A, a0)
        A = fu.prepare(A, metric)
        kernel.add(heap, a0, A, a0, A, metric, np.arange(a0, a0 + len(A)), tick=tick)
        for b0 in starts[i + 1:]:
            B = vec.read(b0, min(b0 + chunk_rows, n))
            if i == 0:
                check_finite_block(B, b0)
            kernel.add(heap, a0, A, b0, fu.prepare(B, metric), metric, symmetric=True,
                       tick=tick)
    return fu.finalize(heap, metric)[1]


# --------------------------------------------------------------------------------------------
# OPQ


def _opq_defaults(n: int, dim: int, k: int, nlist: Any, m: Any, bytes_per_vector: Any,
                  opq_dim: Any, nprobe: Any, train_rows: Any, refine: Any) -> dict:
    """Resolve and check the OPQ settings; every check names the parameter and the rule.

    Defaults were picked on 100k rows of tiled MiniLM text embeddings (384-d), recall@10 on 1,000
    rows, one FAISS thread, times per 1,000 queries:

    * code size: OPQ16_64 / OPQ16_128 / OPQ32_128 / OPQ32_256 gave 0.71 / 0.78 / 0.84 / 0.86 at
      nprobe 16 with 40 re-ranked candidates; OPQ32_128 searches in ~0.15-0.2 s vs ~0.1 s for
      16 bytes. Hence 32 bytes and ``opq_dim = 4*m``.
    * nlist 512 / 1024 / 2048 gave the same recall (0.84); 4*sqrt(N) keeps lists ~sqrt(N)/4 long.
    * nprobe 8 / 16 / 32 / 64: 0.81 / 0.84 / 0.87 / 0.88 (refine 40), search time ~x1.9 per
      doubling from 16 on. Real text embeddings need more probes than clustered synthetic data
      (api-notes: saturated at nprobe 4).
    * refine 0 / 20 / 40 / 100: 0.61 / 0.75 / 0.84 / 0.885 at nprobe 16; re-ranking 40
      candidates costs ~0.1-0.2 s per 1,000 rows read from a memmap, 100 costs 2-5x that.
    * OPQ training: niter_pq_0 10 instead of 40 cut training by 25% at equal recall; niter 5
      lost 0.01. PCA-R128 instead of OPQ trains 3x faster for -0.014 recall.
    """
    owner = "knn_graph"
    bytes_per_vector = check_int(bytes_per_vector, "bytes_per_vector", low=1, high=dim,
                                 owner=owner, allow_none=True)
    m = check_int(m, "m", low=1, high=dim, owner=owner, allow_none=True)
    if m is not None and bytes_per_vector is not None and m != bytes_per_vector:
        raise InvalidParameterError(
            f"The 'm' and 'bytes_per_vector' parameters of {owner} conflict: with 8-bit codes "
            f"they are the same number. Got m={m} and bytes_per_vector={bytes_per_vector}; "
            f"pass only one.")
    if m is None:
        m = bytes_per_vector or min(DEFAULT_BYTES_PER_VECTOR, max(1, dim // 4))
    opq_dim = check_int(opq_dim, "opq_dim", low=m, high=dim, owner=owner, allow_none=True)
    if opq_dim is None:
        opq_dim = min(4 * m, dim - dim % m)
    elif opq_dim % m:
        raise InvalidParameterError(
            f"The 'opq_dim' parameter of {owner} must be a multiple of m={m}. Got {opq_dim} "
            f"instead.")
    train_rows = check_int(train_rows, "train_rows", low=1, high=n, owner=owner, allow_none=True)
    if nlist is None:
        nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
        cap = (train_rows or n) // MIN_POINTS_PER_LIST
        nlist = max(1, min(nlist, 2 ** int(math.log2(max(1, cap)))))
    else:
        nlist = check_int(nlist, "nlist", low=1, high=n, owner=owner)
    if train_rows is None:
        train_rows = min(n, max(MIN_TRAIN_ROWS, TRAIN_ROWS_PER_LIST * nlist))
    low = max(nlist, MIN_OPQ_ROWS)
    if train_rows < low and n >= MIN_OPQ_ROWS:
        raise InvalidParameterError(
            f"The 'train_rows' parameter of {owner} must be at least max(nlist, 256) = {low} "
            f"(k-means needs a training row per centroid). Got {train_rows} instead.")
    nprobe = check_int(nprobe, "nprobe", low=1, high=nlist, owner=owner, allow_none=True)
    if nprobe is None:
        nprobe = min(nlist, DEFAULT_NPROBE)
    if refine is None:
        refine = min(n - 1, max(DEFAULT_REFINE_FACTOR * k, MIN_REFINE))
    elif not (isinstance(refine, (int, np.integer)) and not isinstance(refine, bool)
              and (refine == 0 or k < refine < n)):
        raise InvalidParameterError(
            f"The 'refine' parameter of {owner} must be 0 (no re-ranking) or an int in the range "
            f"[{k + 1}, {n - 1}]. Got {refine!r} instead.")
    return dict(m=int(m), bytes_per_vector=int(m), opq_dim=int(opq_dim), nlist=int(nlist),
                nprobe=int(nprobe), train_rows=int(train_rows), refine=int(refine))


def _opq_graph(vec: Vectors, k: int, metric: str, p: dict, rng: np.random.Generator,
               chunk_rows: int, use_gpu: bool, out_arr: np.ndarray,
               progress: Progress | None, on_phase: Callable | None = None) -> dict:
    """Train, fill and search the OPQ index; writes rows of ``out_arr``; returns timings."""
    n, dim = vec.n_rows, vec.dim
    times = {}
    t = time.perf_counter()
    sample = np.sort(rng.choice(n, size=p["train_rows"], replace=False))
    xt = vec.take(sample)
    if not np.isfinite(xt).all():  # find and name the first bad row of the whole input
        for _ in vec.iter_chunks(chunk_rows, check_finite=True):
            pass
    xt = fu.prepare(xt, metric)
    seed = int(rng.integers(2**31 - 2))
    index, factory = fu.build_opq_index(
        dim, p["m"], p["opq_dim"], p["nlist"], metric, seed=seed, opq_niter=OPQ_NITER,
        opq_niter_pq_0=OPQ_NITER_PQ_0,
        opq_max_train_points=min(OPQ_MAX_TRAIN_POINTS, p["train_rows"]),
        kmeans_niter=KMEANS_NITER, pq_niter=PQ_NITER,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID)
    p["factory"] = factory
    logger.info("knn_graph: training %s on %d sampled rows", factory, len(xt))
    if len(xt) < MIN_POINTS_PER_LIST * 256:
        logger.warning("knn_graph: %d training rows for 256-centroid PQ codebooks (faiss advises "
                       "at least %d); codes will be coarse", len(xt), MIN_POINTS_PER_LIST * 256)
    _train_res = fu.train_on_gpu_kmeans(index) if use_gpu else None  # kept alive while training
    if on_phase is not None:
        on_phase(f"OPQ training ({len(xt):,} rows)", None)
    run_in_worker(index.train, xt, name="opq-train")  # minutes of native code: Ctrl-C stays live
    del xt
    times["seconds_train"] = time.perf_counter() - t
    logger.info("knn_graph: trained in %.1f s", times["seconds_train"])

    t = time.perf_counter()
    if on_phase is not None:
        on_phase("filling the index", n)
    for b0, B in vec.iter_chunks(chunk_rows, check_finite=True):
        index.add(fu.prepare(B, metric))
        if progress is not None:
            progress(b0 + len(B), n)
    if use_gpu:  # pragma: no cover - no GPU here
        index, _search_res = fu.index_to_gpu(index)
    fu.set_nprobe(index, p["nprobe"], use_gpu)
    times["seconds_add"] = time.perf_counter() - t
    logger.info("knn_graph: filled %d rows in %.1f s", n, times["seconds_add"])

    t = time.perf_counter()
    if on_phase is not None:
        on_phase("searching the index", n)
    ks = max(k + 1, p["refine"])
    t_refine = 0.0
    for q0, Q in vec.iter_chunks(min(chunk_rows, OPQ_SEARCH_ROWS)):
        Q = fu.prepare(Q, metric)
        _, I = index.search(Q, ks)
        own = np.arange(q0, q0 + len(Q))
        if p["refine"]:
            t1 = time.perf_counter()
            I = _rerank(vec, Q, I, metric)
            t_refine += time.perf_counter() - t1
        out_arr[q0:q0 + len(Q)] = drop_own(I, own, k)
        if progress is not None:
            progress(q0 + len(Q), n)
    times["seconds_search"] = time.perf_counter() - t
    times["seconds_refine"] = t_refine
    logger.info("knn_graph: searched %d rows in %.1f s (%.1f s of it exact re-ranking)", n,
                times["seconds_search"], t_refine)
    return times


def _rerank(vec: Vectors, Q: np.ndarray, I: np.ndarray, metric: str, block: int = 256
            ) -> np.ndarray:
    """Re-order candidate ids ``I`` of queries ``Q`` by exact score, reading candidates from
    ``vec`` (one gather per block of ``block`` queries: ``block * I.shape[1]`` rows at most)."""
    out = np.empty_like(I)
    for s in range(0, len(Q), block):
        Ib = I[s:s + block]
        uniq = np.unique(Ib[Ib >= 0])
        rows = fu.prepare(fu.gather(vec, uniq), metric)
        S = fu.exact_scores(Q[s:s + block], Ib, rows, uniq, metric)
        out[s:s + block] = np.take_along_axis(Ib, fu.best_first(S, metric), axis=1)
    return out


def drop_own(I: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """First ``k`` ids of each row of ``I`` other than the row's own id (by id, not position);
    ``-1`` entries sort last and pad."""
    bad = (I == own[:, None]) | (I < 0)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    res = np.take_along_axis(I, order, axis=1)
    res[np.take_along_axis(bad, order, axis=1)] = -1
    return res


# --------------------------------------------------------------------------------------------
# public entry point


def knn_graph(X: Any, k: int, *, method: str = "auto", metric: str = "l2",
              out: str | os.PathLike | None = None, chunk_rows: int | None = None,
              nlist: int | None = None, m: int | None = None,
              bytes_per_vector: int | None = None, nprobe: int | None = None,
              train_rows: int | None = None, opq_dim: int | None = None,
              refine: int | None = None, random_state: Any = None, device: str = "auto",
              threads: int | None = None, progress: Progress | None = None,
              on_phase: Callable[[str, int | None], None] | None = None) -> KnnGraph:
    """The k-nearest-neighbour graph of the rows of ``X``, own row excluded (by id).

    Parameters
    ----------
    X : ndarray, np.memmap, :class:`~tldr_index.vectors.Vectors` or vector-store directory.
    k : neighbours per row, in ``[1, N-1]``.
    method : ``"exact"``, ``"opq"`` or ``"auto"`` (exact when ``N <= 30_000``, or ``N <=
        1_000_000`` on a GPU; else opq).
    metric : ``"l2"``, ``"ip"`` or ``"cosine"``.
    out : optional ``.npy`` path; the table is written there (via a temporary file renamed at the
        end) and returned as a read-only ``np.memmap``. Without it the table is in memory.
    chunk_rows : rows per streamed block (default: about 64 MiB of float32, 1024..65536 rows).
    nlist, m / bytes_per_vector, opq_dim, nprobe, train_rows, refine : opq settings, defaults
        from ``N`` and ``dim``: ``nlist`` = power of two nearest ``4*sqrt(N)`` (at most
        ``train_rows/39``), ``m = bytes_per_vector = min(32, dim // 4)`` (32-byte codes; the
        paper used 16), ``opq_dim = min(4*m, dim)``, ``nprobe = 16``,
        ``train_rows = max(16_384, 40*nlist)`` (at most ``N``) drawn at random (OPQ itself on
        4,096 of them, 4 iterations; k-means on at most 64 rows per centroid),
        ``refine = max(4*k, 40)`` candidates re-ranked with exact scores read from ``X`` (``0``
        turns re-ranking off). See :func:`_opq_defaults` for the measurements behind them.
    random_state : None, int or ``np.random.Generator`` for the training sample and k-means seeds.
    device : ``"auto"`` (a GPU when one is visible: FAISS GPU, else exact search through torch
        CUDA; the OPQ index itself needs FAISS GPU), ``"cpu"``, or ``"cuda"`` (error without GPU).
    threads : FAISS OpenMP threads for this call (restored afterwards); ``None`` keeps FAISS's
        setting. On a machine whose cores are shared with other jobs, ``threads=1`` trained the
        OPQ index 2-5x faster than 2 threads (k-means on small blocks waits in OpenMP barriers).
    progress : optional ``progress(done_rows, total_rows)``, called after each block of work:
        ``done_rows / total_rows`` is the fraction of the current phase done (exact: the block
        pairs multiplied, in rows' worth of work; opq: rows added, then rows searched).
    on_phase : optional ``on_phase(name, total_rows or None)``, called when a phase starts
        (opq: "OPQ training (... rows)" with None, "filling the index", "searching the index"),
        for a progress display that names what is running.

    Cost
    ----
    exact: ``N^2 * dim / 2`` multiply-adds (GEMM blocks, each pair of blocks multiplied once);
    memory ``N * k * 12`` bytes of heap plus two blocks and a 64 MiB tile. Measured on the shared
    2-core machine: 100k x 384 in 3.5 min; 1M x 384 estimated at ~4 h.
    opq: training on ``train_rows`` rows (memory ``train_rows * dim * 4`` bytes; ~5 CPU s at
    38k), one pass to fill the index (``N * (m + 8)`` bytes in RAM), one pass to search
    (~0.05 ms per row with the defaults, one thread) and with ``refine`` a random read of
    ``refine`` candidate rows per row (~0.07 ms per row). Measured on the dev corpus (38,000 x
    384, k=3, one thread): 10.6-12.5 CPU s, recall@3 0.89. (Before issue 17, with 10 OPQ
    iterations on 10,000 rows: 100k x 384 in 1.8 min, recall@10 0.84; see
    ``benchmarks/results/knn.md``.)
    """
    owner = "knn_graph"
    t0 = time.perf_counter()
    vec = as_vectors(X, "X")
    n, dim = vec.n_rows, vec.dim
    if n < 2:
        raise InvalidInputError(
            f"Input 'X' of {owner} must have at least 2 rows to have neighbours. Got {n}.")
    k = check_int(k, "k", low=1, high=n - 1, owner=owner)
    check_choice(method, "method", METHODS, owner=owner)
    chunk_rows, kernel = _check_common(metric, chunk_rows, device, dim, owner)
    _check_progress(progress, owner)
    rng = _rng(random_state, owner)
    threads = check_int(threads, "threads", low=1, owner=owner, allow_none=True)
    if method == "auto":
        gpu = not isinstance(kernel, fu.CpuKernel)
        method = "exact" if n <= (EXACT_MAX_ROWS_GPU if gpu else EXACT_MAX_ROWS) else "opq"
    use_gpu = isinstance(kernel, fu.GpuKernel)  # the OPQ index itself on GPU FAISS
    params: dict = {"n_rows": n, "dim": dim, "k": k, "chunk_rows": chunk_rows,
                    "device": kernel.name}
    opq = _opq_defaults(n, dim, k, nlist, m, bytes_per_vector, opq_dim, nprobe, train_rows,
                        refine)  # checked whatever the method, used only by opq
    if method == "opq":
        if n < MIN_OPQ_ROWS:
            raise InvalidParameterError(
                f"The 'method' parameter of {owner} can be 'opq' only with at least "
                f"{MIN_OPQ_ROWS} rows (each PQ codebook has 256 centroids). Got 'opq' with "
                f"N={n}; use method='exact'.")
        params.update(opq)
        mem = (params["train_rows"] * dim * 4 + n * (params["m"] + 8)
               + 2 * chunk_rows * dim * 4 + 256 * params["refine"] * dim * 4 * 2)
    else:
        mem = n * k * 12 + 2 * chunk_rows * dim * 4 + fu.TILE_QUERIES * fu.TILE_DATABASE * 8
    if out is None:
        mem += n * k * 8
    logger.info("knn_graph: %s, N=%d, dim=%d, k=%d, metric=%s, device=%s; estimated peak "
                "memory %s", method, n, dim, k, metric, params["device"], _mib(mem))

    tmp = None
    if out is not None:
        out = os.fspath(out)
        tmp = out + ".tmp"
        nbrs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(n, k))
    else:
        nbrs = np.empty((n, k), dtype=np.int64)
    try:
        with faiss_threads(threads):
            if method == "exact":
                nbrs[:] = _exact_self_graph(vec, k, metric, chunk_rows, kernel, progress)
            else:
                params.update(_opq_graph(vec, k, metric, params, rng, chunk_rows, use_gpu, nbrs,
                                         progress, on_phase))
        n_incomplete = int(np.count_nonzero((np.asarray(nbrs) < 0).any(axis=1)))
        if tmp is not None:
            nbrs.flush()
            del nbrs
            os.replace(tmp, out)
            nbrs = np.load(out, mmap_mode="r")
    except BaseException:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass
        raise
    seconds = time.perf_counter() - t0
    logger.info("knn_graph: done in %.1f s, %d incomplete rows", seconds, n_incomplete)
    return KnnGraph(nbrs, method, metric, params, seconds, n_incomplete)


# --------------------------------------------------------------------------------------------
# evaluation


def graph_recall(X: Any, graph: KnnGraph | np.ndarray, *, n_queries: int = 1000,
                 random_state: Any = None, metric: str | None = None,
                 chunk_rows: int | None = None, device: str = "auto") -> float:
    """Recall@k of ``graph`` against exact search on ``n_queries`` random rows (self excluded).

    A graph neighbour counts as found when its exact score is at least as good as the exact
    ``k``-th best (relative tolerance 1e-5), so ties between duplicates are not penalised; on data
    without ties this is the usual overlap ``|graph row ∩ exact top-k| / k``. ``-1`` entries,
    repeats and the row itself count as misses. ``metric`` defaults to ``graph.metric`` (``"l2"``
    for a plain array).

    Cost: one exact search of ``n_queries`` rows against ``X`` (one pass over ``X``) plus a gather
    of ``n_queries * k`` rows.
    """
    owner = "graph_recall"
    vec = as_vectors(X, "X")
    nbrs = graph.neighbors if isinstance(graph, KnnGraph) else graph
    if metric is None:
        metric = graph.metric if isinstance(graph, KnnGraph) else "l2"
    if not (isinstance(nbrs, np.ndarray) and nbrs.ndim == 2 and nbrs.shape[0] == vec.n_rows
            and nbrs.dtype.kind in "iu" and 1 <= nbrs.shape[1] < vec.n_rows):
        raise InvalidParameterError(
            f"The 'graph' parameter of {owner} must be a KnnGraph or an int array of shape "
            f"({vec.n_rows}, k) with 1 <= k < {vec.n_rows}. Got "
            f"{_describe(np.asarray(nbrs)) if hasattr(nbrs, 'shape') else repr(nbrs)} instead.")
    n_queries = check_int(n_queries, "n_queries", low=1, owner=owner)
    chunk_rows, _ = _check_common(metric, chunk_rows, device, vec.dim, owner)
    rng = _rng(random_state, owner)
    n, k = vec.n_rows, nbrs.shape[1]
    rows = np.sort(rng.choice(n, size=min(n, n_queries), replace=False))
    Q = fu.prepare(vec.take(rows), metric)
    D, _ = exact_search(vec, Q, k, metric=metric, exclude=rows, chunk_rows=chunk_rows,
                        device=device)
    G = np.asarray(nbrs[rows], dtype=np.int64)
    srt = np.sort(G, axis=1)
    dup = np.zeros_like(G, dtype=bool)  # mark repeated ids (all but one occurrence) as misses
    rep = np.zeros_like(srt, dtype=bool)
    rep[:, 1:] = srt[:, 1:] == srt[:, :-1]
    for i in np.flatnonzero(rep.any(axis=1)):
        _, first = np.unique(G[i], return_index=True)
        dup[i] = True
        dup[i, first] = False
    valid = (G >= 0) & (G < n) & (G != rows[:, None]) & ~dup
    Gv = np.where(valid, G, -1)
    uniq = np.unique(Gv[valid])
    S = fu.exact_scores(Q, Gv, fu.prepare(fu.gather(vec, uniq), metric), uniq, metric)
    kth = D[:, -1:]
    scale = np.abs(kth) + (np.einsum("ij,ij->i", Q, Q)[:, None] if metric == "l2" else 0.0)
    tol = 1e-5 * np.maximum(scale, 1e-12)
    hit = valid & ((S <= kth + tol) if metric == "l2" else (S >= kth - tol))
    return float(hit.sum() / G.size)
