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
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from tldr_index.errors import (InvalidInputError, InvalidParameterError, ModelFormatError,
                               SourceNotFoundError, TargetExistsError)
from tldr_index.faults import fault_point
from tldr_index.validation import check_choice, check_int

from . import arrow_utils as au
from .base import DEFAULT_BATCH_ROWS, Sink, Target, verify_counts
from .filestore import discard_staging_dir
from .record import build_record, check_model, dump_record, load_record
from .ids import ids_digest
from .qdrant_clients import points_batch
from .qdrant_edge_source import (CONFIG_FILE, QdrantEdgeSource, allocated_bytes, check_shard,
                                 close_shards, disk_bytes_at, edge_api, release_shard,
                                 record_vector, scroll_pages, shard_at)
from .qdrant_store import point_id

log = logging.getLogger(__name__)

KIND = "qdrant-edge"
RECORD_FILE, MODEL_FILE = "tldr_index.json", "tldr_model.safetensors"
QUANTIZATIONS = ("auto", "none", "pq", "scalar", "binary", "binary1.5", "binary2", "turbo1",
                 "turbo1.5", "turbo2", "turbo4")
RATIOS = (4, 8, 16, 32, 64)
__all__ = ["QdrantEdgeSource", "QdrantEdgeSink", "QdrantEdgeTarget", "close_shards",
           "release_shard", "disk_bytes_at", "CONFIG_FILE"]


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
    e = edge_api()
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
    points are built (qdrant-edge-py 0.9 holds the GIL while it writes, so 1 is as fast as more:
    ``benchmarks/qdrant_edge_write.py``); ``indexing_threshold_kb``: the
    engine's threshold below which a segment is not indexed (1: HNSW is built unless the vectors
    take under 1 KB, which the engine then searches exactly); ``hnsw_m``, ``hnsw_ef_construct``,
    ``hnsw_threads`` (the engine's ``max_indexing_threads``, 0: its own choice): the HNSW graph
    that ``verify`` builds (its ``optimize`` is most of a write's time:
    ``benchmarks/qdrant_edge_write.py``)."""

    def __init__(self, path: str, *, uri: str, quantization: str = "auto",
                 compression: str | None = None, keep_previous: bool = False,
                 upsert_batch: int = 32768, workers: int = 1, store_codes: bool = False,
                 on_disk: bool | None = None, indexing_threshold_kb: int = 1,
                 hnsw_m: int = 16, hnsw_ef_construct: int = 100, hnsw_threads: int = 0):
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
                     check_int(hnsw_ef_construct, "hnsw_ef_construct", low=4, owner=own),
                     check_int(hnsw_threads, "hnsw_threads", low=0, high=1024, owner=own))
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
        e = edge_api()
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
                                                         full_scan_threshold=1,
                                                         max_indexing_threads=self.hnsw[2]),
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
        Point = edge_api().Point
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
        op = edge_api().UpdateOperation.upsert_points
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
            digest = None if expected_ids_digest is None else ids_digest(t.iter_ids())
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
        return int(self.shard.count(edge_api().CountRequest(exact=True)))

    def _ids(self, recs) -> pa.Array:
        if self._string_ids:
            return pa.array([r.payload[self.layout.id_column] for r in recs], type=pa.string())
        return pa.array([r.id for r in recs], type=pa.int64())

    def iter_ids(self, batch_rows: int = 8192) -> Iterator[pa.Array]:
        """Original ids only (no vectors)."""
        sel = [self.layout.id_column] if self._string_ids else False
        for recs in scroll_pages(self.shard, batch_rows, sel, False):
            yield self._ids(recs)

    def ids(self) -> pa.Array:
        parts = list(self.iter_ids())
        return pa.concat_arrays(parts) if parts else pa.array([], type=self.id_type())

    def id_type(self) -> pa.DataType:
        return pa.string() if self._string_ids else pa.int64()

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Batches of id, vector (float32) and ``payload`` (JSON text, id key removed)."""
        lay = self.layout
        for recs in scroll_pages(self.shard, batch_rows, True, [self._vname]):
            yield points_batch(self._ids(recs), [record_vector(r, self._vname) for r in recs],
                               [r.payload for r in recs], lay.id_column, lay.vector_column,
                               self._string_ids)

    def search(self, query: np.ndarray, k: int = 10, *, hnsw_ef: int | None = None,
               exact: bool = False, rescore: bool = True, oversampling: float | None = None,
               ignore_quantization: bool = False, **options: Any) -> pa.Table:
        """HNSW (``exact=False``) search of the reduced vectors through the shard's quantization,
        rescored with the stored vectors unless ``rescore=False``; ``_distance``: Euclid distance,
        1 - cosine, -dot. Cost: one engine query."""
        e = edge_api()
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
        X = np.asarray([record_vector(r, name) for r in recs], dtype=np.float32)
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
            Point = edge_api().Point
            for recs in scroll_pages(self.shard, max(batch_rows, 1), True, [self._vname]):
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
