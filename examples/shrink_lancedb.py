"""Shrink a LanceDB table with the Python API, then search the compact table.

Runs on the sample shipped with tldr-index (6,000 MiniLM docstring embeddings, 384-d):

    python examples/shrink_lancedb.py [DB_DIR]        # default: a temporary directory

It creates table ``docs`` (5,700 rows) in LanceDB, shrinks it to 64-d float16 vectors plus 16-byte
PQ codes (``docs_tldr64``, the model stored beside it), and searches it with 300 held-out queries,
with and without re-ranking a shortlist by the original vectors.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402

from tldr_index.demo import N_QUERIES, ensure_docs, load_sample  # noqa: E402
from tldr_index.knn import exact_search  # noqa: E402
from tldr_index.pipeline import info, search, shrink  # noqa: E402
from tldr_index.search import recall_at_k  # noqa: E402


def main(db: str) -> None:
    sample = load_sample()
    source = ensure_docs(db, sample)                      # lancedb://<db>/docs
    queries = sample["X"][-N_QUERIES:].astype(np.float32)  # not in the table

    report = shrink(source, dim=64, pq_bytes=16, epochs=4, overwrite=True, progress=True,
                    source_options={"distance": "cosine"})
    print(f"{report.target}: {report.rows} rows, {report.source_disk_bytes / 1e6:.1f} MB -> "
          f"{report.target_disk_bytes / 1e6:.1f} MB on disk, {report.pq_bytes} B of PQ codes per "
          f"vector instead of {4 * report.source_dim} B")

    X = sample["X"][:-N_QUERIES].astype(np.float32)
    _, truth = exact_search(X, queries, 10, metric="cosine")   # ids are row numbers here
    for rescore in (False, True):
        res = search(report.target, queries, k=10, rescore=rescore)
        rec = recall_at_k(res.ids, truth)
        print(f"recall@10 {'with' if rescore else 'without'} rescoring: {rec:.3f} "
              f"({sum(res.seconds.values()):.2f} s for {len(queries)} queries)")
    print(info(report.target))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tldr-example-"))
