"""Lance datasets and LanceDB tables (a LanceDB table ``t`` in db dir ``db`` *is* the Lance dataset
``db/t.lance``, so one implementation serves both; reads go through pylance directly).

Target layout: the source ids, the payload columns, the reduced vectors under the source's vector
column name (FixedSizeList<float32|float16>), the PQ codes, and a vector index that carries the
target's metric, so that LanceDB's own ``table.search(z)`` ranks by it without ``distance_type``
(LanceDB uses the index metric, and l2 without an index; see ``LanceSink.index_options_for``):
below ``index_min_rows`` (default 100,000) a cosine/dot target gets a one-partition ``IVF_FLAT``
(a flat scan, exact distances) and an l2 target none; from there ``IVF_FLAT`` with one partition
per ``index_rows_per_partition`` (4,096) rows, so LanceDB's default nprobes (20) keeps recall@10
close to a flat scan (benchmarks/store_query.py; ``.nprobes(64)`` for more), built one fragment
at a time (:mod:`connectors.lance_index`: memory one fragment, not the whole column).

Model storage: a content-addressed sidecar ``_tldr/model-<sha256[:16]>.safetensors`` inside the
dataset directory; the schema metadata key ``tldr_index`` holds a small JSON record (layout, model
sha256/size/file, the engine's metadata). Schema metadata is copied into every manifest, so the
model bytes stay out of it; older versions keep pointing at their own sidecar.

Atomic publish:

* new target: fragments are written and committed in a staging dataset
  ``<parent>/.<name>.tldr-staging-<hex>`` (not a ``*.lance`` name, so LanceDB does not list it),
  verified, indexed, then ``os.rename``-d to ``<name>.lance``: readers see no table, then the
  whole table with its index.
* overwrite: the staged data files and sidecar are moved into the existing dataset and committed
  there as one ``Overwrite`` version (data + schema + record together; older versions stay for
  ``checkout``/rollback). Only a dataset holding a ``tldr_index`` record is ever replaced, so a
  source table can never be overwritten by mistake. The index is then added as the next version: between the two commits
  readers see all rows and the new model, searched by a flat scan.

Delta (:meth:`LanceTarget.apply_delta`): one ``merge_insert`` commit on the live dataset (update
matched ids, insert new ones, delete the deleted ones), then the record (schema metadata) as the
next version; rows and model are consistent in both. The previous version is the one before (Lance
keeps it); rollback ``restore()``-s it as a new version. The vector index stays; new rows are
scanned flat until a refit rebuilds it. In-place upserts (:meth:`LanceTarget.upsert`) are one
``merge_insert`` commit per batch, retried on commit conflicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import write_fragments

from tldr_index.faults import fault_point
from tldr_index.validation import check_int
from tldr_index.artifact import atomic_write_bytes
from tldr_index.errors import (InvalidInputError, ModelFormatError, SourceNotFoundError,
                               TargetExistsError, VerificationError)

from . import arrow_utils as au
from .base import DEFAULT_BATCH_ROWS, DISTANCES, Piece, Sink, Source, Target, verify_counts
from .lance_index import build_vector_index
from .filestore import discard_staging_dir, file_bytes, take_by_filter, take_found_by_filter
from .record import (RECORD_KEY, artifact_entry, build_record, check_artifact_name,
                     check_model, dump_record, load_record, read_artifact, updated_record_text)

log = logging.getLogger(__name__)

#: k-means of the multi-partition IVF_FLAT index: 64 training rows per partition (Lance's
#: default 256) and 10 iterations (default 50). Measured once (issue 17, a one-off script) on a
#: 1M x 64 float16 cosine target of benchmarks/shrink.py (244 partitions): build 16.0 -> 4.5 s
#: wall (8.6 -> 4.3 CPU s) on the shared 2-core machine, and LanceDB's recall@10 at nprobes 20
#: against exact search of the reduced vectors 0.9995 with both (200 rows as queries).
IVF_KMEANS = {"sample_rate": 64, "max_iters": 10}

#: read-ahead bound of a source scan (Lance's default is 2 GiB, so a consumer slower than the reads
#: let the buffered bytes grow with the source). ``python benchmarks/shrink.py --corpus
#: ../shared/data/pydoc-minilm.npz --rows 250000,1000000 --methods tldr --configs new
#: --exhaustive``: the shrink process's peak RSS after the scan stage 0.82 / 1.00 GB with Lance's
#: default, 0.72 / 0.75 GB with this bound (a scan with a 1 MiB bound still streams: the bound
#: applies back-pressure, it cannot stall a scan)
SCAN_IO_BUFFER_BYTES = 64 << 20

LANCE_METRIC = {"cosine": "cosine", "l2": "l2", "ip": "dot"}
FROM_LANCE_METRIC = {"cosine": "cosine", "l2": "l2", "euclidean": "l2", "dot": "ip"}
SIDE_DIR = "_tldr"


def is_dataset(path: str) -> bool:
    """A directory with a ``_versions`` folder (cheap, no manifest read)."""
    return os.path.isdir(os.path.join(path, "_versions"))


def dataset_names(db: str) -> list[str]:
    """Names (without ``.lance``) of the Lance datasets in the LanceDB directory ``db``, sorted;
    ``[]`` when it is not a directory. Cost: one directory listing and a ``stat`` per entry."""
    if not os.path.isdir(db):
        return []
    return [n[:-6] for n in sorted(os.listdir(db))
            if n.endswith(".lance") and is_dataset(os.path.join(db, n))]


def _missing(path: str, table: str, db: str, uri: str) -> SourceNotFoundError:
    if table:
        tables = sorted(n[:-6] for n in os.listdir(db) if n.endswith(".lance")) \
            if os.path.isdir(db) else []
        where = f"LanceDB database '{db}'" + ("" if os.path.isdir(db) else " (no such directory)")
        return SourceNotFoundError(
            f"LanceDB table '{table}' not found in {where}. Existing tables: "
            f"{', '.join(tables) or 'none'}.")
    return SourceNotFoundError(f"Lance dataset '{path}' not found (source '{uri}').")


def _index_metric(ds: lance.LanceDataset, column: str) -> str | None:
    """Distance of an existing vector index on ``column``, if any (from the index description,
    which does not load the centroids)."""
    try:
        for idx in ds.describe_indices():
            metric = str((idx.details or {}).get("metric_type", "")).lower()
            if column in idx.field_names and metric:
                return FROM_LANCE_METRIC.get(metric)
    except Exception as exc:  # index introspection is best effort
        log.debug("Could not read the index metric of %s: %s", column, exc)
    return None


def dataset_bytes(ds: lance.LanceDataset, path: str) -> int:
    """Bytes of one version of a Lance dataset: its data and deletion files, its indices and the
    tldr-index sidecar (other versions, kept for rollback, are not counted)."""
    total = 0
    for frag in ds.get_fragments():
        for df in frag.data_files():
            total += df.file_size_bytes or file_bytes(os.path.join(path, "data", df.path))
        dele = frag.metadata.deletion_file
        if dele is not None:  # pylance 14: path(fragment_id) -> "_deletions/<file>"
            rel = dele.path(frag.fragment_id) if callable(dele.path) else dele.path
            total += file_bytes(os.path.join(path, rel))
    for idx in ds.list_indices():
        uuid_ = idx.get("uuid") if isinstance(idx, dict) else None
        if uuid_ and os.path.isdir(os.path.join(path, "_indices", str(uuid_))):
            total += file_bytes(os.path.join(path, "_indices", str(uuid_)))
    side = os.path.join(path, SIDE_DIR)
    return total + (file_bytes(side) if os.path.isdir(side) else 0)


def disk_bytes_at(path: str) -> int | None:
    """:func:`dataset_bytes` of the latest version at ``path``; None if no dataset is there."""
    return dataset_bytes(lance.dataset(path), path) if is_dataset(path) else None


# ------------------------------------------------------------------------------------------ source

class LanceSource(Source):
    """Rows of a Lance dataset pinned at one version (so repeated passes see the same data).

    Batches come from ``ds.to_batches(batch_size=batch_rows)`` in dataset order; they never span
    two data files, so expect short tail batches. Memory: one batch plus at most
    :data:`SCAN_IO_BUFFER_BYTES` read ahead.
    """

    def __init__(self, path: str, *, uri: str, table: str = "", db: str = "",
                 vector_column: str | None = None, id_column: str | None = None,
                 payload_columns: Sequence[str] | None = None, distance: str | None = None,
                 version: int | str | None = None):
        if not is_dataset(path):
            raise _missing(path, table, db, uri)
        self.uri, self.path = uri, path
        self._ds = lance.dataset(path, version=version)
        schema = self._ds.schema
        self._bind_columns(schema, vector_column, id_column, payload_columns)
        vt = schema.field(self.vector_column).type
        self.value_type = au.vector_storage_type(vt.value_type)
        self._check_not_empty()
        dim = vt.list_size if pa.types.is_fixed_size_list(vt) else au.vector_dim(
            self._ds.head(1, columns=[self.vector_column]).column(0))
        self.dim = int(dim or 0)
        if distance is None:
            distance = _index_metric(self._ds, self.vector_column) or "l2"
        from tldr_index.validation import check_choice
        self.distance = check_choice(distance, "distance", DISTANCES, owner="LanceSource")

    @property
    def version(self) -> int:
        return self._ds.version

    def count(self) -> int:
        return self._ds.count_rows()

    def fingerprint(self) -> dict:
        return {"kind": "lance", "path": os.path.abspath(self.path), "version": self._ds.version,
                "rows": self.count()}

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        cols = [self.id_column, self.vector_column, *self.payload_columns]
        yield from self._ds.to_batches(columns=cols, batch_size=batch_rows, scan_in_order=True,
                                       io_buffer_size=SCAN_IO_BUFFER_BYTES)

    def pieces(self, rows_per_piece: int) -> list[Piece]:
        """Ranges within each fragment (``("lance", fragment_id, offset, rows)``), in scan order.
        Cost: one row count per fragment (metadata, plus its deletion file if any)."""
        rows_per_piece = check_int(rows_per_piece, "rows_per_piece", low=1, owner="LanceSource")
        out: list[Piece] = []
        start = 0
        for frag in self._ds.get_fragments():
            n = frag.count_rows()
            for off in range(0, n, rows_per_piece):
                rows = min(rows_per_piece, n - off)
                out.append(Piece(len(out), start, rows, ("lance", frag.fragment_id, off, rows)))
                start += rows
        return out

    def _raw_piece_batches(self, piece: Piece, batch_rows: int) -> Iterator[pa.RecordBatch]:
        _, fragment_id, offset, rows = piece.locator
        cols = [self.id_column, self.vector_column, *self.payload_columns]
        yield from self._ds.get_fragment(fragment_id).to_batches(
            columns=cols, batch_size=batch_rows, offset=offset, limit=rows,
            io_buffer_size=SCAN_IO_BUFFER_BYTES)

    def read_rows(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Cost: one random-access ``take`` (rows at ``positions`` of this version, deletions
        skipped)."""
        return self._ds.take(np.asarray(positions, dtype=np.int64).tolist(), columns=list(columns))

    def _scan_ids(self, expr):
        return self._ds.to_batches(columns=[self.id_column, self.vector_column], filter=expr)

    def take(self, ids: Sequence | np.ndarray | pa.Array, chunk: int = 4096) -> np.ndarray:
        """Cost: one filtered scan per ``chunk`` ids (fast with a BTREE scalar index on the id)."""
        return take_by_filter(self._scan_ids, ids, self, chunk)

    def take_found(self, ids: Sequence | np.ndarray | pa.Array,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Cost: as :meth:`take`."""
        return take_found_by_filter(self._scan_ids, ids, self, chunk)

    def ray_read(self, columns: Sequence[str]) -> tuple[Any, int]:
        """``ray.data.read_lance`` at the pinned version; one read task per fragment."""
        import ray.data

        ds = ray.data.read_lance(self.path, version=self.version, columns=list(columns))
        return ds, len(self._ds.get_fragments())

    def disk_bytes(self) -> int:
        """Bytes of the pinned version (see :func:`dataset_bytes`)."""
        return dataset_bytes(self._ds, self.path)


# -------------------------------------------------------------------------------------------- sink

def default_sub_vectors(d: int, code_bytes: int | None = None) -> int:
    """PQ sub-vectors of the Lance index: the engine's code width when it divides ``d``, else
    ``d/16`` or ``d/8`` (Lance's SIMD-friendly choices), else the largest divisor of ``d`` <= d/8."""
    if code_bytes and d % code_bytes == 0:
        return code_bytes
    for per in (16, 8):
        if d % per == 0:
            return d // per
    return max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)


@dataclass(frozen=True)
class LanceShardWriter:
    """Writes rows as data files of a staging dataset from any process (a Ray worker); returns
    the fragments' JSON, which :meth:`LanceSink.adopt_shards` commits. Picklable."""

    staging: str
    max_rows_per_file: int

    def __call__(self, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> str:
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        frags = write_fragments(reader, self.staging, schema=schema,
                                max_rows_per_file=self.max_rows_per_file)
        return json.dumps([f.to_json() for f in frags])


class LanceSink(Sink):
    """Writes a Lance dataset / LanceDB table; see the module docstring for atomicity.

    Memory: at most ``flush_rows`` rows (or ``flush_bytes``) buffered before they are written as
    a data file of the staging dataset.
    """

    def __init__(self, path: str, *, uri: str, index_min_rows: int = 100_000,
                 flush_rows: int = 262_144, flush_bytes: int = 256 << 20,
                 max_rows_per_file: int = 1 << 20, index_options: dict | None = None,
                 index_rows_per_partition: int = 4096, index_max_partitions: int = 4096):
        super().__init__(uri)
        self.path = path.rstrip("/")
        self.index_min_rows = check_int(index_min_rows, "index_min_rows", low=1, owner="LanceSink")
        self.flush_rows = check_int(flush_rows, "flush_rows", low=1, owner="LanceSink")
        self.flush_bytes = check_int(flush_bytes, "flush_bytes", low=1, owner="LanceSink")
        self.max_rows_per_file = check_int(max_rows_per_file, "max_rows_per_file", low=1,
                                           owner="LanceSink")
        self.index_options = dict(index_options or {})
        self.index_rows_per_partition = check_int(index_rows_per_partition,
                                                  "index_rows_per_partition", low=1,
                                                  owner="LanceSink")
        self.index_max_partitions = check_int(index_max_partitions, "index_max_partitions",
                                              low=1, owner="LanceSink")
        parent, name = os.path.split(os.path.abspath(self.path))
        self._parent, self._name = parent, name
        self.staging = os.path.join(parent, f".{name}.tldr-staging-{uuid.uuid4().hex[:12]}")
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = self._buffered_bytes = 0
        self._fragments: list = []
        self._record: dict | None = None
        self._model_rel: str | None = None
        self._artifacts: dict[str, dict] = {}
        self._staged: lance.LanceDataset | None = None
        self._moved: list[str] = []
        self.indexed = False
        #: how publish built the vector index (:func:`connectors.lance_index.build_vector_index`)
        self.index_build: str | None = None

    def _create(self) -> None:
        exists = os.path.exists(self.path)
        if exists and not is_dataset(self.path) and os.listdir(self.path):
            raise TargetExistsError(
                f"Target '{self.uri}' exists and is not a Lance dataset ('{self.path}'); refusing "
                f"to write there even with overwrite=True.")
        self._replacing = exists and is_dataset(self.path)
        if self._replacing and not self.overwrite:
            raise TargetExistsError(
                f"Target '{self.uri}' already exists. Pass overwrite=True to replace it (the old "
                f"rows stay available as an older Lance version).")
        if self._replacing and RECORD_KEY.encode() not in (lance.dataset(self.path).schema.metadata
                                                           or {}):
            raise TargetExistsError(
                f"Target '{self.uri}' exists and is not a tldr-index target (no '{RECORD_KEY}' "
                f"schema metadata); refusing to replace it even with overwrite=True.")
        os.makedirs(self._parent, exist_ok=True)
        # an empty first commit makes staging a dataset, so data files are written without warnings
        lance.LanceDataset.commit(self.staging, lance.LanceOperation.Overwrite(self.schema, []))
        log.info("Staging %s in %s.", self.uri, self.staging)

    def _append(self, batch: pa.RecordBatch) -> None:
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        self._buffered_bytes += batch.nbytes
        if self._buffered_rows >= self.flush_rows or self._buffered_bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        reader = pa.RecordBatchReader.from_batches(self.schema, self._buffer)
        self._fragments += write_fragments(reader, self.staging, schema=self.schema,
                                           max_rows_per_file=self.max_rows_per_file)
        self._buffer, self._buffered_rows, self._buffered_bytes = [], 0, 0

    def adopt_fragments(self, fragments: list, rows: int) -> None:
        """Take data files written into :attr:`staging` by other processes (e.g. Ray workers calling
        ``lance.fragment.write_fragments(reader, sink.staging, schema=sink.schema)``) as the next
        rows of the target, in the order given; they are committed with the model at
        :meth:`verify`, like appended batches. ``fragments``: ``FragmentMetadata`` objects."""
        self._expect("created", "adopt_fragments")
        self._flush()
        self._fragments += list(fragments)
        self.rows_appended += int(rows)

    def shard_writer(self) -> LanceShardWriter:
        return LanceShardWriter(self.staging, self.max_rows_per_file)

    def adopt_shards(self, shards: Sequence[str], rows: int) -> None:
        """Commit the fragments of :class:`LanceShardWriter` shards (see
        :meth:`adopt_fragments`)."""
        from lance.fragment import FragmentMetadata

        self.adopt_fragments([FragmentMetadata.from_json(json.dumps(j)) for s in shards
                              for j in json.loads(s)], rows)

    def staging_ref(self) -> dict:
        return {"path": self.staging}

    def discard_staging(self, ref: dict) -> None:
        discard_staging_dir(ref)

    supports_artifacts = True

    def _store_artifact(self, name: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{SIDE_DIR}/{name}-{sha[:16]}.bin"
        atomic_write_bytes(os.path.join(self.staging, rel), data)
        self._artifacts[name] = artifact_entry(data, rel)

    def _store_model(self, model_bytes: bytes, metadata: dict) -> None:
        sha = hashlib.sha256(model_bytes).hexdigest()
        rel = f"{SIDE_DIR}/model-{sha[:16]}.safetensors"
        atomic_write_bytes(os.path.join(self.staging, rel), model_bytes)
        self._model_rel = rel
        self._record = build_record(self.layout, model_bytes, metadata, model_file=rel,
                                    artifacts=self._artifacts)

    def _verify(self, expected_count: int, expected_ids_digest: str | None) -> None:
        self._flush()
        meta = dict(self.schema.metadata or {})
        meta[RECORD_KEY.encode()] = dump_record(self._record).encode()
        op = lance.LanceOperation.Overwrite(self.schema.with_metadata(meta), self._fragments)
        self._staged = lance.LanceDataset.commit(self.staging, op, read_version=1)
        got = None
        if expected_ids_digest:
            got = self._digest_ids([("lance", self.staging, self._staged.version, f.fragment_id)
                                    for f in self._staged.get_fragments()])
        verify_counts(self.uri, expected_count, self._staged.count_rows(),
                      expected_ids_digest, got)
        _read_model(self.staging, load_record(self._staged.schema.metadata.get(
            RECORD_KEY.encode()), self.uri), self.uri)

    def index_options_for(self, n: int) -> dict | None:
        """The vector index ``publish`` builds for ``n`` rows (``None``: no index).

        The index carries the target's metric, so LanceDB's own ``table.search(z)`` (which uses the
        index metric when no ``distance_type`` is given, and l2 otherwise) ranks by the target's
        distance. Below ``index_min_rows`` a non-l2 target gets a one-partition ``IVF_FLAT``: a flat
        scan with exact distances whose only job is to hold the metric (cost: a second copy of the
        reduced vectors, ``n * d * itemsize`` bytes). From ``index_min_rows`` on: ``IVF_FLAT`` with
        ``n // index_rows_per_partition`` partitions (at most ``index_max_partitions``), so
        LanceDB's default ``nprobes`` (20) scans about ``20 * index_rows_per_partition`` rows of
        exact distances per query; its k-means is :data:`IVF_KMEANS`. ``index_options``
        override any of these keys.
        """
        metric = LANCE_METRIC[self.layout.distance]
        if n < self.index_min_rows:
            if metric == "l2":
                return None
            return {"index_type": "IVF_FLAT", "num_partitions": 1, "metric": metric,
                    **self.index_options}
        parts = max(1, min(self.index_max_partitions, n // self.index_rows_per_partition))
        return {"index_type": "IVF_FLAT", "num_partitions": parts, "metric": metric,
                **IVF_KMEANS, **self.index_options}

    def _build_index(self, ds: lance.LanceDataset) -> None:
        n = ds.count_rows()
        opts = self.index_options_for(n)
        if opts is None:
            log.info("Skipping the vector index of %s: %d rows < index_min_rows=%d and metric l2 "
                     "(LanceDB's default).", self.uri, n, self.index_min_rows)
            return
        if opts["index_type"] == "IVF_PQ" and "num_sub_vectors" not in opts:
            d = self.schema.field(self.layout.vector_column).type.list_size
            codes = (self.schema.field(self.layout.codes_column).type.list_size
                     if self.layout.codes_column else None)
            opts["num_sub_vectors"] = default_sub_vectors(d, codes)
        log.info("Building %s index (%d partitions, metric %s) on %s.%s (%d rows).",
                 opts["index_type"], opts.get("num_partitions", 0), opts["metric"], self.uri,
                 self.layout.vector_column, n)
        try:
            self.index_build = build_vector_index(ds, self.layout.vector_column, opts)
            self.indexed = True
        except Exception as exc:  # the table is complete and searchable without it
            log.warning("Could not build the vector index of %s (%s); searches will scan.",
                        self.uri, exc)

    def _publish(self) -> None:
        if not self._replacing:
            self._build_index(self._staged)
            try:
                os.rename(self.staging, self.path)
            except OSError as exc:
                raise TargetExistsError(
                    f"Target '{self.uri}' appeared while it was being written ({exc}); nothing "
                    f"was published. Pass overwrite=True to replace it.") from None
            return
        old = lance.dataset(self.path)
        frags = [f.metadata for f in self._staged.get_fragments()]
        os.makedirs(os.path.join(self.path, "data"), exist_ok=True)
        for frag in frags:
            for df in frag.files:
                dst = os.path.join(self.path, "data", df.path)
                os.rename(os.path.join(self.staging, "data", df.path), dst)
                self._moved.append(dst)
        for rel in [self._model_rel] + [a["file"] for a in self._artifacts.values()]:
            side = os.path.join(self.path, rel)
            os.makedirs(os.path.dirname(side), exist_ok=True)
            os.replace(os.path.join(self.staging, rel), side)  # same content if it existed
        new = lance.LanceDataset.commit(
            self.path, lance.LanceOperation.Overwrite(self._staged.schema, frags),
            read_version=old.version)
        self._moved = []
        shutil.rmtree(self.staging, ignore_errors=True)
        log.info("Committed %s as version %d (previous: %d).", self.uri, new.version, old.version)
        self._build_index(new)

    def _abort(self) -> None:
        for p in self._moved:  # only on a failed overwrite commit: files no version references
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        self._moved = []
        shutil.rmtree(self.staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ target

def _read_model(root: str, record: dict, where: str) -> bytes:
    rel = record["model"].get("file")
    if not rel:
        raise ModelFormatError(f"The tldr-index record of {where} names no model file.")
    try:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelFormatError(
            f"The model file '{rel}' of {where} is missing from '{root}'.") from None
    return check_model(data, record, where)


def _sql_list(col: str, ids: pa.Array) -> str:
    vals = ids.to_pylist()
    if pa.types.is_integer(ids.type):
        body = ",".join(str(int(v)) for v in vals)
    else:
        body = ",".join("'" + str(v).replace("'", "''") + "'" for v in vals)
    return f"`{col}` IN ({body})"


def _retry_conflicts(fn: Callable[[], Any], what: str, max_retries: int = 5,
                     backoff_s: float = 0.2) -> Any:
    """Run a Lance commit, retrying commit conflicts (another writer committed first)."""
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except (OSError, RuntimeError, ValueError) as exc:
            text = str(exc).lower()
            if attempt == max_retries or not ("conflict" in text or "retry" in text):
                raise
            log.warning("%s: commit conflict (%s); retry %d/%d.", what, str(exc)[:120],
                        attempt + 1, max_retries)
            time.sleep(backoff_s * 2 ** attempt)


class LanceTarget(Target):
    """A published Lance target, optionally at an older ``version``."""

    kind = "lance"

    def __init__(self, path: str, *, uri: str, table: str = "", db: str = "",
                 version: int | str | None = None):
        if not is_dataset(path):
            raise _missing(path, table, db, uri)
        self.uri, self.path = uri, path
        self.dataset = lance.dataset(path, version=version)
        self.record = load_record((self.dataset.schema.metadata or {}).get(RECORD_KEY.encode()),
                                  f"target '{uri}'")
        self.model_bytes = _read_model(path, self.record, f"target '{uri}'")

    @property
    def version(self) -> int:
        return self.dataset.version

    def artifact(self, name: str) -> bytes | None:
        return read_artifact(self.path, self.record, name, f"target '{self.uri}'")

    def store_artifact(self, name: str, data: bytes) -> None:
        """The file under ``_tldr/`` (named by its sha256), then one commit of the record."""
        name = check_artifact_name(name)
        data = bytes(data)
        rel = f"{SIDE_DIR}/{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        live = lance.dataset(self.path)
        if live.version != self.version:
            raise VerificationError(
                f"Target '{self.uri}' changed since it was opened (version {self.version} -> "
                f"{live.version}); artifact '{name}' was not stored.")
        atomic_write_bytes(os.path.join(self.path, rel), data)
        rec = dict(self.record)
        rec["artifacts"] = {**(rec.get("artifacts") or {}), name: artifact_entry(data, rel)}
        live.update_schema_metadata({RECORD_KEY: dump_record(rec)})
        self.dataset = lance.dataset(self.path)
        self.record = rec

    def has_index(self) -> bool:
        return any(self.layout.vector_column in i.get("fields", [])
                   for i in self.dataset.list_indices())

    def count(self) -> int:
        return self.dataset.count_rows()

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        yield from self.dataset.to_batches(batch_size=batch_rows, scan_in_order=True)

    def iter_columns(self, columns: Sequence[str],
                     batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        yield from self.dataset.to_batches(columns=list(columns), batch_size=batch_rows,
                                           scan_in_order=True)

    def search(self, query: np.ndarray, k: int = 10, *, nprobes: int = 32,
               refine_factor: int | None = 10, **options: Any) -> pa.Table:
        """Lance ``nearest`` search: IVF_PQ with exact re-ranking of ``refine_factor * k`` rows when
        indexed, a flat scan otherwise. ``_distance`` is Lance's (squared L2, 1-cos or 1-dot)."""
        lay = self.layout
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        nearest = {"column": lay.vector_column, "q": q, "k": int(k), "nprobes": nprobes,
                   "metric": LANCE_METRIC[lay.distance], **options}
        if refine_factor:
            nearest["refine_factor"] = refine_factor
        return self.dataset.to_table(nearest=nearest, columns=[lay.id_column, "_distance"])

    # -- delta, versions (see the module docstring)
    def row_schema(self) -> pa.Schema:
        return self.dataset.schema.remove_metadata()

    def fetch_vectors(self, ids: pa.Array) -> tuple[list, np.ndarray]:
        if len(ids) == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        lay = self.layout
        t = self.dataset.to_table(columns=[lay.id_column, lay.vector_column],
                                  filter=pc.field(lay.id_column).isin(ids))
        if t.num_rows == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        X = au.vectors_to_numpy(t.column(1).combine_chunks()).astype(np.float32)
        return t.column(0).to_pylist(), X

    def disk_bytes(self) -> int:
        return dataset_bytes(self.dataset, self.path)

    def current_handle(self) -> dict:
        return {"kind": "lance", "version": int(self.version)}

    def upsert(self, rows: pa.Table, *, batch_rows: int = 4096, max_retries: int = 5) -> None:
        """One ``merge_insert`` commit per ``batch_rows`` rows on the live dataset, each retried
        up to ``max_retries`` times on a commit conflict."""
        lay = self.layout
        for s in range(0, rows.num_rows, batch_rows):
            part = rows.slice(s, batch_rows)
            _retry_conflicts(lambda: lance.dataset(self.path).merge_insert(lay.id_column)
                             .when_matched_update_all().when_not_matched_insert_all()
                             .execute(part), f"upsert into '{self.uri}'", max_retries)
        if self.record.get("artifacts"):  # built over the rows before: never list a stale one
            ds = lance.dataset(self.path)
            ds.update_schema_metadata({RECORD_KEY: updated_record_text(self.record,
                                                                       self.metadata)})
            self.record = {k: v for k, v in self.record.items() if k != "artifacts"}

    def apply_delta(self, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                    expected_count: int, expected_digest: str | None,
                    batch_rows: int = DEFAULT_BATCH_ROWS,
                    staged: Callable[[dict], None] | None = None) -> dict:
        """One commit of the rows (nothing is staged, so ``staged`` is not called), then one of
        the record; the row count is checked after the first (version restored if wrong)."""
        lay = self.layout
        prev = int(lance.dataset(self.path).version)
        if prev != self.version:
            raise VerificationError(
                f"Target '{self.uri}' changed while reindex was reading it (version "
                f"{self.version} -> {prev}); nothing was written. Run reindex again.")
        ds = lance.dataset(self.path)
        if rows.num_rows:
            b = ds.merge_insert(lay.id_column).when_matched_update_all() \
                .when_not_matched_insert_all()
            if len(delete_ids):
                b = b.when_not_matched_by_source_delete(_sql_list(lay.id_column, delete_ids))
            b.execute(rows.cast(ds.schema.remove_metadata()))
        elif len(delete_ids):
            ds.delete(_sql_list(lay.id_column, delete_ids))
        ds = lance.dataset(self.path)
        if ds.count_rows() != expected_count:
            got = ds.count_rows()
            lance.dataset(self.path, version=prev).restore()
            raise VerificationError(
                f"Target '{self.uri}' must hold {expected_count} rows after the update. Got "
                f"{got}; version {prev} was restored.")
        fault_point("reindex:rows-written")  # rows committed, the record not yet
        ds.update_schema_metadata({RECORD_KEY: updated_record_text(self.record, metadata)})
        log.info("Updated %s: version %d -> %d.", self.uri, prev,
                 lance.dataset(self.path).version)
        return {"kind": "lance", "version": prev}

    def _rollback_to(self, handle: dict) -> dict:
        """``restore()`` of the handle's version, as a new version."""
        here = int(lance.dataset(self.path).version)
        try:
            lance.dataset(self.path, version=int(handle["version"])).restore()
        except (ValueError, OSError) as exc:
            raise InvalidInputError(
                f"Version {handle['version']} of target '{self.uri}' is gone ({exc}); cannot "
                f"roll back.") from None
        return {"kind": "lance", "version": here}
