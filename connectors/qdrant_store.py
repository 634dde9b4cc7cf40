"""Qdrant through qdrant-client: a collection as a source, an aliased collection as a target.

Source: ``scroll`` pages of ``batch_rows`` points with their vector (plain or one named vector).
Point ids become the id column (int64 when the first point's id is an int, else the UUID string).
Payloads are schemaless, so by default they travel as one JSON text column ``payload`` (field
metadata ``tldr.json``), which a Qdrant sink turns back into the same payload; pass
``payload_columns=[...]`` to extract keys as typed columns instead, or ``[]`` for none.

Target ``qdrant://host/<alias>``: the rows go into a new collection ``<alias>__v<n>`` (size d, the
source distance, product quantization with the compression closest to the engine's PQ codes, X16
by default), the model and its JSON record into the collection metadata (key ``tldr_index``, model
as base64 with size and sha256; Qdrant keeps collection metadata with the config), and ``publish``
points the alias at it in one ``update_collection_aliases`` call (delete + create, atomic). The
previous collection is then deleted unless ``keep_previous=True``. Only an alias of a
collection holding a ``tldr_index`` record is ever replaced (a user's alias or collection never is). Readers that query the alias
switch from the old collection to the new one in one step.

Ids: integer ids >= 0 are point ids; string ids in canonical UUID form are used as they are, other
strings map to ``uuid5(NAMESPACE, id)``; for string ids the original is also kept in the payload
under the id column's name (read back by :class:`QdrantTarget`). Upserts are idempotent (same id,
same point) and retried with exponential back-off on connection errors, timeouts, 429 and 5xx,
within ``max_retries`` and ``max_total_s`` (:mod:`connectors.retry`); so are the source's reads
(``count``, ``scroll`` pages, ``retrieve``). Opening a collection fails fast instead.

Local mode (``qdrant+path://``, ``qdrant+memory://``) accepts but ignores quantization and writes
about 6 ms per point to disk: fine for tests, not for 100k+ points. A path is locked to one client,
so clients are shared per path (and per memory name) inside a process: see :func:`client_for`.

Delta (:meth:`QdrantTarget.apply_delta`): a new collection ``<alias>__v<n+1>``: the kept points
copied (scroll + retried upserts), the new rows upserted, then the alias switched in one call; the
previous collection stays for rollback (older ones are deleted). Cost: one copy of the target's
points. In-place upserts (:meth:`QdrantTarget.upsert`) go into the live collection.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tldr_index.faults import fault_point
from tldr_index.validation import check_float, check_int
from tldr_index.errors import InvalidInputError, ModelFormatError, TargetExistsError

from . import arrow_utils as au
from .base import DEFAULT_BATCH_ROWS, Sink, Source, Target, concat_ids, verify_counts
from .record import RECORD_KEY, build_record, check_model, dump_record, load_record
from .ids import ids_digest
from .retry import RetryPolicy, short_error
from .qdrant_clients import (UNNAMED, PointTake, call, client_for, describe, disk_bytes_at,
                             open_collection, point_ids, points_batch, retryable, vector_params)
from .qdrant_clients import close_clients  # noqa: F401 (re-exported for tests and users)
from .uri import ParsedURI

log = logging.getLogger(__name__)

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "tldr-index/point-id")


def _models():
    from qdrant_client import models
    return models


def _distances():
    m = _models()
    to = {m.Distance.COSINE: "cosine", m.Distance.EUCLID: "l2", m.Distance.DOT: "ip"}
    return to, {v: k for k, v in to.items()}


# ------------------------------------------------------------------------------------------ source

class QdrantSource(PointTake, Source):
    """Points of a Qdrant collection (or alias), read with ``scroll`` in point-id order.

    Memory: one page of ``batch_rows`` points as Python objects (about 30 bytes per float).
    """

    def __init__(self, p: ParsedURI, *, uri: str, client=None, api_key: str | None = None,
                 timeout: float = 10.0, vector_column: str | None = None,
                 id_column: str | None = None, payload_columns: Sequence[str] | None = None,
                 distance: str | None = None, max_retries: int = 5, backoff_s: float = 0.5,
                 max_total_s: float = 600.0):
        self.uri, self._p = uri, p
        self.retry = RetryPolicy(max_retries, backoff_s, max_total_s)
        self.client = client or client_for(p, api_key=api_key, timeout=timeout, must_exist=True)
        self.collection, info = open_collection(self.client, p, p.collection)
        self.vector_name, params = vector_params(info, vector_column, uri)
        if getattr(params, "multivector_config", None) is not None:
            raise InvalidInputError(
                f"Vector '{self.vector_name or UNNAMED}' of source '{uri}' must be a single "
                f"dense vector per point. Got a multivector.")
        to_dist, _ = _distances()
        if params.distance not in to_dist:
            raise InvalidInputError(
                f"Distance of source '{uri}' must be Cosine, Euclid or Dot. Got "
                f"{params.distance} instead.")
        self.distance = to_dist[params.distance]
        if distance is not None and distance != self.distance:
            raise InvalidInputError(
                f"The 'distance' parameter must match the collection's distance "
                f"'{self.distance}' for source '{uri}'. Got {distance!r} instead.")
        self.dim = int(params.size)
        dt = str(getattr(params, "datatype", None) or "").lower()
        self.value_type = pa.float16() if "float16" in dt else pa.float32()
        self.vector_column = self.vector_name or UNNAMED
        self.id_column = id_column or "id"
        self._check_not_empty()
        first, _ = call(lambda: self.client.scroll(self.collection, limit=64, with_payload=True,
                                                   with_vectors=False), p, "scroll")
        id_type = pa.int64() if isinstance(first[0].id, int) else pa.string()
        self._id_field = pa.field(self.id_column, id_type)
        if payload_columns is None:
            self.payload_columns = ["payload"]
            self._payload_schema = pa.schema([pa.field("payload", pa.string(),
                                                       metadata={au.JSON_FIELD_KEY: b"1"})])
            self._json_payload = True
        else:
            self.payload_columns = list(payload_columns)
            clash = [c for c in self.payload_columns if c in (self.id_column, self.vector_column)]
            if clash:
                raise InvalidInputError(
                    f"Payload column '{clash[0]}' of source '{uri}' clashes with the id or vector "
                    f"column; pass id_column= to rename the id.")
            fields = []
            for c in self.payload_columns:
                sample = [pt.payload.get(c) for pt in first if pt.payload]
                t = pa.array(sample).type if any(v is not None for v in sample) else pa.string()
                fields.append(pa.field(c, pa.string() if pa.types.is_null(t) else t))
            self._payload_schema = pa.schema(fields)
            self._json_payload = False

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return self.retry.call(fn, what=what, where=describe(self._p), retryable=retryable)

    def count(self) -> int:
        return int(self._retry(lambda: self.client.count(self.collection, exact=True).count,
                               "count points"))

    def fingerprint(self) -> dict:
        return {"kind": "qdrant", "location": describe(self._p), "collection": self.collection,
                "vector": self.vector_column, "dim": self.dim, "distance": self.distance,
                "points": self.count()}

    def _with_vectors(self):
        return [self.vector_name] if self.vector_name else True

    def _vec(self, point) -> list | None:
        v = point.vector
        if isinstance(v, dict):
            v = v.get(self.vector_name)
        return v

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        offset = None
        with_payload = True if self._json_payload else (self.payload_columns or False)
        while True:
            points, offset = self._retry(
                lambda: self.client.scroll(self.collection, limit=batch_rows, offset=offset,
                                           with_payload=with_payload,
                                           with_vectors=self._with_vectors()),
                f"scroll '{self.collection}'")
            if points:
                yield self._to_batch(points)
            if offset is None:  # qdrant-client: no next page
                return

    def _to_batch(self, points) -> pa.RecordBatch:
        ids = point_ids(points, self._id_field.type, self.uri)
        vecs = [self._vec(pt) for pt in points]
        vec_type = pa.list_(pa.float32())
        vectors = pa.array(vecs, type=vec_type)
        cols, names = [ids, vectors], [self.id_column, self.vector_column]
        if self._json_payload:
            cols.append(pa.array([json.dumps(pt.payload or {}, sort_keys=True) for pt in points],
                                 type=pa.string()))
            names.append("payload")
        else:
            for f in self._payload_schema:
                vals = [(pt.payload or {}).get(f.name) for pt in points]
                try:
                    cols.append(pa.array(vals, type=f.type))
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise InvalidInputError(
                        f"Payload key '{f.name}' of source '{self.uri}' must keep type {f.type}. "
                        f"Got a value it cannot hold ({exc}).") from None
            names += self._payload_schema.names
        return pa.RecordBatch.from_arrays(cols, names=names)

    def retrieve_vectors(self, ids: list) -> dict:
        recs = self._retry(lambda: self.client.retrieve(
            self.collection, ids=ids, with_vectors=self._with_vectors(),
            with_payload=False), f"retrieve points of '{self.collection}'")
        return {r.id: self._vec(r) for r in recs}


# -------------------------------------------------------------------------------------------- sink

def point_id(value: Any) -> int | str:
    """Qdrant point id of a source id (see the module docstring)."""
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise InvalidInputError(
                f"Ids written to Qdrant must be integers >= 0 or strings. Got {int(value)}.")
        return int(value)
    s = str(value)
    try:
        if str(uuid.UUID(s)) == s:
            return s
    except ValueError:
        pass
    return str(uuid.uuid5(ID_NAMESPACE, s))


def _payload_values(col: pa.Array) -> list:
    t = col.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [None if v is None else base64.b64encode(v).decode("ascii") for v in col.to_pylist()]
    if pa.types.is_temporal(t) or pa.types.is_decimal(t):
        return pc.cast(col, pa.string()).to_pylist()
    return col.to_pylist()


class QdrantSink(Sink):
    """Writes ``<alias>__v<n>`` and publishes it by switching ``<alias>``."""

    def __init__(self, p: ParsedURI, *, uri: str, client=None, api_key: str | None = None,
                 timeout: float = 10.0, upsert_batch: int = 256, max_retries: int = 5,
                 backoff_s: float = 0.5, max_total_s: float = 600.0, compression: str | None = None,
                 keep_previous: bool = False, named_vector: bool | None = None,
                 store_codes: bool = False, on_disk: bool | None = None, seed: int = 0):
        super().__init__(uri)
        self._p = p
        self.alias = p.collection
        self.client = client or client_for(p, api_key=api_key, timeout=timeout)
        self.upsert_batch = check_int(upsert_batch, "upsert_batch", low=1, owner="QdrantSink")
        self.max_retries = check_int(max_retries, "max_retries", low=0, owner="QdrantSink")
        self.backoff_s = check_float(backoff_s, "backoff_s", low=0, owner="QdrantSink")
        self.max_total_s = check_float(max_total_s, "max_total_s", low=0, owner="QdrantSink")
        self.compression, self.keep_previous = compression, keep_previous
        self.named_vector, self.store_codes, self.on_disk = named_vector, store_codes, on_disk
        self.retry = RetryPolicy(self.max_retries, self.backoff_s, self.max_total_s, seed=seed)
        self.collection: str | None = None
        self.previous: str | None = None

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return self.retry.call(fn, what=what, where=describe(self._p), retryable=retryable)

    def staging_ref(self) -> dict:
        return {"collection": self.collection}

    def discard_staging(self, ref: dict) -> None:
        """Delete the collection ``ref["collection"]`` unless an alias points at it."""
        name = ref.get("collection")
        if not name:
            return
        try:
            aliased = {a.collection_name for a in self.client.get_aliases().aliases}
            names = {c.name for c in self.client.get_collections().collections}
            if name in names and name not in aliased:
                log.info("Removing abandoned staging collection %s.", name)
                self.client.delete_collection(name)
        except Exception as exc:  # best effort: a leftover only wastes space
            log.warning("Could not remove staging collection %s: %s", name, exc)

    def _bind(self, collection: str, schema: pa.Schema, vector_name: str | None) -> "QdrantSink":
        """Point this sink's writer (point builder, retries) at the existing ``collection``
        (in-place upserts of :class:`QdrantTarget`)."""
        lay = self.layout
        self.schema, self.collection, self._vector_name = schema, collection, vector_name
        self._string_ids = not pa.types.is_integer(schema.field(lay.id_column).type)
        self._json_cols = [f.name for f in schema if (f.metadata or {}).get(au.JSON_FIELD_KEY)
                           == b"1"]
        self._payload_cols = [c for c in schema.names
                              if c not in (lay.id_column, lay.vector_column, lay.codes_column)]
        return self

    def _compression(self, d: int, value_bytes: int):
        m = _models()
        if self.compression is not None:
            return m.CompressionRatio(self.compression.lower())
        if self.layout.codes_column is None:
            return m.CompressionRatio.X16
        code_bytes = self.schema.field(self.layout.codes_column).type.list_size
        ratio = d * value_bytes / max(code_bytes, 1)
        best = min((4, 8, 16, 32, 64), key=lambda r: abs(math.log(r) - math.log(max(ratio, 1))))
        return m.CompressionRatio(f"x{best}")

    def _create(self) -> None:
        m = _models()
        lay = self.layout
        aliases = {a.alias_name: a.collection_name
                   for a in call(lambda: self.client.get_aliases().aliases, self._p,
                                 "list aliases")}
        names = [c.name for c in call(lambda: self.client.get_collections().collections, self._p,
                                      "list collections")]
        if self.alias in names:
            raise TargetExistsError(
                f"Target '{self.uri}' is an existing collection, not an alias; tldr-index publishes "
                f"through an alias, so choose another target name (nothing was written).")
        if self.alias in aliases and not self.overwrite:
            raise TargetExistsError(
                f"Target '{self.uri}' already exists (alias of collection "
                f"'{aliases[self.alias]}'). Pass overwrite=True to replace it.")
        self.previous = aliases.get(self.alias)
        if self.previous is not None:
            meta = call(lambda: self.client.get_collection(self.previous), self._p,
                        f"read collection '{self.previous}'").config.metadata or {}
            if RECORD_KEY not in meta:
                raise TargetExistsError(
                    f"Target '{self.uri}' is an alias of collection '{self.previous}', which is "
                    f"not a tldr-index target; refusing to replace it even with overwrite=True.")
        pat = re.compile(re.escape(self.alias) + r"__v(\d+)$")
        n = 1 + max([int(mt.group(1)) for c in names if (mt := pat.match(c))], default=0)
        self.collection = f"{self.alias}__v{n}"
        vt = self.schema.field(lay.vector_column).type
        d = vt.list_size
        _, from_dist = _distances()
        params = m.VectorParams(size=d, distance=from_dist[lay.distance], on_disk=self.on_disk,
                                datatype=m.Datatype.FLOAT16 if vt.value_type == pa.float16()
                                else None)
        named = self.named_vector if self.named_vector is not None else lay.vector_column != UNNAMED
        self._vector_name = lay.vector_column if named else None
        ratio = self._compression(d, 2 if vt.value_type == pa.float16() else 4)
        quant = m.ProductQuantization(product=m.ProductQuantizationConfig(compression=ratio,
                                                                          always_ram=True))
        self._string_ids = not pa.types.is_integer(self.schema.field(lay.id_column).type)
        self._json_cols = [f.name for f in self.schema
                           if (f.metadata or {}).get(au.JSON_FIELD_KEY) == b"1"]
        self._payload_cols = [c for c in self.schema.names
                              if c not in (lay.id_column, lay.vector_column, lay.codes_column)]
        self._retry(lambda: self.client.create_collection(
            self.collection, vectors_config={self._vector_name: params} if named else params,
            quantization_config=quant), f"create collection '{self.collection}'")
        log.info("Staging %s in collection %s (size %d, %s, PQ %s).", self.uri, self.collection, d,
                 lay.distance, ratio.value)

    def _append(self, batch: pa.RecordBatch) -> None:
        m = _models()
        lay = self.layout
        raw_ids = batch.column(lay.id_column).to_pylist()
        pids = [point_id(i) for i in raw_ids]
        X = au.vectors_to_numpy(batch.column(lay.vector_column)).astype(np.float32)
        payloads: list[dict] = [{} for _ in range(batch.num_rows)]
        for c in self._payload_cols:
            if c in self._json_cols:
                for pl, v in zip(payloads, batch.column(c).to_pylist()):
                    if v is not None:
                        pl.update(json.loads(v))
            else:
                for pl, v in zip(payloads, _payload_values(batch.column(c))):
                    pl[c] = v
        if self._string_ids:
            for pl, v in zip(payloads, raw_ids):
                pl[lay.id_column] = v
        if self.store_codes and lay.codes_column:
            col = batch.column(lay.codes_column)
            flat = col.values.slice(col.offset * col.type.list_size,
                                    len(col) * col.type.list_size).to_numpy()
            flat = flat.reshape(len(col), col.type.list_size)
            for pl, row in zip(payloads, flat):
                pl[lay.codes_column] = base64.b64encode(row.tobytes()).decode("ascii")
        for s in range(0, batch.num_rows, self.upsert_batch):
            e = s + self.upsert_batch
            vecs = X[s:e].tolist()
            points = m.Batch(ids=pids[s:e],
                             vectors={self._vector_name: vecs} if self._vector_name else vecs,
                             payloads=payloads[s:e])
            self._retry(lambda: self.client.upsert(self.collection, points=points, wait=True),
                        f"upsert {len(pids[s:e])} points into '{self.collection}'")

    def _store_model(self, model_bytes: bytes, metadata: dict) -> None:
        rec = build_record(self.layout, model_bytes, metadata, inline=True)
        rec["qdrant"] = {"vector_name": self._vector_name, "string_ids": self._string_ids,
                         "id_namespace": str(ID_NAMESPACE)}
        text = dump_record(rec)
        self._retry(lambda: self.client.update_collection(self.collection,
                                                          metadata={RECORD_KEY: text}),
                    f"store the model in '{self.collection}'")

    def _verify(self, expected_count: int, expected_ids_digest: str | None) -> None:
        t = QdrantTarget(self._p, uri=self.uri, client=self.client, collection=self.collection)
        got = t.count()
        digest = None if expected_ids_digest is None else ids_digest(t.iter_ids())
        verify_counts(self.uri, expected_count, got, expected_ids_digest, digest)

    def _publish(self) -> None:
        m = _models()
        ops = []
        if self.previous is not None:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.alias)))
        ops.append(m.CreateAliasOperation(create_alias=m.CreateAlias(
            collection_name=self.collection, alias_name=self.alias)))
        self._retry(lambda: self.client.update_collection_aliases(change_aliases_operations=ops),
                    f"switch alias '{self.alias}'")
        log.info("Alias %s now points at %s (was %s).", self.alias, self.collection, self.previous)
        if self.previous is not None and not self.keep_previous:
            try:
                self.client.delete_collection(self.previous)
            except Exception as exc:  # published already; a leftover is only wasted space
                log.warning("Could not delete the previous collection %s: %s", self.previous,
                            short_error(exc))

    def _abort(self) -> None:
        if self.collection is None:
            return
        try:
            self.client.delete_collection(self.collection)
        except Exception as exc:
            log.warning("Could not delete staging collection %s: %s", self.collection,
                        short_error(exc))


# ------------------------------------------------------------------------------------------ target

def prune_versions(client, alias: str, keep: Sequence[str]) -> None:
    """Delete ``<alias>__v<n>`` collections other than ``keep`` (best effort)."""
    pat = re.compile(re.escape(alias) + r"__v\d+$")
    for c in client.get_collections().collections:
        if pat.match(c.name) and c.name not in keep:
            try:
                client.delete_collection(c.name)
            except Exception as exc:  # leftovers only waste space
                log.warning("Could not delete old collection %s: %s", c.name, exc)


class QdrantTarget(Target):
    """A published target (the alias) or, with ``collection=``, a staged collection."""

    kind = "qdrant"
    normalizes_cosine = True

    def __init__(self, p: ParsedURI, *, uri: str, client=None, api_key: str | None = None,
                 timeout: float = 10.0, collection: str | None = None):
        self.uri, self._p = uri, p
        self.client = client or client_for(p, api_key=api_key, timeout=timeout, must_exist=True)
        self.collection, info = open_collection(self.client, p, collection or p.collection)
        meta = info.config.metadata or {}
        self.record = load_record(meta.get(RECORD_KEY), f"target '{uri}'")
        try:
            data = base64.b64decode(self.record["model"]["base64"], validate=True)
        except (KeyError, ValueError):
            raise ModelFormatError(f"The model of target '{uri}' is missing or not base64.") \
                from None
        self.model_bytes = check_model(data, self.record, f"target '{uri}'")
        q = self.record.get("qdrant", {})
        self._vector_name = q.get("vector_name")
        self._string_ids = bool(q.get("string_ids"))

    def disk_bytes(self) -> int | None:
        """Bytes of the live collection's storage directory for an embedded (``qdrant+path``)
        store; None for a server or in-memory store (see :func:`disk_bytes_at`)."""
        return disk_bytes_at(self._p)

    def count(self) -> int:
        return int(call(lambda: self.client.count(self.collection, exact=True).count, self._p,
                        "count points"))

    def _pages(self, batch_rows: int, with_payload, with_vectors):
        offset = None
        while True:
            pts, offset = call(lambda: self.client.scroll(
                self.collection, limit=batch_rows, offset=offset, with_payload=with_payload,
                with_vectors=with_vectors), self._p, "scroll")
            if pts:
                yield pts
            if offset is None:
                return

    def _ids(self, pts) -> pa.Array:
        idc = self.layout.id_column
        if self._string_ids:
            return pa.array([pt.payload[idc] for pt in pts], type=pa.string())
        return pa.array([pt.id for pt in pts], type=pa.int64())

    def iter_ids(self, batch_rows: int = 4096) -> Iterator[pa.Array]:
        """Original ids only (cheap: no vectors)."""
        sel = [self.layout.id_column] if self._string_ids else False
        for pts in self._pages(batch_rows, sel, False):
            yield self._ids(pts)

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Batches of id, vector (float32) and ``payload`` (JSON text, id key removed)."""
        lay = self.layout
        wv = [self._vector_name] if self._vector_name else True
        for pts in self._pages(batch_rows, True, wv):
            vecs = [pt.vector[self._vector_name] if self._vector_name else pt.vector for pt in pts]
            yield points_batch(self._ids(pts), vecs, [pt.payload for pt in pts], lay.id_column,
                               lay.vector_column, self._string_ids)

    def search(self, query: np.ndarray, k: int = 10, **options: Any) -> pa.Table:
        """``query_points`` on the collection; ``_distance``: Euclid distance, 1 - cosine, -dot.
        Extra options go to ``query_points`` (e.g. ``search_params``)."""
        lay = self.layout
        q = np.asarray(query, dtype=np.float32).reshape(-1).tolist()
        sel = [lay.id_column] if self._string_ids else False
        res = call(lambda: self.client.query_points(self.collection, query=q,
                                                    using=self._vector_name, limit=int(k),
                                                    with_payload=sel, **options),
                   self._p, "search").points
        score = np.array([r.score for r in res], dtype=np.float32)
        dist = {"l2": score, "cosine": 1.0 - score, "ip": -score}[lay.distance]
        ids = self._ids(res)
        return pa.table({lay.id_column: ids, "_distance": pa.array(dist, type=pa.float32())})

    # -- delta, versions (see the module docstring)
    def ids(self) -> pa.Array:
        return concat_ids(list(self.iter_ids()))

    def id_type(self) -> pa.DataType:
        return pa.string() if self._string_ids else pa.int64()

    def fetch_vectors(self, ids: pa.Array) -> tuple[list, np.ndarray]:
        if len(ids) == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        pids = [point_id(v) for v in ids.to_pylist()]
        wv = [self._vector_name] if self._vector_name else True
        recs = self.client.retrieve(self.collection, ids=pids, with_payload=True,
                                    with_vectors=wv)
        if not recs:
            return [], np.empty((0, 0), dtype=np.float32)
        found = self._ids(recs).to_pylist()
        vecs = [r.vector[self._vector_name] if self._vector_name else r.vector for r in recs]
        return found, np.asarray(vecs, dtype=np.float32).reshape(len(found), -1)

    def current_handle(self) -> dict:
        return {"kind": "qdrant", "collection": self.collection}

    def keep_previous_options(self) -> dict:
        return {"keep_previous": True}

    def prune_versions(self, keep: Sequence[dict] = ()) -> None:
        prune_versions(self.client, self._p.collection,
                       keep=(self.collection, *[h["collection"] for h in keep
                                                if h.get("collection")]))

    def _writer(self, **opts: Any) -> QdrantSink:
        return QdrantSink(self._p, uri=self.uri, client=self.client,
                          named_vector=self._vector_name is not None, **opts)

    def upsert(self, rows: pa.Table, *, batch_rows: int = 4096, max_retries: int = 5) -> None:
        """Retried upserts of ``batch_rows`` points into the live collection."""
        sink = self._writer(max_retries=max_retries, upsert_batch=batch_rows)
        sink.layout = self.layout
        sink._bind(self.collection, rows.schema, self._vector_name)
        for b in rows.to_batches(max_chunksize=batch_rows):
            sink._append(b)

    def apply_delta(self, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                    expected_count: int, expected_digest: str | None,
                    batch_rows: int = DEFAULT_BATCH_ROWS,
                    staged: Callable[[dict], None] | None = None) -> dict:
        """A new collection of the kept and new points, verified, then the alias switch."""
        m = _models()
        lay = self.layout
        drop = set(delete_ids.to_pylist()) | set(rows.column(lay.id_column).to_pylist())
        sink = self._writer(keep_previous=True)
        with sink:
            sink.create(rows.schema, id_column=lay.id_column, vector_column=lay.vector_column,
                        distance=lay.distance, codes_column=lay.codes_column
                        if lay.codes_column in rows.schema.names else None, overwrite=True)
            if staged is not None:
                staged(sink.staging_ref())
            wv = [self._vector_name] if self._vector_name else True
            for pts in self._pages(min(batch_rows, 1024), True, wv):
                ids = self._ids(pts).to_pylist()
                keep = [p for p, i in zip(pts, ids) if i not in drop]
                if keep:
                    batch = [m.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                             for p in keep]
                    sink._retry(lambda: self.client.upsert(sink.collection, points=batch,
                                                           wait=True),
                                f"copy {len(batch)} points into '{sink.collection}'")
            for b in rows.to_batches(max_chunksize=batch_rows):
                sink.append(b)
            sink.store_model(self.model_bytes, metadata)
            sink.verify(expected_count, expected_digest)
            fault_point("reindex:rows-written")  # new version staged and verified, not switched
            sink.publish()
        prune_versions(self.client, sink.alias, keep=(sink.collection, self.collection))
        return {"kind": "qdrant", "collection": self.collection}

    def _rollback_to(self, handle: dict) -> dict:
        """Point the alias back at the handle's collection (one alias update)."""
        m = _models()
        names = {c.name for c in self.client.get_collections().collections}
        if handle["collection"] not in names:
            raise InvalidInputError(
                f"The previous collection '{handle['collection']}' of target '{self.uri}' is "
                f"gone; cannot roll back.")
        alias = self._p.collection
        ops = [m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias)),
               m.CreateAliasOperation(create_alias=m.CreateAlias(
                   collection_name=handle["collection"], alias_name=alias))]
        self.client.update_collection_aliases(change_aliases_operations=ops)
        return {"kind": "qdrant", "collection": self.collection}
