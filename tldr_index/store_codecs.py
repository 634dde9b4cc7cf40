"""What the user's vector store offers, measured beside a compact collection: the codecs of
:mod:`tldr_index.codecs` applied to the *original* vectors, searched raw and after exact
rescoring of a shortlist (the ``eval`` baselines ``pq``, ``opq``, ``rq``, ``rabitq1/2/4``,
``sign``, ``sq8``, ``sq4``).

* ``pq``, ``opq``, ``rq``: at the target's code bytes ``M`` (PQ/OPQ need ``M`` to divide D);
* ``rabitq1/2/4`` (LanceDB's IVF_RQ), ``sign`` (binary quantization), ``sq8``/``sq4`` (scalar
  quantization): at their own fixed size (``D x bits / 8`` bytes, + 4 for RaBitQ's factor),
  marked ``fixed`` (their bytes differ from the target's).

Each codec is fitted on the training rows (the target's own sample), every row of the database
is encoded block by block, and each query's top ``max(k, shortlist)`` codes are searched; the
raw figure is its top-k, the rescored one its shortlist re-ranked with the exact original
vectors (one streamed pass over the database), as ``search --rescore`` does for the target.
Fits, encodes and searches run in :func:`tldr_index.threads.run_in_worker` (Ctrl-C answers
within ~0.1 s).

Metrics: cosine (rows and queries L2-normalised, inner product), ip, and l2 for the codecs that
reconstruct a vector (pq, opq, rq, sq8, sq4: ranked by ``||q - decode(x)||``); RaBitQ and sign
bits estimate inner products only and are skipped for an l2 source (logged).

Cost, measured on 384-d rows (benchmarks/results/frontier.md: 39,000 rows, one thread of a shared
2-core machine at load ~9-17, so wall times are noisy): sign bits, SQ and RaBitQ fit in seconds
(RaBitQ 1-bit encodes ~9,500 rows/s, 2-bit ~1,500 rows/s); PQ k-means ``20 x rows x 256 x D``
(capped at 65,536 rows; 2-20 s on 10,000 rows); OPQ adds ``opq_iter x rows x D^2`` on at most
``OPQ_TRAIN_ROWS`` rows (16-33 s with 4 iterations on 5,000 rows at 16-32 B; eval uses 10
iterations on 10,000 rows: about 4x that); RQ trains ``M`` k-means plus beam searches on at most
``RQ_TRAIN_ROWS`` rows, growing as ``M^2`` (10,000 rows: 57 s at 8 B, 72 s at 16 B, 370 s at 32
B) and encodes ``M x beam x 256 x M`` per row (beam 5: ~7,800 / 5,200 / 1,300 rows/s at 8 / 16 /
32 B). Hence ``rq`` is not in ``eval``'s ``auto`` baselines. Memory: the codes (``N x bytes``),
``64 x N`` float32 scores per query block, the shortlists (``n_queries x shortlist`` ids and
scores).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codecs import Codec, feasible_bytes, get_codec, top_k
from .comparisons import topk_excluding
from .quantizer import normalize_rows
from .threads import run_in_worker
from .vectors import Vectors, as_vectors

log = logging.getLogger(__name__)

#: every baseline this module measures (``rabitq`` in a list means the three bit widths)
CODEC_BASELINES = ("pq", "opq", "rq", "rabitq1", "rabitq2", "rabitq4", "sign", "sq8", "sq4")
#: at the target's code bytes; the others have one size per dimension
AT_TARGET_BYTES = ("pq", "opq", "rq")
#: they estimate inner products only (no l2 source)
IP_ONLY = ("rabitq1", "rabitq2", "rabitq4", "sign")
RQ_TRAIN_ROWS = 10_000   # RQ training cost grows as rows x M^2 (beam searches per codebook)
OPQ_TRAIN_ROWS = 10_000  # the OPQ rotation: opq_iter x rows x D^2
QUERY_BLOCK = 64         # queries scored at once (memory QUERY_BLOCK x N float32)
RESCORE_BLOCK = 16_384   # (query, candidate) pairs scored at once

_LABELS = {"pq": "PQ codes", "opq": "OPQ codes", "rq": "RQ codes", "rabitq1": "RaBitQ 1-bit",
           "rabitq2": "RaBitQ 2-bit", "rabitq4": "RaBitQ 4-bit", "sign": "sign bits",
           "sq8": "SQ8 codes", "sq4": "SQ4 codes"}


@dataclass(frozen=True)
class CodecSpec:
    """One baseline: ``name`` (as in ``--baselines``), the :func:`get_codec` arguments, and
    whether its size is its own (``fixed``) rather than the target's."""

    name: str
    codec: str
    kwargs: dict = field(default_factory=dict)
    fixed: bool = False

    @property
    def representation(self) -> str:
        return _LABELS[self.name]

    def make(self, dim: int) -> Codec:
        return get_codec(self.codec, dim, **self.kwargs)


@dataclass
class CodecRun:
    """What :func:`run_baseline` measured: database positions ``raw`` (``(n_queries, k)``, best
    first, -1 pads) and ``rescored[s]`` for each shortlist ``s``, the code size and timings."""

    spec: CodecSpec
    code_size: int
    raw: np.ndarray
    rescored: dict[int, np.ndarray]
    fit_seconds: float
    encode_seconds: float
    search_seconds: float
    rows: int

    @property
    def encode_rows_per_s(self) -> float:
        return self.rows / max(self.encode_seconds, 1e-9)

    def note(self, target_bytes: int) -> str:
        size = (f"own fixed size {self.code_size} B (target: {target_bytes} B)"
                if self.spec.fixed else f"{self.code_size} B like the target")
        return (f"{self.spec.representation} of the original vectors, {size}; fitted in "
                f"{self.fit_seconds:.1f} s, encoded at {self.encode_rows_per_s:,.0f} rows/s")


def plan(names: Sequence[str], dim: int, n_bytes: int | None, metric: str,
         seed: int = 0) -> list[CodecSpec]:
    """The :class:`CodecSpec` of each baseline of ``names`` (known names, see
    :data:`CODEC_BASELINES`) that can run on ``dim``-d vectors at the target's ``n_bytes``;
    the others are logged and left out (PQ/OPQ bytes that do not divide D, a target without
    code bytes, a dimension a fixed codec cannot pack, RaBitQ/sign on an l2 source)."""
    specs = []
    for name in names:
        if name in IP_ONLY and metric == "l2":
            log.info("%s of the original vectors skipped: it estimates inner products and the "
                     "source's metric is l2.", name)
            continue
        if name in AT_TARGET_BYTES:
            if not n_bytes:
                log.info("%s of the original vectors skipped: the target stores no codes.", name)
                continue
            if n_bytes not in feasible_bytes(name, dim):
                log.info("%s of the original vectors skipped: %d bytes do not divide D=%d.",
                         name, n_bytes, dim)
                continue
            kw: dict[str, Any] = {"bytes": n_bytes}
            if name == "rq":
                kw["max_train_rows"] = RQ_TRAIN_ROWS
            if name == "opq":
                kw["opq_train_rows"] = OPQ_TRAIN_ROWS
            specs.append(CodecSpec(name, name, kw))
            continue
        if name.startswith("rabitq"):
            bits = int(name[-1])
            if dim * bits % 8:
                log.info("%s skipped: D=%d x %d bits is not whole bytes.", name, dim, bits)
                continue
            specs.append(CodecSpec(name, "rabitq", {"bits": bits}, fixed=True))
            continue
        if not feasible_bytes(name, dim):
            log.info("%s skipped: D=%d cannot be packed (%s).", name, dim,
                     "a multiple of 8 needed" if name == "sign" else "an even D needed")
            continue
        specs.append(CodecSpec(name, name, {}, fixed=True))
    return specs


def _prepare(metric: str) -> Callable[[np.ndarray], np.ndarray]:
    if metric == "cosine":
        return lambda x: np.ascontiguousarray(normalize_rows(np.asarray(x, dtype=np.float32)))
    return lambda x: np.ascontiguousarray(x, dtype=np.float32)


def encode_rows(codec: Codec, database: Vectors, prep: Callable[[np.ndarray], np.ndarray],
                chunk_rows: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``(N, code_size)`` codes of every row of ``database`` (``prep`` applied), block by block,
    each block in a worker thread; ``progress(done_rows)`` after each."""
    codes = np.empty((database.n_rows, codec.code_size), dtype=np.uint8)
    for start, block in database.iter_chunks(chunk_rows):
        codes[start:start + len(block)] = run_in_worker(codec.encode, prep(block),
                                                        name="codec-encode")
        if progress is not None:
            progress(start + len(block))
    return codes


def l2_search(codec: Codec, Q: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``||q - decode(x)||`` per query (decoded block by block:
    ``n_queries x N x D`` multiply-adds)."""
    best_s = np.full((len(Q), 0), -np.inf, dtype=np.float32)
    best_i = np.empty((len(Q), 0), dtype=np.int64)
    for s in range(0, len(codes), RESCORE_BLOCK):
        Xh = codec.decode(codes[s:s + RESCORE_BLOCK])
        S = 2.0 * (Q @ Xh.T) - (Xh * Xh).sum(axis=1)[None, :]
        vals, ids = top_k(np.concatenate([best_s, S.astype(np.float32)], axis=1), k)
        pool = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(Xh)),
                                                        (len(Q), len(Xh)))], axis=1)
        best_s, best_i = vals, np.take_along_axis(pool, ids, axis=1)
    return best_i


def code_search(codec: Codec, Q: np.ndarray, codes: np.ndarray, k: int, metric: str,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``(n_queries, min(k, N))`` positions of the best codes per query (inner product, or L2
    from the reconstructions), ``QUERY_BLOCK`` queries per worker call."""
    k = min(k, len(codes))
    if metric == "l2":
        return run_in_worker(l2_search, codec, Q, codes, k, name="codec-search")
    out = []
    for s in range(0, len(Q), QUERY_BLOCK):
        out.append(run_in_worker(codec.search, Q[s:s + QUERY_BLOCK], codes, k,
                                 name="codec-search")[1])
        if progress is not None:
            progress(min(s + QUERY_BLOCK, len(Q)))
    return np.concatenate(out).astype(np.int64)


def exact_scores(database: Any, Q: np.ndarray, cand: np.ndarray, metric: str,
                 chunk_rows: int) -> np.ndarray:
    """``(n_queries, s)`` exact similarities (cosine / ip; ``-||q - x||^2`` for l2) of each
    query with its candidate rows ``cand`` (positions, -1: none -> ``-inf``), in one streamed
    pass over ``database``. Memory: ``RESCORE_BLOCK x D`` float32 at a time."""
    database = as_vectors(database, "database")
    prep = _prepare(metric)
    Qp = prep(Q)
    flat = cand.ravel()
    out = np.full(flat.shape, -np.inf, dtype=np.float32)
    valid = np.flatnonzero(flat >= 0)
    order = valid[np.argsort(flat[valid], kind="stable")]
    pos = flat[order]
    qi = order // cand.shape[1]
    for start, block in database.iter_chunks(chunk_rows):
        lo, hi = np.searchsorted(pos, [start, start + len(block)])
        B = prep(block)
        for a in range(lo, hi, RESCORE_BLOCK):
            b = min(a + RESCORE_BLOCK, hi)
            X, Qs = B[pos[a:b] - start], Qp[qi[a:b]]
            out[order[a:b]] = (-((Qs - X) ** 2).sum(axis=1) if metric == "l2"
                               else (Qs * X).sum(axis=1))
    return out.reshape(cand.shape)


def rerank(cand: np.ndarray, scores: np.ndarray, s: int, k: int) -> np.ndarray:
    """The ``k`` best (by ``scores``) of the first ``s`` candidates of each row; -1 pads."""
    c, sc = cand[:, :s], scores[:, :s]
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(c, order, axis=1)
    out[~np.isfinite(np.take_along_axis(sc, order, axis=1))] = -1
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((len(out), k - out.shape[1]), -1)], axis=1)
    return out


def run_baseline(spec: CodecSpec, database: Any, train: np.ndarray, queries: np.ndarray,
                 k: int, *, metric: str, shortlists: Sequence[int] = (),
                 exclude: np.ndarray | None = None, random_state: int = 0,
                 chunk_rows: int = 16_384,
                 on_phase: Callable[[str, int | None], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> CodecRun:
    """Fit ``spec``'s codec on ``train``, encode every row of ``database``, search ``queries``
    (top-k, and each shortlist rescored exactly). ``exclude[i]``: a row query ``i`` must not
    return (held-out queries are rows). ``on_phase(name, total)`` names each step and
    ``progress(done)`` counts its rows or queries. Cost: see the module docstring."""
    db = as_vectors(database, "database")
    prep = _prepare(metric)
    codec = spec.make(db.dim)
    say = on_phase or (lambda name, total: None)
    say(f"{spec.representation}: fitting ({len(train):,} rows)", None)
    t0 = time.perf_counter()
    run_in_worker(codec.fit, prep(train), random_state, name="codec-fit")
    fit_s = time.perf_counter() - t0
    say(f"{spec.representation}: encoding", db.n_rows)
    t0 = time.perf_counter()
    codes = encode_rows(codec, db, prep, chunk_rows, progress)
    enc_s = time.perf_counter() - t0
    say(f"{spec.representation}: searching", len(queries))
    t0 = time.perf_counter()
    Qp = prep(queries)
    deep = max([k, *shortlists])
    cand = topk_excluding(lambda kk: code_search(codec, Qp, codes, kk, metric, progress),
                          deep, exclude)
    search_s = time.perf_counter() - t0
    raw = cand[:, :k]
    if raw.shape[1] < k:
        raw = np.concatenate([raw, np.full((len(raw), k - raw.shape[1]), -1)], axis=1)
    rescored: dict[int, np.ndarray] = {}
    if shortlists:
        say(f"{spec.representation}: rescoring with the original vectors", None)
        scores = exact_scores(db, queries, cand, metric, chunk_rows)
        rescored = {s: rerank(cand, scores, s, k) for s in shortlists}
    return CodecRun(spec, codec.code_size, raw, rescored, fit_s, enc_s, search_s, db.n_rows)


__all__ = ["CODEC_BASELINES", "CodecSpec", "CodecRun", "plan", "run_baseline", "exact_scores",
           "rerank", "code_search", "encode_rows", "l2_search"]
