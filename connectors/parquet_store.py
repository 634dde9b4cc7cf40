"""Parquet: a file, a glob or a directory of files as a source; a directory of part files as a
target.

Reading: one file after another with ``ParquetFile.iter_batches(batch_size=batch_rows)``; memory is
one row group plus one batch. ``list<float>`` vector columns are checked for a constant length and
flattened; ``fixed_size_list`` columns convert to numpy without a copy. Every file must have the
columns of the first one (payload types are cast to the first file's types).

Target directory (``parquet://out/``)::

    out/part-00000.parquet ...      ids, payload, reduced vectors, PQ codes (rows_per_file rows each)
    out/_tldr_model.safetensors     the model, byte for byte
    out/_tldr_metadata.json         the JSON record (layout, model sha256, the engine's metadata)

The model and record are sidecars rather than Parquet footer metadata: part files are closed as they
roll over, before the model exists, and Arrow/Spark/DuckDB dataset readers skip ``_``-prefixed files.

Atomic publish: everything is written to ``<parent>/.<name>.tldr-staging-<hex>/`` and renamed onto
``out`` (``rename(2)`` replaces a missing or empty directory atomically). Replacing an existing
target swaps the two directories with ``renameat2(RENAME_EXCHANGE)`` (Linux) and then deletes the old
one (or, with ``keep_previous=True``, keeps it as ``<parent>/.<name>.tldr-previous`` for a
rollback); where that call is unavailable, two renames leave ``out`` missing for a moment. Only a
directory holding ``_tldr_metadata.json`` is ever replaced.

Delta (:meth:`ParquetTarget.apply_delta`): the kept rows plus the new ones are staged in a new
directory and exchanged with the live one; the old directory stays as ``.<name>.tldr-previous``
(:func:`previous_dir`), which a rollback exchanges back. Cost: one pass over the target (the reduced
rows are small). There are no in-place writes: :meth:`ParquetTarget.upsert` is such a delta.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from tldr_index.faults import fault_point
from tldr_index.validation import check_choice, check_int
from tldr_index.artifact import atomic_write_bytes
from tldr_index.errors import (InvalidInputError, ModelFormatError, SourceNotFoundError,
                               TargetExistsError, VerificationError)

from . import arrow_utils as au
from .base import DEFAULT_BATCH_ROWS, DISTANCES, Piece, Sink, Source, Target, verify_counts
from .filestore import discard_staging_dir, file_bytes, take_by_filter, take_found_by_filter
from .record import artifact_entry, build_record, check_model, dump_record, load_record
from .record import check_artifact_name, read_artifact

log = logging.getLogger(__name__)

MODEL_FILE = "_tldr_model.safetensors"
RECORD_FILE = "_tldr_metadata.json"
ARTIFACT_PREFIX = "_tldr_artifact-"  # + name + ".bin": what Sink.store_artifact stages


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_parquet_files(path: str, uri: str) -> list[str]:
    """Files named by a file path, a glob or a directory (recursive; ``.``/``_`` names skipped)."""
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            files += [os.path.join(root, n) for n in sorted(names)
                      if n.endswith(".parquet") and not _hidden(n)]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise SourceNotFoundError(f"Parquet source '{uri}' not found: no file or directory "
                                  f"'{path}'.")
    if not files:
        raise SourceNotFoundError(f"Parquet source '{uri}' matches no .parquet file ('{path}').")
    return files


def previous_dir(path: str) -> str:
    """Where a replaced target directory is kept for rollback: ``<parent>/.<name>.tldr-previous``."""
    parent, name = os.path.split(os.path.abspath(path).rstrip("/"))
    return os.path.join(parent, f".{name}.tldr-previous")


def _sidecar_bytes(path: str) -> int:
    names = [n for n in os.listdir(path) if n.startswith(ARTIFACT_PREFIX)] \
        if os.path.isdir(path) else []
    return sum(os.path.getsize(os.path.join(path, n)) for n in (MODEL_FILE, RECORD_FILE, *names)
               if os.path.isfile(os.path.join(path, n)))


def disk_bytes_at(path: str, uri: str) -> int | None:
    """Bytes of the Parquet files named by ``path`` (file, glob or directory) plus the tldr-index
    sidecars of a target directory; None if nothing is there."""
    try:
        return sum(file_bytes(f) for f in list_parquet_files(path, uri)) + _sidecar_bytes(path)
    except SourceNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ source

class ParquetSource(Source):
    """Rows of one or more Parquet files, read in file order."""

    def __init__(self, path: str, *, uri: str, vector_column: str | None = None,
                 id_column: str | None = None, payload_columns: Sequence[str] | None = None,
                 distance: str | None = None):
        self.uri, self.path = uri, path
        self.files = list_parquet_files(path, uri)
        schema = pq.read_schema(self.files[0])
        self._bind_columns(schema, vector_column, id_column, payload_columns)
        self._columns = [self.id_column, self.vector_column, *self.payload_columns]
        for f in self.files[1:]:
            other = pq.read_schema(f)
            missing = [c for c in self._columns if c not in other.names]
            if missing:
                raise au.MissingColumnError(
                    f"Column '{missing[0]}' not found in file '{f}' of source '{uri}' (it is in "
                    f"'{self.files[0]}'). Available columns: {au.describe_columns(other)}.")
            if not au.is_vector_type(other.field(self.vector_column).type):
                raise InvalidInputError(
                    f"Vector column '{self.vector_column}' of source '{uri}' must be a list of "
                    f"floats in every file. Got {other.field(self.vector_column).type} in '{f}'.")
        vt = schema.field(self.vector_column).type
        self.value_type = au.vector_storage_type(vt.value_type)
        self._rows = [pq.read_metadata(f).num_rows for f in self.files]
        self._check_not_empty()
        self.dim = int(vt.list_size if pa.types.is_fixed_size_list(vt) else self._first_dim())
        self.distance = check_choice(distance or "l2", "distance", DISTANCES,
                                     owner="ParquetSource")

    def _first_dim(self) -> int:
        for f in self.files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=64, columns=[self.vector_column]):
                d = au.vector_dim(b.column(0))
                if d is not None:
                    return d
        raise InvalidInputError(
            f"Vector column '{self.vector_column}' of source '{self.uri}' must hold at least one "
            f"non-null vector. Got only nulls.")

    def count(self) -> int:
        return sum(self._rows)

    def fingerprint(self) -> dict:
        files = []
        for f in self.files:
            st = os.stat(f)
            files.append({"path": os.path.abspath(f), "size": st.st_size,
                          "mtime_ns": st.st_mtime_ns})
        return {"kind": "parquet", "files": files, "rows": self.count()}

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            pf = pq.ParquetFile(f)
            try:
                yield from pf.iter_batches(batch_size=batch_rows, columns=self._columns)
            finally:
                pf.close()

    def _row_groups(self) -> list[tuple[int, int, int, int]]:
        """``(file index, row group, first row, rows)`` of every row group, in stream order.
        Read from the footers once, then kept (it travels with the source to Ray workers, so a
        task does not re-read every footer)."""
        cached = getattr(self, "_groups", None)
        if cached is not None:
            return cached
        out, start = [], 0
        for i, f in enumerate(self.files):
            meta = pq.read_metadata(f)
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                out.append((i, g, start, n))
                start += n
        self._groups = out
        return out

    def pieces(self, rows_per_piece: int) -> list[Piece]:
        """Runs of whole row groups of one file (``("parquet", file index, first group, last
        group + 1)``) of at least ``rows_per_piece`` rows, except a file's last run. Cost: every
        file's footer."""
        rows_per_piece = check_int(rows_per_piece, "rows_per_piece", low=1, owner="ParquetSource")
        out: list[Piece] = []
        run: list[tuple[int, int, int, int]] = []

        def close() -> None:
            if run:
                rows = sum(r[3] for r in run)
                out.append(Piece(len(out), run[0][2], rows,
                                 ("parquet", run[0][0], run[0][1], run[-1][1] + 1)))
                run.clear()

        for rg in self._row_groups():
            if run and (rg[0] != run[0][0] or sum(r[3] for r in run) >= rows_per_piece):
                close()
            run.append(rg)
        close()
        return [p for p in out if p.rows]

    def _raw_piece_batches(self, piece: Piece, batch_rows: int) -> Iterator[pa.RecordBatch]:
        _, file_index, first, stop = piece.locator
        pf = pq.ParquetFile(self.files[file_index])
        try:
            yield from pf.iter_batches(batch_size=batch_rows, columns=self._columns,
                                       row_groups=list(range(first, stop)))
        finally:
            pf.close()

    def read_rows(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Cost: decodes ``columns`` of each row group holding one of ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        groups = self._row_groups()
        starts = np.array([g[2] for g in groups], dtype=np.int64)
        which = np.searchsorted(starts, positions, side="right") - 1
        parts = []
        for gi in np.unique(which):
            f, g, start, _ = groups[gi]
            pf = pq.ParquetFile(self.files[f])
            try:
                table = pf.read_row_group(g, columns=list(columns))
            finally:
                pf.close()
            parts.append(table.take(pa.array(positions[which == gi] - start)))
        return pa.concat_tables(parts)

    def _scan_ids(self):
        ds = pds.dataset(self.files, format="parquet")
        return lambda expr: ds.to_batches(columns=[self.id_column, self.vector_column],
                                          filter=expr)

    def take(self, ids: Sequence | np.ndarray | pa.Array, chunk: int = 65_536) -> np.ndarray:
        """Cost: one scan of the id and vector columns of every file per ``chunk`` ids."""
        return take_by_filter(self._scan_ids(), ids, self, chunk)

    def take_found(self, ids: Sequence | np.ndarray | pa.Array,
                   chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Cost: as :meth:`take`."""
        return take_found_by_filter(self._scan_ids(), ids, self, chunk)

    def ray_read(self, columns: Sequence[str]) -> tuple[Any, int]:
        """``ray.data.read_parquet`` of the files in source order; one read task per file."""
        import ray.data

        return ray.data.read_parquet(list(self.files), columns=list(columns)), len(self.files)

    def disk_bytes(self) -> int:
        """Bytes of the files read (plus tldr-index sidecars, when the source is a target)."""
        return sum(file_bytes(f) for f in self.files) + _sidecar_bytes(self.path)


# -------------------------------------------------------------------------------------------- sink

_RENAME_EXCHANGE = 2


def exchange_dirs(a: str, b: str) -> bool:
    """Atomically swap two paths with ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        log.debug("renameat2 failed: %s", os.strerror(err))
        return False
    return True


@dataclass(frozen=True)
class ParquetShardWriter:
    """Writes rows as one hidden Parquet file in a staging directory from any process (a Ray
    worker); returns its path, which :meth:`ParquetSink.adopt_shards` renames to a part file.
    Picklable."""

    staging: str
    compression: str | None

    def __call__(self, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> str:
        shard = os.path.join(self.staging, f".shard-{uuid.uuid4().hex}.parquet")
        with pq.ParquetWriter(shard, schema, compression=self.compression) as w:
            for b in batches:
                w.write_batch(b)
        return shard


class ParquetSink(Sink):
    """Writes a directory of Parquet part files, published by a directory rename.

    Memory: one batch (rows are written as they arrive, one row group per appended batch).
    """

    def __init__(self, path: str, *, uri: str, rows_per_file: int = 1_000_000,
                 compression: str | None = "snappy", keep_previous: bool = False):
        super().__init__(uri)
        if path.endswith(".parquet") or any(ch in path for ch in "*?["):
            raise InvalidInputError(
                f"Parquet target '{uri}' must be a directory (part files are written inside). Got "
                f"the file pattern '{path}'; use e.g. parquet://out/.")
        self.path = os.path.abspath(path)
        self.rows_per_file = check_int(rows_per_file, "rows_per_file", low=1, owner="ParquetSink")
        self.compression = compression
        self.keep_previous = keep_previous
        parent, name = os.path.split(self.path)
        self._parent = parent
        self.staging = os.path.join(parent, f".{name}.tldr-staging-{uuid.uuid4().hex[:12]}")
        self._writer: pq.ParquetWriter | None = None
        self._part = 0
        self._rows_in_part = 0
        self._artifacts: dict[str, dict] = {}

    def _create(self) -> None:
        if os.path.exists(self.path) and (not os.path.isdir(self.path) or os.listdir(self.path)):
            if not os.path.isfile(os.path.join(self.path, RECORD_FILE)):
                raise TargetExistsError(
                    f"Target '{self.uri}' exists and is not a tldr-index target (no {RECORD_FILE} "
                    f"in '{self.path}'); refusing to replace it even with overwrite=True.")
            if not self.overwrite:
                raise TargetExistsError(
                    f"Target '{self.uri}' already exists. Pass overwrite=True to replace it.")
        os.makedirs(self.staging)
        log.info("Staging %s in %s.", self.uri, self.staging)

    def _append(self, batch: pa.RecordBatch) -> None:
        start = 0
        while start < batch.num_rows:
            if self._writer is None:
                p = os.path.join(self.staging, f"part-{self._part:05d}.parquet")
                self._writer = pq.ParquetWriter(p, self.schema, compression=self.compression)
            take = min(batch.num_rows - start, self.rows_per_file - self._rows_in_part)
            self._writer.write_batch(batch.slice(start, take))
            start += take
            self._rows_in_part += take
            if self._rows_in_part >= self.rows_per_file:
                self._close_part()

    def adopt_files(self, paths: Sequence[str], rows: int) -> None:
        """Take Parquet files written inside :attr:`staging` by other processes (e.g. Ray workers,
        with :attr:`schema`) as the next part files, in the order given (renamed to
        ``part-NNNNN.parquet``); checked with the rest at :meth:`verify`."""
        self._expect("created", "adopt_files")
        self._close_part()
        for p in paths:
            if os.path.dirname(os.path.abspath(p)) != self.staging:
                raise InvalidInputError(
                    f"Files adopted by the sink of '{self.uri}' must lie in its staging directory "
                    f"'{self.staging}'. Got '{p}'.")
            os.rename(p, os.path.join(self.staging, f"part-{self._part:05d}.parquet"))
            self._part += 1
        self.rows_appended += int(rows)

    def shard_writer(self) -> ParquetShardWriter:
        return ParquetShardWriter(self.staging, self.compression)

    def adopt_shards(self, shards: Sequence[str], rows: int) -> None:
        """:meth:`adopt_files` of :class:`ParquetShardWriter` shards."""
        self.adopt_files(shards, rows)

    def staging_ref(self) -> dict:
        return {"path": self.staging}

    def discard_staging(self, ref: dict) -> None:
        discard_staging_dir(ref)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._part += 1
            self._rows_in_part = 0

    supports_artifacts = True

    def _store_artifact(self, name: str, data: bytes) -> None:
        rel = f"{ARTIFACT_PREFIX}{name}.bin"
        atomic_write_bytes(os.path.join(self.staging, rel), data)
        self._artifacts[name] = artifact_entry(data, rel)

    def _store_model(self, model_bytes: bytes, metadata: dict) -> None:
        self._close_part()
        atomic_write_bytes(os.path.join(self.staging, MODEL_FILE), model_bytes)
        rec = build_record(self.layout, model_bytes, metadata, model_file=MODEL_FILE,
                           artifacts=self._artifacts)
        atomic_write_bytes(os.path.join(self.staging, RECORD_FILE), dump_record(rec).encode())

    def _verify(self, expected_count: int, expected_ids_digest: str | None) -> None:
        t = ParquetTarget(self.staging, uri=self.uri)
        got = None
        if expected_ids_digest is not None:
            got = self._digest_ids([("parquet", f) for f in t.files])
        verify_counts(self.uri, expected_count, t.count(), expected_ids_digest, got)

    def _publish(self) -> None:
        if os.path.isdir(self.path) and os.listdir(self.path):
            old = self.staging  # after the exchange: the old target
            if not exchange_dirs(self.staging, self.path):
                old = self.staging + ".old"
                os.rename(self.path, old)
                os.rename(self.staging, self.path)
            if self.keep_previous:  # for rollback: .<name>.tldr-previous (one kept)
                prev = previous_dir(self.path)
                shutil.rmtree(prev, ignore_errors=True)
                os.rename(old, prev)
            else:
                shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(self.staging, self.path)
        except OSError as exc:
            raise TargetExistsError(
                f"Target '{self.uri}' appeared while it was being written ({exc}); nothing was "
                f"published. Pass overwrite=True to replace it.") from None

    def _abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None
        shutil.rmtree(self.staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ target

class ParquetTarget(Target):
    """A published (or staged) Parquet target directory."""

    kind = "parquet"

    def __init__(self, path: str, *, uri: str):
        self.uri, self.path = uri, path
        rec_path = os.path.join(path, RECORD_FILE)
        if not os.path.isdir(path):
            raise SourceNotFoundError(f"Parquet target '{uri}' not found: no directory '{path}'.")
        if not os.listdir(path):  # created first, to be filled: no target yet, not a foreign one
            raise SourceNotFoundError(f"Parquet target '{uri}' not found: directory '{path}' is "
                                      f"empty.")
        try:
            with open(rec_path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            text = None
        self.record = load_record(text, f"target '{uri}'")
        try:
            with open(os.path.join(path, MODEL_FILE), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ModelFormatError(f"The model file {MODEL_FILE} of target '{uri}' is "
                                   f"missing.") from None
        self.model_bytes = check_model(data, self.record, f"target '{uri}'")
        self.files = sorted(os.path.join(path, n) for n in os.listdir(path)
                            if n.endswith(".parquet") and not _hidden(n))

    def version_key(self) -> str:
        stats = [(os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns)
                 for f in self.files]
        return super().version_key() + json.dumps(stats)

    def artifact(self, name: str) -> bytes | None:
        return read_artifact(self.path, self.record, name, f"target '{self.uri}'")

    def store_artifact(self, name: str, data: bytes) -> None:
        """The file (named by its sha256), then an atomic replace of the record file."""
        name = check_artifact_name(name)
        data = bytes(data)
        if ParquetTarget(self.path, uri=self.uri).version_key() != self.version_key():
            raise VerificationError(
                f"Target '{self.uri}' changed since it was opened; artifact '{name}' was not "
                f"stored.")
        rel = f"{ARTIFACT_PREFIX}{name}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        atomic_write_bytes(os.path.join(self.path, rel), data)
        rec = dict(self.record)
        rec["artifacts"] = {**(rec.get("artifacts") or {}), name: artifact_entry(data, rel)}
        atomic_write_bytes(os.path.join(self.path, RECORD_FILE), dump_record(rec).encode())
        self.record = rec

    def count(self) -> int:
        return sum(pq.read_metadata(f).num_rows for f in self.files)

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows)

    def iter_columns(self, columns: Sequence[str],
                     batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=list(columns))

    def search(self, query: np.ndarray, k: int = 10, **options) -> pa.Table:
        """Exact streaming search over the reduced vectors (one pass; memory: one batch + k rows).
        ``_distance``: squared L2, 1 - cosine, or -dot."""
        lay = self.layout
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if lay.distance == "cosine":
            q = q / max(float(np.linalg.norm(q)), 1e-30)
        best_d = np.empty(0, dtype=np.float32)
        best_i: list = []
        for f in self.files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=65_536,
                                                    columns=[lay.id_column, lay.vector_column]):
                X = au.vectors_to_numpy(b.column(1)).astype(np.float32, copy=False)
                if lay.distance == "l2":
                    d = ((X - q) ** 2).sum(axis=1)
                elif lay.distance == "cosine":
                    d = 1.0 - (X @ q) / np.maximum(np.linalg.norm(X, axis=1), 1e-30)
                else:
                    d = -(X @ q)
                d = d.astype(np.float32)
                top = np.argpartition(d, k)[:k] if len(d) > k else np.arange(len(d))
                ids = b.column(0).take(pa.array(top)).to_pylist()
                alld = np.concatenate([best_d, d[top]])
                alli = best_i + ids
                keep = np.argsort(alld, kind="stable")[:k]
                best_d, best_i = alld[keep], [alli[j] for j in keep]
        id_type = pq.read_schema(self.files[0]).field(lay.id_column).type
        return pa.table({lay.id_column: pa.array(best_i, type=id_type),
                         "_distance": pa.array(best_d, type=pa.float32())})


    # -- delta, versions (see the module docstring)
    def row_schema(self) -> pa.Schema | None:
        return pq.read_schema(self.files[0]).remove_metadata() if self.files else None

    def fetch_vectors(self, ids: pa.Array) -> tuple[list, np.ndarray]:
        if len(ids) == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        lay = self.layout
        t = pds.dataset(self.files, format="parquet").to_table(
            columns=[lay.id_column, lay.vector_column], filter=pc.field(lay.id_column).isin(ids))
        if t.num_rows == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        X = au.vectors_to_numpy(t.column(1).combine_chunks()).astype(np.float32)
        return t.column(0).to_pylist(), X

    def disk_bytes(self) -> int:
        return sum(file_bytes(f) for f in self.files) + _sidecar_bytes(self.path)

    def current_handle(self) -> dict:
        return {"kind": "parquet", "previous": previous_dir(self.path)}

    def keep_previous_options(self) -> dict:
        return {"keep_previous": True}

    def apply_delta(self, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                    expected_count: int, expected_digest: str | None,
                    batch_rows: int = DEFAULT_BATCH_ROWS,
                    staged: Callable[[dict], None] | None = None) -> dict:
        """Kept rows + ``rows`` staged as a new directory (a :class:`ParquetSink` with
        ``keep_previous``), verified, then exchanged with the live one."""
        lay = self.layout
        schema = self.row_schema() or rows.schema
        drop = pa.concat_arrays([rows.column(lay.id_column).combine_chunks().cast(delete_ids.type),
                                 delete_ids]) if rows.num_rows else delete_ids
        sink = ParquetSink(self.path, uri=self.uri, keep_previous=True)
        with sink:
            sink.create(schema, id_column=lay.id_column, vector_column=lay.vector_column,
                        distance=lay.distance, codes_column=lay.codes_column, overwrite=True)
            if staged is not None:
                staged(sink.staging_ref())
            for b in self.iter_batches(batch_rows):
                if len(drop):
                    b = b.filter(pc.invert(pc.is_in(b.column(lay.id_column), value_set=drop)))
                sink.append(pa.RecordBatch.from_arrays(b.columns, schema=schema))
            for b in rows.cast(schema).to_batches(max_chunksize=batch_rows):
                sink.append(b)
            sink.store_model(self.model_bytes, metadata)
            sink.verify(expected_count, expected_digest)
            fault_point("reindex:rows-written")  # new version staged and verified, not switched
            sink.publish()
        return {"kind": "parquet", "previous": previous_dir(self.path)}

    def _rollback_to(self, handle: dict) -> dict:
        """Exchange the kept previous directory with the live one."""
        prev = handle["previous"]
        if not os.path.isdir(prev):
            raise InvalidInputError(
                f"The previous version of target '{self.uri}' ('{prev}') is gone; cannot roll "
                f"back.")
        if not exchange_dirs(prev, self.path):
            tmp = prev + ".swap"
            os.rename(self.path, tmp)
            os.rename(prev, self.path)
            os.rename(tmp, prev)
        return {"kind": "parquet", "previous": prev}
