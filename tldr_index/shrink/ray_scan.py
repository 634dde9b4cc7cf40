"""The scan stage of ``shrink(..., engine="ray")`` as Ray tasks: every row is validated, its id
digested and checked for duplicates where it is read; only counts, a few hundred bytes of digest
and the training sample come back to the driver. No copy of the N x D rows is made anywhere.

What runs where::

    driver                                   Ray tasks
    ------                                   ---------
    src.pieces(shard_rows) (metadata)
    sample positions (seeded, as local) ->   pass 1, one task per piece (row range of a Lance
                                             fragment / run of Parquet row groups): validate
                                             (Source.iter_piece: nulls, lengths, NaN/inf, zero
                                             under cosine), id keys -> digest state + keys split
                                             into B buckets by key % B, the sampled rows
    counts, digest states, errors       <-   (object store: B bucket arrays per piece, 16 B/row)
                                             pass 2, one task per bucket: first_duplicate over the
                                             bucket's keys from every piece
    first duplicate (or none)           <-
    [rows were skipped (skip_invalid):       pass 3, read the sample's rows again by position
     the sample's positions move]            (Lance: random-access take)
    sample rows, in source order        <-   -> scan/sample (VectorStore, float32)

The sample is the one the local engine draws (``sampling.sample_rows`` over the valid rows, same
seed), so both engines train the same model and publish the same target
(``tests/test_ray_engine.py``). Errors are the local engine's one-line messages; when a source has
both invalid values and duplicate ids, the first invalid row is reported (locally, whichever comes
first in the stream).

Bytes moved: each piece is read once (all columns, as the local scan); 16 bytes per row of
(key, position) go through the object store (spilled to disk by Ray if needed) to the bucket
tasks; the driver receives ``sample x D x 4`` bytes (plus, with ``skip_invalid``, 8 bytes per
skipped row: their positions). Memory per task: one batch plus 16 bytes per row of its piece
(pass 1) or of its bucket (``BUCKET_ROWS`` rows, pass 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DuplicateIdError, TLDRError
from .ray_engine import (
    DEFAULT_SHARD_ROWS,
    raise_worker_error,
    RaySession,
    require_ray,
)
from ..vectors import VectorStore
from .sampling import sample_rows
from .scan import check_scan_counts

log = logging.getLogger(__name__)

BUCKET_ROWS = 1 << 22  # ids per duplicate-check bucket: 4M x 16 B = 64 MB per pass-2 task


def sample_positions(n_valid: int, sample: int, seed: int,
                     dropped: np.ndarray | None = None) -> np.ndarray:
    """Source positions of the training sample: the local engine's draw
    (``sampling.sample_rows``) over the ``n_valid`` valid rows, mapped past the ``dropped``
    positions (rows skipped as invalid). Sorted, int64."""
    v = sample_rows(n_valid, min(n_valid, sample), seed).astype(np.int64)
    if dropped is not None and len(dropped):
        d = np.sort(np.asarray(dropped, dtype=np.int64))
        # the v-th valid row sits after every dropped d_j with d_j - j <= v (d_j - j valid rows
        # come before d_j)
        v = v + np.searchsorted(d - np.arange(len(d)), v, side="right")
    return v


def _error_text(exc: TLDRError) -> str:
    return f"{type(exc).__name__}:{exc}"


def scan_piece(src, piece, want: np.ndarray, batch_rows: int, skip_invalid: bool,
               buckets: int) -> tuple:
    """Pass 1 over one piece (a Ray task body; also callable directly). Returns
    ``(summary, sample, *bucket arrays)``: ``summary`` holds ``rows`` (valid), ``skipped``,
    ``first_invalid_id``, ``dropped`` (positions), ``digest`` (:meth:`IdDigest.state`) and
    ``error`` (``"ClassName:message"`` or None); ``sample`` the float32 rows at the positions
    ``want`` (sorted); bucket ``b`` a (2, m) uint64 array of the keys ``k`` with ``k % buckets ==
    b`` and their positions."""
    from connectors.arrow_utils import vectors_to_numpy
    from connectors.ids import IdDigest, hash_ids

    digest = IdDigest()
    keys: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    error = None
    try:
        for batch, pos in src.iter_piece(piece, batch_rows, skip_invalid=skip_invalid):
            k = hash_ids(batch.column(0))
            digest.update_keys(k)
            keys.append(k)
            poss.append(pos)
            if len(want):
                hit = np.isin(pos, want, assume_unique=True)
                if hit.any():
                    X = vectors_to_numpy(batch.column(1))
                    rows.append(np.asarray(X[hit], dtype=np.float32))
    except TLDRError as exc:  # Ray drops the cause of a task error: send it back as data
        error = _error_text(exc)
    skipped = getattr(src, "skipped", {"rows": 0, "first_id": None})
    K = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    P = np.concatenate(poss) if poss else np.empty(0, np.int64)
    dropped = np.empty(0, np.int64)
    if skipped["rows"] and error is None:
        dropped = np.setdiff1d(np.arange(piece.start, piece.start + piece.rows), P)
    summary = {"rows": len(K), "skipped": skipped["rows"],
               "first_invalid_id": skipped["first_id"], "dropped": dropped,
               "digest": digest.state(), "error": error}
    sample = np.concatenate(rows) if rows else np.empty((0, src.dim), np.float32)
    if error is not None:
        K, P = K[:0], P[:0]
    b = (K % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(b, kind="stable")
    cuts = np.cumsum(np.bincount(b, minlength=buckets))[:-1]
    parts = [np.stack([K[i], P[i].view(np.uint64)]) for i in np.split(order, cuts)]
    return (summary, sample, *parts)


def bucket_duplicate(*parts: np.ndarray) -> tuple[int, int] | None:
    """Pass 2 over one bucket (its (2, m) arrays from every piece): the first repeated key, as
    :func:`connectors.ids.first_duplicate`."""
    from connectors.ids import first_duplicate

    if not parts:
        return None
    allp = np.concatenate(parts, axis=1)
    return first_duplicate(allp[0], allp[1].view(np.int64))


def read_sample(src, positions: np.ndarray) -> np.ndarray:
    """Pass 3: the float32 vectors at source ``positions`` (sorted) of one piece."""
    from connectors.arrow_utils import vectors_to_numpy

    table = src.read_rows(positions, [src.vector_column])
    col = table.column(0).combine_chunks()
    return np.asarray(vectors_to_numpy(col, dim=src.dim), dtype=np.float32)


def _per_piece(positions: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """Sorted ``positions`` split by the pieces beginning at ``starts``."""
    return np.split(positions, np.searchsorted(positions, starts)[1:])


def scan_with_ray(src, out: Path, *, sample: int, seed: int, batch_rows: int = 8192,
                  skip_invalid: bool = False, shard_rows: int = DEFAULT_SHARD_ROWS,
                  workers: int | None = None, num_cpus: int | None = None,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Scan ``src`` on Ray (see the module docstring) and write the training sample to the
    :class:`VectorStore` ``out``. Returns the scan stage's info: ``rows`` (valid), ``ids_digest``,
    ``skipped_invalid``, ``first_invalid_id``, ``sample_rows``, ``pieces``.

    ``shard_rows``: rows per pass-1 task; ``workers``: pass-1 tasks in flight (default: the
    cluster's CPUs); ``num_cpus``: CPUs of a local Ray started here. ``progress(rows)`` is called
    as pieces finish. Raises the local engine's errors (:class:`InvalidInputError`,
    :class:`DuplicateIdError`) with the same messages."""
    from connectors.ids import IdDigest

    ray = require_ray()
    total = src.count()
    pieces = src.pieces(shard_rows)
    buckets = max(1, -(-total // BUCKET_ROWS))
    want = sample_positions(total, sample, seed)  # right unless rows get skipped (pass 3)
    starts = np.array([p.start for p in pieces], dtype=np.int64)
    wants = _per_piece(want, starts)
    summaries: dict[int, dict] = {}
    refs: dict[int, list] = {}
    with RaySession(ray, num_cpus):
        limit = workers or max(1, int(ray.available_resources().get("CPU", 1)))
        task = ray.remote(scan_piece).options(num_returns=2 + buckets)
        src_ref = ray.put(src)
        pending: dict = {}  # summary ref -> piece index
        nxt, done_rows, first_error = 0, 0, None
        while pending or (nxt < len(pieces) and first_error is None):
            while nxt < len(pieces) and len(pending) < limit and first_error is None:
                p = pieces[nxt]
                r = task.remote(src_ref, p, wants[nxt], batch_rows, skip_invalid, buckets)
                refs[nxt] = r
                pending[r[0]] = nxt
                nxt += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            s = summaries[i] = ray.get(ready[0])
            if s["error"] is not None and (first_error is None or i < first_error):
                first_error = i
            done_rows += s["rows"] + s["skipped"]
            if progress is not None:
                progress(done_rows)
        if first_error is not None:
            raise_worker_error(summaries[first_error]["error"])
        order = sorted(summaries)
        rows = sum(summaries[i]["rows"] for i in order)
        skipped = sum(summaries[i]["skipped"] for i in order)
        first_invalid = next((summaries[i]["first_invalid_id"] for i in order
                              if summaries[i]["skipped"]), None)
        check_scan_counts(src, total, rows, skipped, first_invalid)
        dup_task = ray.remote(bucket_duplicate)
        found = ray.get([dup_task.remote(*[refs[i][2 + b] for i in order])
                         for b in range(buckets)])
        hits = [f for f in found if f is not None]
        if hits:
            pos = min(hits)[0]
            dup = src.read_rows(np.array([pos]), [src.id_column]).column(0)[0].as_py()
            raise DuplicateIdError(
                f"Id column '{src.id_column}' of source '{src.uri}' must hold unique ids. Got "
                f"duplicate id {dup!r} at row {pos}.")
        digest = IdDigest()
        for i in order:
            digest.merge(summaries[i]["digest"])
        writer = VectorStore.create(out, src.dim, np.float32)
        if not skipped:
            for i in order:
                writer.append(ray.get(refs[i][1]))
        else:
            dropped = np.concatenate([summaries[i]["dropped"] for i in order])
            want = sample_positions(rows, sample, seed, dropped)
            read = ray.remote(read_sample)
            parts = [read.remote(src_ref, w) for w in _per_piece(want, starts) if len(w)]
            for r in parts:
                writer.append(ray.get(r))
        del refs
        store = writer.finalize({"source": src.uri, "sample_of": rows})
    log.info("Ray scan of %s: %d rows in %d pieces, %d duplicate-check bucket(s); sample of %d "
             "rows.", src.uri, rows, len(pieces), buckets, store.n_rows)
    return {"rows": rows, "ids_digest": digest.hexdigest(), "skipped_invalid": skipped,
            "first_invalid_id": first_invalid, "sample_rows": store.n_rows,
            "pieces": len(pieces), "engine": "ray"}
