"""Qdrant's own quantizers on the original vectors, measured on the real engine (Qdrant Edge):
recall@10 and query latency of binary (1 / 1.5 / 2 bit), scalar int8, TurboQuant (1 / 2 / 4 bit)
and product quantization, raw and with Qdrant's rescoring (``QuantizationSearchParams(rescore=True,
oversampling=...)``), at their nominal code bytes per vector.

Data: ``--corpus PATH`` (an .npz with X), default the 6,000-row sample shipped in
tldr_index/data/sample.npz; ``--rows`` of it go into one shard per quantizer (cosine, float32,
HNSW m=16, ef_construct=100, built by ``optimize``), ``--queries`` held-out rows are the queries,
exact ground truth by brute force (the query itself excluded: it is not stored).

Usage:
    python benchmarks/qdrant.py --corpus ../shared/data/pydoc-minilm.npz --rows 20000
    python benchmarks/qdrant.py --rows 2000 --queries 20 --kinds sq,bq1 --out /tmp/q.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import add_corpus_arg, corpus_path, machine, select_corpus  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "qdrant.md"
KINDS = {  # name -> (sink quantization, nominal code bytes per vector as a function of D)
    "bq1": ("binary", lambda D: D / 8), "bq1.5": ("binary1.5", lambda D: 1.5 * D / 8),
    "bq2": ("binary2", lambda D: D / 4), "sq": ("scalar", lambda D: D),
    "tq1": ("turbo1", lambda D: D / 8), "tq2": ("turbo2", lambda D: D / 4),
    "tq4": ("turbo4", lambda D: D / 2), "pq16": ("pq", lambda D: D / 4),
}


def build(path: str, X: np.ndarray, quantization: str):
    import qdrant_edge as qe

    from connectors.qdrant_edge_store import quantization_config
    quant = quantization_config(quantization, X.shape[1], None, "x16" if quantization == "pq"
                                else None)
    sh = qe.EdgeShard.create(path, qe.EdgeConfig(
        vectors={"": qe.EdgeVectorParams(size=X.shape[1], distance=qe.Distance.Cosine)},
        quantization_config=quant, optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1)))
    for s in range(0, len(X), 8192):
        sh.update(qe.UpdateOperation.upsert_points(
            [qe.Point(s + i, v) for i, v in enumerate(X[s:s + 8192].tolist())]))
    t0 = time.perf_counter()
    sh.flush()
    sh.optimize()
    return sh, time.perf_counter() - t0


def measure(sh, Q: np.ndarray, truth: np.ndarray, rescore: bool, oversampling: float):
    import qdrant_edge as qe

    params = qe.SearchParams(hnsw_ef=128, quantization=qe.QuantizationSearchParams(
        rescore=rescore, oversampling=oversampling if rescore else None))
    hits, t = 0, []
    for q, want in zip(Q.tolist(), truth):
        t0 = time.perf_counter()
        res = sh.query(qe.QueryRequest(query=qe.Query.Nearest(q), limit=10, params=params))
        t.append(time.perf_counter() - t0)
        hits += len({r.id for r in res} & set(want.tolist()))
    return hits / truth.size, 1000 * float(np.median(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--oversampling", type=float, default=2.0)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    select_corpus(a.corpus)
    X = np.load(corpus_path())["X"].astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))[:a.rows + a.queries]
    B, Q = X[idx[:a.rows]], X[idx[a.rows:]]
    truth = np.argsort(-(Q @ B.T), axis=1)[:, :10]
    D = X.shape[1]
    root = tempfile.mkdtemp(prefix="qdrant-bench-")
    rows = []
    try:
        for name in a.kinds.split(","):
            quantization, nbytes = KINDS[name]
            sh, secs = build(os.path.join(root, name), B, quantization)
            for rescore in (False, True):
                r, ms = measure(sh, Q, truth, rescore, a.oversampling)
                rows.append((name, nbytes(D), rescore, r, ms, secs))
                print(rows[-1], flush=True)
            sh.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = ["| quantizer | code bytes / vector | rescore | recall@10 | median query ms | "
             "optimize s |", "|---|---:|---|---:|---:|---:|"]
    table += [f"| {n} | {b:g} | {'yes x' + str(a.oversampling) if rs else 'no'} | {r:.3f} | "
              f"{ms:.2f} | {s:.1f} |" for n, b, rs, r, ms, s in rows]
    text = "\n".join([
        f"# Qdrant's own quantizers on Qdrant Edge ({a.rows:,} x {D}-d rows of "
        f"{corpus_path().name}, {a.queries} queries, HNSW ef 128)", "",
        f"`python benchmarks/qdrant.py{' --corpus ' + a.corpus if a.corpus else ''} --rows "
        f"{a.rows} --queries {a.queries} --kinds {a.kinds}`"
        f", {dt.date.today().isoformat()}, {machine()}, load average {os.getloadavg()[0]:.1f}.",
        "", *table, "",
        f"Below Qdrant's full_scan_threshold (default 10,000 KB of vectors: "
        f"{10_000_000 // (4 * D):,} {D}-d rows) a segment is searched by a full scan of the "
        f"quantized vectors, not through the HNSW graph; this run "
        f"{'scanned' if a.rows * 4 * D < 10_240_000 else 'used the graph'}.",
        "Code bytes are nominal (bits x D / 8; PQ x16: 4 D / 16); the engine's per-vector extras "
        "are not counted.", ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
