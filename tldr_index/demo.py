"""``tldr-index demo``: shrink a real sample of text embeddings and measure what it keeps.

The sample (``tldr_index/data/sample.npz``): 6,000 rows cut from the shared corpus (MiniLM
embeddings of Python docstrings, 384-d float16, unit norm) with their texts and package labels.
The first 5,700 rows become the LanceDB table ``docs`` (id, vector float32, text, label); the last
300 are held-out queries. The demo shrinks ``docs`` with TLDR and with PCA (same pipeline, same
codec: the default, RQ), then compares recall@10 of :func:`tldr_index.search.search` with exact cosine neighbours of
the original vectors. Re-running it reuses ``docs`` and replaces the two demo targets.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError

SAMPLE = Path(__file__).resolve().parent / "data" / "sample.npz"
N_QUERIES = 300
TABLE = "docs"


def load_sample() -> dict[str, np.ndarray]:
    with np.load(SAMPLE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def ensure_docs(db: str, sample: dict[str, np.ndarray]) -> str:
    """Create table ``docs`` in LanceDB ``db`` from the sample unless it is already there."""
    import lancedb
    import pyarrow as pa

    from connectors import lancedb_uri
    from connectors.arrow_utils import numpy_to_fsl

    n = len(sample["X"]) - N_QUERIES
    conn = lancedb.connect(db)
    if TABLE in conn.list_tables().tables:
        tbl = conn.open_table(TABLE)
        names = tbl.schema.names
        if tbl.count_rows() != n or "label" not in names or "text" not in names:
            raise InvalidInputError(
                f"Table '{TABLE}' in '{db}' exists and is not the demo's ({tbl.count_rows()} "
                f"rows, columns {', '.join(names)}); pass --db to run the demo elsewhere.")
    else:
        X = sample["X"][:n].astype(np.float32)
        labels = sample["label_names"][sample["labels"][:n]]
        conn.create_table(TABLE, data=pa.table({
            "id": pa.array(np.arange(n, dtype=np.int64)), "vector": numpy_to_fsl(X),
            "text": pa.array(sample["texts"][:n].tolist()),
            "label": pa.array(labels.tolist())}))
    return lancedb_uri(db, TABLE)


def run_demo(db: str, *, dim: int = 64, pq_bytes: int = 16, epochs: int | None = None,
             progress: Any = None, random_state: int = 0) -> dict:
    """Create (if needed) and shrink the demo table twice (TLDR, PCA); returns the measurements."""
    from connectors import lancedb_uri

    from .knn import exact_search
    from .shrink import shrink
    from .search import recall_at_k, search

    sample = load_sample()
    os.makedirs(db, exist_ok=True)
    source = ensure_docs(db, sample)
    n = len(sample["X"]) - N_QUERIES
    X = sample["X"][:n].astype(np.float32)
    Q = sample["X"][n:].astype(np.float32)
    _, truth = exact_search(X, Q, 10, metric="cosine")
    results = []
    for method in ("tldr", "pca"):
        target = lancedb_uri(db, f"{TABLE}_{method}{dim}")
        t0 = time.perf_counter()
        rep = shrink(source, target, dim=dim, method=method, pq_bytes=pq_bytes, epochs=epochs,
                     overwrite=True, progress=progress, random_state=random_state,
                     source_options={"distance": "cosine"})
        seconds = time.perf_counter() - t0
        plain = search(target, Q, k=10)
        resc = search(target, Q, k=10, rescore=True)
        results.append({
            "method": method, "target": target, "seconds": seconds,
            "recall_at_10": recall_at_k(plain.ids, truth),
            "recall_at_10_rescored": recall_at_k(resc.ids, truth), "shortlist": resc.shortlist,
            "bytes_per_vector": rep.pq_bytes, "codec": rep.codec, "target_disk_bytes": rep.target_disk_bytes,
            "source_disk_bytes": rep.source_disk_bytes, "stage_seconds": rep.stage_seconds,
            "example_ids": resc.ids[0, :3].tolist()})
    texts = sample["texts"]
    return {"db": db, "source": source, "rows": n, "source_dim": int(X.shape[1]), "dim": dim,
            "pq_bytes": pq_bytes, "queries": len(Q), "results": results,
            "example": {"query": str(texts[n]),
                        "tldr_rescored_top3": [str(texts[i])
                                               for i in results[0]["example_ids"]],
                        "exact_top3": [str(texts[i]) for i in truth[0, :3]]}}


def format_demo(r: dict) -> list[str]:
    def short(s: str, n: int = 90) -> str:
        return s if len(s) <= n else s[:n - 3] + "..."

    lines = [f"Demo: {r['rows']:,} docstring embeddings ({r['source_dim']}-d) in {r['source']}, "
             f"{r['queries']} held-out queries, recall@10 against exact cosine neighbours.", ""]
    head = f"  {'method':<6} {'target':<34} {'recall@10':>9} {'rescored':>9} {'bytes/vec':>10} " \
           f"{'on disk':>10} {'time':>7}"
    lines += [head, "  " + "-" * (len(head) - 2)]
    src_bytes = r["results"][0]["source_disk_bytes"]
    for m in r["results"]:
        disk = m["target_disk_bytes"]
        lines.append(
            f"  {m['method']:<6} {m['target'].rsplit('/', 1)[-1]:<34} {m['recall_at_10']:>9.3f} "
            f"{m['recall_at_10_rescored']:>9.3f} {m['bytes_per_vector']:>10} "
            f"{(disk or 0) / 1e6:>8.2f}MB {m['seconds']:>6.1f}s")
    lines.append(f"  {'source':<6} {'docs':<34} {1.0:>9.3f} {'':>9} {4 * r['source_dim']:>10} "
                 f"{(src_bytes or 0) / 1e6:>8.2f}MB")
    codec = r["results"][0]["codec"].upper()
    lines += ["", f"  bytes/vec: the in-memory search structure ({codec} codes) vs float32 vectors; "
                  f"rescored: shortlist of {r['results'][0]['shortlist']} re-ranked with the "
                  f"original vectors.", "",
              f"Example query: {short(r['example']['query'])}"]
    for got, want in zip(r["example"]["tldr_rescored_top3"], r["example"]["exact_top3"]):
        lines.append(f"  {'=' if got == want else '~'} {short(got, 86)}")
    name = r["results"][0]["target"].rsplit("/", 1)[-1]  # docs_tldr64: the real target name
    lines.append(f"  (top-3 of {name} with --rescore; '=' where it matches the exact top-3)")
    lines += ["", f"Try: tldr-index info --db {r['db']} --collection "
                  f"{r['results'][0]['target'].rsplit('/', 1)[-1]}"]
    return lines
