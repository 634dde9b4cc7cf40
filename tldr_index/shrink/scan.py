"""The ``scan`` stage on this node: stream the source once, validated, into ``scan/vectors``
(a :class:`~tldr_index.vectors.VectorStore`) and ``scan/rows.arrow`` (ids + payload, Arrow IPC).

Cost: one pass over the source; memory one batch plus 8 bytes per id (duplicate detection);
disk ``N x D x 4`` (or 2 for a float16 source) plus the payload.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from connectors import IdDigest
from connectors.arrow_utils import vectors_to_numpy

from ..errors import InvalidInputError
from ..vectors import VectorStore
from .results import ScanResult

if TYPE_CHECKING:
    from .run import ShrinkRun

log = logging.getLogger(__name__)


def check_scan_counts(src, total: int, rows: int, skipped: int, first_invalid_id) -> None:
    """After a scan of either engine: every row the source reported was read (``rows`` valid +
    ``skipped`` invalid), the skipped ones are logged, and at least 2 rows are left."""
    if rows + skipped != total:
        raise InvalidInputError(
            f"Source '{src.uri}' changed while it was read: it reported {total} rows but "
            f"{rows + skipped} were read. Run shrink again once it is stable.")
    if skipped:
        log.warning("Skipped %d invalid row(s) of %s (NaN/inf%s vectors), first at id %r.",
                    skipped, src.uri, ", zero under cosine" if src.distance == "cosine" else "",
                    first_invalid_id)
    if skipped and rows < 2:
        raise InvalidInputError(
            f"Source '{src.uri}' has {rows} valid row(s) after skipping {skipped} invalid "
            f"one(s) (skip_invalid=True); shrink needs at least 2.")


def scan_local(run: "ShrinkRun") -> tuple[list[Path], ScanResult]:
    """The scan stage of the local engine (see the module docstring)."""
    src, out = run.src, run.work.stage_dir("scan", clear=True)
    dtype = np.float16 if src.value_type == pa.float16() else np.float32
    writer = VectorStore.create(out / "vectors", src.dim, dtype)
    keep = [0] + list(range(2, len(src.schema)))  # id + payload (the vector column is index 1)
    spill_schema = pa.schema([src.schema.field(i) for i in keep])
    digest = IdDigest()
    total = src.count()
    run.progress.begin("scan", total, "rows")
    rows = 0
    with pa.OSFile(str(out / "rows.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, spill_schema) as ipc:
        for b in src.iter_batches(run.batch_rows, skip_invalid=run.skip_invalid):
            writer.append(vectors_to_numpy(b.column(1)))
            ipc.write_batch(pa.RecordBatch.from_arrays([b.column(i) for i in keep],
                                                       schema=spill_schema))
            digest.update(b.column(0))
            rows += b.num_rows
            run.progress.update("scan", rows)
    store = writer.finalize({"source": run.source_uri})
    skipped = src.skipped["rows"]
    check_scan_counts(src, total, rows, skipped, src.skipped["first_id"])
    files = [store.path, store.root / VectorStore.META, out / "rows.arrow"]
    return files, ScanResult(rows=rows, ids_digest=digest.hexdigest(),
                             dtype=np.dtype(dtype).name, skipped_invalid=skipped,
                             first_invalid_id=src.skipped["first_id"])
