"""Write speed of the Qdrant Edge sink (``qdrant+edge://``) against the qdrant-client sink on
embedded storage (``qdrant+path://``), on generated rows: this script runs from a clone (no corpus).

Rows: ``--rows`` seeded Gaussian 64-d float32 vectors (``--dim``) with an int64 id, a short text
payload column and 16 PQ code bytes, in 8,192-row Arrow batches: what ``shrink`` hands a sink.
Each configuration writes a fresh target through the sink's public life cycle (``create``,
``append`` per batch, ``store_model``, ``verify``, ``publish``) and reports:

* ``append rows/s``: rows / time of the ``append`` calls (building the points and upserting them:
  the figure the issue's 814 rows/s refers to), and the same per CPU-second of this process;
* ``optimize + verify s``: ``verify`` (Edge: ``optimize`` builds the HNSW graph and the PQ codes,
  then count + ids digest are read back);
* ``total rows/s``: rows / (create .. publish).

Usage:
    python benchmarks/qdrant_edge_write.py --rows 200000   # -> results/qdrant_edge_write.md
    python benchmarks/qdrant_edge_write.py --rows 1000000 --configs 32768x1
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


def write(uri: str, schema: pa.Schema, parts: list[pa.RecordBatch], **opts) -> dict:
    rows = sum(b.num_rows for b in parts)
    digest = IdDigest()
    t0 = time.perf_counter()
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
    t3 = time.perf_counter()
    sink.publish()
    t4 = time.perf_counter()
    return {"rows": rows, "append": rows / (t2 - t1), "append_cpu": rows / max(c2 - c1, 1e-9),
            "verify": t3 - t2, "total": rows / (t4 - t0)}


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
        ub, w = (int(x) for x in cfg.split("x"))
        target = root / f"edge_{ub}x{w}"
        r = write(f"qdrant+edge://{target}", schema, parts, upsert_batch=ub, workers=w)
        close_shards()
        lines.append((f"Qdrant Edge, upsert_batch {ub}, workers {w}", r))
        print(f"{lines[-1][0]}: {r}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    if a.baseline_rows:
        from connectors.qdrant_store import close_clients
        bs, bparts = batches(a.baseline_rows, a.dim)
        r = write(f"qdrant+path://{root}/qd/docs", bs, bparts)
        close_clients()
        lines.append(("qdrant-client local mode (qdrant+path), upsert_batch 256", r))
        print(f"{lines[-1][0]}: {r}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    table = ["| sink | rows | append rows/s | append rows per CPU-s | optimize + verify s | "
             "total rows/s |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {name} | {r['rows']:,} | {r['append']:,.0f} | {r['append_cpu']:,.0f} | "
              f"{r['verify']:.1f} | {r['total']:,.0f} |" for name, r in lines]
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
