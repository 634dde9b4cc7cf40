"""End-to-end ``shrink`` benchmark: a LanceDB table of N x 384 text embeddings -> compact table.

Data: the shared corpus (shared/data/pydoc-minilm.npz, 40,000 MiniLM docstring embeddings, unit
norm) tiled to N rows: copy 0 is the corpus, every further copy gets Gaussian noise of std 0.03 per
coordinate and is re-normalised (as in benchmarks/knn.py). Columns: ``id`` (int64), ``vector``
(float32[384]), ``label`` (package name) and ``title`` (the docstring's name): about 30 bytes of
payload per row, copied as is into the target. Distance: cosine.

Queries: 1,000 fresh noisy copies of random corpus rows (not in the table). Ground truth: exact
cosine top-10 over the N rows (streamed from the table). recall@10 = overlap of ``search``'s ids
with it.

Each configuration runs the real command line in a child process (``python -m tldr_index shrink``
then ``search`` without and with ``--rescore``); peak RSS is the child's maximum resident set size
as reported by ``/usr/bin/time``. Everything is written under benchmarks/_cache/shrink/
(gitignored).

Usage:
    python benchmarks/shrink.py                                # 250k and 1M rows -> results/shrink.md
    python benchmarks/shrink.py --rows 20000 --queries 200 --out /tmp/shrink.md    # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import (CACHE_ROOT, add_corpus_arg, corpus_path, corpus_tag, machine,  # noqa: E402
                               select_corpus)
from tldr_index.search import recall_at_k  # noqa: E402

CACHE = CACHE_ROOT / "shrink"
SIGMA = 0.03
DIM = 384
TARGETS = {"wall_s": 15 * 60, "rss_gb": 1.5, "search_ratio": 50, "disk_ratio": 4,
           "recall_rescored": 0.95}


# ------------------------------------------------------------------------------------ data

def corpus() -> tuple[np.ndarray, np.ndarray, list[str]]:
    path = corpus_path()
    z = np.load(path)
    X = z["X"].astype(np.float32)
    labels = z["label_names"][z["labels"]]
    if "texts" in z.files:  # the shipped sample carries its texts
        titles = [str(t).split(":", 1)[0][:60] for t in z["texts"]]
    else:
        with gzip.open(path.parent / "pydoc.texts.txt.gz", "rt") as f:
            titles = [line.split(":", 1)[0][:60] for line in f.read().split("\n")[:len(X)]]
    return X, labels, titles


def tiles(rows: int, X: np.ndarray, seed: int = 0):
    """Yield ``(start, block)`` of the tiled corpus (copy 0 exact, later copies noisy)."""
    rng = np.random.default_rng(seed)
    for s in range(0, rows, len(X)):
        b = X[:min(rows, s + len(X)) - s].copy()
        if s:
            b += SIGMA * rng.standard_normal(b.shape, dtype=np.float32)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
        yield s, b


def make_source(rows: int) -> str:
    """LanceDB table ``docs`` in ``_cache/shrink/db_<rows>`` (built once)."""
    import lance
    import pyarrow as pa

    from connectors import lancedb_uri
    from connectors.arrow_utils import numpy_to_fsl

    db = CACHE / f"db_{rows}"
    path = db / "docs.lance"
    if path.exists() and lance.dataset(str(path)).count_rows() == rows:
        return lancedb_uri(str(db), "docs")
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir(parents=True)
    X, labels, titles = corpus()
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), DIM)),
                        ("label", pa.string()), ("title", pa.string())])

    def batches():
        for s, b in tiles(rows, X):
            for o in range(0, len(b), 8192):
                blk = b[o:o + 8192]
                idx = np.arange(o, o + len(blk))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(np.arange(s + o, s + o + len(blk), dtype=np.int64)),
                     numpy_to_fsl(blk), pa.array(labels[idx].tolist()),
                     pa.array([titles[i] for i in idx])], schema=schema)

    t0 = time.perf_counter()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), str(path),
                        max_rows_per_file=1 << 20)
    print(f"built source {path} ({rows:,} rows) in {time.perf_counter() - t0:.0f} s", flush=True)
    return lancedb_uri(str(db), "docs")


def make_queries(n: int, seed: int = 12345) -> Path:
    X, _, _ = corpus()
    rng = np.random.default_rng(seed)
    Q = X[rng.choice(len(X), n, replace=False)]
    Q = Q + SIGMA * rng.standard_normal(Q.shape, dtype=np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    path = CACHE / f"queries_{n}.npy"
    np.save(path, Q.astype(np.float32))
    return path


def ground_truth(rows: int, qpath: Path, k: int = 10) -> np.ndarray:
    """Exact cosine top-k ids (the tiled rows are unit norm: inner product), streamed from the
    source table; cached."""
    import lance

    out = CACHE / f"gt_{rows}_{qpath.stem}.npy"
    if out.exists():
        return np.load(out)
    Q = np.load(qpath)
    ds = lance.dataset(str(CACHE / f"db_{rows}" / "docs.lance"))
    best_s = np.full((len(Q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(Q), k), -1, dtype=np.int64)
    for b in ds.to_batches(columns=["id", "vector"], batch_size=65_536):
        a = b.column(1)
        V = a.values.to_numpy(zero_copy_only=False).reshape(len(a), DIM)
        S = Q @ V.T
        ids = b.column(0).to_numpy()
        top = np.argpartition(-S, k, axis=1)[:, :k]
        s = np.concatenate([best_s, np.take_along_axis(S, top, 1)], 1)
        i = np.concatenate([best_i, ids[top]], 1)
        order = np.argsort(-s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    np.save(out, best_i)
    return best_i


# ------------------------------------------------------------------------------------ runs

def cli(args: list[str]) -> tuple[str, float, float]:
    """Run ``python -m tldr_index <args>`` under ``/usr/bin/time``; return (stdout, wall seconds,
    peak RSS in GB). ``time`` reports its own child, which it forks after its exec: a child
    forked directly from this (large) process would inherit its high-water RSS."""
    stats = CACHE / "time.txt"
    cmd = ["/usr/bin/time", "-f", "%M %e", "-o", str(stats), sys.executable, "-m", "tldr_index",
           *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    kb, wall = stats.read_text().split()[-2:]
    return p.stdout, float(wall), int(kb) / 2**20


def bench(rows: int, method: str, args, qpath: Path, truth: np.ndarray) -> dict:
    src = make_source(rows)
    db = CACHE / f"db_{rows}"
    target = f"lancedb://{db}/docs_{method}{args.dim}"
    shrink_args = ["shrink", "--source", src, "--target", target, "--dim", str(args.dim),
                   "--method", method, "--distance", "cosine", "--sample", str(args.sample),
                   "--pq-bytes", str(args.pq_bytes), "--overwrite", "--json", "--quiet",
                   "--work-dir", str(CACHE / f"work_{rows}_{method}")]
    if args.threads:
        shrink_args += ["--threads", str(args.threads)]
    if args.epochs:
        shrink_args += ["--epochs", str(args.epochs)]
    print(f"[{rows:,} {method}] tldr-index {shlex.join(shrink_args)}", flush=True)
    out, wall, rss = cli(shrink_args)
    rep = json.loads(out)
    res = {"rows": rows, "method": method, "wall_s": wall, "rss_gb": rss, "report": rep}
    for rescore in (False, True):
        ids_path = CACHE / f"ids_{rows}_{method}_{int(rescore)}.npy"
        sargs = ["search", "--target", target, "--queries", str(qpath), "--k", "10",
                 "--output", str(ids_path), "--json", "--quiet"]
        if args.threads:
            sargs += ["--threads", str(args.threads)]
        if rescore:
            sargs.append("--rescore")
        sout, swall, srss = cli(sargs)
        key = "rescored" if rescore else "plain"
        res[key] = {"recall": recall_at_k(np.load(ids_path), truth), "wall_s": swall, "rss_gb": srss,
                    "seconds": json.loads(sout)["seconds"]}
    print(f"[{rows:,} {method}] {wall:.0f} s, RSS {rss:.2f} GB, recall@10 "
          f"{res['plain']['recall']:.3f} / rescored {res['rescored']['recall']:.3f}", flush=True)
    return res


# ------------------------------------------------------------------------------------ report

def markdown(results: list[dict], args, command: str, load: tuple) -> str:
    lines = [
        "# shrink end to end: LanceDB table -> compact LanceDB table", "",
        f"Command: `{command}`  ", f"Date: {dt.datetime.now().isoformat(timespec='minutes')}  ",
        f"Machine: {machine()}; load average before/after: "
        f"{load[0]:.1f} / {load[1]:.1f} (the cores are shared with other jobs)  ",
        f"Settings: d={args.dim}, {args.pq_bytes}-byte PQ, training sample {args.sample:,} rows, "
        f"threads={args.threads or 'auto'}, epochs={args.epochs or 'default (8)'}; "
        f"{args.queries} queries, k=10.", "",
        "Data: the shared corpus tiled with noise (std 0.03, re-normalised), payload label + title "
        "(~30 B/row); see the module docstring of benchmarks/shrink.py.", "",
        "## End to end", "",
        "| rows | method | wall | rows/s | peak RSS | scan | knn | train | encode | write | verify "
        "| publish | source on disk | target on disk | disk ratio | PQ bytes/vector (ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rep, st = r["report"], r["report"]["stage_seconds"]
        lines.append(
            f"| {r['rows']:,} | {r['method']} | {r['wall_s'] / 60:.1f} min | "
            f"{r['rows'] / r['wall_s']:,.0f} | {r['rss_gb']:.2f} GB | "
            + " | ".join(f"{st.get(s, 0):.0f} s" for s in ("scan", "knn", "train", "encode",
                                                            "write", "verify", "publish"))
            + f" | {rep['source_disk_bytes'] / 1e6:,.0f} MB | {rep['target_disk_bytes'] / 1e6:,.0f}"
              f" MB | {rep['disk_compression']:.1f}x | {rep['pq_bytes']} B "
              f"({rep['search_compression']:.0f}x) |")
    lines += ["", "## Search (1 child process per line)", "",
              "| rows | method | recall@10 | recall@10 --rescore | search wall (RSS) | rescored wall "
              "(RSS) | shrink's own estimate (200 rows) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rep = r["report"]
        lines.append(
            f"| {r['rows']:,} | {r['method']} | {r['plain']['recall']:.3f} | "
            f"{r['rescored']['recall']:.3f} | {r['plain']['wall_s']:.1f} s "
            f"({r['plain']['rss_gb']:.2f} GB) | {r['rescored']['wall_s']:.1f} s "
            f"({r['rescored']['rss_gb']:.2f} GB) | {rep['recall_at_10']:.3f} / "
            f"{rep['recall_at_10_rescored']:.3f} |")
    lines += ["", "## Targets", ""]
    for r in results:
        rep = r["report"]
        checks = [
            ("wall <= 15 min", r["wall_s"] <= TARGETS["wall_s"], f"{r['wall_s'] / 60:.1f} min"),
            ("peak RSS <= 1.5 GB", r["rss_gb"] <= TARGETS["rss_gb"], f"{r['rss_gb']:.2f} GB"),
            ("PQ >= 50x smaller per vector", rep["search_compression"] >= 50,
             f"{rep['search_compression']:.0f}x"),
            ("target on disk >= 4x smaller", rep["disk_compression"] >= 4,
             f"{rep['disk_compression']:.1f}x"),
            ("recall@10 --rescore >= 0.95", r["rescored"]["recall"] >= 0.95,
             f"{r['rescored']['recall']:.3f}")]
        lines.append(f"- {r['rows']:,} {r['method']}: " + "; ".join(
            f"{name}: {'yes' if ok else '**no**'} ({val})" for name, ok, val in checks))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="250000,1000000", help="comma-separated table sizes")
    add_corpus_arg(ap)
    ap.add_argument("--methods", default="tldr,pca")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-bytes", type=int, default=16)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shrink.md"))
    args = ap.parse_args(argv)
    global CACHE
    CACHE = CACHE_ROOT / f"shrink{corpus_tag() if select_corpus(args.corpus) else ''}"
    command = "python benchmarks/shrink.py " + shlex.join(argv if argv is not None
                                                          else sys.argv[1:])
    CACHE.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    qpath = make_queries(args.queries)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        make_source(rows)
        truth = ground_truth(rows, qpath)
        for method in args.methods.split(","):
            results.append(bench(rows, method, args, qpath, truth))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(markdown(results, args, command,
                                               (load0, os.getloadavg()[0])))
    (CACHE / "results.json").write_text(json.dumps(results, indent=1))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
