"""The scan of ``reindex``: the previous hashes of the live generation (the baseline), and one
pass over the source that finds new, changed and deleted rows, encodes the new/changed ones with
the current model and draws the drift samples."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..compact import CompactModel
from ..errors import InvalidInputError
from ..faults import fault_point
from . import rowstate
from .drift import DRIFT_REFERENCE_ROWS
from .history import generation

log = logging.getLogger(__name__)


def open_recorded_source(meta: dict, source_uri: str | None, version=None):
    """The target's source (``source_uri`` or the one its metadata ``meta`` records), with
    the recorded columns and metric; at Lance ``version`` when given."""
    from connectors import open_source

    uri = source_uri or meta.get("source")
    if not uri:
        raise InvalidInputError("The target records no source; pass source= (--source).")
    cols = meta.get("source_columns", {})
    opts = {"distance": meta["metric"]} if meta.get("metric") else {}
    if version is not None:
        opts["version"] = version
    return open_source(uri, vector_column=cols.get("vector"), id_column=cols.get("id"), **opts)


def baseline_hashes(tgt, meta: dict, src, root: Path, batch_rows: int):
    """Previous hashes for the live generation, and where they came from."""
    state = rowstate.load_state(root, generation(meta))
    if state is not None:
        return state, "state"
    rec = meta.get("source_version") or {}
    if rec and rec == src.fingerprint():
        return rowstate.source_hashes(src, batch_rows), "unchanged-source"
    if rec.get("kind") == "lance" and rec.get("version") is not None:
        try:
            old = open_recorded_source(meta, None, version=rec["version"])
            if os.path.abspath(getattr(old, "path", "")) == rec.get("path"):
                log.info("No reindex state for %s yet: hashing the source at version %s, the one "
                         "the target was built from.", tgt.uri, rec["version"])
                return rowstate.source_hashes(old, batch_rows), "source-version"
        except Exception as exc:  # an old version may have been cleaned up
            log.warning("Could not read version %s of the source (%s).", rec["version"], exc)
    log.warning("No reindex state for %s and no way to read the source as it was: every row is "
                "re-encoded once with the current model.", tgt.uri)
    return (pa.array([], type=src.schema.field(0).type), np.empty(0, dtype=np.uint64)), "none"


@dataclass
class ScanResult:
    """What one pass over the source found (see :func:`scan_source`)."""

    ids: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    rows: list = field(default_factory=list)       # encoded new/changed target batches
    added: int = 0
    changed: int = 0
    rechecked: int = 0
    Xnew: list = field(default_factory=list)       # original vectors: new/changed (drift)
    Xold: list = field(default_factory=list)       # original vectors: unchanged sample (drift)
    ref: list = field(default_factory=list)        # original vectors: random reference sample


class IdIndex:
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
        m = model.code_bytes
        codes = model.encode_codes(Y)
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def scan_source(src, model: CompactModel, schema: pa.Schema, index: IdIndex,
                thash: np.ndarray, has_hash: np.ndarray, seen: np.ndarray, batch_rows: int,
                drift_queries: int, seed: int, prog) -> ScanResult:
    """Stream ``src`` once: hash every row, compare with the target's hashes ``thash`` (at
    the positions ``index`` finds; ``has_hash``: a hash is recorded), mark the target rows
    ``seen``, encode new/changed rows with ``model`` into ``schema`` batches, and draw the
    drift samples. Cost: one read of the source, one matrix product per new/changed row."""
    from connectors.arrow_utils import vectors_to_numpy

    out = ScanResult()
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
