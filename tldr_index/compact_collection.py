"""``tldr_index.open(uri)``: a compact collection as one object for ingestion pipelines.

.. code-block:: python

    compact = tldr_index.open("lancedb://./lancedb/docs_tldr64")
    z, codes = compact.encode(vectors)       # (n, D) numpy / Arrow -> (n, d) float32, (n, m) uint8
    compact.add(ids, vectors, payload={"text": texts})
    hits = compact.search(queries, k=10, rescore=True)

``encode`` is a pure function of the stored model (one ``n x D x d`` matrix product plus PQ
assignment): safe from any number of threads. ``search`` reads one published version, never a mix;
the codes and the code index (where the target stores one) are loaded once per version and shared
by every thread. Which version, LanceDB's convention (``lancedb.connect(...,
read_consistency_interval=)``): ``tldr_index.open(uri, read_consistency_interval=None)``, the
default, never re-checks the target on its own: searches see the version opened (or the last
:meth:`CompactCollection.refresh`) plus this object's own ``add`` calls (an ``add`` re-reads the
live target first, so it brings in what others wrote before it); ``timedelta(0)`` checks the live
version on every search (a re-open of the target: ~1 ms at 1M rows on Lance); a positive
``timedelta`` checks at most that often (a search within the interval may miss another writer's
rows). ``add`` gives the rows
it writes to the code index, so they are found by indexed search, and stores it again (the write
drops the stored one, built over the rows before: a target never lists a stale index; a reader
between the two switches scans every code). ``add`` calls are serialised (one lock per
object) and re-read the live model first, so rows are never encoded with a model that a
``reindex --refit`` has replaced. Writes: Lance one ``merge_insert`` commit per ``batch_rows`` rows
(commit conflicts retried), Qdrant retried upserts of ``batch_rows`` points (back-off as in
:mod:`connectors.qdrant_store`), Parquet a new published version per call (a full rewrite of the
compact rows: use it for small targets or batch the calls).

``encode_batch`` is a :class:`BatchEncoder`: a small picklable callable carrying the model bytes
(safetensors, verified when loaded) that loads the model once per process, so
``ds.map_batches(compact.encode_batch, batch_format="pyarrow")`` ships it to Ray workers.

``close()`` (or ``with tldr_index.open(uri) as compact:``) releases what the object holds: for an
embedded Qdrant path (``qdrant+path://``), the shared client and the storage lock, and for a Qdrant
Edge target (``qdrant+edge://``) the shard handles (the engine's WAL lock), so another client or
process can open the same path.

Rows added here should also be written to the source collection: the nightly ``reindex`` makes the
target mirror its source (ids absent from the source are deleted there).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from .batch_encoder import BatchEncoder, check_matrix  # noqa: F401 (re-exported)
from .compact import CompactModel
from .errors import InvalidInputError

log = logging.getLogger(__name__)


class CompactCollection:
    """A published compact collection (see the module docstring). Create with
    :func:`tldr_index.open`."""

    def __init__(self, uri: str, *, read_consistency_interval: _dt.timedelta | None = None,
                 rescore_cache: str | os.PathLike | None = None,
                 rescore_cache_fallback: bool = False, **target_options: Any):
        from .rescore_cache import check_files
        from .validation import check_bool

        self.uri = str(uri)
        self._target_options = target_options
        #: the rescore cache every rescored search uses unless it passes its own (see open)
        self.rescore_cache = None if rescore_cache is None else check_files(rescore_cache)
        self._rescore_cache_fallback = check_bool(rescore_cache_fallback,
                                                  "rescore_cache_fallback", owner="open")
        #: seconds between checks of the live version by search (None: never, see the module
        #: docstring)
        self._check_every = check_consistency_interval(read_consistency_interval)
        #: when search last compared the cached searcher with a version (time.monotonic()), and
        #: the refresh() count then (a later refresh makes the next search compare again)
        self._checked_at = -float("inf")
        self._generation = 0
        self._checked_generation = -1
        self._write_lock = threading.Lock()
        self._search_lock = threading.Lock()
        #: (target version key, index_fallback, CodeSearcher or None): loaded once per version
        self._searcher_cache: tuple[str, bool, Any] | None = None
        self._encoder: BatchEncoder | None = None
        self._release: Callable[[], None] | None = None  # what connectors.hold holds (see close)
        self.closed = False
        self.refresh()
        self._hold()

    # -- lifetime --------------------------------------------------------------------------------
    def _hold(self) -> None:
        from connectors import hold

        self._release = hold(self.uri)

    def close(self) -> None:
        """Release what this object holds: for an embedded Qdrant path, the shared client and
        its storage lock once no other open collection in this process uses it (another client
        or process can then open the path). Idempotent; the object cannot be used afterwards
        (:meth:`encode_batch` encoders already handed out keep working)."""
        if self.closed:
            return
        self.closed = True
        release, self._release = self._release, None
        self._target = None
        self._searcher_cache = None  # the codes and index go with the last search that holds them
        if release is not None:
            release()

    def __enter__(self) -> "CompactCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self, call: str) -> None:
        if self.closed:
            raise InvalidInputError(
                f"The compact collection '{self.uri}' is closed; {call}() needs an open one "
                f"(tldr_index.open('{self.uri}') again).")

    # -- state -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-open the live target and its model (after a reindex or another writer's ``add``):
        the next search uses that version (with ``read_consistency_interval=None``, the only
        way to see other writers' rows). Cost: one open of the target and a parse of its
        model."""
        from connectors import open_target

        self._check_open("refresh")
        tgt = open_target(self.uri, **self._target_options)
        model = CompactModel.of_target(tgt)
        self._target, self.model = tgt, model
        self._generation += 1
        enc = self._encoder
        if enc is None or enc.model_bytes != tgt.model_bytes:
            lay = tgt.layout
            self._encoder = BatchEncoder(tgt.model_bytes, vector_column=lay.vector_column,
                                         codes_column=lay.codes_column, target_uri=tgt.uri,
                                         model=model)

    @property
    def layout(self):
        return self._target.layout

    @property
    def metadata(self) -> dict:
        return self._target.metadata

    @property
    def input_dim(self) -> int:
        return self.model.input_dim

    @property
    def dim(self) -> int:
        return self.model.output_dim

    def count(self) -> int:
        self._check_open("count")
        return self._target.count()

    def __repr__(self) -> str:
        m = self.model
        return (f"CompactCollection({self.uri!r}, {m.method} {m.input_dim}->{m.output_dim}, "
                f"{m.metric}, codec={m.codec_name}, code_bytes={m.code_bytes})")

    # -- encode ----------------------------------------------------------------------------------
    def _matrix(self, vectors: Any, what: str) -> np.ndarray:
        return check_matrix(vectors, self.layout.vector_column, self.model.input_dim,
                            self._target.uri, what)

    def encode(self, vectors: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(reduced (n, d) float32, PQ codes (n, code_bytes) uint8)`` of ``vectors`` (numpy
        (n, D), an Arrow list / fixed-size-list array, or a batch / table with the vector column).
        Codes are ``(n, 0)`` when the target stores none. Thread-safe."""
        self._check_open("encode")
        return self._encode_matrix(self._matrix(vectors, "vectors"))

    def _encode_matrix(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` of a matrix :meth:`_matrix` has already checked."""
        return self._encoder.encode_matrix(X)

    @property
    def encode_batch(self) -> BatchEncoder:
        """The :class:`BatchEncoder` of the live model: ``compact.encode_batch(batch)`` returns
        ``batch`` plus ``<vector>_reduced`` and ``pq_codes`` columns, and
        ``ds.map_batches(compact.encode_batch, batch_format="pyarrow")`` ships it (pickled: the
        model bytes, loaded once per worker process) to Ray Data workers."""
        self._check_open("encode_batch")
        return self._encoder

    # -- search ----------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, *, rescore: bool = False,
               nprobe: int | None = None, target_recall: float | None = None,
               exhaustive: bool = False, index_fallback: bool = False, **options: Any):
        """:func:`tldr_index.search.search` on this collection (queries in the original space;
        numpy or Arrow; ``nprobe``, ``target_recall``, ``exhaustive``, ``index_fallback`` and, in
        ``options``, ``shortlist``, ``rescore_cache`` (re-rank by row position from a local copy
        of the originals, opened once per version; default: the ``rescore_cache`` given to
        :func:`open`, ``rescore_cache=None`` here fetches from the source) as there). Searches one version (which: see
        ``read_consistency_interval`` in the module docstring): the codes and the code index are
        loaded once per version of the target and shared by every thread; with the default
        (no re-check) a call costs the query's encoding, the index scan and the rescoring only."""
        from .search import search

        self._check_open("search")
        Q = self._matrix(queries, "queries")
        searcher = self._searcher(index_fallback)
        if "rescore_cache" not in options and self.rescore_cache is not None:
            options["rescore_cache"] = self.rescore_cache
            options.setdefault("rescore_cache_fallback", self._rescore_cache_fallback)
        return search(self.uri, Q, k=k, rescore=rescore, nprobe=nprobe,
                      target_recall=target_recall, exhaustive=exhaustive,
                      index_fallback=index_fallback, searcher=searcher, **options)

    @property
    def recall_table(self):
        """The :class:`~tldr_index.recall_table.RecallTable` that ``nprobe`` / ``target_recall``
        and the default pick read (the code index's: measured at build on held-out rows, or by
        :meth:`calibrate` on your queries; ``describe()`` says which), or None without an index.
        Cost: the searcher's load on first use (see :meth:`search`)."""
        self._check_open("recall_table")
        s = self._searcher()
        return None if s is None or s.index is None else s.index.recall_table

    def calibrate(self, queries: Any, k: int = 10, *,
                  rescore_cache: str | os.PathLike | None = None, source: str | None = None,
                  source_options: dict | None = None):
        """Measure the recall table on ``queries`` (``(n, D)``, n >= 50, in the original space,
        like real queries: not rows of the collection) against their exact top ``k`` in the
        original space, store it in the target (one atomic switch of its record; the code index
        is rewritten with it, JSON metadata, no pickle) and use it from now on: ``search(...,
        target_recall=R)`` then picks the cheapest (nprobe, shortlist) that reached ``R`` on
        these queries, and every reader that opens the target afterwards gets it too.
        Returns the :class:`~tldr_index.recall_table.RecallTable` (``query_kind="queries"``).

        The truth is read from ``rescore_cache`` (default: the one given to :func:`open`;
        float16 originals, by row position) or else from the source (``source`` overrides the
        one recorded in the target). Cost: see :mod:`tldr_index.calibrate` (the exact search
        of the originals dominates: ``n x N x D`` multiply-adds). Raises
        :class:`InvalidInputError` (wrong dimension, NaN / inf, fewer than 50 queries, the
        target changed meanwhile: nothing stored) or :class:`InvalidParameterError` (no code
        index, a bad ``k``)."""
        from connectors import open_target

        from .calibrate import calibrated_table, check_queries, open_truth_source, store_table
        from .errors import InvalidParameterError
        from .searcher import CodeSearcher
        from .validation import check_int

        self._check_open("calibrate")
        Q = self._matrix(queries, "queries")
        searcher = self._searcher()
        if searcher is None or searcher.index is None:
            raise InvalidParameterError(
                f"calibrate needs a target with a code index; target '{self.uri}' has none "
                f"(fewer than index_min_rows rows when it was written, a store without codes, or "
                f"its rows changed since): every code is scanned, there is no nprobe to pick.")
        check_queries(len(Q))
        k = check_int(k, "k", low=1, high=searcher.n_rows, owner="calibrate")
        path = rescore_cache if rescore_cache is not None else self.rescore_cache
        cache, src = open_truth_source(searcher, rescore_cache=path, source=source,
                                       source_options=source_options)
        table = calibrated_table(searcher, Q, k, cache=cache, source=src)
        with self._write_lock:
            index = store_table(open_target(self.uri, **self._target_options), searcher, table)
            self.refresh()
            fresh = CodeSearcher(self._target, self.model, searcher.row_ids, None, index)
            with self._search_lock:
                self._searcher_cache = (self._target.version_key(), False, fresh)
        log.debug("calibrate: stored the recall table of %d queries in '%s'", len(Q), self.uri)
        return table

    def _searcher(self, index_fallback: bool = False):
        """The :class:`~tldr_index.searcher.CodeSearcher` of the version searched (None for a
        target without readable codes), loaded once per version. Which version: the one opened
        (``read_consistency_interval`` None) or the live one, checked at most every interval
        (one open of the target). Thread-safe."""
        from connectors import open_target

        from .searcher import CodeSearcher

        fallback = bool(index_fallback)
        c = self._searcher_cache
        every = self._check_every
        if c is not None and c[1] == fallback and self._checked_generation == self._generation \
                and (every is None or time.monotonic() - self._checked_at < every):
            return c[2]
        with self._search_lock:
            now, generation = time.monotonic(), self._generation
            if every is not None and now - self._checked_at >= every:
                tgt = open_target(self.uri, **self._target_options)
            else:
                tgt = self._target
            key = tgt.version_key()
            c = self._searcher_cache
            if c is None or c[0] != key or c[1] != fallback:
                got = CodeSearcher.open(tgt, CompactModel.of_target(tgt),
                                        index_fallback=index_fallback)
                c = self._searcher_cache = (key, fallback, got)
            self._checked_at, self._checked_generation = now, generation
            return c[2]

    def _keep_index(self, before: str, ids: pa.Array, Y: np.ndarray, codes: np.ndarray) -> None:
        """After an add: give the code index the rows written (so that they are found by indexed
        search) when the target's code array is the one indexed plus these rows at its end, and
        store it in the target again (the write dropped the stored one); otherwise load afresh
        (no stored index: every code is scanned until the next shrink or reindex)."""
        from connectors import open_target

        from .code_index import ARTIFACT_NAME
        from .errors import VerificationError
        from .searcher import CodeSearcher, read_codes

        with self._search_lock:
            c = self._searcher_cache
            self._searcher_cache = None
        if c is None or c[0] != before or c[2] is None or c[2].index is None:
            return
        old = c[2]
        tgt = open_target(self.uri, **self._target_options)
        lay = tgt.layout
        loaded = read_codes(tgt, lay.id_column, lay.codes_column)
        n0 = old.n_rows
        if loaded is None or len(loaded[0]) != n0 + len(ids) \
                or not old.index.matches(loaded[1][:n0]) \
                or not np.array_equal(loaded[1][n0:], codes) \
                or not loaded[0].slice(n0).equals(ids.cast(loaded[0].type)):
            log.info("add: the rows of '%s' moved; the code index is dropped (every code is "
                     "scanned until the next shrink).", self.uri)
            return
        ext = old.extended(ids, codes, Y)
        try:  # store it for other readers: one switch of the record, checked against the rows
            tgt.store_artifact(ARTIFACT_NAME, ext.index.to_bytes())
        except VerificationError as exc:
            log.info("add: %s (the code index stays in memory only).", exc)
        fresh = CodeSearcher(tgt, CompactModel.of_target(tgt), loaded[0], loaded[1], ext.index)
        with self._search_lock:
            self._searcher_cache = (tgt.version_key(), c[1], fresh)

    # -- add -------------------------------------------------------------------------------------
    def add(self, ids: Any, vectors: Any = None, payload: Any = None, *, upsert: bool = False,
            batch_rows: int = 4096, max_retries: int = 5) -> int:
        """Encode ``vectors`` and write them under ``ids`` (with ``payload``) into the live
        collection; returns the rows written.

        ``ids``: a sequence / Arrow array of ints or strings, or a record batch / table holding the
        id column, the vector column and payload columns (then leave ``vectors`` and ``payload``
        unset). ``payload``: None (nulls), a dict of columns, a batch / table, or (Qdrant) a list
        of dicts. Ids already in the collection with the same vector are skipped (a retried call
        writes nothing twice); with a different vector they are refused unless ``upsert``.
        Raises :class:`InvalidInputError` (wrong dimension, NaN, duplicate or colliding ids,
        unknown payload columns) before anything is written.
        """
        from .validation import check_bool, check_int

        self._check_open("add")
        check_bool(upsert, "upsert", owner="add")
        batch_rows = check_int(batch_rows, "batch_rows", low=1, owner="add")
        max_retries = check_int(max_retries, "max_retries", low=0, owner="add")
        with self._write_lock:
            self.refresh()
            lay = self.layout
            if isinstance(ids, (pa.RecordBatch, pa.Table)) and vectors is None:
                table = ids
                if lay.id_column not in table.schema.names:
                    raise InvalidInputError(
                        f"The 'ids' batch must have the id column '{lay.id_column}'. Got columns: "
                        f"{', '.join(table.schema.names)}.")
                ids = table.column(lay.id_column)
                vectors = table
                rest = [c for c in table.schema.names
                        if c not in (lay.id_column, lay.vector_column, lay.codes_column)]
                payload = table.select(rest) if rest and payload is None else payload
            X = self._matrix(vectors, "vectors")
            ids = self._ids(ids, len(X))
            ids, X, payload = self._dedupe(ids, X, payload)
            Y, codes = self._encode_matrix(X)
            if not upsert:
                keep = self._check_collisions(ids, Y)
                if not keep.all():
                    sel = pa.array(np.flatnonzero(keep))
                    ids, Y, codes = ids.take(sel), Y[keep], codes[keep]
                    payload = _take_payload(payload, np.flatnonzero(keep))
            if len(ids) == 0:
                return 0
            rows = self._rows(ids, Y, codes, payload)
            before = self._target.version_key()
            self._write(rows, batch_rows, max_retries)
            if codes.shape[1]:
                self._keep_index(before, ids, Y, codes)
            self.refresh()  # the version written (with the index stored again): searched next
            return rows.num_rows

    def _ids(self, ids: Any, n: int) -> pa.Array:
        from connectors.arrow_utils import check_ids

        arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(
            np.asarray(ids).tolist() if isinstance(ids, np.ndarray) else list(ids))
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if len(arr) != n:
            raise InvalidInputError(
                f"The 'ids' parameter of add must have one id per vector ({n}). Got {len(arr)}.")
        check_ids(arr, column="ids", source=f"add to '{self._target.uri}'")
        want = pa.string() if self._string_ids() else pa.int64()
        try:
            return arr.cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InvalidInputError(
                f"The 'ids' parameter of add must hold {want} ids like target "
                f"'{self._target.uri}'. Got {arr.type}.") from None

    def _string_ids(self) -> bool:
        return not pa.types.is_integer(self._target.id_type())

    def _dedupe(self, ids: pa.Array, X: np.ndarray, payload: Any):
        import pyarrow.compute as pc

        uniq = pc.unique(ids)
        if len(uniq) == len(ids):
            return ids, X, payload
        first = pc.index_in(uniq, value_set=ids).to_numpy(zero_copy_only=False)
        pos = pc.index_in(ids, value_set=uniq).to_numpy(zero_copy_only=False)
        rep = first[pos]  # the first row with the same id
        differ = np.flatnonzero((X != X[rep]).any(axis=1))
        if len(differ):
            raise InvalidInputError(
                f"The 'ids' parameter of add must not repeat an id with different vectors. Got "
                f"id {ids[int(differ[0])].as_py()!r} twice with different vectors.")
        keep = np.sort(first)
        return ids.take(pa.array(keep)), X[keep], _take_payload(payload, keep)

    def _check_collisions(self, ids: pa.Array, Y: np.ndarray) -> np.ndarray:
        """Mask of rows to write: ids not yet stored; stored with the same vector -> False;
        stored with a different one -> error."""
        found, stored = self._target.fetch_vectors(ids)
        keep = np.ones(len(ids), dtype=bool)
        if not found:
            return keep
        where = {v: i for i, v in enumerate(ids.to_pylist())}
        f16 = self.metadata.get("vector_dtype") == "float16"
        bad = []
        for v, y in zip(found, stored):
            i = where[v]
            mine = Y[i].astype(np.float16).astype(np.float32) if f16 else Y[i]
            if self.model.metric == "cosine" and self._target.normalizes_cosine:
                mine, y = mine / max(np.linalg.norm(mine), 1e-30), y / max(np.linalg.norm(y),
                                                                           1e-30)
            if np.allclose(mine, y, rtol=2e-3, atol=2e-3):
                keep[i] = False
            else:
                bad.append(v)
        if bad:
            raise InvalidInputError(
                f"The 'ids' parameter of add must not name rows already in target "
                f"'{self._target.uri}' with a different vector (pass upsert=True to replace "
                f"them). Got {len(bad)} such id(s), first {bad[0]!r}.")
        return keep

    def _rows(self, ids: pa.Array, Y: np.ndarray, codes: np.ndarray, payload: Any) -> pa.Table:
        from connectors.arrow_utils import JSON_FIELD_KEY, numpy_to_fsl

        lay = self.layout
        schema = self._target.row_schema()
        n = len(ids)
        if schema is None:  # Qdrant: the columns given
            cols = _payload_columns(payload, n)
            vt = pa.float16() if self.metadata.get("vector_dtype") == "float16" else pa.float32()
            fields = [pa.field(lay.id_column, ids.type)]
            arrays = [ids]
            for name, col in cols.items():
                meta = {JSON_FIELD_KEY: b"1"} if name == "payload" and pa.types.is_string(
                    col.type) else None
                fields.append(pa.field(name, col.type, metadata=meta))
                arrays.append(col)
            fields.append(pa.field(lay.vector_column, pa.list_(vt, Y.shape[1])))
            arrays.append(numpy_to_fsl(Y.astype(vt.to_pandas_dtype())))
            return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        given = _payload_columns(payload, n)
        allowed = [f.name for f in schema
                   if f.name not in (lay.id_column, lay.vector_column, lay.codes_column)]
        unknown = [c for c in given if c not in allowed]
        if unknown:
            raise InvalidInputError(
                f"The 'payload' parameter of add must only hold columns of target "
                f"'{self._target.uri}' ({', '.join(allowed) or 'none'}). Got unknown column(s): "
                f"{', '.join(unknown)}.")
        arrays = []
        for f in schema:
            if f.name == lay.id_column:
                arrays.append(ids.cast(f.type))
            elif f.name == lay.vector_column:
                arrays.append(numpy_to_fsl(Y.astype(f.type.value_type.to_pandas_dtype())))
            elif f.name == lay.codes_column:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)),
                                                                f.type.list_size))
            elif f.name in given:
                try:
                    arrays.append(given[f.name].cast(f.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidInputError(
                        f"Payload column '{f.name}' of add must have type {f.type}. Got "
                        f"{given[f.name].type} ({exc}).") from None
            else:
                arrays.append(pa.nulls(n, type=f.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _write(self, rows: pa.Table, batch_rows: int, max_retries: int) -> None:
        self._target.upsert(rows, batch_rows=batch_rows, max_retries=max_retries)


def _payload_columns(payload: Any, n: int) -> dict[str, pa.Array]:
    if payload is None:
        return {}
    if isinstance(payload, (pa.RecordBatch, pa.Table)):
        cols = {name: payload.column(name) for name in payload.schema.names}
    elif isinstance(payload, dict):
        cols = {k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(
            v.tolist() if isinstance(v, np.ndarray) else list(v)) for k, v in payload.items()}
    elif isinstance(payload, (list, tuple)) and all(isinstance(p, dict) for p in payload):
        import json
        cols = {"payload": pa.array([json.dumps(p, sort_keys=True) for p in payload],
                                    type=pa.string())}
    else:
        raise InvalidInputError(
            f"The 'payload' parameter of add must be None, a dict of columns, a record batch / "
            f"table or a list of dicts. Got {type(payload).__name__}.")
    out = {}
    for k, v in cols.items():
        v = v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v
        if len(v) != n:
            raise InvalidInputError(
                f"Payload column '{k}' of add must have one value per vector ({n}). Got {len(v)}.")
        out[k] = v
    return out


def _take_payload(payload: Any, rows: np.ndarray) -> Any:
    if payload is None:
        return None
    if isinstance(payload, (pa.RecordBatch, pa.Table)):
        return payload.take(pa.array(rows))
    if isinstance(payload, dict):
        return {k: (v.take(pa.array(rows)) if isinstance(v, (pa.Array, pa.ChunkedArray))
                    else [list(v)[i] for i in rows]) for k, v in payload.items()}
    return [payload[i] for i in rows]


def check_consistency_interval(value: Any) -> float | None:
    """``read_consistency_interval`` (None or a ``datetime.timedelta`` >= 0) in seconds, or one
    :class:`InvalidParameterError`."""
    from .errors import InvalidParameterError

    if value is None:
        return None
    if not isinstance(value, _dt.timedelta) or value < _dt.timedelta(0):
        raise InvalidParameterError(
            f"The 'read_consistency_interval' parameter of open must be None (never re-check "
            f"the target) or a datetime.timedelta >= 0 (check the live version at most that "
            f"often; timedelta(0): every search). Got {value!r}.")
    return value.total_seconds()


def open(uri: str | os.PathLike, *,  # noqa: A001
         read_consistency_interval: _dt.timedelta | None = None,
         rescore_cache: str | os.PathLike | None = None, rescore_cache_fallback: bool = False,
         **target_options: Any) -> CompactCollection:
    """Open the compact collection at ``uri`` (any target URI written by ``shrink``).

    ``read_consistency_interval`` (as in ``lancedb.connect``): None (default) searches the version
    opened plus this object's own ``add`` calls, never re-checking the target (call
    :meth:`CompactCollection.refresh` to see other writers' rows); ``timedelta(0)`` checks the
    live version on every search (~1 ms: a re-open of the target); a positive ``timedelta``
    checks at most that often. ``rescore_cache``: a local copy of the originals
    (``write_rescore_cache`` / ``tldr-index rescore-cache``) that every ``search(...,
    rescore=True)`` re-ranks from by row position (0.15 ms per query for 100 rows of 384 dims,
    where the source costs 1.5-2.5 ms per 100 rows on Lance: see ``benchmarks/search.py``) and
    :meth:`CompactCollection.calibrate` reads its truth from; its files must exist (checked
    here), its rows are checked against the target's on the first rescored search
    (a mismatch raises :class:`ModelFormatError`, or with ``rescore_cache_fallback`` logs and
    fetches from the source). ``target_options`` go to :func:`connectors.open_target`.

    Raises :class:`SourceNotFoundError` or :class:`ModelFormatError` (missing / corrupt model,
    a missing rescore cache), :class:`InvalidParameterError` (a bad
    ``read_consistency_interval`` or ``rescore_cache_fallback``)."""
    return CompactCollection(os.fspath(uri) if isinstance(uri, os.PathLike) else uri,
                             read_consistency_interval=read_consistency_interval,
                             rescore_cache=rescore_cache,
                             rescore_cache_fallback=rescore_cache_fallback, **target_options)
