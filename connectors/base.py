"""The connector protocol: a :class:`Source` streams ``(ids, vectors, payload)`` record batches, a
:class:`Sink` writes a compact target (staged, verified, then published atomically), and a
:class:`Target` reads a published target back (model, metadata, rows, search).

Sink life cycle (enforced; out-of-order calls raise :class:`SinkStateError`)::

    sink.create(schema, id_column=..., vector_column=..., distance=..., overwrite=False)
    sink.append(batch)            # any number of times, each batch with exactly ``schema``
    sink.store_model(model_bytes, metadata)
    sink.verify(expected_count, expected_ids_digest)
    sink.publish()                # readers see the old target (or none) or the new one, never a mix
    sink.abort()                  # any time before publish: removes staging, never a published target

Used as a context manager, a sink aborts on exit unless it was published.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tldr_index.validation import check_choice, check_int
from tldr_index.errors import (InvalidInputError, InvalidParameterError, MissingColumnError,
                               SinkStateError)

from . import arrow_utils as au
from .artifacts import SinkArtifacts, TargetArtifacts
from .filestore import digest_id_piece
from .ids import DuplicateIdTracker, IdDigest, is_id_type

log = logging.getLogger(__name__)

DISTANCES = ("cosine", "l2", "ip")
DEFAULT_BATCH_ROWS = 8192


@dataclass(frozen=True)
class Piece:
    """A contiguous range of a source's rows that one worker can read on its own (a distributed
    scan): rows ``[start, start + rows)`` in the order :meth:`Source.iter_batches` streams them.
    ``locator`` says where they are (store-specific, e.g. a Lance fragment and an offset)."""

    index: int
    start: int
    rows: int
    locator: tuple


# ------------------------------------------------------------------------------------------ source

class Source(abc.ABC):
    """A read-only collection of ``(id, vector, payload)`` rows.

    Subclasses set ``uri``, ``id_column``, ``vector_column``, ``dim``, ``distance``,
    ``payload_columns`` and ``value_type`` (float16 or float32: what batches carry), and implement
    :meth:`_raw_batches`, :meth:`count`, :meth:`fingerprint` and :meth:`take`. A source never writes
    to the store it reads.
    """

    uri: str
    id_column: str
    vector_column: str
    dim: int
    distance: str
    payload_columns: list[str]
    value_type: pa.DataType
    _payload_schema: pa.Schema  # types of the payload columns, from the store's schema

    @property
    def schema(self) -> pa.Schema:
        """Schema of every batch :meth:`iter_batches` yields: id, vector (FixedSizeList), payload."""
        id_field = self._id_field
        vec = pa.field(self.vector_column, pa.list_(self.value_type, self.dim))
        return pa.schema([id_field, vec, *[self._payload_schema.field(c)
                                           for c in self.payload_columns]])

    _id_field: pa.Field

    def target_schema(self, d: int, code_bytes: int | None = None, *,
                      value_type: pa.DataType = pa.float32(),
                      codes_column: str = "pq_codes") -> pa.Schema:
        """Schema of the compact target: id, payload columns (fields copied with their metadata,
        e.g. the Qdrant JSON-payload marker), the reduced vector under :attr:`vector_column`
        (FixedSizeList<value_type>[d]) and, if ``code_bytes``, the PQ codes
        (FixedSizeList<uint8>[code_bytes]). Build the batches handed to a sink with it."""
        src = self.schema
        fields = [src.field(self.id_column), *[src.field(c) for c in self.payload_columns],
                  pa.field(self.vector_column, pa.list_(value_type, d))]
        if code_bytes:
            fields.append(pa.field(codes_column, pa.list_(pa.uint8(), code_bytes)))
        return pa.schema(fields)

    @abc.abstractmethod
    def count(self) -> int:
        """Number of rows (cheap: metadata or an exact count call)."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able identity of the data read (version, file sizes/mtimes or point count), for
        provenance: equal fingerprints mean the same data."""

    @abc.abstractmethod
    def take(self, ids: Sequence | np.ndarray | pa.Array) -> np.ndarray:
        """Original vectors of ``ids`` as a float32 ``(len(ids), dim)`` array in the order asked.

        Raises :class:`InvalidInputError` if an id is missing. Memory: the rows returned plus one
        store batch.
        """

    def take_found(self, ids: Sequence | np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`take`, but ids absent from the source are not an error: returns the
        float32 ``(len(ids), dim)`` vectors (zeros where missing) and a bool mask of the ids
        found (e.g. rows added to a compact collection only, see ``CompactCollection.search``).
        The default calls :meth:`take` (every id must exist); the stores override it."""
        return self.take(ids), np.ones(len(ids), dtype=bool)

    @abc.abstractmethod
    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Store batches holding at least the id, vector and payload columns, at most
        ``batch_rows`` rows each (longer ones are split)."""

    def pieces(self, rows_per_piece: int) -> list[Piece]:
        """Cut the rows into :class:`Piece` s of about ``rows_per_piece`` rows (never across a
        data file; a piece may be larger when a file cannot be cut finer, e.g. one big Parquet
        row group), in stream order. Cost: metadata only. Stores that cannot be read by range
        (Qdrant) raise :class:`InvalidParameterError`."""
        raise InvalidParameterError(
            f"Source '{self.uri}' ({type(self).__name__}) cannot be read in pieces: a distributed "
            f"scan needs a Lance/LanceDB or Parquet source.")

    def _raw_piece_batches(self, piece: Piece, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Like :meth:`_raw_batches`, for the rows of one :meth:`pieces` piece only."""
        raise NotImplementedError

    def iter_piece(self, piece: Piece, batch_rows: int = DEFAULT_BATCH_ROWS, *,
                   skip_invalid: bool = False
                   ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Validated batches of one piece, as :meth:`iter_batches` would stream them, each with the
        source positions (int64) of its rows, so that rows dropped by ``skip_invalid`` are known.
        Duplicate ids are not checked (a piece does not see the others; see
        :func:`connectors.ids.first_duplicate`); :attr:`skipped` counts this piece's drops.
        Memory: one batch."""
        end = piece.start
        for out, pos, _, end in self._validated(self._raw_piece_batches(piece, batch_rows),
                                                batch_rows, piece.start, skip_invalid):
            if out.num_rows:
                yield out, pos
        if end != piece.start + piece.rows:
            raise InvalidInputError(
                f"Source '{self.uri}' changed while it was read: rows {piece.start}-"
                f"{piece.start + piece.rows - 1} held {end - piece.start} rows. Run shrink again "
                f"once it is stable.")

    def read_rows(self, positions: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows at ``positions`` (sorted, ascending, in stream order) with ``columns``, unvalidated.
        Random access where the store has it (Lance); Parquet decodes the row groups holding
        them. Raises :class:`InvalidParameterError` for stores without ranges (Qdrant)."""
        raise InvalidParameterError(
            f"Source '{self.uri}' ({type(self).__name__}) cannot read rows by position.")

    def take_positions(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Original vectors of the rows at ``positions`` (0-based, in :meth:`iter_batches` stream
        order: what a compact collection stores as each row's source position) as a float32
        ``(len(positions), dim)`` array in the order asked (repeats allowed): the random-access
        read that rescoring a shortlist needs.

        Lance: one ``take`` of the sorted unique positions (random access, about 1 ms per 100
        rows warm); Parquet: decodes the vector column of each row group holding one (found
        through the (file, row group, first row) map read once from the footers); Qdrant: the
        point ids in stream order (scanned once, then kept: ``count`` ids of memory), then
        ``retrieve`` in batches. Raises :class:`InvalidInputError` for a position outside
        ``[0, count)``."""
        pos = self.check_positions(positions)
        if not len(pos):
            return np.zeros((0, self.dim), dtype=np.float32)
        uniq, inverse = np.unique(pos, return_inverse=True)
        table = self.read_rows(uniq, [self.vector_column])
        X = au.vectors_to_numpy(table.column(0), dim=self.dim, column=self.vector_column,
                                source=self.uri)
        return np.ascontiguousarray(X[inverse], dtype=np.float32)

    def check_positions(self, positions: Sequence[int] | np.ndarray,
                        count: int | None = None) -> np.ndarray:
        """``positions`` as int64 row positions in ``[0, count)`` (default: :meth:`count`), or
        one clear error."""
        pos = np.asarray(positions)
        if pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
            raise InvalidInputError(
                f"The 'positions' parameter of take_positions must be a 1-D sequence of ints "
                f"(row positions of source '{self.uri}'). Got shape {pos.shape} and dtype "
                f"{pos.dtype} instead.")
        n = self.count() if count is None else count
        bad = (pos < 0) | (pos >= n)
        if bad.any():
            raise InvalidInputError(
                f"The 'positions' parameter of take_positions must hold row positions of source "
                f"'{self.uri}' in the range [0, {n}). Got {int(pos[bad][0])} instead.")
        return pos.astype(np.int64)

    def ray_read(self, columns: Sequence[str]) -> tuple[Any, int] | None:
        """``(ray.data.Dataset of columns, read tasks)``: the rows in stream order through Ray
        Data's own reader for this store (one read task per data file), or None where Ray Data
        has no reader for it (Qdrant). Lazy: nothing is read before the dataset is consumed."""
        return None

    def disk_bytes(self) -> int | None:
        """Bytes on disk of the rows read (data files, indices, sidecars); None for a store that
        is not files (Qdrant). Cost: file sizes from metadata, no data read."""
        return None

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS, *,
                     check_duplicates: bool = True,
                     skip_invalid: bool = False) -> Iterator[pa.RecordBatch]:
        """Stream validated batches with :attr:`schema`, each of at most ``batch_rows`` rows.

        Raises :class:`InvalidInputError` (null ids or vectors, mixed lengths, NaN/inf, zero
        vectors under the cosine distance) or :class:`DuplicateIdError` naming the first offending
        id. With ``skip_invalid`` the rows with NaN/inf (or zero, under cosine) vectors are dropped
        instead and counted in :attr:`skipped` (``{"rows": n, "first_id": id}``); the other errors
        still raise. Memory: one batch plus 8 bytes per id seen for duplicate detection
        (``check_duplicates=False`` skips it).
        """
        from tldr_index.errors import DuplicateIdError

        tracker = DuplicateIdTracker() if check_duplicates else None
        for out, _, row, _ in self._validated(self._raw_batches(batch_rows), batch_rows, 0,
                                              skip_invalid):
            if tracker is not None:
                ids = out.column(0)
                pos = tracker.add(ids)
                if pos is not None:
                    raise DuplicateIdError(
                        f"Id column '{self.id_column}' of source '{self.uri}' must hold unique "
                        f"ids. Got duplicate id {ids[pos].as_py()!r} at row {row + pos}.")
            if out.num_rows:
                yield out

    def _validated(self, raws: Iterator[pa.RecordBatch], batch_rows: int, row: int,
                   skip_invalid: bool
                   ) -> Iterator[tuple[pa.RecordBatch, np.ndarray, int, int]]:
        """The loop under :meth:`iter_batches` and :meth:`iter_piece`: split the raw batches
        (the first at source position ``row``) into ``batch_rows`` slices and validate each
        (:meth:`_normalize`). Yields ``(batch, positions of its rows, first, stop)`` per slice,
        ``[first, stop)`` being the slice's raw positions; the batch may be empty after
        ``skip_invalid``. Resets :attr:`skipped`."""
        batch_rows = check_int(batch_rows, "batch_rows", low=1, owner=type(self).__name__)
        schema = self.schema
        self.skipped = {"rows": 0, "first_id": None}
        for raw in raws:
            for batch in au.split_batch(raw, batch_rows):
                if batch.num_rows == 0:
                    continue
                dropped: list[np.ndarray] = []
                out = self._normalize(batch, schema, row, skip_invalid, dropped=dropped)
                pos = np.arange(row, row + batch.num_rows, dtype=np.int64)
                if dropped:
                    pos = np.delete(pos, dropped[0] - row)
                yield out, pos, row, row + batch.num_rows
                row += batch.num_rows

    def _normalize(self, batch: pa.RecordBatch, schema: pa.Schema, row: int,
                   skip_invalid: bool = False,
                   dropped: list[np.ndarray] | None = None) -> pa.RecordBatch:
        """Validate and cast one raw batch starting at source position ``row``; with
        ``skip_invalid`` the positions of the rows dropped are appended to ``dropped``."""
        ids = batch.column(self.id_column)
        au.check_ids(ids, column=self.id_column, source=self.uri, row_offset=row)
        if ids.type != self._id_field.type:
            ids = ids.cast(self._id_field.type)
        X = au.vectors_to_numpy(batch.column(self.vector_column), dim=self.dim,
                                column=self.vector_column, ids=ids, source=self.uri)
        bad = au.invalid_rows(X, cosine=self.distance == "cosine")
        if bad.any():
            where = dict(column=self.vector_column, ids=ids, source=self.uri, row_offset=row)
            if not skip_invalid:
                au.check_finite(X, **where)
                au.check_nonzero(X, **where)
            keep = pa.array(~bad)
            if self.skipped["first_id"] is None:
                self.skipped["first_id"] = ids[int(np.flatnonzero(bad)[0])].as_py()
            self.skipped["rows"] += int(bad.sum())
            if dropped is not None:
                dropped.append(row + np.flatnonzero(bad))
            batch, ids, X = batch.filter(keep), ids.filter(keep), X[~bad]
        if X.dtype != self.value_type.to_pandas_dtype():
            X = X.astype(self.value_type.to_pandas_dtype())
        cols = [ids, au.numpy_to_fsl(X)]
        for name in self.payload_columns:
            col = batch.column(name)
            want = schema.field(name).type
            if col.type != want:
                try:
                    col = col.cast(want)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidInputError(
                        f"Payload column '{name}' of source '{self.uri}' must keep type {want} in "
                        f"every batch. Got {col.type} at row {row} ({exc}).") from None
            cols.append(col)
        return pa.RecordBatch.from_arrays(cols, schema=schema)

    def _check_not_empty(self) -> None:
        if self.count() == 0:
            raise InvalidInputError(f"Source '{self.uri}' is empty: it has 0 rows.")

    def _bind_columns(self, schema: pa.Schema, vector_column: str | None, id_column: str | None,
                      payload_columns: Sequence[str] | None) -> None:
        """Detect (or check) the vector, id and payload columns of a file-like source's schema."""
        uri = self.uri
        self.vector_column = au.detect_vector_column(schema, vector_column, uri)
        self.id_column = au.detect_id_column(schema, id_column, uri, exclude=(self.vector_column,))
        self._id_field = pa.field(self.id_column, schema.field(self.id_column).type)
        self.payload_columns = resolve_payload_columns(
            schema, payload_columns, (self.id_column, self.vector_column), uri)
        self._payload_schema = schema

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(uri={self.uri!r}, id={self.id_column!r}, "
                f"vector={self.vector_column!r}, dim={self.dim}, distance={self.distance!r})")


def resolve_payload_columns(schema: pa.Schema, requested: Sequence[str] | None,
                            exclude: Sequence[str], source: str) -> list[str]:
    """All columns but ``exclude`` when ``requested`` is None, else ``requested`` (checked)."""
    if requested is None:
        return [n for n in schema.names if n not in exclude]
    missing = [c for c in requested if c not in schema.names]
    if missing:
        raise MissingColumnError(
            f"Payload column '{missing[0]}' not found in source '{source}'. Available columns: "
            f"{au.describe_columns(schema)}.")
    return [c for c in requested if c not in exclude]


# ------------------------------------------------------------------------------------------ layout

@dataclass(frozen=True)
class Layout:
    """Which columns of a target schema play which role."""

    id_column: str
    vector_column: str
    distance: str
    codes_column: str | None = None

    def check(self, schema: pa.Schema, where: str) -> None:
        """Raise unless ``schema`` has a usable id, vector (FixedSizeList<float16|32>) and codes
        (FixedSizeList<uint8>) column."""
        check_choice(self.distance, "distance", DISTANCES, owner=where)
        for role, name in (("id", self.id_column), ("vector", self.vector_column),
                           ("codes", self.codes_column)):
            if name is not None and name not in schema.names:
                raise MissingColumnError(
                    f"The {role} column '{name}' of {where} is not in the schema. Available "
                    f"columns: {au.describe_columns(schema)}.")
        t = schema.field(self.id_column).type
        if not is_id_type(t):
            raise InvalidInputError(
                f"Id column '{self.id_column}' of {where} must hold integers or strings. Got {t}.")
        t = schema.field(self.vector_column).type
        if not (pa.types.is_fixed_size_list(t) and t.value_type in (pa.float16(), pa.float32())):
            raise InvalidInputError(
                f"Vector column '{self.vector_column}' of {where} must be a fixed-size list of "
                f"float16 or float32. Got {t} instead.")
        if self.codes_column is not None:
            t = schema.field(self.codes_column).type
            if not (pa.types.is_fixed_size_list(t) and t.value_type == pa.uint8()):
                raise InvalidInputError(
                    f"Codes column '{self.codes_column}' of {where} must be a fixed-size list of "
                    f"uint8. Got {t} instead.")

    @property
    def reserved(self) -> tuple[str, ...]:
        return tuple(c for c in (self.id_column, self.vector_column, self.codes_column) if c)


# -------------------------------------------------------------------------------------------- sink

class Sink(SinkArtifacts, abc.ABC):
    """Writes one compact target; see the module docstring for the life cycle."""

    _STATES = ("new", "created", "stored", "verified", "published", "aborted")

    def __init__(self, uri: str):
        self.uri = uri
        self.state = "new"
        self.schema: pa.Schema | None = None
        self.layout: Layout | None = None
        self.overwrite = False
        self.rows_appended = 0

    # -- public API, shared checks; stores implement the _methods
    def create(self, schema: pa.Schema, *, id_column: str = "id", vector_column: str = "vector",
               distance: str = "l2", codes_column: str | None = None,
               overwrite: bool = False) -> None:
        """Check the target (refused if it exists, unless ``overwrite``) and open staging.

        ``schema``: of every batch to append; ``codes_column``: the PQ codes (FixedSizeList<uint8>).
        Raises :class:`TargetExistsError`.
        """
        self._expect("new", "create")
        layout = Layout(id_column, vector_column, distance, codes_column)
        layout.check(schema, f"target '{self.uri}'")
        self.schema, self.layout, self.overwrite = schema, layout, bool(overwrite)
        self._create()
        self.state = "created"

    def append(self, batch: pa.RecordBatch) -> None:
        """Stage one batch (not visible to readers until :meth:`publish`)."""
        self._expect("created", "append")
        au.check_batch_schema(batch, self.schema, f"target '{self.uri}'")
        if batch.num_rows:
            self._append(batch)
            self.rows_appended += batch.num_rows

    def store_model(self, model_bytes: bytes, metadata: dict) -> None:
        """Stage the model (safetensors bytes) and its JSON-able metadata (provenance)."""
        self._expect("created", "store_model")
        self._store_model(bytes(model_bytes), dict(metadata))
        self.state = "stored"

    def verify(self, expected_count: int, expected_ids_digest: str | None = None, *,
               map_pieces: Callable | None = None) -> None:
        """Read the staged target back: row count, ids digest (see :mod:`connectors.ids`) and model
        checksum must match. Raises :class:`VerificationError`; call :meth:`abort` then.

        ``map_pieces(fn, locators)`` runs ``fn`` over the staged files (Lance fragments, Parquet
        files) and returns the results in order; the default reads them here one after the
        other, a distributed engine passes its own (:func:`tldr_index.ray_engine.ray_map`), and
        the per-file digests are merged (:meth:`IdDigest.merge`). Qdrant reads back here."""
        self._expect("stored", "verify")
        check_int(expected_count, "expected_count", low=0, owner=type(self).__name__)
        self._map_pieces = map_pieces
        self._verify(int(expected_count), expected_ids_digest)
        self.state = "verified"

    def _digest_ids(self, locators: list[tuple]) -> str:
        """Digest of the ids in the staged files ``locators`` (see :func:`digest_id_piece`),
        read through ``map_pieces`` when :meth:`verify` got one."""
        fn = functools.partial(digest_id_piece, id_column=self.layout.id_column)
        run = getattr(self, "_map_pieces", None) or (lambda f, items: [f(i) for i in items])
        digest = IdDigest()
        for state in run(fn, locators):
            digest.merge(state)
        self.verified_pieces = len(locators)
        return digest.hexdigest()

    def publish(self) -> None:
        """Make the verified target visible atomically."""
        self._expect("verified", "publish")
        self._publish()
        self.state = "published"
        log.info("Published %s (%d rows).", self.uri, self.rows_appended)

    def abort(self) -> None:
        """Remove staging; never touches a published target. Idempotent."""
        if self.state in ("published", "aborted"):
            return
        try:
            self._abort()
        finally:
            self.state = "aborted"

    def _expect(self, state: str, method: str) -> None:
        if self.state != state:
            raise SinkStateError(
                f"{type(self).__name__}.{method}() must be called in state '{state}'. The sink for "
                f"'{self.uri}' is in state '{self.state}'.")

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state != "published":
            self.abort()

    # -- staging areas (a killed run leaves one; the next run removes it by its reference)
    @abc.abstractmethod
    def staging_ref(self) -> dict:
        """JSON-able reference to this sink's staging area (``{"path": dir}`` or
        ``{"collection": name}``), recorded by a caller so that a run killed before
        :meth:`publish` can be cleaned up by :meth:`discard_staging`."""

    @abc.abstractmethod
    def discard_staging(self, ref: dict) -> None:
        """Remove the staging area of ``ref`` (a :meth:`staging_ref` of an earlier sink of the
        same target) if it is still there; never a published target. Best effort, idempotent."""

    # -- distributed writes (Ray workers write shards into staging; the sink adopts them)
    def shard_writer(self) -> Callable[[pa.Schema, Iterator[pa.RecordBatch]], str] | None:
        """A picklable ``writer(schema, batches) -> shard`` that another process can call to write
        rows into this sink's staging area (call it after :meth:`create`); ``shard`` is a short
        text that :meth:`adopt_shards` takes back. None where the store has no shard files
        (Qdrant)."""
        return None

    def adopt_shards(self, shards: Sequence[str], rows: int) -> None:
        """Take the shards written by :meth:`shard_writer` (``rows`` in all) as the next rows of
        the target, in the order given; checked with the rest at :meth:`verify`."""
        raise InvalidParameterError(
            f"{type(self).__name__} for '{self.uri}' cannot adopt shards written elsewhere.")

    @abc.abstractmethod
    def _create(self) -> None: ...

    @abc.abstractmethod
    def _append(self, batch: pa.RecordBatch) -> None: ...

    @abc.abstractmethod
    def _store_model(self, model_bytes: bytes, metadata: dict) -> None: ...

    @abc.abstractmethod
    def _verify(self, expected_count: int, expected_ids_digest: str | None) -> None: ...

    @abc.abstractmethod
    def _publish(self) -> None: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...


def concat_ids(parts: Sequence[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """One id array from batches' id columns (int64 and empty when there are none)."""
    if not parts:
        return pa.array([], type=pa.int64())
    return pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p
                             for p in parts])


def verify_counts(where: str, expected_count: int, got_count: int,
                  expected_digest: str | None, got_digest: str | None) -> None:
    """Shared comparison for :meth:`Sink.verify`."""
    from tldr_index.errors import VerificationError

    if got_count != expected_count:
        raise VerificationError(
            f"Staged target '{where}' must hold {expected_count} rows. Got {got_count} instead.")
    if expected_digest is not None and got_digest != expected_digest:
        raise VerificationError(
            f"Staged target '{where}' must hold the ids of the source (digest {expected_digest}). "
            f"Got digest {got_digest} instead.")


# ------------------------------------------------------------------------------------------ target

class Target(TargetArtifacts, abc.ABC):
    """A published target read back: :attr:`record` (format, layout, model checksum, metadata),
    :attr:`metadata` (what the engine passed to ``store_model``), :attr:`model_bytes` (checked
    against its sha256), rows and, where the store can, a search over the reduced vectors."""

    uri: str
    record: dict
    model_bytes: bytes
    #: the store's name in version handles (``{"kind": ...}``, kept in a reindex history on disk)
    kind: str = ""
    #: True where the store normalises cosine vectors as it writes them (Qdrant): a vector read
    #: back then equals the one written only up to its norm
    normalizes_cosine: bool = False

    @property
    def metadata(self) -> dict:
        return self.record["metadata"]

    @property
    def layout(self) -> Layout:
        return Layout(**self.record["layout"])

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """All rows (id, payload, vector, codes) in batches of at most ``batch_rows``."""

    def iter_columns(self, columns: Sequence[str],
                     batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Only ``columns`` of every row, in :meth:`iter_batches` order (stores that can read a
        column subset cheaply override this; the others raise NotImplementedError)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read a subset of columns.")

    def search(self, query: np.ndarray, k: int = 10, **options: Any) -> pa.Table:
        """The ``k`` nearest rows to ``query`` (a reduced vector of length d) as a table with the id
        column and ``_distance`` (lower is better, in the store's units)."""
        raise NotImplementedError(f"{type(self).__name__} does not support search.")

    # -- reading what a delta needs
    def ids(self) -> pa.Array:
        """Every id, in :meth:`iter_batches` order (memory: the ids; reads the id column only)."""
        return concat_ids([b.column(0) for b in self.iter_columns([self.layout.id_column])])

    def row_schema(self) -> pa.Schema | None:
        """Schema of the stored rows (without metadata), which new rows must have; None for a
        schemaless store (Qdrant: the payload is JSON)."""
        return None

    def id_type(self) -> pa.DataType:
        """Arrow type of the ids: the id column's type (int64 while no row is stored)."""
        schema = self.row_schema()
        return pa.int64() if schema is None else schema.field(self.layout.id_column).type

    @abc.abstractmethod
    def fetch_vectors(self, ids: pa.Array) -> tuple[list, np.ndarray]:
        """``(found ids, their stored reduced vectors as float32 (n, d))`` for those of ``ids``
        that are stored, in the store's order; ids not stored are left out. Cost: one filtered
        read (Lance, Parquet) or one ``retrieve`` (Qdrant) of the rows asked."""

    def disk_bytes(self) -> int | None:
        """Bytes on disk of the live version (data files, indices, model sidecar; older versions
        kept for rollback are not counted); None for a store that is not files (Qdrant)."""
        return None

    # -- changing a published target by a delta, and switching back
    @abc.abstractmethod
    def current_handle(self) -> dict:
        """JSON-able handle of the live version (``{"kind": ..., ...}``): what
        :meth:`rollback_to` needs to come back to it after :meth:`apply_delta`."""

    @abc.abstractmethod
    def apply_delta(self, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                    expected_count: int, expected_digest: str | None,
                    batch_rows: int = DEFAULT_BATCH_ROWS,
                    staged: Callable[[dict], None] | None = None) -> dict:
        """Replace the rows of ``rows``' ids, add the new ones, delete ``delete_ids`` and store
        ``metadata`` in the record, as one switch: readers see the old rows or the new ones,
        never a mix. ``rows`` has :meth:`row_schema` (any schema for Qdrant). Returns the handle
        of the version replaced (kept for :meth:`rollback_to`). Raises
        :class:`VerificationError` (and keeps or restores the old version) unless the result
        holds ``expected_count`` rows (and, where the store stages a copy, ids digest
        ``expected_digest``).

        ``staged(ref)`` is called before anything is written into a new version with the
        :meth:`Sink.staging_ref` of the staging area, so that a caller can record it and remove
        what a killed run left (:meth:`Sink.discard_staging`). Cost per store: see its module."""

    def upsert(self, rows: pa.Table, *, batch_rows: int = 4096, max_retries: int = 5) -> None:
        """Insert ``rows`` (:meth:`row_schema`), replacing stored rows with the same ids. Stores
        that can write in place (Lance: a commit per ``batch_rows``; Qdrant: retried upserts)
        override this; the default publishes one new version with :meth:`apply_delta` (a pass
        over the stored rows)."""
        old = self.ids()
        new = rows.column(self.layout.id_column).combine_chunks().cast(old.type)
        kept = old.filter(pc.invert(pc.is_in(old, value_set=new)))
        digest = IdDigest()
        digest.update(kept)
        digest.update(new)
        self.apply_delta(rows, old.slice(0, 0), dict(self.metadata),
                         expected_count=len(kept) + len(new), expected_digest=digest.hexdigest(),
                         batch_rows=batch_rows)

    def rollback_to(self, handle: dict) -> dict:
        """Switch the target back to the version of ``handle`` (from :meth:`current_handle` or
        :meth:`apply_delta`); returns the handle of the version left, so that a second rollback
        undoes the first. Raises :class:`InvalidInputError` if the handle is for another store
        or its version is gone."""
        if handle.get("kind") != self.kind:
            raise InvalidInputError(
                f"The rollback record of target '{self.uri}' is for a {handle.get('kind')} "
                f"target. Got a {self.kind} target.")
        return self._rollback_to(handle)

    @abc.abstractmethod
    def _rollback_to(self, handle: dict) -> dict: ...

    def keep_previous_options(self) -> dict | None:
        """Sink options that keep the live version when a sink replaces this target (so that
        :meth:`rollback_to` can come back to it); None where the store keeps it anyway (Lance
        versions)."""
        return None

    def prune_versions(self, keep: Sequence[dict] = ()) -> None:
        """Delete older versions the store keeps as separate copies (Qdrant collections of this
        alias), except the live one and those of the handles ``keep``. Best effort; a no-op
        where versions cost nothing extra or only one is kept (Lance, Parquet)."""

    def to_table(self) -> pa.Table:
        """Everything in memory (for tests and small targets)."""
        batches = list(self.iter_batches())
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uri={self.uri!r}, layout={self.layout})"
