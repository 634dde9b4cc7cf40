"""Search a compact collection written by :func:`tldr_index.shrink.shrink`, and describe it.

:func:`search` encodes the queries with the stored model, then

* targets with codes (Lance, Parquet): loads the codes (``code_bytes`` per row: the in-memory
  search structure) and, where the target stores a code index (built by ``shrink`` from
  ``index_min_rows`` rows, see :mod:`tldr_index.code_index`), scores only the ``nprobe`` lists
  nearest each query (``nprobe``, ``target_recall`` or the stored default, see
  :mod:`tldr_index.searcher`); otherwise, or with ``exhaustive=True``, ranks every row by the
  codec's asymmetric distance (PQ/OPQ/RQ: FAISS lookup tables; RaBitQ: its estimator; see
  :func:`tldr_index.codecs.codec_topk`);
* targets without readable codes (Qdrant keeps its own quantized index): the store's own search on
  the reduced vectors;

and with ``rescore`` takes a shortlist of ``shortlist`` rows per query and re-ranks it by the exact
distance to the original vectors, fetched from the source with ``Source.take``.

Distances returned are "lower is better" in the source's metric: squared L2, ``1 - cosine`` or
``-inner product`` (exact after rescoring, approximate otherwise).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .threads import thread_limit
from .validation import check_bool, check_int
from .compact import CompactModel
from .errors import InvalidInputError, InvalidParameterError
from .rescore_cache import RescoreCache
from .searcher import (MIN_SHORTLIST, SHORTLIST_FACTOR, CodeSearcher,  # noqa: F401 (re-exported)
                       default_shortlist, ids_to_numpy, read_codes)

log = logging.getLogger(__name__)



@dataclass
class SearchResult:
    """``ids`` (n, k): int64 or str ids, best first; ``distances`` (n, k) float32, lower is better."""

    ids: np.ndarray
    distances: np.ndarray
    rescored: bool
    shortlist: int
    engine: str                      # "pq-codes" (every code), "code-index" or "store"
    seconds: dict = field(default_factory=dict)
    #: hits (over all queries) that ``rescore`` could not re-rank because the source has no row
    #: with their id (e.g. rows added with ``CompactCollection.add`` only): they keep their
    #: approximate code distance. 0 without ``rescore``.
    not_rescored: int = 0
    #: lists of the code index scored per query (None: every code was scanned, or the store's
    #: own search)
    nprobe: int | None = None


# ---------------------------------------------------------------------------------- kernels

def to_lower_better(scores: np.ndarray, metric: str) -> np.ndarray:
    """FAISS / similarity scores -> distances where lower is better (see module docstring)."""
    if metric == "l2":
        return scores
    return (1.0 - scores) if metric == "cosine" else -scores


def adc_topk(model: CompactModel, codes: np.ndarray, Y: np.ndarray, k: int,
             block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``codes`` for reduced queries ``Y`` by the model's codec, any codec and
    metric: :meth:`CompactModel.topk` (:func:`tldr_index.codecs.codec_topk`, which bounds its
    own memory; ``block`` is ignored, kept for callers of the PQ-only version).

    Returns ``(distances lower-is-better, row positions)``. Cost: ``n_queries x N x code_bytes``
    table lookups (PQ, OPQ, RQ) or ``n_queries x N x d`` multiply-adds (RaBitQ); memory: the
    codes plus one block of scores (at most 128 MiB).
    """
    return model.topk(codes, Y, k)


def exact_distances(Q: np.ndarray, X: np.ndarray, metric: str) -> np.ndarray:
    """Distances (lower is better) between each query ``Q[i]`` and its candidates ``X[i]``
    (``X``: (n, R, D)). Cost: ``n x R x D`` multiply-adds (cosine: twice, for the norms)."""
    if metric == "l2":
        diff = X - Q[:, None, :]
        return np.einsum("nrd,nrd->nr", diff, diff)
    dots = np.matmul(X, Q[:, :, None])[:, :, 0]
    if metric == "cosine":
        q = np.linalg.norm(Q, axis=1, keepdims=True)
        nx = np.sqrt(np.einsum("nrd,nrd->nr", X, X))
        return 1.0 - dots / np.maximum(q, 1e-30) / np.maximum(nx, 1e-30)
    return -dots


def _unique_row(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For one query's candidates ``cand`` (1, R): ``(sorted valid keys, their columns)`` when
    its valid keys (>= 0) are distinct (what a search's shortlist holds), else None."""
    row = cand[0]
    cols = np.flatnonzero(row >= 0) if (row < 0).any() else np.arange(len(row))
    order = np.argsort(row[cols], kind="stable")
    keys = row[cols[order]]
    if len(keys) > 1 and not bool((keys[1:] != keys[:-1]).all()):
        return None
    return keys, cols[order]


def rerank(Q: np.ndarray, cand: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray], k: int,
           metric: str, *, exclude: np.ndarray | None = None, fallback: np.ndarray | None = None,
           block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate keys ``cand`` (n, R) (``-1``: none) by exact distance to the original
    vectors; ``fetch(unique_keys)`` returns their vectors in order (keys sorted ascending).
    ``exclude[i]``: a key query ``i`` must not return (self-search). ``fallback`` (n, R):
    distances used instead of the exact one where not NaN (candidates without an original
    vector). Returns the best ``k`` ``(distances, keys)``, ties in candidate order.

    One query (a search's shortlist: distinct keys) is fetched and scored as it is, without
    ``np.unique``; several are deduplicated first (one ``fetch`` of the unique candidates).
    Cost: the ``fetch``, ``n x R x D`` multiply-adds (cosine: twice); memory: the fetched rows
    plus ``block x R x D`` floats.
    """
    n, R = cand.shape
    kk = min(k, R)
    one = _unique_row(cand) if n == 1 else None
    if one is not None:
        keys, cols = one
        d = np.full((1, R), np.inf, dtype=np.float32)
        if len(keys):
            X = np.asarray(fetch(keys), dtype=np.float32)
            d[0, cols] = exact_distances(Q[:1], X[None], metric)[0]
        return _best(d, cand, kk, exclude, fallback)
    uniq, inv = np.unique(cand, return_inverse=True)
    inv = inv.reshape(cand.shape)
    valid = uniq >= 0
    vecs = np.zeros((len(uniq), Q.shape[1]), dtype=np.float32)
    if valid.any():
        vecs[valid] = fetch(uniq[valid])
    outD = np.empty((n, kk), dtype=np.float32)
    outI = np.empty((n, kk), dtype=np.int64)
    for s in range(0, n, block):
        sl = slice(s, s + block)
        d = exact_distances(Q[sl], vecs[inv[sl]], metric).astype(np.float32)
        outD[sl], outI[sl] = _best(d, cand[sl], kk, None if exclude is None else exclude[sl],
                                   None if fallback is None else fallback[sl])
    return outD, outI


def _best(d: np.ndarray, cand: np.ndarray, k: int, exclude: np.ndarray | None,
          fallback: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest of ``d`` per row (ties in column order) and their keys, after the
    ``fallback`` distances and with ``-1`` / ``exclude`` keys at infinity."""
    if fallback is not None:
        use = ~np.isnan(fallback)
        d[use] = fallback[use]
    bad = cand < 0
    if exclude is not None:
        bad |= cand == exclude[:, None]
    d[bad] = np.inf
    row = d[0] if d.shape[0] == 1 and d.shape[1] > 4 * k else None
    v = row[np.argpartition(row, k - 1)[k - 1]] if row is not None else np.nan  # k-th smallest
    if not np.isnan(v):  # one query: partition, then sort k
        less = np.flatnonzero(row < v)
        top = np.concatenate([less, np.flatnonzero(row == v)[:k - len(less)]])
        order = top[np.lexsort((top, row[top]))][None]  # ties in column order, as argsort's
    else:
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(cand, order, 1)


# ---------------------------------------------------------------------------------- helpers

def load_queries(queries: Any, dim: int) -> np.ndarray:
    """``queries`` (array or ``.npy`` path) as a float array (shape and values are checked by
    :meth:`CompactModel.encode`)."""
    if isinstance(queries, (str, os.PathLike)):
        try:
            queries = np.load(queries, allow_pickle=False)
        except FileNotFoundError:
            raise InvalidInputError(f"Queries file '{os.fspath(queries)}' does not exist.") \
                from None
        except ValueError as exc:
            raise InvalidInputError(
                f"Queries file '{os.fspath(queries)}' must be a .npy float array ({exc}).") \
                from None
    Q = np.asarray(queries)
    if Q.dtype.kind != "f":
        raise InvalidInputError(
            f"Queries must be a float array of shape (n, {dim}). Got dtype {Q.dtype} instead.")
    return np.ascontiguousarray(Q.reshape(1, -1) if Q.ndim == 1 else Q, dtype=np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (k exact neighbours) found in the same row of
    ``found`` (its first k entries)."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f[:k], t)) / k for f, t in zip(found, truth)]))


def open_source_of(target, source: str | None = None, **opts: Any):
    """The source a target was shrunk from (``source`` overrides the recorded URI)."""
    from connectors import open_source

    meta = target.metadata
    uri = source or meta.get("source")
    if not uri:
        raise InvalidInputError(f"Target '{target.uri}' records no source; pass source=.")
    cols = meta.get("source_columns", {})
    return open_source(uri, vector_column=cols.get("vector"), id_column=cols.get("id"),
                       payload_columns=[], **opts)


# ---------------------------------------------------------------------------------- public

def search(target: str, queries: Any, *, k: int = 10, rescore: bool = False,
           shortlist: int | None = None, source: str | None = None,
           threads: int | None = None, target_options: dict | None = None,
           source_options: dict | None = None, nprobe: int | None = None,
           target_recall: float | None = None, exhaustive: bool = False,
           index_fallback: bool = False, searcher: CodeSearcher | None = None,
           rescore_cache: str | os.PathLike | None = None,
           rescore_cache_fallback: bool = False) -> SearchResult:
    """The ``k`` nearest rows of compact collection ``target`` for each query.

    Parameters
    ----------
    target : URI of a collection written by ``shrink`` (``lancedb://db/docs_tldr64``, ...).
    queries : (n, D) float array or ``.npy`` path, in the *original* space of the source.
    k : neighbours per query.
    rescore : re-rank ``shortlist`` candidates per query by exact distance to the original vectors
        (fetched from the source recorded in the target, or ``source``).
    shortlist : candidates per query for ``rescore`` (default: from the code index's recall
        table, the cheapest (nprobe, shortlist) reaching rescored recall@10 0.95 within 0.003 of
        every list at that shortlist; without a table ``max(20 k, 200)``).
    threads : FAISS threads (None: the cores that look idle, see :mod:`tldr_index.threads`;
        one for a single query searched through the code index: a call per query is served
        by one core; pass ``threads`` to split its scan).
    nprobe : lists of the code index scored per query, in ``[1, nlist]`` (targets with an index).
    target_recall : the recall@10 (against exact search, measured at build on held-out rows,
        see :mod:`tldr_index.recall_table`) to reach: without ``rescore`` the smallest stored
        nprobe whose raw recall reaches it; with ``rescore`` the cheapest stored (nprobe,
        shortlist) whose rescored recall reaches it. Beyond the table: an error naming the best
        reachable recall and its nprobe (and shortlist). Default (neither given): the smallest
        nprobe within 0.003 of every list's recall (with ``rescore``: see ``shortlist``).
    exhaustive : scan every code even where the target has an index.
    index_fallback : a stored index that does not match the target's codes (row count or
        SHA-256) is replaced by the exhaustive scan (logged) instead of raising
        :class:`ModelFormatError`.
    searcher : a :class:`CodeSearcher` already loaded for ``target`` (what
        :meth:`CompactCollection.search` passes: the codes and index are loaded once).
    rescore_cache : with ``rescore``, re-rank from this local copy of the originals by row
        position (:mod:`tldr_index.rescore_cache`, written by ``write_rescore_cache``) instead
        of fetching them from the source by id. A cache of other rows raises
        :class:`ModelFormatError` unless ``rescore_cache_fallback`` (then: the source).

    Cost: without rescore, ``n x N x code_bytes`` lookups (with a code index about
    ``n x (nlist x d + nprobe / nlist x N x code_bytes)``); memory: ``N x code_bytes`` bytes of
    codes without an index, with one its lists (~21 B per row for 16 B codes: the codes are read
    to check it, then dropped, see :class:`CodeSearcher`); with rescore, one ``Source.take`` of
    up to ``n x shortlist`` rows. Without ``searcher``, the codes (and index) are read on every
    call.
    """
    from connectors import open_target

    k = check_int(k, "k", low=1, owner="search")
    shortlist = check_int(shortlist, "shortlist", low=1, owner="search", allow_none=True)
    t0 = time.perf_counter()
    if searcher is not None:
        tgt, model = searcher.target, searcher.model
    else:
        tgt = open_target(target, **(target_options or {}))
        model = CompactModel.of_target(tgt)
    Q = load_queries(queries, model.input_dim)
    Y = model.encode(Q)
    R = max(k, shortlist or default_shortlist(k)) if rescore else k
    secs = {"open+encode": time.perf_counter() - t0}
    lay = tgt.layout
    t0 = time.perf_counter()
    probe = None
    if searcher is None:
        # one call: keep the codes read where the scan needs them (else they are read twice)
        searcher = CodeSearcher.open(tgt, model, index_fallback=index_fallback,
                                     keep_codes=bool(exhaustive))
    if searcher is not None:
        n_rows = searcher.n_rows
        if k > n_rows:
            raise InvalidParameterError(
                f"The 'k' parameter of search must be an int in the range [1, {n_rows}] (the "
                f"rows of target '{tgt.uri}'). Got {k} instead.")
        probe, R = searcher.choose(nprobe, target_recall, exhaustive, k=k, rescore=rescore,
                                   shortlist=shortlist)
        R = min(R, n_rows)
        # one query through the index: one thread (a call per query is served by one core)
        one = threads is None and len(Y) == 1 and probe is not None
        with thread_limit(1 if one else threads, owner="search"):
            D, P = searcher.topk(Y, R, probe)
        cand = None  # the ids of P, taken where needed (a rescore cache re-ranks positions)
        engine = "pq-codes" if probe is None else "code-index"
    else:
        if nprobe is not None or target_recall is not None:
            which = "nprobe" if nprobe is not None else "target_recall"
            raise InvalidParameterError(
                f"The '{which}' parameter of search needs a target with codes and a code index; "
                f"target '{tgt.uri}' is searched by its store's own index. Got "
                f"{which}={nprobe if nprobe is not None else target_recall!r}.")
        Yp = model.prepare(Y)
        rows = [tgt.search(y, R) for y in Yp]
        got = min(len(r) for r in rows)
        if got < k:
            raise InvalidParameterError(
                f"The 'k' parameter of search must be at most the rows of target '{tgt.uri}' "
                f"({got}). Got {k} instead.")
        R = min(R, got)
        cand = np.stack([ids_to_numpy(r.column(lay.id_column).slice(0, R)) for r in rows])
        D = np.stack([r.column("_distance").to_numpy()[:R] for r in rows]).astype(np.float32)
        engine = "store"
    secs["search"] = time.perf_counter() - t0
    cache = None
    if rescore and rescore_cache is not None:
        if searcher is None:
            raise InvalidParameterError(
                f"The 'rescore_cache' parameter of search needs a target with codes (Lance, "
                f"Parquet); target '{tgt.uri}' is searched by its store's own index. Got "
                f"rescore_cache={os.fspath(rescore_cache)!r}.")
        fb = check_bool(rescore_cache_fallback, "rescore_cache_fallback", owner="search")
        cache = searcher.cached(
            ("rescore_cache", os.fspath(rescore_cache), fb),
            lambda: RescoreCache.open(rescore_cache, searcher.ids, model.input_dim, tgt.uri,
                                      fallback=fb))
    if cache is not None:  # re-rank by row position from the local copy
        t0 = time.perf_counter()
        D, P = rerank(Q, P, cache.take, k, model.metric)
        cand = searcher.ids_at(P)
        not_rescored = 0
        secs["rescore"] = time.perf_counter() - t0
    elif rescore:
        t0 = time.perf_counter()
        if cand is None:
            cand = searcher.ids_at(P)
        src = _source(tgt, searcher, source, source_options)
        if src.dim != model.input_dim:
            raise InvalidInputError(
                f"Source '{src.uri}' has {src.dim}-d vectors but the model of target "
                f"'{tgt.uri}' expects {model.input_dim}-d input; rescore against the source it "
                f"was shrunk from (source=, --source).")
        keys, inv = np.unique(cand, return_inverse=True)
        pos = inv.reshape(cand.shape).astype(np.int64)
        vecs, found = src.take_found(keys)
        # candidates the source lacks (added to the compact collection only) keep their code
        # distance, ranked among the exact ones
        fallback = None if found.all() else np.where(found[pos], np.nan, D).astype(np.float32)
        D, P = rerank(Q, pos, lambda p: vecs[p], k, model.metric, fallback=fallback)
        not_rescored = int((~found[P]).sum())
        cand = keys[P]
        secs["rescore"] = time.perf_counter() - t0
        if not_rescored:
            log.warning(
                "search: %d of the %d hits have no row in source '%s' (rows added to the "
                "compact collection only?) and keep their approximate code distance instead of "
                "an exact one.", not_rescored, P.size, src.uri)
    else:
        D = D[:, :k]
        cand = searcher.ids_at(P[:, :k]) if cand is None else cand[:, :k]
        not_rescored = 0
    return SearchResult(cand, D, rescore, R, engine, secs, not_rescored, probe)


def _source(tgt, searcher: CodeSearcher | None, source: str | None,
            source_options: dict | None):
    """The source rescoring reads: opened once per searcher (per version of an open collection)
    and options, else on every call."""
    opts = source_options or {}
    if searcher is None:
        return open_source_of(tgt, source, **opts)
    key = ("source", source, repr(sorted(opts.items(), key=lambda kv: kv[0])))
    return searcher.cached(key, lambda: open_source_of(tgt, source, **opts))


def info(target: str, **target_options: Any) -> dict:
    """What a compact collection holds: rows, dims, method, metric, PQ bytes, source, sizes and
    the recall measured when it was written."""
    from connectors import open_target

    tgt = open_target(target, **target_options)
    meta = tgt.metadata
    model = CompactModel.of_target(tgt)
    rows = tgt.count()
    D, d = model.input_dim, model.output_dim
    out = {
        "target": tgt.uri, "rows": rows, "source": meta.get("source"),
        "source_fingerprint": meta.get("source_version"), "method": model.method,
        "metric": model.metric, "source_dim": D, "dim": d, "codec": model.codec_name,
        "code_bytes": model.code_bytes, "pq_bytes": model.code_bytes,
        "vector_dtype": meta.get("vector_dtype"), "model_bytes": len(tgt.model_bytes),
        "disk_bytes": tgt.disk_bytes(), "written_utc": tgt.record["writer"]["written_utc"],
        "library_version": tgt.record["writer"]["version"],
        "bytes_per_vector": {"source_float32": 4 * D, "pq_codes": model.code_bytes,
                             "reduced": d * (2 if meta.get("vector_dtype") == "float16" else 4)},
        "recall": meta.get("recall"),
    }
    return out
