"""Change a published compact target by a delta (rows to upsert, ids to delete), atomically, keeping
the previous version for :func:`rollback`. Used by :mod:`tldr_index.reindex` and
:class:`tldr_index.compact_collection.CompactCollection`.

How each store switches (readers see the old or the new rows, never a mix):

=========  ===================================================================================
Lance      one ``merge_insert`` commit (update matched ids, insert new ones, delete the deleted
           ones) on the live dataset, then the record (schema metadata) as the next version;
           rows and model are consistent in both. Previous: the version before (Lance keeps it);
           rollback ``restore()``-s it as a new version. The vector index stays; new rows are
           scanned flat until the index is rebuilt by a refit.
Parquet    the kept rows plus the new ones are staged in a new directory and exchanged with the
           live one (``renameat2``); the old directory stays as ``.<name>.tldr-previous``.
           Cost: one pass over the target (the reduced rows are small).
Qdrant     a new collection ``<alias>__v<n+1>``: kept points copied (scroll + upsert), new rows
           upserted, then the alias switched in one call; the previous collection stays (older
           ones are deleted). Cost: one copy of the target's points.
=========  ===================================================================================
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._faults import fault_point
from .errors import InvalidInputError, VerificationError

log = logging.getLogger(__name__)


def kind_of(tgt) -> str:
    return type(tgt).__name__.removesuffix("Target").lower()


def target_ids(tgt) -> pa.Array:
    """Every id of a published target (memory: the ids)."""
    lay = tgt.layout
    if kind_of(tgt) == "qdrant":
        parts = list(tgt.iter_ids())
    else:
        parts = [b.column(0) for b in tgt.iter_columns([lay.id_column])]
    if not parts:
        return pa.array([], type=pa.int64())
    return pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p
                             for p in parts])


def row_schema(tgt) -> pa.Schema | None:
    """Schema of the target's rows (Lance, Parquet); None for Qdrant (schemaless payload)."""
    k = kind_of(tgt)
    if k == "lance":
        return tgt.dataset.schema.remove_metadata()
    if k == "parquet" and tgt.files:
        import pyarrow.parquet as pq
        return pq.read_schema(tgt.files[0]).remove_metadata()
    return None


def _sql_list(col: str, ids: pa.Array) -> str:
    vals = ids.to_pylist()
    if pa.types.is_integer(ids.type):
        body = ",".join(str(int(v)) for v in vals)
    else:
        body = ",".join("'" + str(v).replace("'", "''") + "'" for v in vals)
    return f"`{col}` IN ({body})"


def fetch_reduced(tgt, ids: pa.Array) -> tuple[list, np.ndarray]:
    """``(found ids, their stored reduced vectors as float32)`` for the ``ids`` present."""
    lay = tgt.layout
    k = kind_of(tgt)
    if len(ids) == 0:
        return [], np.empty((0, 0), dtype=np.float32)
    from connectors.arrow_utils import vectors_to_numpy
    if k == "qdrant":
        from connectors.qdrant_store import point_id
        pids = [point_id(v) for v in ids.to_pylist()]
        recs = tgt.client.retrieve(tgt.collection, ids=pids, with_payload=True,
                                   with_vectors=[tgt._vector_name] if tgt._vector_name else True)
        if not recs:
            return [], np.empty((0, 0), dtype=np.float32)
        found = tgt._ids(recs).to_pylist()
        vecs = [r.vector[tgt._vector_name] if tgt._vector_name else r.vector for r in recs]
        return found, np.asarray(vecs, dtype=np.float32).reshape(len(found), -1)
    expr = pc.field(lay.id_column).isin(ids)
    if k == "lance":
        t = tgt.dataset.to_table(columns=[lay.id_column, lay.vector_column], filter=expr)
    else:
        import pyarrow.dataset as pds
        t = pds.dataset(tgt.files, format="parquet").to_table(
            columns=[lay.id_column, lay.vector_column], filter=expr)
    if t.num_rows == 0:
        return [], np.empty((0, 0), dtype=np.float32)
    X = vectors_to_numpy(t.column(1).combine_chunks()).astype(np.float32)
    return t.column(0).to_pylist(), X


def _new_record_text(tgt, metadata: dict) -> str:
    from connectors.base import dump_record

    rec = dict(tgt.record)
    rec["metadata"] = metadata
    rec["writer"] = dict(rec.get("writer", {}), written_utc=_dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"))
    return dump_record(rec)


def _retry_conflicts(fn, what: str, max_retries: int = 5, backoff_s: float = 0.2):
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


# ----------------------------------------------------------------------------- in-place upserts

def upsert_in_place(tgt, rows: pa.Table, *, batch_rows: int = 4096, max_retries: int = 5) -> None:
    """Upsert ``rows`` (the target's row schema) into the live target: Lance one commit per
    ``batch_rows``, Qdrant retried upserts of ``batch_rows`` points. Parquet has no in-place
    writes: see :func:`publish_delta`."""
    k = kind_of(tgt)
    lay = tgt.layout
    if k == "lance":
        import lance
        for s in range(0, rows.num_rows, batch_rows):
            part = rows.slice(s, batch_rows)
            _retry_conflicts(lambda: lance.dataset(tgt.path).merge_insert(lay.id_column)
                             .when_matched_update_all().when_not_matched_insert_all()
                             .execute(part), f"upsert into '{tgt.uri}'", max_retries)
        return
    if k == "qdrant":
        sink = _qdrant_writer(tgt, rows.schema, tgt.collection, max_retries=max_retries,
                              upsert_batch=batch_rows)
        for b in rows.to_batches(max_chunksize=batch_rows):
            sink._append(b)
        return
    raise NotImplementedError(f"{type(tgt).__name__} has no in-place upsert.")


def _qdrant_writer(tgt, schema: pa.Schema, collection: str, **opts: Any):
    """A QdrantSink bound to an existing ``collection`` (its point builder and retries)."""
    from connectors.arrow_utils import JSON_FIELD_KEY
    from connectors.qdrant_store import QdrantSink

    lay = tgt.layout
    sink = QdrantSink(tgt._p, uri=tgt.uri, client=tgt.client, **opts)
    sink.schema, sink.layout, sink.collection = schema, lay, collection
    sink._vector_name = tgt._vector_name
    sink._string_ids = not pa.types.is_integer(schema.field(lay.id_column).type)
    sink._json_cols = [f.name for f in schema if (f.metadata or {}).get(JSON_FIELD_KEY) == b"1"]
    sink._payload_cols = [c for c in schema.names
                          if c not in (lay.id_column, lay.vector_column, lay.codes_column)]
    return sink


# ----------------------------------------------------------------------------- publish a delta

def current_handle(tgt) -> dict:
    """What :func:`rollback` needs to come back to the live version of ``tgt``."""
    k = kind_of(tgt)
    if k == "lance":
        return {"kind": "lance", "version": int(tgt.version)}
    if k == "qdrant":
        return {"kind": "qdrant", "collection": tgt.collection}
    return {"kind": "parquet", "previous": previous_dir(tgt.path)}


def previous_dir(path: str) -> str:
    parent, name = os.path.split(os.path.abspath(path).rstrip("/"))
    return os.path.join(parent, f".{name}.tldr-previous")


def publish_delta(tgt, rows: pa.Table, delete_ids: pa.Array, metadata: dict, *,
                  expected_count: int, expected_digest: str, batch_rows: int = 8192,
                  staged: Callable[[dict], None] | None = None) -> dict:
    """Replace the rows of ``rows``' ids, add the new ones, delete ``delete_ids``, and store
    ``metadata`` in the record, as one switch (see the module docstring). Returns the handle of
    the previous version. Raises :class:`VerificationError` (and switches back) if the result
    does not hold ``expected_count`` rows with ids digest ``expected_digest``.

    ``staged(ref)`` is called before anything is written into a new version (Parquet:
    ``{"path": staging directory}``, Qdrant: ``{"collection": new collection}``), so a caller can
    remove what a killed run left (:func:`tldr_index.pipeline._discard_staging`)."""
    k = kind_of(tgt)
    if k == "lance":
        return _lance_delta(tgt, rows, delete_ids, metadata, expected_count)
    staged = staged or (lambda ref: None)
    if k == "parquet":
        return _parquet_delta(tgt, rows, delete_ids, metadata, expected_count, expected_digest,
                              batch_rows, staged)
    return _qdrant_delta(tgt, rows, delete_ids, metadata, expected_count, expected_digest,
                         batch_rows, staged)


def _lance_delta(tgt, rows, delete_ids, metadata, expected_count) -> dict:
    import lance

    from connectors.base import RECORD_KEY

    lay = tgt.layout
    prev = int(lance.dataset(tgt.path).version)
    if prev != tgt.version:
        raise VerificationError(
            f"Target '{tgt.uri}' changed while reindex was reading it (version {tgt.version} -> "
            f"{prev}); nothing was written. Run reindex again.")
    ds = lance.dataset(tgt.path)
    if rows.num_rows:
        b = ds.merge_insert(lay.id_column).when_matched_update_all().when_not_matched_insert_all()
        if len(delete_ids):
            b = b.when_not_matched_by_source_delete(_sql_list(lay.id_column, delete_ids))
        b.execute(rows.cast(ds.schema.remove_metadata()))
    elif len(delete_ids):
        ds.delete(_sql_list(lay.id_column, delete_ids))
    ds = lance.dataset(tgt.path)
    if ds.count_rows() != expected_count:
        got = ds.count_rows()
        lance.dataset(tgt.path, version=prev).restore()
        raise VerificationError(
            f"Target '{tgt.uri}' must hold {expected_count} rows after the update. Got {got}; "
            f"version {prev} was restored.")
    fault_point("reindex:rows-written")  # rows committed, the record not yet
    ds.update_schema_metadata({RECORD_KEY: _new_record_text(tgt, metadata)})
    log.info("Updated %s: version %d -> %d.", tgt.uri, prev, lance.dataset(tgt.path).version)
    return {"kind": "lance", "version": prev}


def _drop_mask(ids: pa.Array, drop: pa.Array) -> pa.Array:
    return pc.invert(pc.is_in(ids, value_set=drop))


def _parquet_delta(tgt, rows, delete_ids, metadata, expected_count, expected_digest,
                   batch_rows, staged) -> dict:
    from connectors import open_sink

    lay = tgt.layout
    schema = row_schema(tgt) or rows.schema
    drop = pa.concat_arrays([rows.column(lay.id_column).combine_chunks().cast(delete_ids.type),
                             delete_ids]) if rows.num_rows else delete_ids
    sink = open_sink(tgt.uri if "://" in tgt.uri else tgt.path, keep_previous=True)
    with sink:
        sink.create(schema, id_column=lay.id_column, vector_column=lay.vector_column,
                    distance=lay.distance, codes_column=lay.codes_column, overwrite=True)
        staged({"path": sink.staging})
        for b in tgt.iter_batches(batch_rows):
            keep = b.filter(_drop_mask(b.column(lay.id_column), drop)) if len(drop) else b
            sink.append(pa.RecordBatch.from_arrays(keep.columns, schema=schema))
        for b in rows.cast(schema).to_batches(max_chunksize=batch_rows):
            sink.append(b)
        sink.store_model(tgt.model_bytes, metadata)
        sink.verify(expected_count, expected_digest)
        fault_point("reindex:rows-written")  # new version staged and verified, not switched
        sink.publish()
    return {"kind": "parquet", "previous": previous_dir(tgt.path)}


def _qdrant_delta(tgt, rows, delete_ids, metadata, expected_count, expected_digest,
                  batch_rows, staged) -> dict:
    from qdrant_client import models as m

    from connectors.qdrant_store import QdrantSink

    lay = tgt.layout
    drop = set(delete_ids.to_pylist()) | set(rows.column(lay.id_column).to_pylist())
    sink = QdrantSink(tgt._p, uri=tgt.uri, client=tgt.client, keep_previous=True,
                      named_vector=tgt._vector_name is not None)
    with sink:
        sink.create(rows.schema, id_column=lay.id_column, vector_column=lay.vector_column,
                    distance=lay.distance, codes_column=lay.codes_column
                    if lay.codes_column in rows.schema.names else None, overwrite=True)
        staged({"collection": sink.collection})
        wv = [tgt._vector_name] if tgt._vector_name else True
        for pts in tgt._pages(min(batch_rows, 1024), True, wv):
            ids = tgt._ids(pts).to_pylist()
            keep = [p for p, i in zip(pts, ids) if i not in drop]
            if keep:
                batch = [m.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in keep]
                sink._retry(lambda: tgt.client.upsert(sink.collection, points=batch, wait=True),
                            f"copy {len(batch)} points into '{sink.collection}'")
        for b in rows.to_batches(max_chunksize=batch_rows):
            sink.append(b)
        sink.store_model(tgt.model_bytes, metadata)
        sink.verify(expected_count, expected_digest)
        fault_point("reindex:rows-written")  # new version staged and verified, not switched
        sink.publish()
    prune_qdrant_versions(tgt.client, sink.alias, keep=(sink.collection, tgt.collection))
    return {"kind": "qdrant", "collection": tgt.collection}


def prune_qdrant_versions(client, alias: str, keep: tuple[str, ...]) -> None:
    """Delete ``<alias>__v<n>`` collections other than ``keep`` (best effort)."""
    pat = re.compile(re.escape(alias) + r"__v\d+$")
    for c in client.get_collections().collections:
        if pat.match(c.name) and c.name not in keep:
            try:
                client.delete_collection(c.name)
            except Exception as exc:  # leftovers only waste space
                log.warning("Could not delete old collection %s: %s", c.name, exc)


# ----------------------------------------------------------------------------------- rollback

def rollback_to(tgt, handle: dict) -> dict:
    """Switch ``tgt`` back to the version of ``handle``; returns the handle of the version left
    (so a second rollback undoes the first)."""
    k = kind_of(tgt)
    if handle.get("kind") != k:
        raise InvalidInputError(
            f"The rollback record of target '{tgt.uri}' is for a {handle.get('kind')} target. "
            f"Got a {k} target.")
    if k == "lance":
        import lance
        here = int(lance.dataset(tgt.path).version)
        try:
            lance.dataset(tgt.path, version=int(handle["version"])).restore()
        except (ValueError, OSError) as exc:
            raise InvalidInputError(
                f"Version {handle['version']} of target '{tgt.uri}' is gone ({exc}); cannot "
                f"roll back.") from None
        return {"kind": "lance", "version": here}
    if k == "parquet":
        from connectors.parquet_store import exchange_dirs
        prev = handle["previous"]
        if not os.path.isdir(prev):
            raise InvalidInputError(
                f"The previous version of target '{tgt.uri}' ('{prev}') is gone; cannot roll "
                f"back.")
        if not exchange_dirs(prev, tgt.path):
            tmp = prev + ".swap"
            os.rename(tgt.path, tmp)
            os.rename(prev, tgt.path)
            os.rename(tmp, prev)
        return {"kind": "parquet", "previous": prev}
    from qdrant_client import models as m
    names = {c.name for c in tgt.client.get_collections().collections}
    if handle["collection"] not in names:
        raise InvalidInputError(
            f"The previous collection '{handle['collection']}' of target '{tgt.uri}' is gone; "
            f"cannot roll back.")
    alias = tgt._p.collection
    ops = [m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias)),
           m.CreateAliasOperation(create_alias=m.CreateAlias(
               collection_name=handle["collection"], alias_name=alias))]
    tgt.client.update_collection_aliases(change_aliases_operations=ops)
    return {"kind": "qdrant", "collection": tgt.collection}
