"""Scale benchmark: the encode+write stage single-process vs on Ray, and shrink stage times vs N.

Sources: the LanceDB tables that ``benchmarks/shrink.py`` builds (``_cache/shrink/db_<N>``, table
``docs``: the shared corpus tiled with noise, 384-d float32 unit vectors, cosine, ~30 B payload
per row; ``--cache`` names another directory holding them). They are only read: each is copied
under ``--work`` (default ``/tmp/tldr-scale``, removed at the end) into Lance fragments of
``--fragment-rows`` rows, because the cached tables are one fragment each, which Ray reads in a
single task (a big dataset has many: Lance writes at most 1M rows per file by default).

Part 1 -- encode+write rows/s, all in one run on the same data and model:
  the source's rows are read, reduced to d=64 with a fixed linear model (a PCA fitted on a
  20,000-row sample: the encode cost of TLDR and PCA is the same D x d product) and PQ-encoded to
  16 bytes with :func:`tldr_index.encode_batches.encode_record_batch`, then written as Parquet
  into a sink's staging directory (aborted afterwards). Single-process: one loop over
  ``Source.iter_batches`` (1 and 2 BLAS/FAISS threads). Ray: ``ray_engine.write_with_ray`` with
  1 and 2 workers (each worker a 1-CPU task) on a local ``ray.init(num_cpus=2)``, started once
  beforehand (its start-up time is reported separately).

Part 2 -- ``shrink`` stage times at each N (``--shrink-rows``), Parquet target, engines local
  and ray (1 and 2 workers; the scan and the write run on Ray), ``--method`` (default pca: the kNN graph and training depend on the
  sample, not on N; benchmarks/results/shrink.md has the TLDR runs).

The cores are shared with other jobs: the load average is printed before and after; compare the
ratios within one run.

Usage:
    python benchmarks/scale.py                                  # -> benchmarks/results/scale.md
    python benchmarks/scale.py --encode-rows 250000 --shrink-rows 250000 --out /tmp/scale.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import (CACHE_ROOT, add_corpus_arg, corpus_tag, machine,  # noqa: E402
                               select_corpus)

CACHE = CACHE_ROOT / "shrink"
CACHE_DIR = [CACHE]  # --cache


def source_uri(rows: int) -> str:
    from connectors import lancedb_uri

    db = CACHE_DIR[0] / f"db_{rows}"
    if not (db / "docs.lance").is_dir():  # build it as benchmarks/shrink.py does
        from benchmarks import shrink as bench_shrink
        bench_shrink.CACHE = CACHE_DIR[0]
        bench_shrink.make_source(rows)
    return lancedb_uri(str(db), "docs")


def fragmented_copy(rows: int, work: Path, fragment_rows: int) -> str:
    """A copy of ``db_<rows>/docs.lance`` under ``work`` in fragments of ``fragment_rows`` rows
    (the cached tables are one fragment; a big Lance dataset has many, Lance's default being
    1M rows per file; Ray reads one task per fragment)."""
    import lance

    if not fragment_rows:
        return source_uri(rows)
    source_uri(rows)  # exists?
    ds = lance.dataset(str(CACHE_DIR[0] / f"db_{rows}" / "docs.lance"))
    path = work / f"src_{rows}.lance"
    if not path.exists():
        lance.write_dataset(ds.to_batches(batch_size=65_536), str(path), schema=ds.schema,
                            max_rows_per_file=fragment_rows)
    return f"lance://{path}"


def fixed_model(src, dim: int, pq_bytes: int, sample: int = 20_000, seed: int = 0):
    """A compact model (PCA d=dim + PQ) fitted on a random sample of the source."""
    from connectors.arrow_utils import vectors_to_numpy
    from tldr_index import PCA
    from tldr_index.codecs import get_codec
    from tldr_index.compact import CompactModel, prepare_rows

    sample = min(sample, src.count())
    idx = np.sort(np.random.default_rng(seed).choice(src.count(), sample, replace=False))
    X = vectors_to_numpy(src.read_rows(idx, [src.vector_column]).column(0))
    X = np.ascontiguousarray(X, dtype=np.float32)
    pca = PCA(dim).fit(X)
    pq = get_codec("pq", dim, bytes=pq_bytes).fit(prepare_rows(pca.transform(X), src.distance),
                                                  seed=seed)
    return CompactModel.from_reducer(pca, src.distance, pq)


def staged_sink(work: Path, name: str, schema, src):
    from connectors.parquet_store import ParquetSink

    sink = ParquetSink(str(work / name), uri=f"parquet://{work / name}/")
    sink.create(schema, id_column=src.id_column, vector_column=src.vector_column,
                distance=src.distance, codes_column="pq_codes")
    return sink


def encode_local(src, model, schema, sink, threads: int, batch_rows: int = 8192) -> int:
    from threadpoolctl import threadpool_limits

    from tldr_index.threads import thread_limit
    from tldr_index.shrink.encode_batches import encode_record_batch

    rows = 0
    with thread_limit(threads), threadpool_limits(threads):
        for b in src.iter_batches(batch_rows, check_duplicates=False):
            sink.append(encode_record_batch(b, model, schema, vector_column=src.vector_column,
                                            source=src.uri))
            rows += b.num_rows
    return rows


def part_encode(args, work: Path) -> list[dict]:
    import ray

    from connectors import open_source
    from tldr_index.shrink.ray_engine import write_with_ray

    src = open_source(fragmented_copy(args.encode_rows, work, args.fragment_rows),
                      distance="cosine")
    model = fixed_model(src, args.dim, args.pq_bytes)
    schema = src.target_schema(args.dim, args.pq_bytes, value_type=__import__("pyarrow").float16())
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    out = []
    configs = [("single process", 1), ("single process", 2)] + [("ray", n) for n in args.ray_workers]
    for rep in range(args.repeats):
        for engine, n in configs:
            sink = staged_sink(work, f"enc_{engine[:3]}_{n}_{rep}", schema, src)
            t0 = time.perf_counter()
            if engine == "ray":
                rows = write_with_ray(src, sink, model, schema, codes_column="pq_codes",
                                      workers=n, shard_rows=args.shard_rows)
            else:
                rows = encode_local(src, model, schema, sink, n)
            sec = time.perf_counter() - t0
            sink.abort()
            out.append({"engine": engine, "n": n, "rep": rep, "rows": rows, "seconds": sec,
                        "load": os.getloadavg()[0]})
            print(f"  encode {engine:15s} x{n} rep {rep}: {rows:,} rows in {sec:.1f} s "
                  f"({rows / sec:,.0f} rows/s), load {os.getloadavg()[0]:.1f}", flush=True)
    ray.shutdown()
    for r in out:
        r["ray_start"] = ray_start
    return out


def part_shrink(args, work: Path) -> list[dict]:
    import ray

    from tldr_index.pipeline import shrink

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # once, not timed
    out = []
    for rows in args.shrink_rows:
        for engine, workers in [("local", 1)] + [("ray", n) for n in args.ray_workers]:
            tgt = work / f"shrink_{rows}_{engine}"
            src = fragmented_copy(rows, work, args.fragment_rows)
            t0 = time.perf_counter()
            rep = shrink(src, f"parquet://{tgt}/", dim=args.dim, method=args.method,
                         pq_bytes=args.pq_bytes, sample=args.sample,
                         source_options={"distance": "cosine"}, work_dir=work / f"w_{rows}",
                         engine=engine, threads=args.threads, keep_work=True,
                         engine_options={"workers": workers, "shard_rows": args.shard_rows}
                         if engine == "ray" else None)
            wall = time.perf_counter() - t0
            kept = _du(work / f"w_{rows}" / "scan")  # what the scan left on this node
            shutil.rmtree(work / f"w_{rows}", ignore_errors=True)
            shutil.rmtree(tgt, ignore_errors=True)
            out.append({"rows": rows, "engine": engine, "workers": workers, "wall": wall,
                        "stages": dict(rep.stage_seconds), "scan_bytes": kept,
                        "load": os.getloadavg()[0]})
            print(f"  shrink {rows:,} {engine} x{workers}: {wall:.1f} s, scan kept "
                  f"{kept / 1e6:.0f} MB; " + " ".join(f"{k} {v:.1f}"
                                                     for k, v in rep.stage_seconds.items()),
                  flush=True)
    ray.shutdown()
    return out


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def markdown(enc: list[dict], shr: list[dict], args, command: str, load: tuple) -> str:
    lines = [
        "# Scale: encode+write on one process vs Ray, and shrink stage times vs N", "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now().isoformat(timespec='minutes')}  ",
        (f"Machine: {machine()}; load average (1 min) before/after: {load[0]:.1f} / "
         f"{load[1]:.1f} (the 2 cores are shared with other jobs: compare ratios within this "
         f"run)  "),
        f"Settings: d={args.dim}, {args.pq_bytes}-byte PQ, Parquet target (snappy), Ray shards "
        f"of {args.shard_rows:,} rows; sources: the cached tables "
        + (f"copied into Lance fragments of {args.fragment_rows:,} rows (Ray reads one task per "
           f"fragment)." if args.fragment_rows else "as they are (one fragment each)."), ""]
    if enc:
        base = {}
        lines += [f"## Encode + PQ + write, {enc[0]['rows']:,} x 384 rows (LanceDB source)", "",
                  (f"Ray started once before the runs (`ray.init(num_cpus=2)`: "
                   f"{enc[0]['ray_start']:.1f} s, not counted below; each Ray run does include "
                   f"its job's worker start-up and the model broadcast)."), "",
                  "| engine | threads / workers | repeat | seconds | rows/s "
                  "| vs single process, 1 thread | load (1 min) |",
                  "|---|---|---|---|---|---|---|"]
        for r in enc:
            rate = r["rows"] / r["seconds"]
            if r["engine"] == "single process" and r["n"] == 1:
                base[r["rep"]] = rate
            ref = base.get(r["rep"])
            lines.append(f"| {r['engine']} | {r['n']} | {r['rep']} | {r['seconds']:.1f} | "
                         f"{rate:,.0f} | {rate / ref:.2f}x | {r['load']:.1f} |" if ref else
                         f"| {r['engine']} | {r['n']} | {r['rep']} | {r['seconds']:.1f} | "
                         f"{rate:,.0f} | | {r['load']:.1f} |")
        lines.append("")
    if shr:
        stages = ["scan", "knn", "train", "encode", "write", "verify", "publish"]
        lines += [(f"## shrink stage times (method {args.method}, sample {args.sample:,}, "
                   f"Parquet target; Ray started once before, not timed)"), "",
                  ("The scan stage of engine=ray runs as Ray tasks (`tldr_index/ray_scan.py`); "
                   "'scan kept' is what the scan stage left on this node's disk (the local "
                   "engine: a copy of every row; ray: the training sample)."), "",
                  "| rows | engine | workers | wall s | " + " | ".join(f"{s} s" for s in stages)
                  + " | scan rows/s | scan kept MB | load (1 min) |",
                  "|---|---|---|---|" + "---|" * len(stages) + "---|---|---|"]
        for r in shr:
            scan = r["stages"].get("scan", 0)
            lines.append(f"| {r['rows']:,} | {r['engine']} | {r['workers']} | {r['wall']:.1f} | "
                         + " | ".join(f"{r['stages'].get(s, 0):.1f}" for s in stages)
                         + f" | {r['rows'] / scan:,.0f} | {r['scan_bytes'] / 1e6:,.0f}"
                         + f" | {r['load']:.1f} |")
        rows = sorted({r["rows"] for r in shr})
        most = max(r["workers"] for r in shr if r["engine"] == "ray")
        if len(rows) >= 2:
            lo, hi = rows[0], rows[-1]
            lines += ["", (f"Growth from {lo:,} to {hi:,} rows ({hi / lo:.1f}x the rows), "
                           "per stage that reads every row:"), "",
                      f"| engine | stage | µs/row at {lo:,} | µs/row at {hi:,} | time ratio |",
                      "|---|---|---|---|---|"]
            for eng in ("local", "ray"):
                a = next(r for r in shr if r["rows"] == lo and r["engine"] == eng
                         and r["workers"] == (1 if eng == "local" else most))
                b = next(r for r in shr if r["rows"] == hi and r["engine"] == eng
                         and r["workers"] == (1 if eng == "local" else most))
                for s in ("scan", "encode", "write"):
                    ta, tb = a["stages"].get(s, 0), b["stages"].get(s, 0)
                    if ta > 0.5:
                        lines.append(f"| {eng} | {s} | {ta / lo * 1e6:.1f} | {tb / hi * 1e6:.1f} "
                                     f"| {tb / ta:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encode-rows", type=int, default=1_000_000,
                    help="source size for part 1 (0: skip)")
    ap.add_argument("--shrink-rows", default="250000,1000000",
                    help="comma-separated source sizes for part 2 ('': skip)")
    add_corpus_arg(ap)
    ap.add_argument("--method", default="pca")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-bytes", type=int, default=16)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shard-rows", type=int, default=131_072)
    ap.add_argument("--fragment-rows", type=int, default=131_072,
                    help="re-write each source in fragments of this many rows (0: as cached)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ray-workers", default="1,2",
                    help="comma-separated Ray worker counts to run (each a 1-CPU task; at most 2)")
    ap.add_argument("--work", default="/tmp/tldr-scale")
    ap.add_argument("--cache", default=str(CACHE),
                    help="directory holding db_<rows> (read only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.md"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    if args.cache == str(CACHE):
        args.cache = str(CACHE_ROOT / f"shrink{corpus_tag()}")
    args.shrink_rows = [int(x) for x in args.shrink_rows.split(",") if x]
    try:
        args.ray_workers = sorted({int(x) for x in args.ray_workers.split(",") if x})
    except ValueError:
        args.ray_workers = []
    if not args.ray_workers or not set(args.ray_workers) <= {1, 2}:
        ap.error(f"--ray-workers must be a comma-separated list of 1 and/or 2 (this machine's "
                 f"local Ray has 2 CPUs). Got {args.ray_workers!r} instead.")
    CACHE_DIR[0] = Path(args.cache)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = "python benchmarks/scale.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:]))
    load0 = os.getloadavg()[0]
    try:
        enc = part_encode(args, work) if args.encode_rows else []
        shr = part_shrink(args, work) if args.shrink_rows else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(enc, shr, args, command.strip(), (load0, os.getloadavg()[0]))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
