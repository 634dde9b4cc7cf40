"""Encode + PQ + write of every row as a Ray Data job (``shrink(..., engine="ray")``).

What runs where::

    driver (this process)                 Ray tasks (read + encode + write fused in one task;
    ---------------------                 the model parsed once per worker process)
    scan (:mod:`tldr_index.shrink.ray_scan`, Ray tasks) / kNN / train (on the sample)
    compact model -> ray.put(bytes)
    ray.data.read_lance / read_parquet -> map_batches(_encode_task): encode_record_batch per
                                          batch; each shard written into the sink's staging
                                          (Lance fragment files / one Parquet file)
    shard list (in source order)       <- one small row per shard (fragment JSON / path, rows)
    sink.adopt_shards -> store_model -> verify -> publish   (one commit, the connectors' own code;
                                          verify reads the staged files' ids back in one task
                                          per file, :func:`ray_map`)

The model travels as its safetensors bytes through the object store (one ``ray.put``; no pickle
of model objects); each worker process rebuilds it with :meth:`CompactModel.from_bytes` once. The
map is a task, not an actor, so Ray fuses it with the read task: source rows do not cross the
object store (except when a source has too few fragments/files for the workers, see
:func:`read_source`). Row computation is
:func:`tldr_index.shrink.encode_batches.encode_record_batch`, the same
code as the single-process write, so both engines produce the same target
(``tests/test_ray_engine.py``).

The staging location must be visible to every worker: a local disk on one machine, a shared file
system (NFS, Lustre, FSx...) on a cluster. Ray is started locally (``ray.init()``, or the cluster
named by ``RAY_ADDRESS``) unless the caller already called ``ray.init``; it is shut down again
only if this module started it.

Memory per worker: one shard's source rows as Arrow (``shard_rows x D x 4`` bytes) plus one
``batch_rows`` block being encoded. Bytes moved: each worker reads its shard of the source and
writes ``shard_rows x (d x 2 + code_bytes + payload)`` bytes; the driver receives a few hundred bytes
per shard.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable

import pyarrow as pa

from ..compact import CompactModel
from .encode_batches import encode_record_batch
from ..errors import InvalidParameterError, TLDRError

log = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'tldr-index[ray]'"
DEFAULT_SHARD_ROWS = 262_144  # rows per Ray batch = per written shard (1M rows -> 4 shards)


def require_ray(owner: str = "shrink"):
    """Import and return ``ray`` (with Ray Data), or raise a one-line error with the install
    command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InvalidParameterError(
            f"The 'engine' parameter of {owner} is 'ray', which needs Ray Data, but it cannot be "
            f"imported ({exc}). Install it with: {RAY_INSTALL}") from None
    return ray


def check_supported(source_uri: str, target_uri: str) -> None:
    """engine='ray' reads Lance / Parquet with Ray's readers and writes Lance / Parquet shards."""
    from connectors import parse_uri

    for role, uri in (("source", source_uri), ("target", target_uri)):
        kind = parse_uri(uri).kind
        if kind not in ("lance", "parquet"):
            raise InvalidParameterError(
                f"The 'engine' parameter of shrink is 'ray', which needs a Lance/LanceDB or "
                f"Parquet {role}. Got {kind} {role} '{uri}'; use engine='local'.")


def read_source(src, shard_rows: int = DEFAULT_SHARD_ROWS,
                min_pieces: int = 1):
    """The source's id, vector and payload columns as a ``ray.data.Dataset``, through Ray's readers
    (:meth:`connectors.Source.ray_read`: a Lance source at the version the pipeline pinned;
    Parquet files in the source's order).

    Ray reads one task per Lance fragment / Parquet file, fused with the encode that follows.
    With fewer pieces than ``min_pieces`` (e.g. one big fragment) the rows are re-cut into blocks
    of ``shard_rows`` (a streaming repartition, through the object store) so that several
    workers get work."""
    cols = [src.id_column, src.vector_column, *src.payload_columns]
    read = src.ray_read(cols)
    if read is not None and read[1]:
        ds, pieces = read
        if pieces < min_pieces:
            ds = ds.repartition(target_num_rows_per_block=shard_rows)
        return ds
    raise InvalidParameterError(
        f"The 'engine' parameter of shrink is 'ray', which reads Lance or Parquet sources. Got "
        f"{type(src).__name__} '{src.uri}'.")


class _EncodeShards:
    """Encodes one shard (a pyarrow Table of source rows) and, with ``staging``, writes it there.

    ``writer`` None: returns the encoded rows; else (a sink's :meth:`connectors.Sink.shard_writer`)
    one row describing the written shard (``shard``: what the writer returned, e.g. fragment JSON
    for Lance, the file path for Parquet; ``rows``)."""

    def __init__(self, model: CompactModel, schema: pa.Schema, vector_column: str,
                 codes_column: str | None, batch_rows: int, source: str,
                 writer: Callable | None = None, skip_invalid: bool = False,
                 cosine: bool = False):
        self.model = model
        self.skip_invalid, self.cosine = skip_invalid, cosine
        self.written = 0
        self.schema, self.vector_column, self.codes_column = schema, vector_column, codes_column
        self.batch_rows, self.source = batch_rows, source
        self.writer = writer

    def _encoded(self, table: pa.Table):
        self.written = 0
        for b in table.to_batches(max_chunksize=self.batch_rows):
            if b.num_rows:
                out = encode_record_batch(b, self.model, self.schema,
                                          vector_column=self.vector_column,
                                          codes_column=self.codes_column,
                                          source=self.source,
                                          skip_invalid=self.skip_invalid, cosine=self.cosine)
                self.written += out.num_rows
                yield out

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.writer is None:
            return pa.Table.from_batches(list(self._encoded(table)), schema=self.schema)
        shard = self.writer(self.schema, self._encoded(table))
        return _shard_row(shard, self.written)


def _shard_row(shard: str | None, rows: int, error: str | None = None) -> pa.Table:
    return pa.table({"shard": pa.array([shard], pa.string()),
                     "rows": pa.array([rows], pa.int64()),
                     "error": pa.array([error], pa.string())})


_WORKER_CACHE: dict[str, _EncodeShards] = {}  # per worker process: job key -> encoder


def _encode_task(table: pa.Table, *, key: str, model_ref, **spec) -> pa.Table:
    """Ray Data task body (fused with the read task: one task reads, encodes and writes a
    shard). The model is fetched from the object store and parsed once per worker process."""
    enc = _WORKER_CACHE.get(key)
    if enc is None:
        import ray

        _WORKER_CACHE.clear()  # one job at a time per worker: drop models of earlier jobs
        enc = _WORKER_CACHE[key] = _EncodeShards(CompactModel.from_bytes(ray.get(model_ref[0])),
                                                 **spec)
    try:
        return enc(table)
    except TLDRError as exc:  # Ray drops the cause of a task error: send it back as data
        if spec.get("writer") is None:
            raise
        return _shard_row(None, 0, f"{type(exc).__name__}:{exc}")


def raise_worker_error(text: str) -> None:
    """Re-raise a tldr-index error a worker reported (``"ClassName:message"``)."""
    from .. import errors

    name, _, msg = text.partition(":")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, TLDRError)):
        cls = TLDRError
    raise cls(msg)


class RaySession:
    """``ray.init`` unless Ray is already initialised; shut down on exit only if started here.
    Ray Data runs in source order without its own progress bars meanwhile."""

    def __init__(self, ray, num_cpus: int | None = None):
        self.ray, self.num_cpus, self.started = ray, num_cpus, False

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            kw = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": self.num_cpus}
            ray.init(include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, **kw)
            self.started = True
        ctx = ray.data.DataContext.get_current()
        self._saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        return self

    def __exit__(self, *exc) -> None:
        ctx = self.ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = self._saved
        if self.started:
            self.ray.shutdown()


def encode_dataset(ds, model: CompactModel, schema: pa.Schema, *, vector_column: str,
                   codes_column: str | None, batch_rows: int = 8192,
                   shard_rows: int = DEFAULT_SHARD_ROWS, workers: int | None = None,
                   source: str = "input", writer: Callable | None = None,
                   skip_invalid: bool = False, cosine: bool = False):
    """``ds.map_batches`` of the encoder with the model broadcast once (one ``ray.put`` of its
    safetensors bytes; each worker process parses it once). Lazy: returns the Ray Dataset of
    encoded rows (``writer`` None) or of shard descriptions (``writer``: a sink's
    :meth:`connectors.Sink.shard_writer`). ``workers``: concurrent tasks
    (None: Ray's default, one per free CPU); ``shard_rows``: rows per task and per written shard."""
    import ray

    ref = ray.put(model.to_bytes())
    spec = {"schema": schema, "vector_column": vector_column, "codes_column": codes_column,
            "batch_rows": batch_rows, "source": source, "writer": writer,
            "skip_invalid": skip_invalid, "cosine": cosine}
    try:  # Ray >= 2.51 deprecates concurrency= for tasks
        from ray.data import TaskPoolStrategy
        pool = {"compute": TaskPoolStrategy(size=workers)} if workers else {}
    except ImportError:
        pool = {"concurrency": workers}
    # the ref travels inside a list: Ray hands it over as a reference, not resolved per task
    return ds.map_batches(_encode_task, batch_format="pyarrow", batch_size=shard_rows,
                          fn_kwargs={"key": uuid.uuid4().hex, "model_ref": [ref], **spec},
                          **pool)


def _apply(fn: Callable, item):
    return fn(item)


def ray_map(fn: Callable, items: list) -> list:
    """``[fn(item) for item in items]`` as one Ray task per item (``fn`` must pickle: a
    module-level function or a ``functools.partial`` of one), results in order. Used to read a
    staged target back in parallel (``Sink.verify(map_pieces=ray_map)``)."""
    ray = require_ray()
    task = ray.remote(_apply)
    return ray.get([task.remote(fn, item) for item in items])


def write_with_ray(src, sink, model: CompactModel, schema: pa.Schema, *,
                   codes_column: str | None, batch_rows: int = 8192,
                   shard_rows: int = DEFAULT_SHARD_ROWS, workers: int | None = None,
                   num_cpus: int | None = None, skip_invalid: bool = False,
                   progress: Callable[[int], None] | None = None) -> int:
    """Encode every row of ``src`` on Ray and hand the written shards to ``sink`` (a created sink
    with a :meth:`~connectors.Sink.shard_writer`: Lance or Parquet) in source order
    (:meth:`~connectors.Sink.adopt_shards`); the caller then stores the model, verifies and
    publishes as usual.

    ``workers``: concurrent encode tasks (default: the cluster's CPUs); ``num_cpus``: CPUs of a
    local Ray started here (default: all). Returns the rows written. Raises the tldr-index error
    a worker raised (e.g. float16 overflow) as such, with its one-line message.
    """
    ray = require_ray()
    writer = sink.shard_writer()
    if writer is None:
        raise InvalidParameterError(
            f"The 'engine' parameter of shrink is 'ray', which writes Lance or Parquet targets. "
            f"Got {type(sink).__name__} '{sink.uri}'.")
    shards: list[str] = []
    rows = 0
    with RaySession(ray, num_cpus):
        cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        ds = read_source(src, shard_rows, min_pieces=2 * (workers or cpus))
        job = encode_dataset(ds, model, schema, vector_column=src.vector_column,
                             codes_column=codes_column, batch_rows=batch_rows,
                             shard_rows=shard_rows, workers=workers, source=src.uri,
                             writer=writer, skip_invalid=skip_invalid,
                             cosine=src.distance == "cosine")
        for out in job.iter_batches(batch_size=None, batch_format="pyarrow"):
            for err in out.column("error").drop_null().to_pylist():
                raise_worker_error(err)
            shards += out.column("shard").to_pylist()
            rows += int(sum(out.column("rows").to_pylist()))
            if progress is not None:
                progress(rows)
    log.info("Ray wrote %d rows of %s in %d shards.", rows, sink.uri, len(shards))
    sink.adopt_shards(shards, rows)
    return rows
