"""``reindex``: bring a compact collection up to date with its source, incrementally.

One run, under a lock (:mod:`tldr_index.lock`) in the target's reindex directory
(:func:`default_reindex_dir`: ``.<name>.tldr-reindex`` beside a local target, a per-user state
directory for a Qdrant server; or ``work_dir``):

1. open the live target and its model (a missing or corrupt model stops here: nothing written);
2. stream the source once, hashing every vector (:mod:`tldr_index.rowstate`): ids not in the
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

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import rowstate
from .faults import fault_point
from .threads import thread_limit
from .validation import check_choice, check_float, check_int
from .compact import CompactModel
from .errors import InvalidInputError
from .lock import JobLock
from .progress import Progress, as_progress

log = logging.getLogger(__name__)

REFIT = ("auto", "always", "never")
DEFAULT_DRIFT_THRESHOLD = 0.7
DEFAULT_DRIFT_QUERIES = 200
DRIFT_MIN_ROWS = 30          # fewer new/changed rows: no drift check (too noisy)
DRIFT_REFERENCE_ROWS = 5000  # random source rows added to the reference set
STAGING_FILE = "staging.json"  # in the reindex directory: the staging area of a delta in flight
EXIT_CODES = {"updated": 0, "failed": 1, "nothing": 3, "refitted": 4, "locked": 5}


@dataclass
class ReindexReport:
    """What a reindex did; :meth:`to_json` is the one summary line printed for logs."""

    status: str                      # "nothing", "updated" or "refitted"
    target: str
    source: str
    source_rows: int = 0
    target_rows_before: int = 0
    target_rows_after: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    rechecked: int = 0               # target rows without a recorded hash, re-encoded
    baseline: str = "state"          # where the previous hashes came from
    drift: dict = field(default_factory=dict)
    refit_reason: str | None = None
    generation: str | None = None
    previous: dict | None = None
    stale_lock: dict | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


STATE_SUFFIX = ".tldr-reindex"  # <dir holding the target>/.<name>.tldr-reindex


def user_state_dir() -> Path:
    """``$XDG_STATE_HOME/tldr-index`` (an absolute ``XDG_STATE_HOME`` only, as the XDG spec
    says), else ``~/.local/state/tldr-index``: where state of targets without a local directory
    (a Qdrant server) lives."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "tldr-index"


def _local_home(target_uri: str) -> tuple[Path, str] | None:
    """``(directory that holds the target, target name)`` for a target on the local
    filesystem, None otherwise (a Qdrant server or in-memory store, a remote object store)."""
    from connectors import parse_uri

    p = parse_uri(target_uri)
    if p.kind == "qdrant":
        return (Path(os.path.abspath(p.path)), p.collection) if p.mode == "path" else None
    if p.kind == "lance" and p.table:
        where, name = p.db, p.table
    else:
        path = p.path.rstrip("/")
        where, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if "://" in p.path or not name or any(ch in p.path for ch in "*?["):  # object store, glob
        return None
    return Path(os.path.abspath(where)), name


def default_reindex_dir(target_uri: str) -> Path:
    """The reindex directory of ``target_uri`` when no ``work_dir`` is given: a function of the
    target alone, never of the current directory, so ``reindex`` and ``rollback`` find the same
    state from anywhere.

    * a local target (LanceDB table, Lance dataset, Parquet directory, embedded Qdrant
      collection): ``.<name>.tldr-reindex`` in the directory that holds it (the LanceDB
      directory, the Parquet directory's parent, the Qdrant storage directory), so the state
      moves, is backed up and is deleted with the data it describes;
    * a target without a local directory (a Qdrant server, an in-memory Qdrant):
      ``<user_state_dir()>/reindex/<name>-<8 hex of the absolute target URI>``.
    """
    from connectors import absolute_uri, parse_uri

    home = _local_home(target_uri)
    if home is not None:
        return home[0] / f".{home[1]}{STATE_SUFFIX}"
    p = parse_uri(target_uri)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.collection or p.table or
                  os.path.basename(p.path.rstrip("/")) or "target")
    tag = hashlib.sha256(absolute_uri(target_uri).encode()).hexdigest()[:8]
    return user_state_dir() / "reindex" / f"{name}-{tag}"


def legacy_reindex_dir(target_uri: str) -> Path:
    """Where earlier builds kept the reindex state: ``$TLDR_INDEX_WORK`` or ``./tldr-work``
    (relative to the current directory), then ``<name>-<hash>.reindex``."""
    from .pipeline import default_work_dir

    d = default_work_dir(target_uri)
    return d.with_name(d.name + ".reindex")


def has_state(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a reindex history or a hash state."""
    root = Path(root)
    return (root / "history.json").is_file() or any((root / "hashes").glob("*.arrow"))


def reindex_dir(target_uri: str, work_dir: str | os.PathLike | None = None) -> Path:
    """The lock, hash states, history, refit checkpoints and the record of a delta's staging area
    (removed by the next run when a killed run left it) of ``target_uri``: ``work_dir`` when
    given, else :func:`default_reindex_dir`. When that holds no state but
    :func:`legacy_reindex_dir` (seen from the current directory) does, the legacy directory is
    used, with a warning that says how to move it."""
    if work_dir is not None:
        return Path(work_dir)
    root = default_reindex_dir(target_uri)
    if not has_state(root):
        old = legacy_reindex_dir(target_uri).absolute()
        if has_state(old):
            log.warning("Using the reindex state of '%s' found in '%s', where earlier versions "
                        "kept it (under the current directory or $TLDR_INDEX_WORK). Its place is "
                        "now '%s' (found from any directory): move it there (mv '%s' '%s'), or "
                        "keep passing --work-dir '%s'.", target_uri, old, root, old, root, old)
            return old
    return root


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_if_empty(dirs: list[Path]) -> None:
    """Remove the directories this run created, deepest first, while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def _generation(meta: dict) -> str | None:
    return meta.get("generation") or meta.get("run_id")


def _history(root: Path) -> list:
    try:
        return json.loads((root / "history.json").read_text())
    except (FileNotFoundError, ValueError):
        return []


def _write_history(root: Path, hist: list) -> None:
    from .artifact import atomic_write_bytes

    atomic_write_bytes(root / "history.json", json.dumps(hist[-50:], indent=1).encode())


def _add_history(root: Path, entry: dict) -> None:
    hist = _history(root)
    hist.append({"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 **entry})
    _write_history(root, hist)


def _settle_history(root: Path, live_generation: str | None) -> dict | None:
    """Settle the last history entry when it is still ``pending`` (written just before a switch;
    a killed run leaves it so): kept, with the live generation, when the switch happened (the
    live generation is no longer the ``from`` one it replaced), dropped otherwise. Returns a
    dropped entry's ``previous`` handle: a killed Lance update may have committed its rows, so
    the next update of this run must still roll back to the version before them."""
    hist = _history(root)
    if not hist or not hist[-1].get("pending"):
        return None
    last = hist.pop()
    del last["pending"]
    published = live_generation != last.get("from")
    if published:
        hist.append({**last, "generation": live_generation})
    _write_history(root, hist)
    return None if published else last.get("previous")


def _discard_abandoned(root: Path, target_uri: str) -> None:
    """Remove the staging area (Parquet directory, Qdrant collection) of a reindex that was
    killed before its switch, recorded in ``<root>/staging.json``; never the live target."""
    from connectors import discard_staging

    path = root / STAGING_FILE
    try:
        ref = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:  # half-written by a killed job: it had not staged anything yet
        ref = {}
    discard_staging(target_uri, ref)
    path.unlink(missing_ok=True)


def _record_staging(root: Path):
    from .artifact import atomic_write_bytes

    return lambda ref: atomic_write_bytes(root / STAGING_FILE, json.dumps(ref).encode())


def _open_source(meta: dict, source_uri: str | None, version=None):
    from connectors import open_source

    uri = source_uri or meta.get("source")
    if not uri:
        raise InvalidInputError("The target records no source; pass source= (--source).")
    cols = meta.get("source_columns", {})
    opts = {"distance": meta["metric"]} if meta.get("metric") else {}
    if version is not None:
        opts["version"] = version
    return open_source(uri, vector_column=cols.get("vector"), id_column=cols.get("id"), **opts)


def source_hashes(src, batch_rows: int = 8192) -> tuple[pa.Array, np.ndarray]:
    """``(ids, content hashes)`` of every row of ``src`` (one pass)."""
    from connectors.arrow_utils import vectors_to_numpy

    ids, hashes = [], []
    for b in src.iter_batches(batch_rows):
        ids.append(b.column(0))
        hashes.append(rowstate.batch_hashes(b, vectors_to_numpy(b.column(1))))
    return (pa.concat_arrays(ids) if ids else pa.array([], type=src.schema.field(0).type),
            np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64))


def _baseline(tgt, meta: dict, src, root: Path, batch_rows: int):
    """Previous hashes for the live generation, and where they came from."""
    state = rowstate.load_state(root, _generation(meta))
    if state is not None:
        return state, "state"
    rec = meta.get("source_version") or {}
    if rec and rec == src.fingerprint():
        return source_hashes(src, batch_rows), "unchanged-source"
    if rec.get("kind") == "lance" and rec.get("version") is not None:
        try:
            old = _open_source(meta, None, version=rec["version"])
            if os.path.abspath(getattr(old, "path", "")) == rec.get("path"):
                log.info("No reindex state for %s yet: hashing the source at version %s, the one "
                         "the target was built from.", tgt.uri, rec["version"])
                return source_hashes(old, batch_rows), "source-version"
        except Exception as exc:  # an old version may have been cleaned up
            log.warning("Could not read version %s of the source (%s).", rec["version"], exc)
    log.warning("No reindex state for %s and no way to read the source as it was: every row is "
                "re-encoded once with the current model.", tgt.uri)
    return (pa.array([], type=src.schema.field(0).type), np.empty(0, dtype=np.uint64)), "none"


@dataclass
class _Scan:
    ids: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    rows: list = field(default_factory=list)       # encoded new/changed target batches
    added: int = 0
    changed: int = 0
    rechecked: int = 0
    Xnew: list = field(default_factory=list)       # original vectors: new/changed (drift)
    Xold: list = field(default_factory=list)       # original vectors: unchanged sample (drift)
    ref: list = field(default_factory=list)        # original vectors: random reference sample


class _IdIndex:
    """Positions of ids in a fixed id array, built once (integer ids: a sorted copy searched with
    ``searchsorted``, 16 bytes per id; string ids: a dict)."""

    def __init__(self, ids: pa.Array):
        self.n = len(ids)
        if pa.types.is_integer(ids.type):
            v = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
            self.order = np.argsort(v, kind="stable")
            self.sorted = v[self.order]
            self.map = None
        else:
            self.map = {x: i for i, x in enumerate(ids.to_pylist())}

    def find(self, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """``(positions of the ids found, found mask over ids)``."""
        if self.map is not None:
            pos = np.array([self.map.get(x, -1) for x in ids.to_pylist()], dtype=np.int64)
            found = pos >= 0
            return pos[found], found
        q = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
        j = np.searchsorted(self.sorted, q)
        jc = np.minimum(j, max(self.n - 1, 0))
        found = (j < self.n) & (self.sorted[jc] == q) if self.n else np.zeros(len(q), bool)
        return self.order[jc[found]], found


def _encode_rows(model: CompactModel, batch: pa.RecordBatch, X: np.ndarray,
                 schema: pa.Schema) -> pa.RecordBatch:
    """Target batch (``schema``: id, payload..., vector, [codes]) for source ``batch``."""
    from connectors.arrow_utils import numpy_to_fsl

    Y = model.encode(X)
    vt = schema.field(len(batch.schema) - 1).type.value_type
    cols = [batch.column(0), *batch.columns[2:],
            numpy_to_fsl(Y.astype(vt.to_pandas_dtype()))]
    if len(schema) > len(batch.schema):
        m = model.pq_bytes
        codes = model.quantizer().encode(Y)
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _scan(src, model, schema, index, thash, has_hash, seen, batch_rows, drift_queries, seed,
          prog) -> _Scan:
    from connectors.arrow_utils import vectors_to_numpy

    out = _Scan()
    rng = np.random.default_rng([seed, 0xD1F7])
    n = max(src.count(), 1)
    p_ref = min(1.0, DRIFT_REFERENCE_ROWS / n)
    p_old = min(1.0, 4 * drift_queries / n)
    done = 0
    prog.begin("scan", src.count(), "rows")
    for b in src.iter_batches(batch_rows):
        ids = b.column(0)
        X = vectors_to_numpy(b.column(1))
        h = rowstate.batch_hashes(b, X)
        out.ids.append(ids)
        out.hashes.append(h)
        at, present = index.find(ids)
        p = np.zeros(len(ids), dtype=np.int64)
        p[present] = at
        seen[at] = True
        unknown = present & ~has_hash[p]  # in the target without a recorded hash (add())
        stale = present & has_hash[p] & (thash[p] != h)
        new = ~present
        todo = new | stale | unknown
        out.added += int(new.sum())
        out.changed += int(stale.sum())
        out.rechecked += int(unknown.sum())
        if todo.any():
            sel = pa.array(np.flatnonzero(todo))
            out.rows.append(_encode_rows(model, b.take(sel), X[todo].astype(np.float32),
                                         schema))
            fault_point("reindex:encode")  # test-only crash point, see tldr_index.faults
            out.Xnew.append(X[todo].astype(np.float32))
        u = rng.random(len(ids))  # one draw per row: the two samples are disjoint
        keep = ~todo & (u < p_old)
        if keep.any():
            out.Xold.append(X[keep].astype(np.float32))
        refm = ~todo & (u >= p_old) & (u < p_old + p_ref)
        if refm.any():
            out.ref.append(X[refm].astype(np.float32))
        done += b.num_rows
        prog.update("scan", done)
    return out


def drift_recall(model: CompactModel, Qnew: np.ndarray, Qold: np.ndarray, ref: np.ndarray,
                 k: int = 10) -> dict:
    """recall@k of exact search in the reduced space vs the original space, for new rows and for
    unchanged rows, each searched in ``[ref; Qnew; Qold]`` with itself excluded."""
    from .knn import drop_own, exact_search
    from .search import recall_at_k

    db = np.vstack([ref, Qnew, Qold]).astype(np.float32)
    k = min(k, len(db) - 1)
    Z = model.prepare(model.encode(db))
    metric = model.metric
    out = {}
    for name, start, rows in (("new", len(ref), len(Qnew)), ("old", len(ref) + len(Qnew),
                                                               len(Qold))):
        if rows == 0 or k < 1:
            out[f"recall_{name}"] = None
            continue
        own = np.arange(start, start + rows)
        _, truth = exact_search(db, db[own], k, metric=metric, exclude=own)
        _, got = exact_search(Z, Z[own], min(k + 1, len(db)), metric=metric)
        out[f"recall_{name}"] = recall_at_k(drop_own(got, own, k), truth)
    return out


def _pick(parts: list, limit: int, rng: np.random.Generator, dim: int) -> np.ndarray:
    X = np.vstack(parts) if parts else np.empty((0, dim), dtype=np.float32)
    if len(X) > limit:
        X = X[np.sort(rng.choice(len(X), limit, replace=False))]
    return X


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
    from connectors import IdDigest, open_target

    check_choice(refit, "refit", REFIT, owner="reindex")
    drift_threshold = check_float(drift_threshold, "drift_threshold", low=0.0, high=1.0,
                                  low_inclusive=False, owner="reindex")
    drift_queries = check_int(drift_queries, "drift_queries", low=1, owner="reindex")
    batch_rows = check_int(batch_rows, "batch_rows", low=1, owner="reindex")
    seed = check_int(seed, "seed", low=0, owner="reindex")
    prog = as_progress(progress)
    root = reindex_dir(target_uri, work_dir)
    created = _missing_dirs(root)  # removed again when this run leaves them empty
    t_all = time.perf_counter()
    secs: dict[str, float] = {}
    lock = JobLock(root / "lock", what=f"reindex of '{target_uri}'")
    report: ReindexReport | None = None
    try:
        with lock, thread_limit(threads, owner="reindex"):
            t0 = time.perf_counter()
            _discard_abandoned(root, target_uri)
            tgt = open_target(target_uri)
            model = CompactModel.from_bytes(tgt.model_bytes, f"target '{tgt.uri}'")
            meta = dict(tgt.metadata)
            src = _open_source(meta, source_uri)
            if src.dim != model.input_dim:
                raise InvalidInputError(
                    f"Vectors of source '{src.uri}' must have dimension {model.input_dim} (the "
                    f"input of the model of target '{tgt.uri}'). Got {src.dim} instead.")
            lay = tgt.layout
            vt = pa.float16() if meta.get("vector_dtype") == "float16" else pa.float32()
            schema = src.target_schema(model.output_dim, model.pq_bytes or None, value_type=vt,
                                       codes_column=lay.codes_column or "pq_codes")
            live = tgt.row_schema()
            if live is not None and live != schema:
                raise InvalidInputError(
                    f"Source '{src.uri}' must keep the columns the target was built from. "
                    f"Expected: {', '.join(live.names)}. Got: {', '.join(schema.names)} "
                    f"(run shrink with --overwrite to rebuild).")
            report = ReindexReport("nothing", tgt.uri, src.uri, stale_lock=lock.took_over)
            carried = _settle_history(root, _generation(meta))  # left by a killed run
            tids = tgt.ids().cast(schema.field(0).type)
            report.target_rows_before = len(tids)
            (sids, shash), report.baseline = _baseline(tgt, meta, src, root, batch_rows)
            secs["open"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            thash = np.zeros(len(tids) + 1, dtype=np.uint64)  # +1: a slot for absent ids
            has_hash = np.zeros(len(tids) + 1, dtype=bool)
            index = _IdIndex(tids)
            at, ok = index.find(sids.cast(tids.type))
            thash[at], has_hash[at] = shash[ok], True
            seen = np.zeros(len(tids), dtype=bool)
            sc = _scan(src, model, schema, index, thash, has_hash, seen, batch_rows,
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
                    rowstate.save_state(root, _generation(meta), new_ids, new_hash)
                report.target_rows_after = report.target_rows_before
                report.generation = _generation(meta)
                log.info("Nothing to do: target %s is up to date with %s (%d rows).", tgt.uri,
                         src.uri, report.source_rows)
                return report

            rng = np.random.default_rng([seed, 0xD21])
            Qnew = _pick(sc.Xnew, drift_queries, rng, src.dim)
            Qold = _pick(sc.Xold, drift_queries, rng, src.dim)
            ref = _pick(sc.ref, DRIFT_REFERENCE_ROWS, rng, src.dim)
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
                report.previous = carried or tgt.current_handle()
                _add_history(root, {"action": "refit", "from": _generation(meta),
                                    "previous": report.previous, "pending": True})
                _refit(target_uri, source_uri or meta["source"], src, meta, tgt, root, seed,
                       prog, shrink_options)
                fault_point("reindex:refitted")  # new version live; no state yet, history pending
                new_tgt = open_target(target_uri)
                report.generation = _generation(new_tgt.metadata)
                if new_tgt.metadata.get("source_version") == src.fingerprint():
                    rowstate.save_state(root, report.generation, new_ids, new_hash)
                if report.drift:
                    new_model = CompactModel.from_bytes(new_tgt.model_bytes, new_tgt.uri)
                    report.drift["after_refit"] = drift_recall(new_model, Qnew, Qold, ref)
                report.status, report.refit_reason = "refitted", reason
                report.target_rows_after = new_tgt.count()
                _settle_history(root, report.generation)
            else:
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
                _add_history(root, {"action": "update", "from": _generation(meta),
                                    "previous": report.previous, "pending": True})
                fault_point("reindex:state-saved")
                prog.begin("apply", rows.num_rows + len(deleted), "rows")
                prog.phase("apply", "writing the delta and switching atomically", None)
                tgt.apply_delta(rows, deleted, new_meta, expected_count=len(new_ids),
                                expected_digest=digest.hexdigest(), batch_rows=batch_rows,
                                staged=_record_staging(root))
                (root / STAGING_FILE).unlink(missing_ok=True)
                prog.end("apply", time.perf_counter() - t0)
                fault_point("reindex:published")  # switched; history entry still pending
                report.status, report.generation = "updated", gen
                report.target_rows_after = len(new_ids)
                _settle_history(root, gen)
            secs["write"] = time.perf_counter() - t0
            return report
    finally:
        _remove_if_empty(created)
        secs["total"] = time.perf_counter() - t_all
        prog.close()
        if report is not None:
            report.seconds = secs


def _refit(target_uri, source_uri, src, meta, tgt, root, seed, prog, shrink_options) -> None:
    """Retrain on the current source into a new version of the target (previous one kept)."""
    from .pipeline import shrink

    params = dict(meta.get("params") or {})
    opts = {"dim": model_dim(meta, tgt), "method": meta.get("method", "tldr"),
            "pq_bytes": params.get("pq_bytes"), "neighbors": params.get("neighbors", 3),
            "epochs": params.get("epochs"), "sample": params.get("sample", 100_000),
            "reduced_dtype": params.get("reduced_dtype", "float16"),
            "random_state": params.get("random_state", seed),
            "source_options": {"distance": src.distance},
            "sink_options": tgt.keep_previous_options()}
    opts.update(shrink_options or {})
    cols = meta.get("source_columns", {})
    shrink(source_uri, target_uri, overwrite=True, work_dir=root / "shrink",
           vector_column=cols.get("vector"), id_column=cols.get("id"), progress=prog, **opts)
    from connectors import open_target

    open_target(target_uri).prune_versions(keep=[tgt.current_handle()])


def model_dim(meta: dict, tgt) -> int:
    dims = meta.get("dims")
    return int(dims[1]) if dims else CompactModel.from_bytes(tgt.model_bytes).output_dim


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
        _settle_history(root, _generation(tgt.metadata))  # a killed reindex's pending entry
        hist = _history(root)
        if not hist:
            raise nothing_recorded()
        handle = hist[-1]["previous"]
        left = tgt.rollback_to(handle)
        now = open_target(target_uri)
        _add_history(root, {"action": "rollback", "generation": _generation(now.metadata),
                            "previous": left})
        log.info("Rolled %s back (%s -> %s).", target_uri, left, handle)
        return {"target": target_uri, "from": left, "to": handle,
                "generation": _generation(now.metadata), "rows": now.count()}
