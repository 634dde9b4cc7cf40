"""I/O edges of tldr-index: read a vector collection, write the compact target back.

``open_source(uri)`` -> :class:`Source` (streams validated Arrow batches), ``open_sink(uri)`` ->
:class:`Sink` (staged, verified, atomically published target), ``open_target(uri)`` ->
:class:`Target` (model + metadata + rows + search). URIs: see :mod:`connectors.uri`.

Modules: ``base`` (protocol), ``uri`` (parsing), ``arrow_utils`` (vector columns, validation),
``ids`` (id hashing, digest, duplicates), ``lance_store``, ``parquet_store``, ``qdrant_store``,
``qdrant_edge_store`` (the Qdrant engine embedded: ``qdrant+edge://``).
Each store module owns everything specific to its store (reading, the sink, deltas, rollback,
disk size, staging clean-up, its Ray Data read); the engine calls only the base classes' public
methods (see ``connectors/README.md``). Tests: ``tests/test_store_contract.py`` (the same contract
on every store), ``tests/test_connectors_*.py`` (what only one store does).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .base import DISTANCES, Layout, Piece, Sink, Source, Target
from .ids import IdDigest, ids_digest
from .uri import ParsedURI, absolute_uri, default_target_uri, lancedb_uri, parse_uri, redact

__all__ = ["open_source", "open_sink", "stores_artifacts", "open_target", "Source", "Sink", "Target", "Layout", "Piece",
           "IdDigest", "ids_digest", "parse_uri", "redact", "lancedb_uri", "default_target_uri",
           "absolute_uri", "disk_bytes", "discard_staging", "hold", "targets_built_from",
           "DISTANCES", "ParsedURI", "store_quantizer_kinds", "measure_store_quantizers"]



def open_source(uri: str | os.PathLike, *, vector_column: str | None = None,
                id_column: str | None = None, **opts: Any) -> Source:
    """Open a read-only source. Options: ``payload_columns`` (default: all other columns; Qdrant:
    one JSON ``payload`` column), ``distance`` (Lance/Parquet: default the index metric or "l2";
    Qdrant: must match), Lance ``version``, Qdrant ``client``/``api_key``/``timeout``.

    Raises :class:`UnsupportedURIError`, :class:`SourceNotFoundError`,
    :class:`StoreUnavailableError`, :class:`MissingColumnError`, :class:`InvalidInputError`
    (bad vector column type, empty source).
    """
    p = parse_uri(uri)
    shown = redact(p.uri)
    if p.kind == "lance":
        from .lance_store import LanceSource
        return LanceSource(p.path, uri=shown, table=p.table, db=p.db,
                           vector_column=vector_column, id_column=id_column, **opts)
    if p.kind == "parquet":
        from .parquet_store import ParquetSource
        return ParquetSource(p.path, uri=shown, vector_column=vector_column,
                             id_column=id_column, **opts)
    if p.kind == "qdrant-edge":
        from .qdrant_edge_store import QdrantEdgeSource
        return QdrantEdgeSource(p.path, uri=shown, vector_column=vector_column,
                                id_column=id_column, **opts)
    from .qdrant_store import QdrantSource
    return QdrantSource(p, uri=shown, vector_column=vector_column, id_column=id_column, **opts)


def stores_artifacts(uri: str | os.PathLike) -> bool:
    """True where the target store keeps artifacts (:meth:`Sink.store_artifact`): the file
    stores (Lance, Parquet); Qdrant keeps its own index. Opens nothing."""
    return parse_uri(uri).kind in ("lance", "parquet")


def open_sink(uri: str | os.PathLike, **opts: Any) -> Sink:
    """Open a sink (nothing is written before :meth:`Sink.create`). Options per store: Lance
    ``index_min_rows``, ``flush_rows``, ``max_rows_per_file``, ``index_options``; Parquet
    ``rows_per_file``, ``compression``, ``keep_previous``; Qdrant ``client``, ``api_key``, ``upsert_batch``,
    ``max_retries``, ``backoff_s``, ``max_total_s``, ``compression``, ``keep_previous``,
    ``named_vector``, ``store_codes``; Qdrant Edge ``quantization``, ``compression``,
    ``keep_previous``, ``upsert_batch``, ``workers``, ``store_codes``, ``on_disk``."""
    p = parse_uri(uri)
    shown = redact(p.uri)
    if p.kind == "lance":
        from .lance_store import LanceSink
        return LanceSink(p.path, uri=shown, **opts)
    if p.kind == "parquet":
        from .parquet_store import ParquetSink
        return ParquetSink(p.path, uri=shown, **opts)
    if p.kind == "qdrant-edge":
        from .qdrant_edge_store import QdrantEdgeSink
        return QdrantEdgeSink(p.path, uri=shown, **opts)
    from .qdrant_store import QdrantSink
    return QdrantSink(p, uri=shown, **opts)


def open_target(uri: str | os.PathLike, **opts: Any) -> Target:
    """Open a published target: ``.metadata``, ``.model_bytes`` (sha256-checked), ``.layout``,
    ``count()``, ``iter_batches()``, ``search(query, k)``. Lance accepts ``version=``; Qdrant
    ``client``/``api_key``/``timeout``. Raises :class:`SourceNotFoundError` or
    :class:`ModelFormatError` (not a tldr-index target, corrupt model)."""
    p = parse_uri(uri)
    shown = redact(p.uri)
    if p.kind == "lance":
        from .lance_store import LanceTarget
        return LanceTarget(p.path, uri=shown, table=p.table, db=p.db, **opts)
    if p.kind == "parquet":
        from .parquet_store import ParquetTarget
        return ParquetTarget(os.path.abspath(p.path), uri=shown, **opts)
    if p.kind == "qdrant-edge":
        from .qdrant_edge_store import QdrantEdgeTarget
        return QdrantEdgeTarget(p.path, uri=shown, **opts)
    from .qdrant_store import QdrantTarget
    return QdrantTarget(p, uri=shown, **opts)


def disk_bytes(uri: str | os.PathLike) -> int | None:
    """Bytes on disk of a file-based collection, source or target (a Lance dataset's latest
    version, the Parquet files named plus tldr-index sidecars), an embedded Qdrant collection's storage
    directory, its alias resolved), without opening it as a source or target (no column checks).
    None for a Qdrant server or in-memory store, or a path where nothing is. Cost: file sizes."""
    p = parse_uri(uri)
    if p.kind == "lance":
        from .lance_store import disk_bytes_at as lance_bytes
        return lance_bytes(p.path)
    if p.kind == "parquet":
        from .parquet_store import disk_bytes_at as parquet_bytes
        return parquet_bytes(p.path, str(uri))
    if p.kind == "qdrant-edge":
        from .qdrant_edge_store import disk_bytes_at as edge_bytes
        return edge_bytes(p.path)
    from .qdrant_clients import disk_bytes_at as qdrant_bytes
    return qdrant_bytes(p)


def discard_staging(target_uri: str | os.PathLike, ref: dict) -> None:
    """Remove what an interrupted write of ``target_uri`` left behind: the staging area recorded
    as ``ref`` (a :meth:`Sink.staging_ref`); never the published target. Best effort."""
    open_sink(target_uri).discard_staging(ref)


def hold(uri: str | os.PathLike) -> Callable[[], None]:
    """Keep the store behind ``uri`` open for a long-lived user (``tldr_index.open``) and return
    the function that lets it go. Only an embedded Qdrant path holds something (its one client
    per process and the storage lock, shared by reference count) and a Qdrant Edge shard (its
    one handle per process, closed when the last holder lets go); elsewhere both are no-ops."""
    p = parse_uri(uri)
    if p.kind == "qdrant" and p.mode == "path":
        from .qdrant_clients import hold_client, release_client

        hold_client(p)
        return lambda: release_client(p)
    if p.kind == "qdrant-edge":  # the engine admits one handle per shard: close it at the end
        from .qdrant_edge_source import hold_path, let_go_path

        hold_path(p.path)
        return lambda: let_go_path(p.path)
    return lambda: None


def store_quantizer_kinds(source_uri: str | os.PathLike,
                          kinds: str | Any | None = None) -> tuple[str, ...]:
    """The checked names of the store's own quantizers that :func:`measure_store_quantizers` can
    measure for ``source_uri`` (``kinds``: names, one comma-separated string or None / "all": the
    default set). Qdrant sources only (server, embedded or Edge: measured on Qdrant Edge); any
    other store raises :class:`InvalidParameterError` (nothing is opened)."""
    from tldr_index.errors import InvalidParameterError

    p = parse_uri(source_uri)
    if p.kind not in ("qdrant", "qdrant-edge"):
        raise InvalidParameterError(
            f"The 'store_quantizers' parameter of eval needs a Qdrant source (qdrant://, "
            f"qdrant+path://, qdrant+edge://): Qdrant's own quantizers are what it measures. "
            f"Got source '{redact(str(source_uri))}' ({p.kind}).")
    from .qdrant_edge_quantizers import kind_names
    return kind_names(kinds)


def measure_store_quantizers(source_uri: str | os.PathLike, chunks: Any, n_rows: int, dim: int,
                             metric: str, queries: Any, k: int, **options: Any) -> list[dict]:
    """The store's own quantizers on the original vectors of ``source_uri`` (streamed as
    ``chunks``: ``(start, block)`` pairs), measured on the real engine: for a Qdrant source,
    :func:`connectors.qdrant_edge_quantizers.measure_quantizers` (its options and its result
    dicts: positions found, latency, bytes per vector, raw and rescored)."""
    kinds = store_quantizer_kinds(source_uri, options.pop("kinds", None))
    from .qdrant_edge_quantizers import measure_quantizers
    return measure_quantizers(chunks, n_rows, dim, metric, queries, k, kinds=kinds, **options)


def targets_built_from(source_uri: str | os.PathLike) -> list[str] | None:
    """URIs of the tldr-index targets beside the LanceDB table ``source_uri`` (in the same
    database) whose metadata records it as their source, sorted; None when ``source_uri`` is not
    a LanceDB table (no database to look in). Datasets that are not tldr-index targets, or that
    cannot be read, are skipped. Cost: opens the metadata of every dataset in the database."""
    p = parse_uri(source_uri)
    if p.kind != "lance" or not p.db:
        return None
    from .lance_store import dataset_names

    want = absolute_uri(source_uri).rstrip("/")
    parent = str(source_uri).rstrip("/").rsplit("/", 1)[0]
    found = []
    for name in dataset_names(p.db):
        uri = f"{parent}/{name}"
        try:
            meta = open_target(uri).metadata
        except Exception:  # not a tldr-index target (or unreadable): not ours to pick
            continue
        if str(meta.get("source", "")).rstrip("/") == want:
            found.append(uri)
    return found
