"""Keep a compact collection fresh while documents arrive, then run the nightly reindex.

Runs on the sample shipped with tldr-index (6,000 MiniLM docstring embeddings, 384-d):

    python examples/ingest.py [DB_DIR]         # default: a temporary directory

1. ``docs`` (5,700 rows) is created in LanceDB and shrunk to ``docs_tldr64`` (once);
2. the 300 remaining sample rows arrive in batches of 64, as an ingestion pipeline would see them:
   each batch goes into the source table *and* into the compact one with ``compact.add(batch)``
   (so it is searchable at once);
3. the same batches go through ``encode_batch``, the function you would hand to Ray Data
   (``ds.map_batches(compact.encode_batch, batch_format="pyarrow")``; Ray is not needed here);
4. ``reindex`` (what examples/nightly/nightly.sh runs) finds the target in step with the source,
   re-encoding the rows added in step 2 once (``add`` records no content hash: they are reported
   as ``rechecked``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import lancedb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import tldr_index  # noqa: E402
from connectors import open_target  # noqa: E402
from connectors.arrow_utils import numpy_to_fsl  # noqa: E402
from tldr_index.demo import N_QUERIES, ensure_docs, load_sample  # noqa: E402
from tldr_index.errors import SourceNotFoundError  # noqa: E402
from tldr_index.pipeline import shrink  # noqa: E402
from tldr_index.reindex import reindex  # noqa: E402


def arriving_batches(sample: dict, size: int = 64):
    """The held-out sample rows as record batches (id, vector, text, label), like a stream."""
    n = len(sample["X"]) - N_QUERIES
    X = sample["X"][n:].astype(np.float32)
    labels = sample["label_names"][sample["labels"][n:]]
    for s in range(0, len(X), size):
        e = min(s + size, len(X))
        yield pa.record_batch([pa.array(np.arange(n + s, n + e, dtype=np.int64)),
                               numpy_to_fsl(X[s:e]),
                               pa.array(sample["texts"][n + s:n + e].tolist()),
                               pa.array(labels[s:e].tolist())],
                              names=["id", "vector", "text", "label"])


def main(db: str) -> None:
    sample = load_sample()
    source = ensure_docs(db, sample)                                  # lancedb://<db>/docs
    target = source + "_tldr64"
    try:
        open_target(target)
    except SourceNotFoundError:
        shrink(source, target, dim=64, pq_bytes=16, epochs=2, progress=True,
               source_options={"distance": "cosine"})
    compact = tldr_index.open(target)
    print(compact)
    table = lancedb.connect(db).open_table("docs")
    for batch in arriving_batches(sample):
        table.add(pa.Table.from_batches([batch]))                     # the source of truth
        written = compact.add(batch)                                  # searchable right away
        out = compact.encode_batch(batch)                             # a map_batches function
        print(f"batch of {batch.num_rows}: {written} rows added, encoded columns "
              f"{out.schema.names[-2:]}")
    q = sample["X"][-3:].astype(np.float32)
    hits = compact.search(q, k=5)
    print("top-5 ids of the last 3 new rows:", hits.ids.tolist())
    report = reindex(target, work_dir=Path(db) / "reindex-work")
    print(report.to_json())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tldr-ingest-"))
