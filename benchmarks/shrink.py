"""End-to-end ``shrink`` benchmark: a LanceDB table of N x 384 text embeddings -> compact table.

Data: rows that are not copies (benchmarks/_interpolated.py): the selected corpus's database
grown to N rows, each between a corpus row and one of its 10 exact neighbours plus noise (std 0.01),
re-normalised. Columns: ``id`` (int64), ``vector`` (float32[DIM]), ``label`` and ``title`` (short
synthetic strings made from the id, ~25 bytes of payload per row, copied as is into the target).
Distance: cosine.

Queries: the corpus's held-out query rows (never part of the table), the first ``--queries``.
Ground truth: exact cosine top-10 over the N rows. recall@10 = overlap of ``search``'s ids with it.

Configurations (``--configs``, :data:`CONFIGS`): ``new`` runs TLDR with the library's defaults;
``current`` and ``previous`` run the same code with older defaults passed explicitly as shrink
options (``--sample``, ``--graph-option``, ``--fit-option``, ``--epochs``). PCA runs once (it has
no graph and no epochs).

Each run is the real command line in a child process (``tldr-index shrink`` then ``search`` without
and with ``--rescore``); peak RSS is the child's maximum resident set size as reported by
``/usr/bin/time``. Everything is written under benchmarks/_cache/shrink/ (gitignored).

Usage:
    python benchmarks/shrink.py --corpus ../shared/data/pydoc-minilm.npz --rows 250000
    python benchmarks/shrink.py --rows 20000 --queries 200 --out /tmp/shrink.md    # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from benchmarks._corpus import (CACHE_ROOT, add_corpus_arg, corpus_tag, machine,  # noqa: E402
                               select_corpus)
from benchmarks._interpolated import interpolated, queries  # noqa: E402
from tldr_index.search import recall_at_k  # noqa: E402

CACHE = CACHE_ROOT / "shrink_interp"
TARGETS = {"wall_s": 15 * 60, "rss_gb": 1.5, "search_ratio": 50, "disk_ratio": 4,
           "recall_rescored": 0.95}
#: extra ``tldr-index shrink`` arguments of each TLDR configuration (``--configs``): ``new`` the
#: library defaults; ``current`` the defaults of main at 51fae93 (before this round of issue 17:
#: a 100,000-row training sample), ``previous`` the defaults before issue 17 (exact kNN graph,
#: 8 epochs at 3e-3 without patience, 500 validation rows). The code paths (overlapped encode)
#: are the same for all: only the settings differ. ``pq``: the library defaults with the codec
#: of before issue 14 (PQ; the default is RQ now).
CONFIGS = {
    "new": [],
    "current": ["--sample", "100000"],
    "pq": ["--codec", "pq"],
    "previous": ["--sample", "100000", "--graph-option", "method=exact", "--epochs", "8",
                 "--fit-option", "learning_rate=0.003", "--fit-option", "patience=none",
                 "--fit-option", "validation_rows=500"],
}


# ------------------------------------------------------------------------------------ data

def make_source(rows: int) -> str:
    """LanceDB table ``docs`` of ``interpolated(rows)`` in ``_cache/shrink/db_<rows>`` (built
    once)."""
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
    X = interpolated(rows)
    dim = X.shape[1]
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim)),
                        ("label", pa.string()), ("title", pa.string())])

    def batches():
        for s in range(0, rows, 8192):
            blk = np.ascontiguousarray(X[s:s + 8192])
            ids = np.arange(s, s + len(blk), dtype=np.int64)
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids), numpy_to_fsl(blk), pa.array([f"pkg{i % 22}" for i in ids]),
                 pa.array([f"docstring {i}" for i in ids])], schema=schema)

    t0 = time.perf_counter()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), str(path),
                        max_rows_per_file=1 << 20)
    print(f"built source {path} ({rows:,} rows) in {time.perf_counter() - t0:.0f} s", flush=True)
    return lancedb_uri(str(db), "docs")


def make_queries(n: int) -> Path:
    Q = np.asarray(queries()[:n], dtype=np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    path = CACHE / f"queries_{len(Q)}.npy"
    np.save(path, Q)
    return path


def ground_truth(rows: int, qpath: Path, k: int = 10) -> np.ndarray:
    """Exact cosine top-k ids (the rows are unit norm: inner product) over the interpolated
    rows, in blocks; cached."""
    import torch

    out = CACHE / f"gt_{rows}_{qpath.stem}.npy"
    if out.exists():
        return np.load(out)
    Q = torch.from_numpy(np.load(qpath))
    X = interpolated(rows)
    best_s = torch.full((len(Q), k), -torch.inf)
    best_i = torch.full((len(Q), k), -1, dtype=torch.int64)
    for s in range(0, rows, 65_536):
        S = Q @ torch.from_numpy(np.ascontiguousarray(X[s:s + 65_536])).T
        top = torch.topk(S, min(k, S.shape[1]), dim=1)
        cs = torch.cat([best_s, top.values], 1)
        ci = torch.cat([best_i, top.indices + s], 1)
        o = torch.topk(cs, k, dim=1).indices
        best_s, best_i = torch.gather(cs, 1, o), torch.gather(ci, 1, o)
    np.save(out, best_i.numpy())
    return best_i.numpy()


# ------------------------------------------------------------------------------------ runs

def cli(args: list[str]) -> tuple[str, float, float, float]:
    """Run ``python -m tldr_index <args>`` under ``/usr/bin/time``; return (stdout, wall seconds,
    peak RSS in GB, CPU seconds user + system). ``time`` reports its own child, which it forks after its exec: a child
    forked directly from this (large) process would inherit its high-water RSS."""
    stats = CACHE / "time.txt"
    cmd = ["/usr/bin/time", "-f", "%M %e %U %S", "-o", str(stats), sys.executable, "-m", "tldr_index",
           *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    kb, wall, user, system = stats.read_text().split()[-4:]
    return p.stdout, float(wall), int(kb) / 2**20, float(user) + float(system)


def bench(rows: int, method: str, config: str, args, qpath: Path, truth: np.ndarray) -> dict:
    src = make_source(rows)
    db = CACHE / f"db_{rows}"
    name = method if method == "pca" else f"{method}-{config}"
    target = f"lancedb://{db}/docs_{name.replace('-', '_')}{args.dim}"
    shrink_args = ["shrink", "--source", src, "--target", target, "--dim", str(args.dim),
                   "--method", method, "--distance", "cosine",
                   "--pq-bytes", str(args.pq_bytes), "--overwrite", "--json", "--quiet",
                   "--work-dir", str(CACHE / f"work_{rows}_{name}")]
    if args.threads:
        shrink_args += ["--threads", str(args.threads)]
    if args.epochs:
        shrink_args += ["--epochs", str(args.epochs)]
    if method == "tldr":
        shrink_args += CONFIGS[config]
    if args.sample:
        shrink_args += ["--sample", str(args.sample)]
    print(f"[{rows:,} {name}] tldr-index {shlex.join(shrink_args)}", flush=True)
    out, wall, rss, cpu = cli(shrink_args)
    rep = json.loads(out)
    res = {"rows": rows, "method": name, "wall_s": wall, "cpu_s": cpu, "rss_gb": rss,
           "report": rep}
    for rescore in (False, True):
        ids_path = CACHE / f"ids_{rows}_{name}_{int(rescore)}.npy"
        sargs = ["search", "--target", target, "--queries", str(qpath), "--k", "10",
                 "--output", str(ids_path), "--json", "--quiet"]
        if args.threads:
            sargs += ["--threads", str(args.threads)]
        if rescore:
            sargs.append("--rescore")
        if args.exhaustive:
            sargs.append("--exhaustive")
        sout, swall, srss, _ = cli(sargs)
        key = "rescored" if rescore else "plain"
        res[key] = {"recall": recall_at_k(np.load(ids_path), truth), "wall_s": swall, "rss_gb": srss,
                    "seconds": json.loads(sout)["seconds"]}
    print(f"[{rows:,} {name}] {wall:.0f} s, RSS {rss:.2f} GB, recall@10 "
          f"{res['plain']['recall']:.3f} / rescored {res['rescored']['recall']:.3f}", flush=True)
    return res


# ------------------------------------------------------------------------------------ report

def markdown(results: list[dict], args, command: str, load: tuple) -> str:
    lines = [
        "# shrink end to end: LanceDB table -> compact LanceDB table", "",
        f"Command: `{command}`  ", f"Date: {dt.datetime.now().isoformat(timespec='minutes')}  ",
        f"Machine: {machine()}; load average before/after: "
        f"{load[0]:.1f} / {load[1]:.1f} (the cores are shared with other jobs)  ",
        f"Settings: d={args.dim}, {args.pq_bytes}-byte PQ, training sample "
        f"{f'{args.sample:,} rows' if args.sample else 'per configuration'}, "
        f"threads={args.threads or 'auto'}, epochs={args.epochs or 'default'}; "
        f"{args.queries} queries, k=10.", "",
        "Data: interpolated rows (benchmarks/_interpolated.py: between a corpus row and one of its "
        "true neighbours, plus noise), payload label + title (~25 B/row). `tldr-new`: the "
        "library defaults; other configurations pass their settings explicitly: "
        + "; ".join(f"`tldr-{k}`: `{shlex.join(v)}`" for k, v in CONFIGS.items() if v)
        + (" (search --exhaustive: every code scanned)" if args.exhaustive else "") + ".", "",
        "## End to end", "",
        "| rows | method | wall | CPU | rows/s | peak RSS | scan | knn | train | encode | write | verify "
        "| publish | source on disk | target on disk | disk ratio | PQ bytes/vector (ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rep, st = r["report"], r["report"]["stage_seconds"]
        lines.append(
            f"| {r['rows']:,} | {r['method']} | {r['wall_s']:.0f} s | {r.get('cpu_s', 0):.0f} s | "
            f"{r['rows'] / r['wall_s']:,.0f} | {r['rss_gb']:.2f} GB | "
            + " | ".join(f"{st.get(s, 0):.0f} s" for s in ("scan", "knn", "train", "encode",
                                                            "write", "verify", "publish"))
            + f" | {rep['source_disk_bytes'] / 1e6:,.0f} MB | {rep['target_disk_bytes'] / 1e6:,.0f}"
              f" MB | {rep['disk_compression']:.1f}x | {rep['pq_bytes']} B "
              f"({rep['search_compression']:.0f}x) |")
    stages = ("scan", "knn", "train", "encode", "write", "verify", "publish")
    lines += ["", "## CPU seconds (every thread) and the process's peak RSS after each stage", "",
              "| rows | method | " + " | ".join(stages) + " | encode's parts (wall) |",
              "|---|---|" + "---|" * (len(stages) + 1)]
    for r in results:
        use = r["report"].get("stage_usage", {})
        parts = use.get("encode_phases", {})
        lines.append(f"| {r['rows']:,} | {r['method']} | " + " | ".join(
            f"{use[s]['cpu_s']:.0f} s ({use[s]['peak_rss_mb'] / 1024:.2f} GB)" if s in use else "-"
            for s in stages) + " | " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
            + " |")
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
    ap.add_argument("--rows", default="250000", help="comma-separated table sizes")
    add_corpus_arg(ap)
    ap.add_argument("--methods", default="tldr,pca")
    ap.add_argument("--configs", default="new,current",
                    help="TLDR configurations: new (library defaults), current (previous ones), "
                         "pq (the defaults with --codec pq)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-bytes", type=int, default=16)
    ap.add_argument("--sample", type=int, default=None,
                    help="training rows for every configuration [default: each one's own]")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--exhaustive", action="store_true",
                    help="search every code (search --exhaustive) instead of the code index")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shrink.md"))
    args = ap.parse_args(argv)
    global CACHE
    CACHE = CACHE_ROOT / f"shrink_interp{corpus_tag() if select_corpus(args.corpus) else ''}"
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
            for config in (args.configs.split(",") if method == "tldr" else ["new"]):
                results.append(bench(rows, method, config, args, qpath, truth))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(markdown(results, args, command,
                                               (load0, os.getloadavg()[0])))
    (CACHE / "results.json").write_text(json.dumps(results, indent=1))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
