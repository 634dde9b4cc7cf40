"""Qdrant Edge (``qdrant-edge-py``: the real Qdrant engine embedded, ``EdgeShard``) as a source
and a target. URI ``qdrant+edge:///dir/shard``.

Source: a shard directory (``edge_config.json``, ``wal/``, ``segments/``) read with ``scroll`` in
pages of ``batch_rows`` points with one vector (the unnamed one, or ``vector_column=`` among the
named ones) and the payload (one JSON text column ``payload`` by default, as for
:mod:`connectors.qdrant_store`; ``payload_columns=[...]`` extracts keys). The directory is checked
before the engine sees it (the engine creates ``segments/`` in any directory it is asked to load).

Target ``qdrant+edge:///dir/name`` (layout on disk)::

    dir/name -> .name.tldr-v3          a relative symlink: the published version
    dir/.name.tldr-v3/                 a Qdrant Edge shard (load it with EdgeShard.load(dir/name))
        edge_config.json wal/ segments/    the engine's files
        tldr_index.json                    the tldr-index record (layout, metadata, model sha256)
        tldr_model.safetensors             the model (what ``tldr_index.open`` loads)
    dir/.name.tldr-v2/                 the version replaced, kept for rollback (``keep_previous``)
    dir/.name.tldr-staging-<hex>/      a write in progress (removed on abort)

The sink builds the new shard in a staging directory: the unnamed vector (the reduced vectors as
float32 or float16, the source distance; unnamed because the engine converts a plain list 8x faster
than a named-vector dict), the payload, the quantization
(default ``"auto"``: product quantization at the target's code bytes, i.e. the compression ratio
``4 d / m`` closest among x4..x64, x16 without codes; or ``"none"``, ``"scalar"``, ``"binary"``,
``"binary1.5"``, ``"binary2"``, ``"turbo1"``, ``"turbo1.5"``, ``"turbo2"``, ``"turbo4"``, ``"pq"``
with ``compression=``); ``verify`` runs ``optimize`` (HNSW graph and quantized codes built for every
segment) and then checks count, ids digest and that every vector is indexed; ``publish`` moves the
staging directory to ``.name.tldr-v<n+1>`` and swaps the symlink with one ``rename`` (atomic: a
reader opens the old version or the new one, never a mix, and the model travels with its rows).

A shard admits one open handle (the engine locks its WAL): handles are shared per directory inside
a process (:func:`shard_at`, :func:`close_shards`); a shard opened by another process is refused
with :class:`StoreUnavailableError`. Ids: as :mod:`connectors.qdrant_store` (:func:`point_id`;
string ids kept in the payload under the id column's name).

Delta (:meth:`QdrantEdgeTarget.apply_delta`): a new version: the kept points copied (scroll +
upserts), the new rows upserted, optimized, verified, then the symlink swapped; the previous version
stays for rollback (older ones are deleted). Cost: one copy of the target's points plus an
``optimize``. Rollback points the symlink back at a kept version.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from tldr_index.errors import (InvalidInputError, InvalidParameterError, MissingColumnError,
                               ModelFormatError, SourceNotFoundError, StoreUnavailableError,
                               TargetExistsError)
from tldr_index.faults import fault_point
from tldr_index.validation import check_choice, check_int

from . import arrow_utils as au
from .base import (DEFAULT_BATCH_ROWS, Sink, Source, Target, build_record, check_model,
                   discard_staging_dir, dump_record, load_record, verify_counts)
from .ids import IdDigest
from .qdrant_store import point_id

log = logging.getLogger(__name__)

KIND = "qdrant-edge"
RECORD_FILE, MODEL_FILE, CONFIG_FILE = "tldr_index.json", "tldr_model.safetensors", "edge_config.json"
UNNAMED = "vector"  # column name of the unnamed vector
QUANTIZATIONS = ("auto", "none", "pq", "scalar", "binary", "binary1.5", "binary2", "turbo1",
                 "turbo1.5", "turbo2", "turbo4")
RATIOS = (4, 8, 16, 32, 64)
_DIST = {"Euclid": "l2", "Cosine": "cosine", "Dot": "ip"}
_SHARDS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _edge():
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
                sh = _edge().EdgeShard.load(real)
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


def _config(real: str) -> dict:
    with open(os.path.join(real, CONFIG_FILE)) as fh:
        return json.load(fh)


def _scroll(sh, limit: int, with_payload: Any, with_vector: Any) -> Iterator[list]:
    e = _edge()
    offset = None
    while True:
        recs, offset = sh.scroll(e.ScrollRequest(offset=offset, limit=limit,
                                                 with_payload=with_payload,
                                                 with_vector=with_vector))
        if recs:
            yield recs
        if offset is None:
            return


def _vec(rec, name: str | None):
    v = rec.vector
    return v.get(name or "") if isinstance(v, dict) else v


# ------------------------------------------------------------------------------------------ source

class QdrantEdgeSource(Source):
    """Points of a Qdrant Edge shard, scrolled in point-id order. Memory: one page of
    ``batch_rows`` points as Python objects."""

    def __init__(self, path: str, *, uri: str, vector_column: str | None = None,
                 id_column: str | None = None, payload_columns: Sequence[str] | None = None,
                 distance: str | None = None):
        self.uri, self.path = uri, path
        self.real = check_shard(path, uri)
        vectors = _config(self.real).get("vectors") or {}
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
        first = next(_scroll(self.shard, 64, True, False))
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
        return int(self.shard.count(_edge().CountRequest(exact=True)))

    def fingerprint(self) -> dict:
        return {"kind": KIND, "path": self.real, "vector": self.vector_column, "dim": self.dim,
                "distance": self.distance, "points": self.count()}

    def disk_bytes(self) -> int:
        """Allocated bytes of the shard directory (:func:`allocated_bytes`)."""
        return allocated_bytes(self.real)

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        sel = True if self._json_payload else (self.payload_columns or False)
        for recs in _scroll(self.shard, batch_rows, sel, [self.vector_name or ""]):
            yield self._to_batch(recs)

    def _to_batch(self, recs) -> pa.RecordBatch:
        try:
            ids = pa.array([r.id for r in recs], type=self._id_field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise InvalidInputError(
                f"Point ids of source '{self.uri}' must be all integers or all UUIDs. Got a mix "
                f"(first page: {self._id_field.type}).") from None
        cols = [ids, pa.array([_vec(r, self.vector_name) for r in recs],
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

    def take(self, ids: Sequence | np.ndarray | pa.Array, chunk: int = 1024) -> np.ndarray:
        """Cost: one ``retrieve`` per ``chunk`` ids."""
        out, found, ids = self._take(ids, chunk)
        if not found.all():
            raise InvalidInputError(
                f"The 'ids' parameter of take must name points of source '{self.uri}'. Got "
                f"unknown id {ids[int(np.flatnonzero(~found)[0])]!r}.")
        return out

    def take_found(self, ids: Sequence | np.ndarray | pa.Array,
                   chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        out, found, _ = self._take(ids, chunk)
        return out, found

    def _take(self, ids, chunk: int) -> tuple[np.ndarray, np.ndarray, list]:
        ids = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        ids = [int(i) if isinstance(i, (int, np.integer)) else str(i) for i in ids]
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            recs = self.shard.retrieve(list(dict.fromkeys(part)), False,
                                       [self.vector_name or ""])
            got = {r.id: _vec(r, self.vector_name) for r in recs}
            for j, i in enumerate(part):
                v = got.get(i)
                if v is not None:
                    out[s + j], found[s + j] = v, True
        return out, found, ids


# -------------------------------------------------------------------------------------------- sink

def version_dirs(path: str) -> dict[int, str]:
    """``{n: directory}`` of the ``.<name>.tldr-v<n>`` versions beside target ``path``."""
    parent, name = os.path.split(os.path.abspath(path))
    pat = re.compile(re.escape(f".{name}.tldr-v") + r"(\d+)$")
    if not os.path.isdir(parent):
        return {}
    return {int(m.group(1)): os.path.join(parent, f) for f in os.listdir(parent)
            if (m := pat.match(f))}


def published_version(path: str) -> str | None:
    """The version directory the symlink ``path`` points at, if it is one of ours."""
    if not os.path.islink(path):
        return None
    real = os.path.realpath(path)
    return real if real in {os.path.realpath(v) for v in version_dirs(path).values()} and \
        os.path.isfile(os.path.join(real, RECORD_FILE)) else None


def switch_link(path: str, version_dir: str) -> None:
    """Point symlink ``path`` at ``version_dir`` (a sibling) in one ``rename``."""
    tmp = f"{path}.tldr-link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.basename(version_dir), tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def quantization_config(kind: str, d: int, code_bytes: int | None, compression: str | None,
                        owner: str = "QdrantEdgeSink"):
    """The ``qdrant_edge`` quantization config of ``kind`` (see the module docstring); None for
    ``"none"``. PQ ``"auto"``: the ratio ``4 d / code_bytes`` closest in log among x4..x64."""
    e = _edge()
    check_choice(kind, "quantization", QUANTIZATIONS, owner=owner)
    if kind == "none":
        return None
    if kind in ("auto", "pq"):
        if compression is not None:
            ratio = check_choice(str(compression).lower(), "compression",
                                 tuple(f"x{r}" for r in RATIOS), owner=owner)
        elif code_bytes:
            best = min(RATIOS, key=lambda r: abs(math.log(r) - math.log(max(4 * d / code_bytes,
                                                                             1))))
            ratio = f"x{best}"
        else:
            ratio = "x16"
        return e.ProductQuantizationConfig(compression=getattr(e.CompressionRatio, ratio.upper()),
                                           always_ram=True)
    if kind == "scalar":
        return e.ScalarQuantizationConfig(type=e.ScalarType.Int8, quantile=0.99, always_ram=True)
    if kind.startswith("binary"):
        enc = {"binary": "OneBit", "binary1.5": "OneAndHalfBits", "binary2": "TwoBits"}[kind]
        return e.BinaryQuantizationConfig(encoding=getattr(e.BinaryQuantizationEncoding, enc),
                                          always_ram=True)
    bits = {"turbo1": "Bits1", "turbo1.5": "Bits1_5", "turbo2": "Bits2", "turbo4": "Bits4"}[kind]
    return e.TurboQuantQuantizationConfig(bits=getattr(e.TurboQuantBitSize, bits),
                                          always_ram=True)


def payload_dicts(batch: pa.RecordBatch, columns: Sequence[str], json_columns: Sequence[str]
                  ) -> list[dict]:
    """One payload dict per row: JSON text columns merged in, other columns as keys (binary as
    base64, dates and decimals as text)."""
    out: list[dict] = [{} for _ in range(batch.num_rows)]
    for c in columns:
        col = batch.column(c)
        if c in json_columns:
            for pl, v in zip(out, col.to_pylist()):
                if v is not None:
                    pl.update(json.loads(v))
            continue
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            vals = [None if v is None else base64.b64encode(v).decode("ascii")
                    for v in col.to_pylist()]
        elif pa.types.is_temporal(t) or pa.types.is_decimal(t):
            vals = col.cast(pa.string()).to_pylist()
        else:
            vals = col.to_pylist()
        for pl, v in zip(out, vals):
            pl[c] = v
    return out


class QdrantEdgeSink(Sink):
    """Builds a shard in ``.<name>.tldr-staging-<hex>`` and publishes it by a symlink swap.

    ``upsert_batch``: points per ``update`` call; ``workers``: update calls in flight while the next
    points are built (the engine releases the GIL while it writes); ``indexing_threshold_kb``: the
    engine's threshold below which a segment is not indexed (1: HNSW is built unless the vectors
    take under 1 KB, which the engine then searches exactly)."""

    def __init__(self, path: str, *, uri: str, quantization: str = "auto",
                 compression: str | None = None, keep_previous: bool = False,
                 upsert_batch: int = 8192, workers: int = 2, store_codes: bool = False,
                 on_disk: bool | None = None, indexing_threshold_kb: int = 1,
                 hnsw_m: int = 16, hnsw_ef_construct: int = 100):
        super().__init__(uri)
        self.path = os.path.abspath(path)
        check_choice(quantization, "quantization", QUANTIZATIONS, owner="QdrantEdgeSink")
        if compression is not None:
            check_choice(str(compression).lower(), "compression", tuple(f"x{r}" for r in RATIOS),
                         owner="QdrantEdgeSink")
            if quantization not in ("auto", "pq"):
                raise InvalidParameterError(
                    f"The 'compression' parameter of QdrantEdgeSink applies to product "
                    f"quantization only ('auto' or 'pq'). Got compression={compression!r} with "
                    f"quantization={quantization!r}.")
        self.quantization, self.compression = quantization, compression
        self.keep_previous, self.store_codes, self.on_disk = keep_previous, store_codes, on_disk
        own = "QdrantEdgeSink"
        self.upsert_batch = check_int(upsert_batch, "upsert_batch", low=1, owner=own)
        self.workers = check_int(workers, "workers", low=1, high=64, owner=own)
        self.indexing_threshold_kb = check_int(indexing_threshold_kb, "indexing_threshold_kb",
                                               low=1, owner=own)
        self.hnsw = (check_int(hnsw_m, "hnsw_m", low=2, owner=own),
                     check_int(hnsw_ef_construct, "hnsw_ef_construct", low=4, owner=own))
        self.staging: str | None = None
        self.previous: str | None = None
        self.shard = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    # -- staging areas
    def staging_ref(self) -> dict:
        return {"path": self.staging}

    def discard_staging(self, ref: dict) -> None:
        p = ref.get("path")
        if p and os.path.dirname(os.path.abspath(p)) == os.path.dirname(self.path) and \
                os.path.basename(p).startswith(f".{os.path.basename(self.path)}.tldr-staging-"):
            discard_staging_dir(ref)

    def _create(self) -> None:
        e = _edge()
        lay, path = self.layout, self.path
        if os.path.lexists(path):
            prev = published_version(path)
            if prev is None:
                raise TargetExistsError(
                    f"Target '{self.uri}' exists and is not a tldr-index Qdrant Edge target (a "
                    f"symlink to a .{os.path.basename(path)}.tldr-v<n> version); refusing to "
                    f"replace it even with overwrite=True (nothing was written).")
            if not self.overwrite:
                raise TargetExistsError(
                    f"Target '{self.uri}' already exists (version "
                    f"'{os.path.basename(prev)}'). Pass overwrite=True to replace it.")
            self.previous = prev
        vt = self.schema.field(lay.vector_column).type
        d = vt.list_size
        self._vector_bytes = (d, 2 if vt.value_type == pa.float16() else 4)
        code_bytes = self.schema.field(lay.codes_column).type.list_size \
            if lay.codes_column else None
        quant = quantization_config(self.quantization, d, code_bytes, self.compression)
        params = e.EdgeVectorParams(
            size=d, distance={"l2": e.Distance.Euclid, "cosine": e.Distance.Cosine,
                              "ip": e.Distance.Dot}[lay.distance], on_disk=self.on_disk,
            datatype=e.VectorStorageDatatype.Float16 if vt.value_type == pa.float16() else None)
        cfg = e.EdgeConfig(vectors={"": params}, quantization_config=quant,
                           hnsw_config=e.HnswIndexConfig(m=self.hnsw[0],
                                                         ef_construct=self.hnsw[1],
                                                         full_scan_threshold=1),
                           optimizers=e.EdgeOptimizersConfig(
                               indexing_threshold=self.indexing_threshold_kb))
        parent, name = os.path.split(path)
        os.makedirs(parent, exist_ok=True)
        self.staging = os.path.join(parent, f".{name}.tldr-staging-{uuid.uuid4().hex[:8]}")
        self.shard = e.EdgeShard.create(self.staging, cfg)
        self._string_ids = not pa.types.is_integer(self.schema.field(lay.id_column).type)
        self._json_cols = [f.name for f in self.schema
                           if (f.metadata or {}).get(au.JSON_FIELD_KEY) == b"1"]
        self._payload_cols = [c for c in self.schema.names
                              if c not in (lay.id_column, lay.vector_column, lay.codes_column)]
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edge-upsert")
        log.info("Staging %s in %s (size %d, %s, quantization %s).", self.uri, self.staging, d,
                 lay.distance, self.quantization)

    def points(self, batch: pa.RecordBatch) -> list:
        """The ``qdrant_edge.Point`` s of one batch (ids mapped by :func:`point_id`)."""
        Point = _edge().Point
        lay = self.layout
        raw_ids = batch.column(lay.id_column).to_pylist()
        pids = raw_ids if not self._string_ids and (not raw_ids or min(raw_ids) >= 0) \
            else [point_id(i) for i in raw_ids]
        vecs = au.vectors_to_numpy(batch.column(lay.vector_column)).astype(np.float32).tolist()
        payloads = payload_dicts(batch, self._payload_cols, self._json_cols)
        if self._string_ids:
            for pl, v in zip(payloads, raw_ids):
                pl[lay.id_column] = v
        if self.store_codes and lay.codes_column:
            col = batch.column(lay.codes_column)
            m = col.type.list_size
            flat = col.values.slice(col.offset * m, len(col) * m).to_numpy().reshape(len(col), m)
            for pl, row in zip(payloads, flat):
                pl[lay.codes_column] = base64.b64encode(row.tobytes()).decode("ascii")
        return [Point(i, v, pl) for i, v, pl in zip(pids, vecs, payloads)]

    def upsert_points(self, points: list) -> None:
        """Hand ``points`` to the engine in ``upsert_batch`` chunks, ``workers`` in flight."""
        op = _edge().UpdateOperation.upsert_points
        for s in range(0, len(points), self.upsert_batch):
            while len(self._pending) >= self.workers:
                self._pending.pop(0).result()
            part = points[s:s + self.upsert_batch]
            self._pending.append(self._pool.submit(self.shard.update, op(part)))

    def _drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def _append(self, batch: pa.RecordBatch) -> None:
        self.upsert_points(self.points(batch))

    def _store_model(self, model_bytes: bytes, metadata: dict) -> None:
        self._drain()
        rec = build_record(self.layout, model_bytes, metadata, model_file=MODEL_FILE)
        rec["qdrant_edge"] = {"string_ids": self._string_ids, "quantization": self.quantization,
                              "vector_name": "",
                              "store_codes": bool(self.store_codes)}
        with open(os.path.join(self.staging, MODEL_FILE), "wb") as fh:
            fh.write(model_bytes)
        with open(os.path.join(self.staging, RECORD_FILE), "w") as fh:
            fh.write(dump_record(rec))

    def _verify(self, expected_count: int, expected_ids_digest: str | None) -> None:
        from tldr_index.errors import VerificationError

        self._drain()
        self.shard.flush()
        self.shard.optimize()  # HNSW graph and quantized codes of every segment
        self.shard.flush()
        info = self.shard.info()
        self._close_shard()
        t = QdrantEdgeTarget(self.staging, uri=self.uri, version_dir=self.staging)
        try:
            digest = None
            if expected_ids_digest is not None:
                d = IdDigest()
                for ids in t.iter_ids():
                    d.update(ids)
                digest = d.hexdigest()
            verify_counts(self.uri, expected_count, t.count(), expected_ids_digest, digest)
        finally:
            release_shard(t.real)
        d, value_bytes = self._vector_bytes
        if info.indexed_vectors_count < info.points_count and \
                info.points_count * d * value_bytes >= 1024 * self.indexing_threshold_kb:
            raise VerificationError(
                f"Staged target '{self.uri}' must have every vector indexed after optimize. Got "
                f"{info.indexed_vectors_count} of {info.points_count}.")

    def _publish(self) -> None:
        n = 1 + max(version_dirs(self.path), default=0)
        parent, name = os.path.split(self.path)
        vdir = os.path.join(parent, f".{name}.tldr-v{n}")
        os.rename(self.staging, vdir)
        switch_link(self.path, vdir)
        log.info("%s now points at %s (was %s).", self.path, vdir, self.previous)
        if self.previous is not None and not self.keep_previous:
            release_shard(self.previous)
            shutil.rmtree(self.previous, ignore_errors=True)

    def _close_shard(self) -> None:
        if self._pool is not None:
            try:
                self._drain()
            finally:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self.shard is not None:
            sh, self.shard = self.shard, None
            sh.close()

    def _abort(self) -> None:
        try:
            self._close_shard()
        except Exception as exc:  # the staging directory goes anyway
            log.warning("Closing staging shard %s failed: %s", self.staging, exc)
        if self.staging:
            release_shard(os.path.realpath(self.staging))
            shutil.rmtree(self.staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ target

class QdrantEdgeTarget(Target):
    """A published target (the symlink's version) or, with ``version_dir=``, a staged shard."""

    kind = KIND
    normalizes_cosine = True

    def __init__(self, path: str, *, uri: str, version_dir: str | None = None):
        self.uri, self.path = uri, os.path.abspath(path)
        if version_dir is None:
            if not os.path.lexists(self.path):
                raise SourceNotFoundError(
                    f"Qdrant Edge target '{uri}' not found: no shard at '{self.path}'.")
            check_shard(self.path, uri)
        self.real = os.path.realpath(version_dir or self.path)
        rec_path = os.path.join(self.real, RECORD_FILE)
        text = open(rec_path).read() if os.path.isfile(rec_path) else None
        self.record = load_record(text, f"target '{uri}'")
        try:
            with open(os.path.join(self.real, self.record["model"].get("file", MODEL_FILE)),
                      "rb") as fh:
                data = fh.read()
        except OSError:
            raise ModelFormatError(f"The model file of target '{uri}' is missing.") from None
        self.model_bytes = check_model(data, self.record, f"target '{uri}'")
        q = self.record.get("qdrant_edge", {})
        self._string_ids = bool(q.get("string_ids"))
        self._store_codes = bool(q.get("store_codes"))
        self._vname = str(q.get("vector_name", ""))  # "": the unnamed vector

    @property
    def shard(self):
        return shard_at(self.real, self.uri)

    def disk_bytes(self) -> int:
        """Allocated bytes of the live version directory (shard files, record, model; see
        :func:`allocated_bytes`); versions kept for rollback are not counted."""
        return allocated_bytes(self.real)

    def count(self) -> int:
        return int(self.shard.count(_edge().CountRequest(exact=True)))

    def _ids(self, recs) -> pa.Array:
        if self._string_ids:
            return pa.array([r.payload[self.layout.id_column] for r in recs], type=pa.string())
        return pa.array([r.id for r in recs], type=pa.int64())

    def iter_ids(self, batch_rows: int = 8192) -> Iterator[pa.Array]:
        """Original ids only (no vectors)."""
        sel = [self.layout.id_column] if self._string_ids else False
        for recs in _scroll(self.shard, batch_rows, sel, False):
            yield self._ids(recs)

    def ids(self) -> pa.Array:
        parts = list(self.iter_ids())
        return pa.concat_arrays(parts) if parts else pa.array([], type=self.id_type())

    def id_type(self) -> pa.DataType:
        return pa.string() if self._string_ids else pa.int64()

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Batches of id, vector (float32) and ``payload`` (JSON text, id key removed)."""
        lay = self.layout
        for recs in _scroll(self.shard, batch_rows, True, [self._vname]):
            X = np.asarray([_vec(r, self._vname) for r in recs], dtype=np.float32)
            payloads = []
            for r in recs:
                pl = dict(r.payload or {})
                if self._string_ids:
                    pl.pop(lay.id_column, None)
                payloads.append(json.dumps(pl, sort_keys=True))
            yield pa.RecordBatch.from_arrays(
                [self._ids(recs), au.numpy_to_fsl(X), pa.array(payloads, type=pa.string())],
                names=[lay.id_column, lay.vector_column, "payload"])

    def search(self, query: np.ndarray, k: int = 10, *, hnsw_ef: int | None = None,
               exact: bool = False, rescore: bool = True, oversampling: float | None = None,
               ignore_quantization: bool = False, **options: Any) -> pa.Table:
        """HNSW (``exact=False``) search of the reduced vectors through the shard's quantization,
        rescored with the stored vectors unless ``rescore=False``; ``_distance``: Euclid distance,
        1 - cosine, -dot. Cost: one engine query."""
        e = _edge()
        if options:
            raise InvalidParameterError(
                f"QdrantEdgeTarget.search takes hnsw_ef, exact, rescore, oversampling and "
                f"ignore_quantization. Got {', '.join(sorted(options))}.")
        lay = self.layout
        q = np.asarray(query, dtype=np.float32).reshape(-1).tolist()
        params = e.SearchParams(hnsw_ef=hnsw_ef, exact=bool(exact),
                                quantization=e.QuantizationSearchParams(
                                    ignore=bool(ignore_quantization), rescore=bool(rescore),
                                    oversampling=oversampling))
        sel = [lay.id_column] if self._string_ids else False
        res = self.shard.query(e.QueryRequest(query=e.Query.Nearest(q, using=self._vname),
                                              limit=int(k), with_payload=sel, params=params))
        score = np.array([r.score for r in res], dtype=np.float32)
        dist = {"l2": score, "cosine": 1.0 - score, "ip": -score}[lay.distance]
        return pa.table({lay.id_column: self._ids(res),
                         "_distance": pa.array(dist, type=pa.float32())})

    def fetch_vectors(self, ids: pa.Array) -> tuple[list, np.ndarray]:
        if len(ids) == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        name = self._vname
        recs = self.shard.retrieve([point_id(v) for v in ids.to_pylist()], self._string_ids,
                                   [name])
        if not recs:
            return [], np.empty((0, 0), dtype=np.float32)
        found = self._ids(recs).to_pylist()
        X = np.asarray([_vec(r, name) for r in recs], dtype=np.float32)
        return found, X.reshape(len(found), -1)

    # -- versions, delta, rollback
    def current_handle(self) -> dict:
        return {"kind": KIND, "version": os.path.basename(self.real)}

    def keep_previous_options(self) -> dict:
        return {"keep_previous": True}

    def prune_versions(self, keep: Sequence[dict] = ()) -> None:
        names = {os.path.basename(self.real), *[h.get("version") for h in keep]}
        live = published_version(self.path)
        for _, vdir in version_dirs(self.path).items():
            if os.path.basename(vdir) not in names and os.path.realpath(vdir) != live:
                release_shard(os.path.realpath(vdir))
                shutil.rmtree(vdir, ignore_errors=True)

    def apply_delta(self, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                    expected_count: int, expected_digest: str | None,
                    batch_rows: int = DEFAULT_BATCH_ROWS,
                    staged: Callable[[dict], None] | None = None) -> dict:
        """A new version: kept points copied, new rows upserted, optimized, verified, switched."""
        lay = self.layout
        drop = set(delete_ids.to_pylist()) | set(rows.column(lay.id_column).to_pylist())
        old = self.current_handle()
        sink = QdrantEdgeSink(self.path, uri=self.uri, keep_previous=True,
                              quantization=self.record.get("qdrant_edge", {}).get(
                                  "quantization", "auto"))
        with sink:
            sink.create(rows.schema, id_column=lay.id_column, vector_column=lay.vector_column,
                        distance=lay.distance, codes_column=lay.codes_column
                        if lay.codes_column in rows.schema.names else None, overwrite=True)
            if staged is not None:
                staged(sink.staging_ref())
            Point = _edge().Point
            for recs in _scroll(self.shard, max(batch_rows, 1), True, [self._vname]):
                ids = self._ids(recs).to_pylist()
                keep = [Point(r.id, r.vector, r.payload) for r, i in zip(recs, ids)
                        if i not in drop]
                if keep:
                    sink.upsert_points(keep)
            for b in rows.to_batches(max_chunksize=batch_rows):
                sink.append(b)
            sink.store_model(self.model_bytes, metadata)
            sink.verify(expected_count, expected_digest)
            fault_point("reindex:rows-written")  # new version staged and verified, not switched
            sink.publish()
        self.prune_versions(keep=[old, {"version": os.path.basename(
            os.path.realpath(self.path))}])
        return old

    def _rollback_to(self, handle: dict) -> dict:
        """Point the symlink back at the handle's version directory (one ``rename``)."""
        vdir = os.path.join(os.path.dirname(self.path), str(handle.get("version")))
        if not (str(handle.get("version", "")).startswith(f".{os.path.basename(self.path)}"
                                                          f".tldr-v")
                and os.path.isfile(os.path.join(vdir, RECORD_FILE))):
            raise InvalidInputError(
                f"The previous version '{handle.get('version')}' of target '{self.uri}' is gone; "
                f"cannot roll back.")
        left = {"kind": KIND, "version": os.path.basename(os.path.realpath(self.path))}
        switch_link(self.path, vdir)
        return left


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

