"""The two ways a ``reindex`` publishes: the delta as one atomic switch of the live target
(:func:`publish_delta`), or a retrain into a new version of the target (:func:`refit`). Both
record the handle of the version live before in the history (pending until settled) first, so a
run killed at any point keeps it for ``rollback``."""

from __future__ import annotations

import datetime as _dt
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..code_index import INDEX_MIN_ROWS
from ..compact import CompactModel
from ..faults import fault_point
from . import rowstate
from .history import (add_history, clear_staging, generation, settle_history,
                      staging_recorder)
from .report import ReindexReport
from .scan import ScanResult

log = logging.getLogger(__name__)


def publish_delta(tgt, src, meta: dict, schema: pa.Schema, sc: ScanResult, deleted: pa.Array,
                  new_ids: pa.Array, new_hash: np.ndarray, root: Path, carried: dict | None,
                  batch_rows: int, prog, report: ReindexReport) -> None:
    """Write the new/changed rows of ``sc`` and delete ``deleted`` in one switch of ``tgt``
    (:meth:`connectors.Target.apply_delta`); the hash state of the new generation is saved
    before the switch. Sets ``report`` to ``updated``. Cost: the store's write of the delta
    (Lance: one commit; Parquet and Qdrant: a copy of the compact rows)."""
    from connectors import IdDigest

    t0 = time.perf_counter()
    rows = pa.Table.from_batches(sc.rows, schema=schema)
    digest = IdDigest()
    digest.update(new_ids)
    gen = uuid.uuid4().hex
    new_meta = {**meta, "source_version": src.fingerprint(), "generation": gen,
                "reindex": {"added": sc.added, "changed": sc.changed,
                            "rechecked": sc.rechecked,
                            "deleted": len(deleted),
                            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                                timespec="seconds")}}
    rowstate.save_state(root, gen, new_ids, new_hash)  # before the switch
    report.previous = carried or tgt.current_handle()
    add_history(root, {"action": "update", "from": generation(meta),
                       "previous": report.previous, "pending": True})
    fault_point("reindex:state-saved")
    prog.begin("apply", rows.num_rows + len(deleted), "rows")
    prog.phase("apply", "writing the delta and switching atomically", None)
    tgt.apply_delta(rows, deleted, new_meta, expected_count=len(new_ids),
                    expected_digest=digest.hexdigest(), batch_rows=batch_rows,
                    staged=staging_recorder(root))
    clear_staging(root)
    prog.end("apply", time.perf_counter() - t0)
    fault_point("reindex:published")  # switched; history entry still pending
    report.status, report.generation = "updated", gen
    report.target_rows_after = len(new_ids)
    settle_history(root, gen)
    rebuild_code_index(tgt, meta)


def rebuild_code_index(tgt, meta: dict) -> None:
    """After a delta: a target that had a code index gets one over its new rows (the delta
    dropped the old one from the record: never a stale one; killed here, the target has none
    until the next shrink or refit). Cost: see :func:`tldr_index.searcher.build_target_index`."""
    from connectors import open_target

    from ..code_index import ARTIFACT_NAME, INDEX_MIN_ROWS
    from ..searcher import build_target_index

    if ARTIFACT_NAME not in tgt.artifacts():
        return
    new = open_target(tgt.uri)
    if new.count() < (meta.get("params") or {}).get("index_min_rows", INDEX_MIN_ROWS):
        log.info("reindex: %s now holds fewer than index_min_rows rows: no code index.", tgt.uri)
        return
    build_target_index(new, CompactModel.of_target(new),
                       seed=(meta.get("params") or {}).get("random_state", 0))
    log.info("reindex: rebuilt the code index of %s over its %d rows.", tgt.uri, new.count())


def refit(target_uri: str, source_uri: str, src, meta: dict, tgt, root: Path, seed: int, prog,
          shrink_options: dict | None, carried: dict | None, report: ReindexReport):
    """Retrain on the current source into a new version of the target (the previous one kept,
    older ones pruned) with :func:`tldr_index.pipeline.shrink` (checkpoints in
    ``<root>/shrink``), after recording the previous version in the history (left pending: the
    caller settles it). Returns the new target. Cost: a full ``shrink`` of the source."""
    from connectors import open_target

    from ..shrink import shrink

    report.previous = carried or tgt.current_handle()
    add_history(root, {"action": "refit", "from": generation(meta),
                       "previous": report.previous, "pending": True})
    params = dict(meta.get("params") or {})
    opts = {"dim": model_dim(meta, tgt), "method": meta.get("method", "tldr"),
            "codec": params.get("codec", "pq"),
            "bytes": params.get("code_bytes", params.get("pq_bytes")),
            "neighbors": params.get("neighbors", 3),
            "epochs": params.get("epochs"), "sample": params.get("sample", 100_000),
            "reduced_dtype": params.get("reduced_dtype", "float16"),
            "random_state": params.get("random_state", seed),
            "index_min_rows": params.get("index_min_rows", INDEX_MIN_ROWS),
            "source_options": {"distance": src.distance},
            "sink_options": tgt.keep_previous_options()}
    opts.update(shrink_options or {})
    cols = meta.get("source_columns", {})
    shrink(source_uri, target_uri, overwrite=True, work_dir=root / "shrink",
           vector_column=cols.get("vector"), id_column=cols.get("id"), progress=prog, **opts)
    open_target(target_uri).prune_versions(keep=[tgt.current_handle()])
    fault_point("reindex:refitted")  # new version live; no state yet, history pending
    return open_target(target_uri)


def model_dim(meta: dict, tgt) -> int:
    """The output dimension of the target's model (from its metadata, else its model bytes)."""
    dims = meta.get("dims")
    return int(dims[1]) if dims else CompactModel.of_target(tgt).output_dim
