"""Qdrant Edge shards (``qdrant-edge-py``: the Qdrant engine embedded) and the shard source of
``qdrant+edge:///dir/shard``: the per-process shard handles (the engine admits one per shard
directory), the checks made before the engine sees a path, and :class:`QdrantEdgeSource` (scroll in
pages with the vector and the payload; named vectors). The target and sink are in
:mod:`connectors.qdrant_edge_store`, whose docstring describes the layout on disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from tldr_index.errors import (InvalidInputError, MissingColumnError, SourceNotFoundError,
                               StoreUnavailableError)

from . import arrow_utils as au
from .base import Source
from .qdrant_clients import PointTake, point_ids

log = logging.getLogger(__name__)

CONFIG_FILE = "edge_config.json"
UNNAMED = "vector"  # column name of the unnamed vector
_DIST = {"Euclid": "l2", "Cosine": "cosine", "Dot": "ip"}
_SHARDS: dict[str, Any] = {}
_HOLDERS: dict[str, int] = {}  # long-lived users of a URI path (see hold_path)
_LOCK = threading.Lock()


def edge_api():
    """The ``qdrant_edge`` module (imported on first use: Lance/Parquet users never load it)."""
    import qdrant_edge
    return qdrant_edge


# ------------------------------------------------------------------------------------------ shards

def is_shard(path: str) -> bool:
    """True if ``path`` is a directory holding a Qdrant Edge shard's ``edge_config.json``."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def check_shard(path: str, uri: str) -> str:
    """``realpath(path)`` if it is a Qdrant Edge shard, else raise (nothing is written)."""
    if not os.path.exists(path):
        raise SourceNotFoundError(f"Qdrant Edge shard '{path}' not found (URI '{uri}').")
    if not is_shard(path):
        what = "a directory without" if os.path.isdir(path) else "not a directory holding"
        raise InvalidInputError(
            f"The path of '{uri}' must be a Qdrant Edge shard directory (holding "
            f"{CONFIG_FILE}, wal/ and segments/). Got {what} {CONFIG_FILE}: '{path}'.")
    return os.path.realpath(path)


def shard_at(real: str, uri: str):
    """The shared ``EdgeShard`` of shard directory ``real`` (a realpath) in this process."""
    with _LOCK:
        sh = _SHARDS.get(real)
        if sh is None:
            try:
                sh = edge_api().EdgeShard.load(real)
            except Exception as exc:
                if "WouldBlock" in str(exc):
                    raise StoreUnavailableError(
                        f"Qdrant Edge shard '{real}' of '{uri}' is locked by another process "
                        f"(the engine admits one open handle per shard); close it there "
                        f"first.") from None
                raise InvalidInputError(
                    f"Qdrant Edge shard '{real}' of '{uri}' cannot be opened: {exc}.") from None
            _SHARDS[real] = sh
        return sh


def release_shard(real: str) -> None:
    """Close this process's handle of shard ``real`` (if open), releasing its lock."""
    with _LOCK:
        sh = _SHARDS.pop(real, None)
    if sh is not None:
        try:
            sh.close()
        except Exception:  # pragma: no cover - best effort
            log.debug("closing Qdrant Edge shard %s failed", real, exc_info=True)


def close_shards() -> None:
    """Close every shard handle of this process (releases the locks)."""
    for real in list(_SHARDS):
        release_shard(real)


def hold_path(path: str) -> None:
    """Count one more long-lived user (a :class:`tldr_index.CompactCollection`) of the shard or
    target at ``path``; :func:`let_go_path` closes its handles when the last one lets go."""
    key = os.path.abspath(path)
    with _LOCK:
        _HOLDERS[key] = _HOLDERS.get(key, 0) + 1


def let_go_path(path: str) -> None:
    """One user of ``path`` is done: when none is left, close this process's handles of the shard
    at ``path`` and, for a target, of its versions (``.<name>.tldr-v<n>`` beside it), so that
    another process (or a fresh open here) can load them. Cost: one directory listing."""
    key = os.path.abspath(path)
    with _LOCK:
        left = _HOLDERS.get(key, 0) - 1
        if left > 0:
            _HOLDERS[key] = left
            return
        _HOLDERS.pop(key, None)
    parent, name = os.path.split(key)
    versions = os.path.join(os.path.realpath(parent), f".{name}.tldr-v")
    for real in list(_SHARDS):
        if real == os.path.realpath(key) or real.startswith(versions):
            release_shard(real)


def shard_config(real: str) -> dict:
    with open(os.path.join(real, CONFIG_FILE)) as fh:
        return json.load(fh)


def scroll_pages(sh, limit: int, with_payload: Any, with_vector: Any) -> Iterator[list]:
    e = edge_api()
    offset = None
    while True:
        recs, offset = sh.scroll(e.ScrollRequest(offset=offset, limit=limit,
                                                 with_payload=with_payload,
                                                 with_vector=with_vector))
        if recs:
            yield recs
        if offset is None:
            return


def record_vector(rec, name: str | None):
    v = rec.vector
    return v.get(name or "") if isinstance(v, dict) else v


# ------------------------------------------------------------------------------------------ source

class QdrantEdgeSource(PointTake, Source):
    """Points of a Qdrant Edge shard, scrolled in point-id order. Memory: one page of
    ``batch_rows`` points as Python objects."""

    def __init__(self, path: str, *, uri: str, vector_column: str | None = None,
                 id_column: str | None = None, payload_columns: Sequence[str] | None = None,
                 distance: str | None = None):
        self.uri, self.path = uri, path
        self.real = check_shard(path, uri)
        vectors = shard_config(self.real).get("vectors") or {}
        names = sorted(n for n in vectors if n)
        if "" in vectors and not names:
            if vector_column not in (None, UNNAMED):
                raise MissingColumnError(
                    f"Vector '{vector_column}' not found in source '{uri}': the shard has one "
                    f"unnamed vector (size {vectors[''].get('size')}). Leave vector_column unset.")
            self.vector_name, params = None, vectors[""]
        else:
            if vector_column is None:
                if len(names) != 1:
                    raise InvalidInputError(
                        f"Source '{uri}' has {len(names)} named vectors "
                        f"({', '.join(names) or 'none'}); pass vector_column= to choose one.")
                vector_column = names[0]
            if vector_column not in names:
                raise MissingColumnError(
                    f"Vector '{vector_column}' not found in source '{uri}'. Available vectors: "
                    f"{', '.join(names) or 'none'}.")
            self.vector_name, params = vector_column, vectors[vector_column]
        if params.get("multivector_config"):
            raise InvalidInputError(
                f"Vector '{self.vector_name or UNNAMED}' of source '{uri}' must be a single dense "
                f"vector per point. Got a multivector.")
        if params.get("distance") not in _DIST:
            raise InvalidInputError(
                f"Distance of source '{uri}' must be Cosine, Euclid or Dot. Got "
                f"{params.get('distance')} instead.")
        self.distance = _DIST[params["distance"]]
        if distance is not None and distance != self.distance:
            raise InvalidInputError(
                f"The 'distance' parameter must match the shard's distance '{self.distance}' "
                f"for source '{uri}'. Got {distance!r} instead.")
        self.dim = int(params["size"])
        self.value_type = pa.float16() if str(params.get("datatype", "")).lower() == "float16" \
            else pa.float32()
        self.vector_column = self.vector_name or UNNAMED
        self.id_column = id_column or "id"
        shard_at(self.real, uri)  # fails now if another process holds the shard
        self._check_not_empty()
        first = next(scroll_pages(self.shard, 64, True, False))
        self._id_field = pa.field(self.id_column,
                                  pa.int64() if isinstance(first[0].id, int) else pa.string())
        self._json_payload = payload_columns is None
        if self._json_payload:
            self.payload_columns = ["payload"]
            self._payload_schema = pa.schema([pa.field("payload", pa.string(),
                                                       metadata={au.JSON_FIELD_KEY: b"1"})])
        else:
            self.payload_columns = list(payload_columns)
            fields = []
            for c in self.payload_columns:
                if c in (self.id_column, self.vector_column):
                    raise InvalidInputError(
                        f"Payload column '{c}' of source '{uri}' clashes with the id or vector "
                        f"column; pass id_column= to rename the id.")
                sample = [(r.payload or {}).get(c) for r in first]
                t = pa.array(sample).type if any(v is not None for v in sample) else pa.string()
                fields.append(pa.field(c, pa.string() if pa.types.is_null(t) else t))
            self._payload_schema = pa.schema(fields)

    @property
    def shard(self):
        """This process's shared handle (reopened if another user released it)."""
        return shard_at(self.real, self.uri)

    def count(self) -> int:
        return int(self.shard.count(edge_api().CountRequest(exact=True)))

    def fingerprint(self) -> dict:
        return {"kind": "qdrant-edge", "path": self.real, "vector": self.vector_column,
                "dim": self.dim,
                "distance": self.distance, "points": self.count()}

    def disk_bytes(self) -> int:
        """Allocated bytes of the shard directory (:func:`allocated_bytes`)."""
        return allocated_bytes(self.real)

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        sel = True if self._json_payload else (self.payload_columns or False)
        for recs in scroll_pages(self.shard, batch_rows, sel, [self.vector_name or ""]):
            yield self._to_batch(recs)

    def _to_batch(self, recs) -> pa.RecordBatch:
        ids = point_ids(recs, self._id_field.type, self.uri)
        cols = [ids, pa.array([record_vector(r, self.vector_name) for r in recs],
                              type=pa.list_(pa.float32()))]
        if self._json_payload:
            cols.append(pa.array([json.dumps(r.payload or {}, sort_keys=True) for r in recs],
                                 type=pa.string()))
        else:
            for f in self._payload_schema:
                try:
                    cols.append(pa.array([(r.payload or {}).get(f.name) for r in recs],
                                         type=f.type))
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise InvalidInputError(
                        f"Payload key '{f.name}' of source '{self.uri}' must keep type {f.type}. "
                        f"Got a value it cannot hold ({exc}).") from None
        return pa.RecordBatch.from_arrays(
            cols, names=[self.id_column, self.vector_column, *self._payload_schema.names])

    take_chunk = 1024

    def retrieve_vectors(self, ids: list) -> dict:
        recs = self.shard.retrieve(ids, False, [self.vector_name or ""])
        return {r.id: record_vector(r, self.vector_name) for r in recs}


def allocated_bytes(path: str) -> int:
    """Bytes allocated on disk (``st_blocks`` x 512) by the files under ``path``: the engine
    preallocates sparse files (32 MiB WAL segments and payload pages), so their apparent size says
    little about the disk a shard takes."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            blocks = getattr(st, "st_blocks", None)  # None on Windows: apparent size
            total += st.st_size if blocks is None else blocks * 512
    return total


def disk_bytes_at(path: str) -> int | None:
    """Allocated bytes of the shard at ``path`` (a target's live version, symlink resolved;
    :func:`allocated_bytes`); None where no shard is. Cost: file metadata."""
    return allocated_bytes(os.path.realpath(path)) if is_shard(path) else None
