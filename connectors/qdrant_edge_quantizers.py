"""Qdrant's own quantizers on the original vectors, measured on the real engine (Qdrant Edge):
what a Qdrant user would enable instead of a compact collection.

:func:`measure_quantizers` streams the original vectors once into one temporary Qdrant Edge shard
per quantizer (point id = row position, the source's distance, float32, HNSW ``m`` /
``ef_construct``, ``optimize`` builds the graph and the quantized codes), then runs the queries on
each shard through the engine's quantized search, raw (``rescore=False``) and with Qdrant's
rescoring (``QuantizationSearchParams(rescore=True, oversampling=...)``: the shortlist re-ranked
with the stored float32 vectors), and returns the positions found and the per-query latency.

Quantizers (:data:`KINDS`; bytes per vector are the nominal code bytes of ``D``-d vectors, the
engine's per-vector extras not counted): ``bq1`` / ``bq1.5`` / ``bq2`` binary (D/8, 1.5 D/8, D/4),
``sq8`` scalar int8 (D), ``tq1`` / ``tq2`` / ``tq4`` TurboQuant (D/8, D/4, D/2), ``pq`` product
quantization at the compression ratio closest to ``match_bytes`` (x4..x64: 4 D / ratio), or a
fixed ``pqx4`` .. ``pqx64``.

Cost: disk ``len(kinds) x N x D x 4`` bytes (plus the engine's index files) in a temporary
directory removed at the end; time one upsert pass per shard, one ``optimize`` each (HNSW graph
and codes: 7 to 11 s per 20k x 384-d shard, PQ 80 to 110 s, on this project's shared 2-core
machine: ``benchmarks/results/qdrant.md``) and ``2 x len(queries)`` engine queries per shard.
Memory: one block of the source at a time.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tldr_index.errors import InvalidParameterError
from tldr_index.validation import check_choice, check_int

from .qdrant_edge_source import edge_api

log = logging.getLogger(__name__)

RATIOS = (4, 8, 16, 32, 64)
#: name -> (sink quantization kind, code bits per dimension; None: PQ, see :func:`pq_ratio`)
KINDS: dict[str, tuple[str, float | None]] = {
    "bq1": ("binary", 1.0), "bq1.5": ("binary1.5", 1.5), "bq2": ("binary2", 2.0),
    "sq8": ("scalar", 8.0), "tq1": ("turbo1", 1.0), "tq2": ("turbo2", 2.0),
    "tq4": ("turbo4", 4.0), "pq": ("pq", None),
    **{f"pqx{r}": ("pq", None) for r in RATIOS},
}
DEFAULT_KINDS = ("bq1", "bq1.5", "bq2", "sq8", "tq1", "tq2", "tq4", "pq")
OWNER = "store quantizers"


def kind_names(kinds: str | Sequence[str] | None) -> tuple[str, ...]:
    """``kinds`` as a checked tuple of :data:`KINDS` names: a sequence, one comma-separated
    string, ``"all"`` / None (:data:`DEFAULT_KINDS`)."""
    if kinds is None:
        return DEFAULT_KINDS
    if isinstance(kinds, str):
        text = kinds.strip()
        if text.lower() in ("", "all"):
            return DEFAULT_KINDS
        kinds = [k.strip() for k in text.split(",")]
    names = tuple(kinds)
    for k in names:
        check_choice(k, "store_quantizers", tuple(KINDS), owner=OWNER)
    return names


def pq_ratio(name: str, dim: int, match_bytes: float | None) -> int:
    """Compression ratio of PQ ``name`` for ``dim``-d float32 vectors: the ``pqx<r>`` one, or for
    ``pq`` the ratio whose ``4 dim / r`` bytes are closest (in log) to ``match_bytes`` (x16 if
    None)."""
    if name != "pq":
        return int(name[3:])
    if not match_bytes:
        return 16
    return min(RATIOS, key=lambda r: abs(math.log(r) - math.log(max(4 * dim / match_bytes, 1))))


def code_bytes(name: str, dim: int, match_bytes: float | None = None) -> float:
    """Nominal code bytes per ``dim``-d vector of quantizer ``name`` (see the module docstring)."""
    kind, bits = KINDS[name]
    if bits is None:
        return 4 * dim / pq_ratio(name, dim, match_bytes)
    return bits * dim / 8


def describe(name: str, dim: int, match_bytes: float | None = None) -> str:
    """A short label: ``"binary 1-bit"``, ``"PQ x16"``..."""
    kind, bits = KINDS[name]
    if bits is None:
        return f"PQ x{pq_ratio(name, dim, match_bytes)}"
    if kind == "scalar":
        return "scalar int8"
    return f"{'binary' if kind.startswith('binary') else 'TurboQuant'} {bits:g}-bit"


def edge_quantization(name: str, dim: int, match_bytes: float | None = None):
    """The ``qdrant_edge`` quantization config of quantizer ``name``."""
    from .qdrant_edge_store import quantization_config

    kind, bits = KINDS[name]
    comp = f"x{pq_ratio(name, dim, match_bytes)}" if bits is None else None
    return quantization_config(kind, dim, None, comp, owner=OWNER)


def measure_quantizers(chunks: Iterable[tuple[int, np.ndarray]], n_rows: int, dim: int,
                       metric: str, queries: np.ndarray, k: int, *,
                       kinds: str | Sequence[str] | None = None,
                       match_bytes: float | None = None, oversampling: float = 2.0,
                       hnsw_ef: int = 128, hnsw_m: int = 16, ef_construct: int = 100,
                       upsert_batch: int = 8192, work_dir: str | None = None,
                       on_step: Callable[[str], None] | None = None) -> list[dict]:
    """Search ``queries`` ((nq, dim) float32) through each quantizer of ``kinds`` on the originals
    streamed as ``chunks`` (``(start position, (b, dim) float32 block)`` in order, ``n_rows`` in
    all), on one Qdrant Edge shard per quantizer (see the module docstring for cost).

    Returns one dict per quantizer and rescoring: ``quantizer`` (name), ``label``,
    ``bytes_per_vector``, ``rescore`` (bool), ``oversampling`` (None without rescoring),
    ``positions`` ((nq, k) int64 row positions, -1 where fewer were found), ``latency_ms``
    (``{"p50", "p99"}`` of single-query calls) and ``build_s`` (upsert + optimize seconds).
    ``metric``: "l2", "cosine" or "ip" (the engine's Euclid, Cosine, Dot)."""
    e = edge_api()
    names = kind_names(kinds)
    check_choice(metric, "metric", ("l2", "cosine", "ip"), owner=OWNER)
    k = check_int(k, "k", low=1, owner=OWNER)
    hnsw_ef = check_int(hnsw_ef, "hnsw_ef", low=1, owner=OWNER)
    if not (isinstance(oversampling, (int, float)) and oversampling >= 1):
        raise InvalidParameterError(
            f"The 'oversampling' parameter of {OWNER} must be a float in the range [1, inf). "
            f"Got {oversampling!r} instead.")
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    if Q.ndim != 2 or Q.shape[1] != dim:
        raise InvalidParameterError(
            f"The 'queries' parameter of {OWNER} must be a float array of shape (n, {dim}). "
            f"Got shape {Q.shape} instead.")
    dist = {"l2": e.Distance.Euclid, "cosine": e.Distance.Cosine, "ip": e.Distance.Dot}[metric]
    step = on_step or (lambda s: None)
    root = tempfile.mkdtemp(prefix="tldr-store-quantizers-", dir=work_dir)
    shards: dict[str, object] = {}
    out: list[dict] = []
    try:
        t0 = time.perf_counter()
        for name in names:
            shards[name] = e.EdgeShard.create(f"{root}/{name}", e.EdgeConfig(
                vectors={"": e.EdgeVectorParams(size=dim, distance=dist)},
                quantization_config=edge_quantization(name, dim, match_bytes),
                hnsw_config=e.HnswIndexConfig(m=hnsw_m, ef_construct=ef_construct,
                                              full_scan_threshold=1),
                optimizers=e.EdgeOptimizersConfig(indexing_threshold=1)))
        step(f"writing {n_rows:,} original vectors into {len(names)} Qdrant Edge shards")
        seen = 0
        for start, X in chunks:
            X = np.asarray(X, dtype=np.float32)
            for s in range(0, len(X), upsert_batch):
                part = X[s:s + upsert_batch].tolist()
                for sh in shards.values():
                    sh.update(e.UpdateOperation.upsert_points(
                        [e.Point(start + s + i, v) for i, v in enumerate(part)]))
            seen += len(X)
        upsert_s = (time.perf_counter() - t0) / max(len(names), 1)
        for name, sh in shards.items():
            label = describe(name, dim, match_bytes)
            step(f"{label}: optimize (HNSW graph and codes)")
            t1 = time.perf_counter()
            sh.flush()
            sh.optimize()
            build = upsert_s + time.perf_counter() - t1
            for rescore in (False, True):
                step(f"{label}: {len(Q)} queries{', rescored' if rescore else ''}")
                pos, lat = _search(sh, Q, k, hnsw_ef, rescore, oversampling)
                out.append({"quantizer": name, "label": label,
                            "bytes_per_vector": code_bytes(name, dim, match_bytes),
                            "rescore": rescore, "oversampling": oversampling if rescore else None,
                            "positions": pos, "latency_ms": lat, "build_s": build})
        log.info("Qdrant's quantizers measured on %d x %d rows (%d shards) in %.1f s.", seen,
                 dim, len(names), time.perf_counter() - t0)
        return out
    finally:
        for sh in shards.values():
            try:
                sh.close()
            except Exception:  # pragma: no cover - the directory goes anyway
                log.debug("closing a quantizer shard failed", exc_info=True)
        shutil.rmtree(root, ignore_errors=True)


def _search(sh, Q: np.ndarray, k: int, hnsw_ef: int, rescore: bool, oversampling: float
            ) -> tuple[np.ndarray, dict]:
    """Positions (nq, k) and p50/p99 ms of one engine query per row of ``Q``."""
    e = edge_api()
    params = e.SearchParams(hnsw_ef=max(hnsw_ef, k), quantization=e.QuantizationSearchParams(
        rescore=rescore, oversampling=float(oversampling) if rescore else None))
    pos = np.full((len(Q), k), -1, dtype=np.int64)
    times = []
    for j, q in enumerate(Q.tolist()):
        t0 = time.perf_counter()
        res = sh.query(e.QueryRequest(query=e.Query.Nearest(q), limit=k, params=params))
        times.append(1000 * (time.perf_counter() - t0))
        ids = [int(r.id) for r in res][:k]
        pos[j, :len(ids)] = ids
    return pos, {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
