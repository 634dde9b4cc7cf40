"""The code index of a shrink run: built at the end of the ``encode`` stage (its files are part
of that stage's checkpoint, so a resumed run never builds it twice) from the encoded codes and
reduced vectors already on disk (no second pass over the target), and stored in the target by
the ``write`` stage through :meth:`connectors.Sink.store_artifact` (file stores only).

Cost: see :meth:`tldr_index.code_index.CodeIndex.build` (k-means on ``24 nlist`` rows, one
assignment pass ``N x nlist x d``, a recall table on the recall estimate's ``eval_queries``
held-out rows and their exact neighbours in the original space); memory: the codes
(``code_bytes`` per row, the array read), the index's fast-scan lists (about ``code_bytes - 4 + 8``
per row for codes of 12 B and more) and one block of reduced vectors (the reduced store is read
block by block, so the peak does not grow with ``N x d``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from connectors import stores_artifacts

from ..code_index import ARTIFACT_NAME, CodeIndex
from ..compact import CompactModel
from ..vectors import VectorStore
from .encode_batches import read_rows

if TYPE_CHECKING:
    from .run import ShrinkRun

log = logging.getLogger(__name__)

INDEX_FILE = "code_index.safetensors"


def index_path(run: "ShrinkRun") -> Path:
    """Where the encode stage leaves the index (absent: the run builds none)."""
    return run.work.root / "encode" / INDEX_FILE


def build_code_index(run: "ShrinkRun", model: CompactModel, out: Path, n: int,
                     held_out: tuple[np.ndarray, np.ndarray] | None = None) -> Path | None:
    """Build and save the index of the ``n`` encoded rows when the run stores codes and
    ``n >= run.index_min_rows``; returns the file, or None (and logs why) when it builds none.
    ``held_out``: the recall estimate's ``(rows, true top 10 in the original space)``, the
    queries and truth of the index's recall table (without it: exact reduced search)."""
    if not model.code_bytes:
        return None
    if n < run.index_min_rows:
        log.info("No code index: %d rows < index_min_rows=%d (search scans every code).", n,
                 run.index_min_rows)
        return None
    if not stores_artifacts(run.target_uri):
        log.info("No code index: target '%s' keeps its own index (the store cannot hold "
                 "artifacts).", run.target_uri)
        return None
    run.progress.phase("encode", "code index (IVF over the codes)", None)
    Z = VectorStore.open(out / "reduced")  # read block by block: RSS stays flat in N
    codes = read_rows(out / "codes.u8", 0, n, model.code_bytes)
    rows, truth = held_out if held_out is not None else (None, None)
    index = CodeIndex.build(Z, codes, model.codec, metric=model.metric, seed=run.seed,
                            eval_rows=rows, eval_truth=truth)
    path = out / INDEX_FILE
    index.save(path)
    t = index.recall_table
    log.info("Code index: %d rows in %d lists; recall@10 raw per nprobe %s; rescored of the "
             "largest shortlist (%s) %s.", n, index.nlist, dict(zip(t.nprobe, t.raw or [])),
             (t.shortlist or [None])[-1], dict(zip(t.nprobe, [r[-1] for r in t.rescored or []])))
    return path


def store_code_index(run: "ShrinkRun", sink) -> bool:
    """Stage the index the encode stage built (if any) into ``sink``; True if one was stored."""
    path = index_path(run)
    if not path.exists():
        return False
    sink.store_artifact(ARTIFACT_NAME, path.read_bytes())
    return True
