"""``reindex``: bring a compact collection up to date with its source, incrementally.

One run, under a lock (:mod:`tldr_index.reindex.lock`) in the target's reindex directory
(:func:`default_reindex_dir`: ``.<name>.tldr-reindex`` beside a local target, a per-user state
directory for a Qdrant server; or ``work_dir``):

1. open the live target and its model (a missing or corrupt model stops here: nothing written);
2. stream the source once, hashing every vector (:mod:`tldr_index.reindex.rowstate`): ids not in the
   target are *new*, target ids no longer in the source are *deleted*, ids whose hash differs from
   the one recorded for the target's generation are *changed*. New and changed rows are encoded
   with the current model as they stream by;
3. nothing new, deleted or changed: stop, status ``nothing`` (nothing is written);
4. drift check (``refit="auto"``): recall@10 of the current map (exact search in the reduced
   space against exact search in the original space) for up to ``drift_queries`` new/changed rows,
   divided by the same recall for as many unchanged rows, both searched in one reference set
   (those rows plus a random sample of the source). Below ``drift_threshold`` (or
   ``refit="always"``): retrain with :func:`tldr_index.pipeline.shrink` into a new version of the
   target (status ``refitted``); otherwise
5. publish the delta as one switch (:meth:`connectors.Target.apply_delta`, status ``updated``).

The version that was live before is kept; :func:`rollback` switches back to it (its handle is
recorded in ``history.json`` before the switch and settled by the next run or rollback, so a run
killed at any point keeps it). The source is only read. Without a recorded state for the live
generation (the first reindex after ``shrink``), the baseline hashes come from the source at the
version the target was built from (Lance), or from the current source when its fingerprint still
equals the recorded one; otherwise every row is treated as changed once (re-encoded with the same
model: same content, no retraining).

Memory: 8 bytes of hash plus the id per source row, the target's ids, the encoded new/changed rows
and the drift sample (at most ``2 x drift_queries + 5,000`` original vectors). Cost: one read of the
source and of the target's ids, one matrix product per new/changed row, and the store's write of
the delta (Lance: one commit; Parquet and Qdrant: a copy of the compact rows).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pyarrow as pa

from ..compact import CompactModel
from ..errors import InvalidInputError
from ..faults import fault_point
from ..progress import Progress, as_progress
from ..threads import thread_limit
from ..validation import check_choice, check_float, check_int
from . import rowstate
from .apply import publish_delta, refit as refit_target
from .drift import (DEFAULT_DRIFT_QUERIES, DEFAULT_DRIFT_THRESHOLD, DRIFT_MIN_ROWS,
                    DRIFT_REFERENCE_ROWS, drift_recall, pick_rows)
from .history import (add_history, discard_abandoned, generation, read_history,
                      settle_history)
from .location import legacy_reindex_dir, missing_dirs, reindex_dir, remove_if_empty
from .lock import JobLock
from .report import REFIT, ReindexReport
from .scan import IdIndex, baseline_hashes, open_recorded_source, scan_source

log = logging.getLogger(__name__)


def reindex(target_uri: str, source_uri: str | None = None, *, refit: str = "auto",
            drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
            drift_queries: int = DEFAULT_DRIFT_QUERIES, work_dir: str | os.PathLike | None = None,
            batch_rows: int = 8192, seed: int = 0, threads: int | None = None,
            progress: Progress | bool | None = None,
            shrink_options: dict | None = None) -> ReindexReport:
    """Update the compact collection ``target_uri`` from its source (see the module docstring).

    Parameters
    ----------
    target_uri : a target written by ``shrink`` (or a previous reindex).
    source_uri : the source (default: the one recorded in the target).
    refit : "auto" (retrain when the drift check fails), "always" or "never".
    drift_threshold : retrain when recall@10 of new rows < ``drift_threshold`` x recall@10 of
        unchanged rows (in (0, 1]).
    drift_queries : new (and unchanged) rows in the drift check.
    work_dir : the reindex directory (lock, hash states, history, refit checkpoints); default
        :func:`default_reindex_dir` (beside a local target, per user for a Qdrant server), see
        :func:`reindex_dir`.
    shrink_options : extra arguments for the refit's :func:`tldr_index.pipeline.shrink`.

    Raises :class:`LockedError` when another live job holds the lock, and the usual
    :class:`TLDRError` subclasses (missing/corrupt model, wrong dimension, duplicate ids...) with
    the live target untouched.
    """
    from connectors import open_target

    check_choice(refit, "refit", REFIT, owner="reindex")
    drift_threshold = check_float(drift_threshold, "drift_threshold", low=0.0, high=1.0,
                                  low_inclusive=False, owner="reindex")
    drift_queries = check_int(drift_queries, "drift_queries", low=1, owner="reindex")
    batch_rows = check_int(batch_rows, "batch_rows", low=1, owner="reindex")
    seed = check_int(seed, "seed", low=0, owner="reindex")
    prog = as_progress(progress)
    root = reindex_dir(target_uri, work_dir)
    created = missing_dirs(root)  # removed again when this run leaves them empty
    t_all = time.perf_counter()
    secs: dict[str, float] = {}
    lock = JobLock(root / "lock", what=f"reindex of '{target_uri}'")
    report: ReindexReport | None = None
    try:
        with lock, thread_limit(threads, owner="reindex"):
            t0 = time.perf_counter()
            discard_abandoned(root, target_uri)
            tgt = open_target(target_uri)
            model = CompactModel.of_target(tgt)
            meta = dict(tgt.metadata)
            src = open_recorded_source(meta, source_uri)
            if src.dim != model.input_dim:
                raise InvalidInputError(
                    f"Vectors of source '{src.uri}' must have dimension {model.input_dim} (the "
                    f"input of the model of target '{tgt.uri}'). Got {src.dim} instead.")
            lay = tgt.layout
            vt = pa.float16() if meta.get("vector_dtype") == "float16" else pa.float32()
            schema = src.target_schema(model.output_dim, model.code_bytes or None, value_type=vt,
                                       codes_column=lay.codes_column or "pq_codes")
            live = tgt.row_schema()
            if live is not None and live != schema:
                raise InvalidInputError(
                    f"Source '{src.uri}' must keep the columns the target was built from. "
                    f"Expected: {', '.join(live.names)}. Got: {', '.join(schema.names)} "
                    f"(run shrink with --overwrite to rebuild).")
            report = ReindexReport("nothing", tgt.uri, src.uri, stale_lock=lock.took_over)
            carried = settle_history(root, generation(meta))  # left by a killed run
            tids = tgt.ids().cast(schema.field(0).type)
            report.target_rows_before = len(tids)
            (sids, shash), report.baseline = baseline_hashes(tgt, meta, src, root, batch_rows)
            secs["open"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            thash = np.zeros(len(tids) + 1, dtype=np.uint64)  # +1: a slot for absent ids
            has_hash = np.zeros(len(tids) + 1, dtype=bool)
            index = IdIndex(tids)
            at, ok = index.find(sids.cast(tids.type))
            thash[at], has_hash[at] = shash[ok], True
            seen = np.zeros(len(tids), dtype=bool)
            sc = scan_source(src, model, schema, index, thash, has_hash, seen, batch_rows,
                             drift_queries, seed, prog)
            deleted = tids.filter(pa.array(~seen))
            new_ids = pa.concat_arrays(sc.ids) if sc.ids else tids.slice(0, 0)
            new_hash = np.concatenate(sc.hashes) if sc.hashes else np.empty(0, np.uint64)
            report.source_rows = len(new_ids)
            report.added, report.changed, report.deleted = sc.added, sc.changed, len(deleted)
            report.rechecked = sc.rechecked
            secs["scan"] = time.perf_counter() - t0
            if src.count() != len(new_ids):
                raise InvalidInputError(
                    f"Source '{src.uri}' changed while it was read; nothing was written. Run "
                    f"reindex again once it is stable.")
            fault_point("reindex:scanned")  # the delta is known, nothing written yet

            if not (sc.added or sc.changed or sc.rechecked or len(deleted)):
                if report.baseline != "state":
                    rowstate.save_state(root, generation(meta), new_ids, new_hash)
                report.target_rows_after = report.target_rows_before
                report.generation = generation(meta)
                log.info("Nothing to do: target %s is up to date with %s (%d rows).", tgt.uri,
                         src.uri, report.source_rows)
                return report

            rng = np.random.default_rng([seed, 0xD21])
            Qnew = pick_rows(sc.Xnew, drift_queries, rng, src.dim)
            Qold = pick_rows(sc.Xold, drift_queries, rng, src.dim)
            ref = pick_rows(sc.ref, DRIFT_REFERENCE_ROWS, rng, src.dim)
            t0 = time.perf_counter()
            reason = None
            if refit == "always":
                reason = "always"
            elif refit == "auto" and len(Qnew) >= DRIFT_MIN_ROWS and len(Qold) >= DRIFT_MIN_ROWS:
                prog.begin("drift", len(Qnew) + len(Qold), "queries")
                prog.phase("drift", "drift check (exact vs compact neighbours)", None)
                d = drift_recall(model, Qnew, Qold, ref)
                prog.end("drift", time.perf_counter() - t0)
                ratio = d["recall_new"] / max(d["recall_old"], 1e-9)
                report.drift = {**d, "ratio": ratio, "threshold": drift_threshold,
                                "queries_new": len(Qnew), "queries_old": len(Qold),
                                "reference_rows": len(ref)}
                log.info("Drift check: recall@10 of the current map %.3f on new rows, %.3f on "
                         "unchanged rows (ratio %.3f, threshold %.2f).", d["recall_new"],
                         d["recall_old"], ratio, drift_threshold)
                if ratio < drift_threshold:
                    reason = "drift"
            secs["drift"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            if reason is not None:
                new_tgt = refit_target(target_uri, source_uri or meta["source"], src, meta,
                                       tgt, root, seed, prog, shrink_options, carried, report)
                report.generation = generation(new_tgt.metadata)
                if new_tgt.metadata.get("source_version") == src.fingerprint():
                    rowstate.save_state(root, report.generation, new_ids, new_hash)
                if report.drift:
                    new_model = CompactModel.from_bytes(new_tgt.model_bytes, new_tgt.uri)
                    report.drift["after_refit"] = drift_recall(new_model, Qnew, Qold, ref)
                report.status, report.refit_reason = "refitted", reason
                report.target_rows_after = new_tgt.count()
                settle_history(root, report.generation)
            else:
                publish_delta(tgt, src, meta, schema, sc, deleted, new_ids, new_hash, root,
                              carried, batch_rows, prog, report)
            secs["write"] = time.perf_counter() - t0
            return report
    finally:
        remove_if_empty(created)
        secs["total"] = time.perf_counter() - t_all
        prog.close()
        if report is not None:
            report.seconds = secs


def rollback(target_uri: str, *, work_dir: str | os.PathLike | None = None) -> dict:
    """Switch ``target_uri`` back to the version live before the last reindex (or rollback: a
    second rollback undoes the first). Returns ``{"target", "from", "to"}`` handles.

    The reindex directory is ``work_dir`` or :func:`reindex_dir` (the same one ``reindex``
    used, from any current directory). Raises :class:`InvalidInputError` naming the directories
    it looked in when no reindex of this target is recorded there (nothing is created), and
    :class:`LockedError` while a reindex runs."""
    from connectors import open_target

    root = reindex_dir(target_uri, work_dir)

    def nothing_recorded() -> InvalidInputError:
        if work_dir is not None:
            where = f"in '{root}' (work_dir)"
        else:
            where = (f"in '{root}' (its reindex directory) or in "
                     f"'{legacy_reindex_dir(target_uri).absolute()}' (where earlier versions kept "
                     f"it)")
        return InvalidInputError(
            f"No reindex of target '{target_uri}' is recorded {where}; nothing to roll back to. "
            f"Pass work_dir (--work-dir) if the reindex ran with one.")

    if not root.is_dir():  # (an existing one may be locked by a first reindex: wait for it)
        raise nothing_recorded()
    with JobLock(root / "lock", what=f"rollback of '{target_uri}'"):
        tgt = open_target(target_uri)
        settle_history(root, generation(tgt.metadata))  # a killed reindex's pending entry
        hist = read_history(root)
        if not hist:
            raise nothing_recorded()
        handle = hist[-1]["previous"]
        left = tgt.rollback_to(handle)
        now = open_target(target_uri)
        add_history(root, {"action": "rollback", "generation": generation(now.metadata),
                            "previous": left})
        log.info("Rolled %s back (%s -> %s).", target_uri, left, handle)
        return {"target": target_uri, "from": left, "to": handle,
                "generation": generation(now.metadata), "rows": now.count()}
