"""``eval --store-quantizers``: beside a compact collection, what a user of the source's store
would otherwise enable on the original vectors, measured on the store's real engine in the same
run. For a Qdrant source (server, embedded or Edge): binary 1 / 1.5 / 2 bit, scalar int8,
TurboQuant 1 / 2 / 4 bit and product quantization (at the target's code bytes), raw and with
Qdrant's rescoring, on temporary Qdrant Edge shards built from the source rows
(:func:`connectors.measure_store_quantizers`; its docstring states the cost: one shard, one HNSW
build and ``2 x queries`` engine queries per quantizer).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_OVERSAMPLING = 2.0
#: quantizer kind (connectors.qdrant_edge_quantizers.KINDS) prefix -> method name in the report
FAMILIES = (("bq", "qdrant-bq"), ("sq", "qdrant-sq8"), ("tq", "qdrant-turboquant"),
            ("pq", "qdrant-pq"))


def check_store_quantizers(source_uri: str, kinds: Any) -> tuple[str, ...]:
    """The checked quantizer names of ``kinds`` for ``source_uri`` (empty for None / False /
    "none"); raises :class:`InvalidParameterError` for a non-Qdrant source or an unknown name
    (before anything is computed)."""
    if kinds is None or kinds is False or (isinstance(kinds, str) and
                                           kinds.strip().lower() in ("", "none")):
        return ()
    from connectors import store_quantizer_kinds

    return store_quantizer_kinds(source_uri, None if kinds is True else kinds)


def store_quantizer_rows(source_uri: str, svec: Any, Q: np.ndarray, kinds: Sequence[str], *,
                         k: int, metric: str, match_bytes: float | None,
                         oversampling: float = DEFAULT_OVERSAMPLING, chunk_rows: int = 16_384,
                         progress=None) -> list[dict]:
    """One dict per quantizer and rescoring: the fields of
    :class:`tldr_index.evaluate.EvalRow` but ``recall``, plus ``positions`` ((nq, k) source row
    positions found, -1 pads) for the caller to score; the note holds the engine's single-query
    p50 / p99 latency and the shard build time. ``svec``: the source's
    :class:`tldr_index.evaluate.BatchVectors` (streamed once)."""
    from connectors import measure_store_quantizers

    from .progress import Progress, StageTimer

    prog = progress if progress is not None else Progress()
    D = svec.dim
    t0 = time.perf_counter()
    with StageTimer(prog, "store quantizers", None, "steps"):
        res = measure_store_quantizers(
            source_uri, svec.iter_chunks(chunk_rows), svec.n_rows, D, metric, Q,
            min(k, svec.n_rows), kinds=list(kinds), match_bytes=match_bytes,
            oversampling=oversampling,
            on_step=lambda s: prog.phase("store quantizers", s, None))
    rows = []
    for r in res:
        b = r["bytes_per_vector"]
        b = int(b) if float(b).is_integer() else float(b)
        method = next(m for p, m in FAMILIES if r["quantizer"].startswith(p))
        rep = f"Qdrant {r['label']}" + (f" + rescore x{r['oversampling']:g} (originals)"
                                        if r["rescore"] else "")
        lat = r["latency_ms"]
        rows.append({"method": method, "representation": rep, "dim": D, "bytes_per_vector": b,
                     "compression": 4 * D / b, "positions": r["positions"],
                     "note": f"Qdrant Edge HNSW, p50 {lat['p50']:.2f} ms / p99 {lat['p99']:.2f} "
                             f"ms per query, built in {r['build_s']:.1f} s"})
    prog.phase("store quantizers", f"done in {time.perf_counter() - t0:.1f} s", None)
    return rows
