"""The ``write``, ``verify`` and ``publish`` stages: one sink transaction.

``write`` stages the target through the sink (ids, payload, reduced vectors, PQ codes, model;
the rows through the run's engine), ``verify`` checks that the staged target holds as many rows
as the source and the same id set (digest), ``publish`` makes it visible atomically. After a
crash in any of them the write restarts from the encoded rows (:func:`discard_abandoned`
removes the abandoned staging area).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import pyarrow as pa

from connectors import discard_staging, open_sink

from ..compact import CompactModel
from ..errors import Interrupted, InvalidInputError
from ..threads import run_in_worker
from ..version import __version__
from .code_index_stage import store_code_index
from .encode_batches import CODES_COLUMN
from .memory import release_free_memory
from .run import record_usage
from .results import PublishResult, VerifyResult, WriteResult

if TYPE_CHECKING:
    from .run import ShrinkRun

log = logging.getLogger(__name__)

WRITE_STAGES = ("write", "verify", "publish")


def discard_abandoned(run: "ShrinkRun") -> None:
    """Remove the staging area a crashed write left (recorded in ``write/staging.json``) and
    forget the write/verify/publish checkpoints."""
    staging = run.work.root / "write" / "staging.json"
    if staging.exists():
        discard_staging(run.target_uri, json.loads(staging.read_text()))
    for stage in WRITE_STAGES:
        run.work.undo(stage)


def target_metadata(run: "ShrinkRun") -> dict:
    """The metadata stored with the target's model (what ``info`` and ``reindex`` read)."""
    r = run.results
    enc = r.encode
    return {
        "source": run.source_abs, "source_version": run.fingerprint,
        "source_columns": {"id": run.src.id_column, "vector": run.src.vector_column},
        "dims": [run.src.dim, run.dim], "method": run.method, "metric": run.metric,
        "pq": {"bytes": run.code_bytes, "nbits": 8,
               "column": CODES_COLUMN if run.code_bytes else None},
        "codes": {"codec": run.codec if run.code_bytes else None, "bytes": run.code_bytes,
                  "column": CODES_COLUMN if run.code_bytes else None},
        "vector_dtype": enc.vector_dtype, "run_id": run.work.state["run_id"],
        "library_version": __version__,
        "recall": {k: getattr(enc, k) for k in ("recall_at_10", "recall_at_10_rescored",
                                                  "eval_queries", "shortlist")},
        "graph_recall": r.knn.graph_recall if r.knn is not None else None,
        "params": run.params,
        **({"selection": r.select.to_json()} if r.select is not None else {}),
    }


def stage_write(run: "ShrinkRun", seconds: dict) -> None:
    """write + verify + publish (one sink transaction); records each stage's result and
    checkpoint, and its wall time in ``seconds``."""
    enc, scan = run.results.encode, run.results.scan
    work, prog = run.work, run.progress
    model_bytes = (work.root / "encode" / "model.safetensors").read_bytes()
    value_type = pa.float16() if enc.vector_dtype == "float16" else pa.float32()
    schema = run.src.target_schema(run.dim, run.code_bytes or None, value_type=value_type,
                                   codes_column=CODES_COLUMN)
    codes_column = CODES_COLUMN if run.code_bytes else None
    n = scan.rows
    out = work.stage_dir("write", clear=True)
    sink = open_sink(run.target_uri, **run.sink_options)
    (out / "staging.json").write_text(json.dumps(sink.staging_ref()))
    stage = "write"

    cpu = [time.process_time()]

    def finish(name: str, result, t0: float) -> None:
        result.seconds = seconds[name] = time.perf_counter() - t0
        record_usage(run, name, cpu[0])
        cpu[0] = time.process_time()
        run.results.set(name, result)
        prog.end(name, result.seconds)
        work.mark_done(name, [], result.to_json())

    try:
        release_free_memory()
        t0 = time.perf_counter()
        prog.begin("write", n, "rows")
        sink.create(schema, id_column=run.src.id_column, vector_column=run.src.vector_column,
                    distance=run.metric, codes_column=codes_column, overwrite=run.overwrite)
        (out / "staging.json").write_text(json.dumps(sink.staging_ref()))
        pos = run.engine.write(run, sink, CompactModel.from_bytes(model_bytes), schema,
                               codes_column)
        store_code_index(run, sink)  # built by encode (its checkpoint), listed in the record
        sink.store_model(model_bytes, target_metadata(run))
        finish("write", WriteResult(rows=pos), t0)

        t0 = time.perf_counter()
        stage = "verify"
        prog.begin("verify", n, "rows")
        prog.phase("verify", "reading back the staged target", None)
        if run.src.count() != scan.rows_read or run.src.fingerprint() != run.fingerprint:
            raise InvalidInputError(
                f"Source '{run.src.uri}' changed during shrink (now {run.src.count()} rows, "
                f"fingerprint {run.src.fingerprint()}); nothing was published.")
        sink.verify(scan.rows, scan.ids_digest, map_pieces=run.engine.map_pieces)
        prog.update("verify", n)
        finish("verify", VerifyResult(rows=scan.rows, ids_digest=scan.ids_digest), t0)

        t0 = time.perf_counter()
        stage = "publish"
        prog.begin("publish", None, "")
        prog.update("publish", 0)
        prog.phase("publish", "building the index and switching atomically", None)
        release_free_memory()  # the index build starts from what is live
        # a Lance index build is one long native call: in a worker, so Ctrl-C is seen at once
        run_in_worker(sink.publish, name="publish")
        prog.update("publish", 1)
        finish("publish", PublishResult(), t0)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            exc = Interrupted.wrap(exc, stage, str(work.root))
        if isinstance(exc, Interrupted) and exc.worker_running:
            # the publish goes on in its thread until the process exits: leave its staging area
            # alone (a resumed run removes it, or finds the target already published)
            log.info("Interrupted while publishing %s; its staging area is left for --resume.",
                     run.target_uri)
            raise exc from None
        try:
            sink.abort()
        except Exception as err:  # keep the original error
            log.warning("Could not remove the staging area of %s: %s", run.target_uri, err)
        if isinstance(exc, Interrupted):
            raise exc from None
        raise
