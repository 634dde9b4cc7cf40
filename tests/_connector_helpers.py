"""Shared helpers of the connector tests: seeded data, a stand-in for the engine's write path and
file hashing (to prove a source is never written to)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa

from connectors import IdDigest, open_sink
from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy

MODEL = b"\x00safetensors-ish\xff" * 700  # ~12 KB of non-UTF-8 bytes


def make_table(n: int = 300, dim: int = 16, *, seed: int = 0, dtype=np.float32,
               id_kind: str = "int", vector_name: str = "vector") -> pa.Table:
    """ids, a fixed-size-list vector column, a text and an int payload column."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(dtype)
    ids = pa.array(np.arange(n, dtype=np.int64) * 3 + 1) if id_kind == "int" \
        else pa.array([f"doc-{i:05d}" for i in range(n)])
    return pa.table({"id": ids, vector_name: numpy_to_fsl(X),
                     "text": [f"text {i}" for i in range(n)],
                     "year": pa.array(rng.integers(1990, 2024, n), type=pa.int32())})


def reduce_batch(batch: pa.RecordBatch, src, d: int, m: int = 2) -> pa.RecordBatch:
    """What the engine writes for one source batch: ids, payload, reduced vectors (the first d
    dims, as a stand-in for the learned map), PQ codes (derived from the ids, deterministic)."""
    X = vectors_to_numpy(batch.column(src.vector_column))
    Y = np.ascontiguousarray(X[:, :d])
    ids = batch.column(src.id_column)
    codes = (np.arange(len(ids) * m) % 251).astype(np.uint8)
    cols = [ids] + [batch.column(c) for c in src.payload_columns] + [
        numpy_to_fsl(Y), pa.FixedSizeListArray.from_arrays(pa.array(codes), m)]
    return pa.RecordBatch.from_arrays(cols, schema=src.target_schema(d, m, value_type=src.value_type))


def stage_target(src, target_uri: str, d: int = 4, *, overwrite: bool = False,
                 batch_rows: int = 100, artifacts: dict | None = None, **sink_opts):
    """Source -> batches -> sink, like the engine, up to a verified (unpublished) sink
    (``artifacts``: ``{name: bytes}`` staged with ``store_artifact`` before the model). On any
    error the sink is aborted and the error re-raised."""
    sink = open_sink(target_uri, **sink_opts)
    digest = IdDigest()
    try:
        batches = (reduce_batch(b, src, d) for b in src.iter_batches(batch_rows))
        first = next(batches)
        sink.create(first.schema, id_column=src.id_column, vector_column=src.vector_column,
                    distance=src.distance, codes_column="pq_codes", overwrite=overwrite)
        for b in [first, *batches]:
            digest.update(b.column(src.id_column))
            sink.append(b)
        for name, data in (artifacts or {}).items():
            sink.store_artifact(name, data)
        sink.store_model(MODEL, {"source": src.uri, "source_version": src.fingerprint(),
                                 "dims": [src.dim, d], "pq": {"m": 2, "nbits": 8}})
        sink.verify(src.count(), digest.hexdigest())
    except BaseException:
        sink.abort()
        raise
    return sink


def write_target(src, target_uri: str, d: int = 4, **kw):
    """:func:`stage_target` then publish."""
    sink = stage_target(src, target_uri, d, **kw)
    sink.publish()
    return sink


def tree_hashes(root: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def staging_leftovers(parent: str) -> list[str]:
    return [n for n in os.listdir(parent) if "tldr-staging" in n] if os.path.isdir(parent) else []
