"""Write speed of the Qdrant Edge sink (``qdrant+edge://``) against the qdrant-client sink on
embedded storage (``qdrant+path://``), on generated rows: this script runs from a clone (no corpus).

Rows: ``--rows`` seeded Gaussian 64-d float32 vectors (``--dim``) with an int64 id, a short text
payload column and 16 PQ code bytes, in 8,192-row Arrow batches: what ``shrink`` hands a sink.
Each configuration writes a fresh target through the sink's public life cycle (``create``,
``append`` per batch, ``store_model``, ``verify``, ``publish``) and reports:

* ``append rows/s``: rows / time of the ``append`` calls (building the points and upserting them:
  the figure the issue's 814 rows/s refers to), and the same per CPU-second of this process;
* ``optimize + verify s``: ``verify`` (Edge: ``optimize`` builds the HNSW graph and the PQ codes,
  then count + ids digest are read back), wall and CPU seconds of this process (all threads);
* ``total rows/s``: rows / (create .. publish), and rows per CPU-second of the whole write (what
  the write would reach with one core to itself; with more cores the HNSW build is parallel);
* ``graph recall@10``: 50 queries (stored rows + noise) through the published target's HNSW graph
  (``hnsw_ef`` 64, quantization ignored) against exact search over the stored vectors: what a
  cheaper graph (smaller ``m`` / ``ef_construct``) costs.

A configuration is ``<upsert_batch>x<workers>``, optionally followed by ``/m<hnsw_m>``,
``/ef<hnsw_ef_construct>``, ``/t<hnsw_threads>`` and ``/q<quantization>`` (sink options), e.g.
``32768x1/m16/ef32``.

Usage:
    python benchmarks/qdrant_edge_write.py --rows 200000   # -> results/qdrant_edge_write.md
    python benchmarks/qdrant_edge_write.py --rows 1000000 --configs 32768x1
    python benchmarks/qdrant_edge_write.py --configs 32768x1,32768x1/ef32,32768x1/m8/ef32
    python benchmarks/qdrant_edge_write.py --rows 2000 --baseline-rows 200 --out /tmp/w.md
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
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import machine  # noqa: E402

from connectors import IdDigest, open_sink  # noqa: E402
from connectors.arrow_utils import numpy_to_fsl  # noqa: E402
from connectors.qdrant_edge_store import close_shards  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "qdrant_edge_write.md"
BATCH = 8192


def batches(rows: int, dim: int, seed: int = 0):
    """The rows as 8,192-row batches (generated once, reused by every configuration)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()),
                        ("vector", pa.list_(pa.float32(), dim)),
                        ("pq_codes", pa.list_(pa.uint8(), 16))])
    out = []
    for s in range(0, rows, BATCH):
        n = min(BATCH, rows - s)
        X = rng.standard_normal((n, dim)).astype(np.float32)
        codes = rng.integers(0, 256, n * 16, dtype=np.uint8)
        out.append(pa.RecordBatch.from_arrays(
            [pa.array(np.arange(s, s + n, dtype=np.int64)), pa.array([f"doc {i}" for i in
                                                                      range(s, s + n)]),
             numpy_to_fsl(X), pa.FixedSizeListArray.from_arrays(pa.array(codes), 16)],
            schema=schema))
    return schema, out


def parse_config(cfg: str) -> dict:
    """Sink options of one ``--configs`` entry (see the module docstring)."""
    head, *rest = cfg.split("/")
    ub, w = (int(x) for x in head.split("x"))
    opts = {"upsert_batch": ub, "workers": w}
    keys = {"m": "hnsw_m", "ef": "hnsw_ef_construct", "t": "hnsw_threads", "q": "quantization"}
    for part in rest:
        key = next(k for k in ("ef", "m", "t", "q") if part.startswith(k))
        val = part[len(key):]
        opts[keys[key]] = val if key == "q" else int(val)
    return opts


def graph_recall(uri: str, parts: list[pa.RecordBatch], n_queries: int = 50) -> float:
    """recall@10 of the target's HNSW search (quantization ignored) against exact search."""
    from connectors import open_target
    from connectors.arrow_utils import vectors_to_numpy

    X = np.concatenate([vectors_to_numpy(b.column("vector")) for b in parts])
    rng = np.random.default_rng(1)
    Q = X[rng.choice(len(X), n_queries, replace=False)] + 0.05 * rng.standard_normal(
        (n_queries, X.shape[1])).astype(np.float32)
    tgt = open_target(uri)
    hits = 0
    for q in Q:
        exact = np.argpartition(((X - q) ** 2).sum(1), 10)[:10]
        got = tgt.search(q, k=10, hnsw_ef=64, ignore_quantization=True).column("id").to_pylist()
        hits += len(set(got) & set(exact.tolist()))
    return hits / (10 * n_queries)


def write(uri: str, schema: pa.Schema, parts: list[pa.RecordBatch], **opts) -> dict:
    rows = sum(b.num_rows for b in parts)
    digest = IdDigest()
    t0, c0 = time.perf_counter(), time.process_time()
    sink = open_sink(uri, **opts)
    sink.create(schema, id_column="id", vector_column="vector", distance="l2",
                codes_column="pq_codes")
    t1, c1 = time.perf_counter(), time.process_time()
    for b in parts:
        digest.update(b.column("id"))
        sink.append(b)
    sink.store_model(b"model", {"bench": True})  # Edge: waits for the upserts in flight
    t2, c2 = time.perf_counter(), time.process_time()
    sink.verify(rows, digest.hexdigest())
    t3, c3 = time.perf_counter(), time.process_time()
    sink.publish()
    t4, c4 = time.perf_counter(), time.process_time()
    return {"rows": rows, "append": rows / (t2 - t1), "append_cpu": rows / max(c2 - c1, 1e-9),
            "verify": t3 - t2, "verify_cpu": c3 - c2, "total": rows / (t4 - t0),
            "total_cpu": rows / max(c4 - c0, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " It runs from a clone.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--configs", default="8192x1,32768x1",
                    help="Edge sink upsert_batch x workers, comma-separated")
    ap.add_argument("--baseline-rows", type=int, default=2000,
                    help="rows for the qdrant+path (qdrant-client local mode) sink; 0 skips it")
    ap.add_argument("--root", default=None, help="where targets are written (default: a tmp dir)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    root = Path(a.root or tempfile.mkdtemp(prefix="edge-write-"))
    root.mkdir(parents=True, exist_ok=True)
    schema, parts = batches(a.rows, a.dim)
    lines = []
    for cfg in a.configs.split(","):
        opts = parse_config(cfg)
        target = root / f"edge_{cfg.replace('/', '_')}"
        r = write(f"qdrant+edge://{target}", schema, parts, **opts)
        r["recall"] = graph_recall(f"qdrant+edge://{target}", parts)
        close_shards()
        extra = "".join(f", {k} {v}" for k, v in opts.items() if k not in ("upsert_batch",
                                                                            "workers"))
        lines.append((f"Qdrant Edge, upsert_batch {opts['upsert_batch']}, workers "
                      f"{opts['workers']}{extra}", r))
        print(f"{lines[-1][0]}: {r}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    if a.baseline_rows:
        from connectors.qdrant_store import close_clients
        bs, bparts = batches(a.baseline_rows, a.dim)
        r = write(f"qdrant+path://{root}/qd/docs", bs, bparts)
        close_clients()
        r["recall"] = -1.0  # not measured (local mode searches by brute force)
        lines.append(("qdrant-client local mode (qdrant+path), upsert_batch 256", r))
        print(f"{lines[-1][0]}: {r}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    table = ["| sink | rows | append rows/s | append rows per CPU-s | optimize + verify s "
             "(CPU s) | total rows/s | total rows per CPU-s | graph recall@10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {name} | {r['rows']:,} | {r['append']:,.0f} | {r['append_cpu']:,.0f} | "
              f"{r['verify']:.1f} ({r['verify_cpu']:.1f}) | {r['total']:,.0f} | "
              f"{r['total_cpu']:,.0f} | {r['recall']:.3f} |".replace("| -1.000 |", "| - |")
              for name, r in lines]
    text = "\n".join([
        f"# Qdrant Edge sink write speed ({a.rows:,} x {a.dim}-d rows, PQ x16, HNSW built)", "",
        f"`python benchmarks/qdrant_edge_write.py --rows {a.rows} --dim {a.dim} --configs "
        f"{a.configs} --baseline-rows {a.baseline_rows}`, {dt.date.today().isoformat()}, "
        f"{machine()}, load average {os.getloadavg()[0]:.1f} at the end.", "", *table, "",
        "The engine holds the GIL while it upserts (a thread building points meanwhile got "
        "almost nothing done), so `workers` > 1 cannot overlap the two; rows per CPU-second "
        "(process time of the append calls) is the figure a machine to itself would reach.", ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
