"""``eval``: how many true neighbours a compact collection keeps, at what size, against the
alternatives a user would pick.

Ground truth is the exact top-k of each query in the *original* space, computed out of core over
the source (streamed in blocks, :func:`tldr_index.knn.exact_search`) with the source's own metric.
Queries are rows held out from the target's training sample (by default; recomputed from the
seed and sample size recorded in the target) or a user's ``.npy`` file of query vectors.

For the target: recall@k of its stored reduced vectors (exact search), of :func:`search` on the PQ
codes alone, and of :func:`search` with ``rescore`` for each shortlist size; bytes per vector and
compression; per-call latency (p50/p99) of :func:`search`. Side by side, in the same run: plain and
whitened PCA fitted on the same training rows at the same d and PQ bytes
(:mod:`tldr_index.comparisons`), and what the user's store offers on the original vectors: PQ,
OPQ, RQ at the same bytes per vector, RaBitQ, sign bits, SQ8/SQ4 at their own sizes, raw and
rescored with the target's shortlists (:mod:`tldr_index.store_codecs`).

Memory: the query and training-sample vectors, ``8`` bytes per id and ``pq_bytes`` per row for each
PQ baseline (the code bytes of each codec baseline, see :mod:`tldr_index.store_codecs`); the
source and target are streamed (one block at a time).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .validation import check_choice, check_int
from .compact import CompactModel
from .errors import InvalidInputError, InvalidParameterError
from .knn import exact_search
from .search import ids_to_numpy, load_queries, open_source_of, search
from .vectors import Vectors

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 10, 100)
DEFAULT_QUERIES = 1000
DEFAULT_LATENCY_QUERIES = 50
#: every name ``baselines`` accepts (``rabitq`` stands for rabitq1, rabitq2 and rabitq4)
BASELINES = ("pca", "pca-whiten", "pq", "opq", "rq", "rabitq", "rabitq1", "rabitq2", "rabitq4",
             "sign", "sq8", "sq4")
#: ``baselines="auto"`` (the default): PCA, and what vector stores offer (PQ/OPQ at the target's
#: bytes, RaBitQ 1-bit as LanceDB's IVF_RQ, Qdrant's binary quantization); RQ (minutes to train
#: on 384-d, not a store's codec) and the larger RaBitQ/SQ sizes are asked for by name or "all"
AUTO_BASELINES = ("pca", "pca-whiten", "pq", "opq", "rabitq1", "sign")
MAX_BASELINE_TRAIN = 100_000  # rows of the training sample read for the baselines


# ---------------------------------------------------------------------------------- streaming

class BatchVectors(Vectors):
    """The vector column of a connector Source or Target as :class:`Vectors`, streamed in Arrow
    batches (never held in memory). ``ids`` (positions -> ids, as numpy) is filled by the first
    full pass. :meth:`read` streams up to ``stop`` (slow; the searches only iterate)."""

    def __init__(self, batches: Callable[[int], Iterator[pa.RecordBatch]], n_rows: int, dim: int,
                 vector_column: str, id_column: str):
        self.batches, self.n_rows, self.dim = batches, n_rows, dim
        self.vector_column, self.id_column = vector_column, id_column
        self.dtype = np.dtype(np.float32)
        self.ids: np.ndarray | None = None

    def iter_chunks(self, chunk_rows: int = 16_384, *, check_finite: bool = False,
                    name: str = "X") -> Iterator[tuple[int, np.ndarray]]:
        from connectors.arrow_utils import vectors_to_numpy

        from .vectors import check_finite_block

        pos, ids = 0, []
        for b in self.batches(chunk_rows):
            if b.num_rows == 0:
                continue
            X = np.array(vectors_to_numpy(b.column(self.vector_column), dim=self.dim,
                                          column=self.vector_column),
                         dtype=np.float32, order="C")  # a fresh copy the caller owns
            if check_finite:
                check_finite_block(X, pos, name)
            if self.ids is None:
                ids.append(ids_to_numpy(b.column(self.id_column)))
            yield pos, X
            pos += len(X)
        if pos != self.n_rows:
            raise InvalidInputError(
                f"Collection changed while it was read: expected {self.n_rows} rows, read {pos}.")
        if self.ids is None:
            self.ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = []
        for pos, X in self.iter_chunks():
            if pos + len(X) > start and pos < stop:
                out.append(X[max(0, start - pos):stop - pos])
            if pos + len(X) >= stop:
                break
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)


def source_vectors(src) -> BatchVectors:
    """A connector Source's vectors, streamed (duplicates were checked by shrink)."""
    return BatchVectors(lambda n: src.iter_batches(n, check_duplicates=False), src.count(),
                        src.dim, src.vector_column, src.id_column)


def target_vectors(tgt, dim: int) -> BatchVectors:
    """A target's stored reduced vectors (the id and vector columns only, where the store can)."""
    lay = tgt.layout

    def batches(n: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from tgt.iter_columns([lay.id_column, lay.vector_column], n)
        except NotImplementedError:
            yield from tgt.iter_batches(n)
    return BatchVectors(batches, tgt.count(), dim, lay.vector_column, lay.id_column)


def gather_rows(vec: Vectors, positions: Sequence[np.ndarray], chunk_rows: int = 16_384
                ) -> list[np.ndarray]:
    """Rows at each sorted position array of ``positions``, in one streamed pass over ``vec``."""
    out = [np.empty((len(p), vec.dim), dtype=np.float32) for p in positions]
    for start, X in vec.iter_chunks(chunk_rows):
        for p, o in zip(positions, out):
            lo, hi = np.searchsorted(p, [start, start + len(X)])
            o[lo:hi] = X[p[lo:hi] - start]
    return out


# ---------------------------------------------------------------------------------- metrics

def ids_at(ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``ids[positions]`` keeping ``-1`` positions as a value no id equals (None)."""
    out = ids[np.clip(positions, 0, None)].astype(object)
    out[positions < 0] = None
    return out


def drop_own(found: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` entries of each row of ``found`` that differ from the row's ``own`` id
    (``own`` None: the first ``k``)."""
    if own is None:
        return found[:, :k]
    rows = [[v for v in row if v != o][:k] for row, o in zip(found.tolist(), own.tolist())]
    return np.array([r + [None] * (k - len(r)) for r in rows], dtype=object)


def recalls(found: np.ndarray, truth: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"1": recall@1, "10": recall@10, ...}``: for each k, the mean over queries of the
    fraction of the first k ``truth`` ids found among the first k ``found`` ids (both best
    first; ids of any type, ``None``/-1 pads never match a true id)."""
    out = {}
    for k in ks:
        out[str(k)] = float(np.mean([len(set(f[:k]) & set(t[:k])) / k
                                     for f, t in zip(found.tolist(), truth.tolist())]))
    return out


# ---------------------------------------------------------------------------------- report

@dataclass
class EvalRow:
    """One way of searching the collection: ``method`` (tldr / pca / ...), ``representation``
    (reduced float16, PQ codes, search --rescore ...), its size and recall@k per k."""

    method: str
    representation: str
    dim: int
    bytes_per_vector: int
    compression: float
    recall: dict[str, float]
    note: str = ""
    target: bool = False


@dataclass
class EvalReport:
    target: str
    source: str
    metric: str
    rows: int
    source_dim: int
    dim: int
    pq_bytes: int
    method: str
    queries: int
    query_kind: str                    # "held-out rows", "training rows" or "file <path>"
    ks: list[int]
    results: list[EvalRow] = field(default_factory=list)
    latency_ms: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, method: str, representation: str) -> EvalRow | None:
        return next((r for r in self.results if r.method == method
                     and r.representation == representation), None)


# ---------------------------------------------------------------------------------- queries

def held_out_positions(n_rows: int, params: dict, n_queries: int, seed: int
                       ) -> tuple[np.ndarray, str]:
    """Query row positions: rows outside the target's training sample (recomputed from the
    ``sample`` and ``random_state`` it records), or any rows when it trained on all of them."""
    from .shrink.plan import DEFAULT_SAMPLE
    from .shrink.sampling import sample_rows

    sample = int(params.get("sample", DEFAULT_SAMPLE))
    train = sample_rows(n_rows, min(sample, n_rows), int(params.get("random_state", 0)))
    pool = np.setdiff1d(np.arange(n_rows), train, assume_unique=True)
    kind = "held-out rows"
    if len(pool) == 0:
        pool, kind = np.arange(n_rows), "training rows (the target trained on every row)"
        log.warning("Target trained on every row of its source: queries are training rows.")
    rng = np.random.default_rng([seed, 0xE4A])
    pick = rng.choice(len(pool), min(n_queries, len(pool)), replace=False)
    return np.sort(pool[pick]), kind


def _check_ks(ks: Sequence[int], limit: int, why: str) -> list[int]:
    if isinstance(ks, int):
        ks = [ks]
    out = []
    for k in ks:
        out.append(check_int(k, "k", low=1, owner="eval"))
        if k > limit:
            raise InvalidParameterError(
                f"The 'k' parameter of eval must hold ints in the range [1, {limit}] ({why}). "
                f"Got {k} instead.")
    return sorted(set(out))


def _check_shortlists(shortlists: Sequence[int] | None, kmax: int) -> list[int]:
    from .search import default_shortlist

    if shortlists is None:
        return [default_shortlist(kmax)]
    return [check_int(s, "shortlist", low=1, owner="eval") for s in shortlists]


# ---------------------------------------------------------------------------------- eval

def baseline_names(baselines: Any) -> tuple[str, ...]:
    """The ``baselines`` of :func:`evaluate` as a tuple of names: ``"auto"`` (the default,
    :data:`AUTO_BASELINES`), ``"all"``, ``"none"`` / ``""`` (no baseline), a comma-separated
    string of names (as ``--baselines``) or a sequence of them; ``rabitq`` stands for its three
    bit widths."""
    if baselines is None:
        return ()
    if isinstance(baselines, str):
        text = baselines.strip()
        if text.lower() in ("", "none"):
            return ()
        if text.lower() in ("auto", "all"):
            return AUTO_BASELINES if text.lower() == "auto" else tuple(
                b for b in BASELINES if b != "rabitq")
        names = tuple(b.strip() for b in text.split(","))
    else:
        try:
            names = tuple(baselines)
        except TypeError:
            raise InvalidParameterError(
                f"The 'baselines' parameter of eval must be 'auto', 'all', 'none', a "
                f"comma-separated string or a sequence of names. Got {baselines!r} "
                f"instead.") from None
    out: list[str] = []
    for b in names:
        check_choice(b, "baselines", BASELINES, owner="eval")
        for one in (("rabitq1", "rabitq2", "rabitq4") if b == "rabitq" else (b,)):
            if one not in out:
                out.append(one)
    return tuple(out)


def evaluate(target: str, *, source: str | None = None, queries: int | str | os.PathLike |
             np.ndarray = DEFAULT_QUERIES, k: Sequence[int] = DEFAULT_KS,
             shortlists: Sequence[int] | None = None, baselines: Sequence[str] | str = "auto",
             latency_queries: int = DEFAULT_LATENCY_QUERIES, random_state: int = 0,
             chunk_rows: int = 16_384, threads: int | None = None,
             source_options: dict | None = None, target_options: dict | None = None,
             progress=None, store_quantizers: Any = None) -> EvalReport:
    """Measure compact collection ``target`` against exact search on its source.

    Parameters
    ----------
    target : URI of a collection written by ``shrink``.
    source : URI of the original collection (default: the one recorded in the target).
    queries : number of held-out rows to draw (default 1000), or an ``(n, D)`` float array /
        ``.npy`` path of query vectors in the original space.
    k : the k of recall@k (default 1, 10, 100); at most the rows of the source (minus one for
        held-out rows, which exclude themselves).
    shortlists : shortlist sizes for ``search(rescore=True)`` (default ``max(20 max(k), 200)``).
    baselines : "auto" (default: pca, pca-whiten, pq, opq, rabitq1, sign), "all", "none"
        (or ``()``, ``""``), or any of "pca", "pca-whiten" (at the target's d and bytes) and the
        on-original codecs "pq", "opq", "rq" (at the target's bytes), "rabitq" (= "rabitq1",
        "rabitq2", "rabitq4"), "sign", "sq8", "sq4" (at their own sizes; see
        :mod:`tldr_index.store_codecs`), as a sequence or one comma-separated string like the
        CLI's ``--baselines`` ("pca,rq,rabitq"). The codecs are searched raw and rescored with
        the same shortlists as the target. Each costs a fit (OPQ and RQ: minutes for 384-d on
        2 cores, on capped samples), one pass over the source to encode it and one to rescore.
    latency_queries : single-query :func:`search` calls timed for p50/p99 (0: skip).
    progress : a :class:`tldr_index.progress.Progress`, True (rich bars on a terminal, plain
        lines otherwise) or None; stages ``read``, ``truth``, ``target``, ``latency`` and one per
        baseline, with named sub-steps (e.g. "OPQ training").
    store_quantizers : the source store's own quantizers on the original vectors, measured on
        its real engine (:mod:`tldr_index.eval_store`; Qdrant sources: "bq1", "bq1.5", "bq2",
        "sq8", "tq1", "tq2", "tq4", "pq", as names, a comma-separated string, or True / "all"
        for every one; None: skip).

    Cost: one streamed pass over the source for the queries and training rows, one per block of
    ``chunk_rows`` queries for the ground truth (``n_queries x N x D`` multiply-adds), one over the
    target, and one per baseline representation.
    """
    from .progress import as_progress

    t_all = time.perf_counter()
    prog = as_progress(progress)
    try:
        return _evaluate(target, source, queries, k, shortlists, baselines, latency_queries,
                         random_state, chunk_rows, threads, source_options, target_options,
                         prog, t_all, store_quantizers)
    finally:
        prog.close()


def _evaluate(target, source, queries, k, shortlists, baselines, latency_queries, random_state,
              chunk_rows, threads, source_options, target_options, prog, t_all,
              store_quantizers=None) -> EvalReport:
    """The body of :func:`evaluate` (its parameters; ``prog`` is closed by the caller)."""
    from connectors import open_target

    from .threads import thread_limit
    from .shrink.sampling import sample_rows
    from .progress import StageTimer

    seconds: dict[str, float] = {}
    baselines = baseline_names(baselines)
    latency_queries = check_int(latency_queries, "latency_queries", low=0, owner="eval")
    random_state = check_int(random_state, "random_state", low=0, owner="eval")
    tgt = open_target(target, **(target_options or {}))
    model = CompactModel.of_target(tgt)
    src = open_source_of(tgt, source, **(source_options or {}))
    if model.input_dim != src.dim:
        raise InvalidInputError(
            f"Target '{tgt.uri}' holds a model for {model.input_dim}-d vectors but source "
            f"'{src.uri}' has {src.dim}-d vectors: it was not shrunk from this source. Pass the "
            f"source it was shrunk from (source=, --source).")
    from .eval_store import check_store_quantizers  # store's own quantizers: see eval_store
    store_kinds = check_store_quantizers(src.uri, store_quantizers)
    meta, n, D, d, M = tgt.metadata, src.count(), src.dim, model.output_dim, model.pq_bytes
    metric = model.metric
    params = meta.get("params", {})
    svec = source_vectors(src)

    # -- queries, their exclusion, the baselines' training rows -------------------------------
    t0 = time.perf_counter()
    read = StageTimer(prog, "read", n, "rows").__enter__()
    prog.phase("read", "reading queries and training rows", None)
    exclude_pos = None
    if isinstance(queries, (int, np.integer)) and not isinstance(queries, bool):
        nq = check_int(queries, "queries", low=1, owner="eval")
        ks = _check_ks(k, n - 1, f"fewer than the {n} rows of source '{src.uri}': held-out "
                       f"queries are rows of it and do not count themselves")
        qpos, kind = held_out_positions(n, params, nq, random_state)
        exclude_pos = qpos
    else:
        Q = load_queries(queries, D)
        if Q.ndim != 2 or Q.shape[1] != D or len(Q) == 0:
            raise InvalidInputError(
                f"Input 'queries' of eval must be a float array of shape (n, {D}) with n >= 1 "
                f"(the dimension of source '{src.uri}'). Got shape {Q.shape} instead.")
        ks = _check_ks(k, n, f"the rows of source '{src.uri}'")
        qpos, kind = None, f"file {os.fspath(queries)}" if isinstance(
            queries, (str, os.PathLike)) else "array"
    shortlists = _check_shortlists(shortlists, max(ks))
    kmax = max(ks)
    train_pos = np.empty(0, dtype=np.int64)
    if baselines:
        sample = min(int(params.get("sample", n)), n, MAX_BASELINE_TRAIN)
        train_pos = sample_rows(n, sample, int(params.get("random_state", 0)))
    wanted = [train_pos] + ([qpos] if qpos is not None else [])
    got = gather_rows(svec, wanted, chunk_rows)
    train = got[0]
    if qpos is not None:
        Q = got[1]
    src_ids = svec.ids
    own = None if qpos is None else src_ids[qpos]
    seconds["read"] = time.perf_counter() - t0
    read.__exit__(None, None, None)
    log.info("eval of %s: %d queries (%s), k=%s, against exact %s search over %d x %d rows of "
             "%s.", tgt.uri, len(Q), kind, ks, metric, n, D, src.uri)

    report = EvalReport(target=tgt.uri, source=src.uri, metric=metric, rows=n, source_dim=D,
                        dim=d, pq_bytes=M, method=model.method, queries=len(Q), query_kind=kind,
                        ks=ks, seconds=seconds)
    with thread_limit(threads, owner="eval"):
        # -- ground truth ------------------------------------------------------------------
        t0 = time.perf_counter()
        with StageTimer(prog, "truth", len(Q), "queries"):
            _, tpos = exact_search(svec, Q, kmax, metric=metric, chunk_rows=chunk_rows,
                                   exclude=exclude_pos,
                                   progress=lambda done, total: prog.update("truth", done))
        truth = ids_at(src_ids, tpos)
        seconds["ground_truth"] = time.perf_counter() - t0

        # -- the target --------------------------------------------------------------------
        t0 = time.perf_counter()
        stage_target = StageTimer(prog, "target", len(Q), "queries").__enter__()
        prog.phase("target", "exact search of the reduced vectors", len(Q), "queries")
        vdtype = meta.get("vector_dtype", "float32")
        vbytes = d * (2 if vdtype == "float16" else 4)
        tvec = target_vectors(tgt, d)
        Y = model.prepare(model.encode(Q))
        kk = kmax + (own is not None)
        _, p = exact_search(tvec, Y, min(kk, tvec.n_rows), metric=metric, chunk_rows=chunk_rows,
                            progress=lambda done, total: prog.update("target", done))
        found = drop_own(ids_at(tvec.ids, p), own, kmax)
        name = f"{model.method} (target)"
        report.results.append(EvalRow(name, f"reduced {vdtype}", d, vbytes, 4 * D / vbytes,
                                      recalls(found, truth, ks), "exact search", True))
        opts = dict(source=source, threads=threads, target_options=target_options,
                    source_options=source_options)
        prog.phase("target", "search", None)
        res = search(target, Q, k=kk, **opts)
        rep = f"{(model.codec_name or 'pq').upper()} codes" if res.engine == "pq-codes" \
            else "store search"
        size = M if res.engine == "pq-codes" else vbytes
        report.results.append(EvalRow(name, rep, d, size, 4 * D / size,
                                      recalls(drop_own(res.ids.astype(object), own, kmax),
                                                  truth, ks), "search", True))
        for s in shortlists:
            prog.phase("target", f"search --rescore (shortlist {s})", None)
            res = search(target, Q, k=kk, rescore=True, shortlist=s, **opts)
            report.results.append(EvalRow(
                name, f"search --rescore (shortlist {s})", d, size, 4 * D / size,
                recalls(drop_own(res.ids.astype(object), own, kmax), truth, ks),
                "originals fetched for the shortlist", True))
        seconds["target"] = time.perf_counter() - t0
        stage_target.__exit__(None, None, None)

        # -- latency -----------------------------------------------------------------------
        if latency_queries:
            nl = len(Q[:latency_queries])
            with StageTimer(prog, "latency", 2 * nl, "calls"):
                report.latency_ms = search_latency(
                    target, Q[:latency_queries], min(10, kmax), shortlists[0], opts,
                    progress=lambda done: prog.update("latency", done))

        # -- side by side ------------------------------------------------------------------
        t0 = time.perf_counter()
        report.results += baseline_rows(baselines, svec, train, Q, d, M, kmax, ks, metric,
                                        truth, exclude_pos, random_state, chunk_rows,
                                        progress=prog, shortlists=shortlists)
        seconds["baselines"] = time.perf_counter() - t0
        if store_kinds:  # the store's own quantizers on the originals (eval_store)
            from .eval_store import store_quantizer_rows

            t0 = time.perf_counter()
            for r in store_quantizer_rows(src.uri, svec, Q, store_kinds, k=kk, metric=metric,
                                          match_bytes=M or vbytes, chunk_rows=chunk_rows,
                                          progress=prog):
                found = drop_own(ids_at(src_ids, r.pop("positions")), own, kmax)
                report.results.append(EvalRow(**r, recall=recalls(found, truth, ks)))
            seconds["store_quantizers"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    return report


def search_latency(target: str, Q: np.ndarray, k: int, shortlist: int, opts: dict,
                   progress=None) -> dict:
    """p50 / p99 milliseconds of single-query :func:`search` calls, without and with rescore.

    Each call opens the target, loads its PQ codes and encodes the query, as a CLI call does (a
    server that keeps the codes in memory pays only the search part)."""
    out = {"queries": len(Q), "k": k}
    calls = 0
    for label, extra in (("search", {}), ("search_rescore", {"rescore": True,
                                                              "shortlist": shortlist})):
        times = []
        for q in Q:
            t0 = time.perf_counter()
            search(target, q[None, :], k=k, **opts, **extra)
            times.append(1000 * (time.perf_counter() - t0))
            calls += 1
            if progress is not None:
                progress(calls)
        out[label] = {"p50": float(np.percentile(times, 50)),
                      "p99": float(np.percentile(times, 99))}
    return out


def baseline_rows(baselines: Sequence[str], svec: BatchVectors, train: np.ndarray,
                  Q: np.ndarray, d: int, M: int, kmax: int, ks: list[int], metric: str,
                  truth: np.ndarray, exclude: np.ndarray | None, seed: int,
                  chunk_rows: int, progress=None, shortlists: Sequence[int] = ()
                  ) -> list[EvalRow]:
    """Rows of PCA / whitened PCA (d, PQ ``M``) and of the codecs of the original vectors
    (:func:`codec_rows`); ``progress`` (a :class:`tldr_index.progress.Progress`) gets one stage
    per baseline."""
    from .baselines import PCA
    from .comparisons import reduced_search
    from .progress import Progress, StageTimer

    prog = progress if progress is not None else Progress()

    D = svec.dim
    rows: list[EvalRow] = []
    ids = svec.ids
    for name in ("pca", "pca-whiten"):
        if name not in baselines:
            continue
        with StageTimer(prog, name, svec.n_rows, "rows"):
            prog.phase(name, "fitting PCA", None)
            pca = PCA(d, whiten=name == "pca-whiten", chunk_rows=chunk_rows).fit(train)
            found = reduced_search(pca.transform, d, svec, train, Q, kmax, metric=metric,
                                   pq_bytes=[M] if M else [], exclude=exclude,
                                   random_state=seed, chunk_rows=chunk_rows,
                                   on_phase=lambda step, total, name=name: prog.phase(
                                       name, step, total, "rows"),
                                   progress=lambda done, name=name: prog.update(name, done))
        rows.append(EvalRow(name, "float32", d, 4 * d, D / d,
                            recalls(ids_at(ids, found["float"]), truth, ks), "exact search"))
        if f"pq{M}" in found:
            rows.append(EvalRow(name, "PQ codes", d, M, 4 * D / M,
                                recalls(ids_at(ids, found[f"pq{M}"]), truth, ks), "ADC"))
    return rows + codec_rows(baselines, svec, train, Q, M, kmax, ks, metric, truth, exclude,
                             seed, chunk_rows, prog, shortlists)


def codec_rows(baselines: Sequence[str], svec: BatchVectors, train: np.ndarray, Q: np.ndarray,
               M: int, kmax: int, ks: list[int], metric: str, truth: np.ndarray,
               exclude: np.ndarray | None, seed: int, chunk_rows: int, prog,
               shortlists: Sequence[int]) -> list[EvalRow]:
    """Rows of the on-original codecs among ``baselines`` (:mod:`tldr_index.store_codecs`):
    each one's codes searched raw, then each shortlist rescored with the original vectors."""
    from .progress import StageTimer
    from .store_codecs import CODEC_BASELINES, plan, run_baseline

    D, ids, rows = svec.dim, svec.ids, []
    for spec in plan([b for b in baselines if b in CODEC_BASELINES], D, M, metric, seed):
        with StageTimer(prog, spec.name, svec.n_rows, "rows"):
            run = run_baseline(
                spec, svec, train, Q, kmax, metric=metric, shortlists=shortlists,
                exclude=exclude, random_state=seed, chunk_rows=chunk_rows,
                on_phase=lambda step, total, name=spec.name: prog.phase(name, step, total,
                                                                        "rows"),
                progress=lambda done, name=spec.name: prog.update(name, done))
        name, size, note = f"{spec.name}-{D}", run.code_size, run.note(M)
        rows.append(EvalRow(name, spec.representation, D, size, 4 * D / size,
                            recalls(ids_at(ids, run.raw), truth, ks), note))
        for s, pos in run.rescored.items():
            rows.append(EvalRow(name, f"{spec.representation}, rescored (shortlist {s})", D, size,
                                4 * D / size, recalls(ids_at(ids, pos), truth, ks),
                                "originals fetched for the shortlist"))
    return rows
