"""LanceDB's own ``table.search(z)`` on a compact target: recall@10 of the index publish builds.

Data: the shipped sample (``tldr_index/data/sample.npz``, 5,700 database rows + 300 queries, 384-d
MiniLM) tiled with Gaussian noise (std 0.03, then unit norm) to ``--rows`` rows, or ``--corpus
PATH`` (an .npz with ``X``, e.g. ../shared/data/pydoc-minilm.npz) tiled the same way. The rows are
reduced to 64-d float16 by PCA of the untiled rows (this measures the index, not the map) and
written as a cosine LanceDB table in fragments of ``LanceSink.flush_rows`` rows (as a shrink
target). Indexes: what ``LanceSink`` builds now (``index_options_for``, built one fragment at a
time by :func:`connectors.lance_index.build_vector_index`), the same options built by one
``create_index`` call (before issue 17's segmented build), and Lance's IVF_PQ with 16
sub-vectors (what it built before that). Each index is built in a child process, whose peak RSS
(``VmHWM``: a forked child's ``ru_maxrss`` would include this script's) and RSS before the build
(the dataset opened) are reported. Truth: the exact
cosine top-10 of the same reduced vectors, i.e. a flat scan. Queries: the 300 held-out rows.

    python benchmarks/store_query.py                       # 200,000 rows, shipped sample
    python benchmarks/store_query.py --rows 2000 --no-ivf-pq --out /tmp/sq.md   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._corpus import add_corpus_arg, machine, select_corpus  # noqa: E402


def load(corpus: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows to tile, 300 queries): the first 300 rows of ``--corpus`` are the queries; of the
    shipped sample, its last 300 (the demo's held-out rows)."""
    path = select_corpus(corpus)
    X = np.load(path)["X"].astype(np.float32)
    if corpus:
        return X[300:], X[:300]
    return X[:5700], X[5700:]


#: the child that builds one index: argv = dataset path, options (JSON), how; prints its RSS (MB)
BUILD_CHILD = """
import json, sys
import lance
from connectors.lance_index import build_vector_index
def rss_mb(key):
    d = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(d[key].split()[0]) / 1024
ds = lance.dataset(sys.argv[1])
opts, how = json.loads(sys.argv[2]), sys.argv[3]
before = rss_mb("VmRSS")
if how == "create_index":
    ds.create_index("vector", **opts)
else:
    how = build_vector_index(ds, "vector", opts)
print(json.dumps({"how": how, "before_mb": before, "peak_mb": rss_mb("VmHWM")}))
"""


def build_in_child(path: str, opts: dict, how: str) -> dict:
    """Build the index ``opts`` on the dataset at ``path`` in a fresh Python process (so its peak
    RSS is the build's, not this script's); returns the child's report and its wall seconds."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", BUILD_CHILD, path, json.dumps(opts), how],
                       cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the table")
    add_corpus_arg(ap)
    ap.add_argument("--no-ivf-pq", action="store_true", help="skip the slow IVF_PQ build")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "store_query.md"))
    args = ap.parse_args(argv)

    import lance
    import lancedb
    import pyarrow as pa

    from connectors.arrow_utils import numpy_to_fsl
    from connectors.lance_store import LanceSink

    base, Q = load(args.corpus)
    rng = np.random.default_rng(0)
    reps = -(-args.rows // len(base))
    X = np.concatenate([base + (0.03 if r else 0.0) * rng.normal(size=base.shape).astype(np.float32)
                        for r in range(reps)])[:args.rows]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    mu = base.mean(0)
    W = np.linalg.svd(base - mu, full_matrices=False)[2][:64]
    Z = ((X - mu) @ W.T).astype(np.float16)
    ZQ = ((Q - mu) @ W.T).astype(np.float32)
    Zn = Z.astype(np.float32)
    Zn /= np.linalg.norm(Zn, axis=1, keepdims=True)
    Qn = ZQ / np.linalg.norm(ZQ, axis=1, keepdims=True)
    truth = np.argsort(-(Qn @ Zn.T), axis=1)[:, :10]

    sink = LanceSink("/unused.lance", uri="lance:///unused.lance")

    class _Layout:
        distance = "cosine"
    sink.layout = _Layout()
    now = sink.index_options_for(args.rows)
    name = f"{now['index_type']} x{now['num_partitions']}"
    configs = [(f"now: {name}", now, "build_vector_index"),
               (f"{name}, one create_index call", now, "create_index")]
    if not args.no_ivf_pq:
        configs.append(("before: IVF_PQ, 16 sub-vectors", {"index_type": "IVF_PQ",
                                                            "metric": "cosine",
                                                            "num_sub_vectors": 16},
                        "create_index"))
    tmp = tempfile.mkdtemp(prefix="tldr_store_query_")
    rows = []
    try:
        conn = lancedb.connect(tmp)
        for i, (label, opts, how) in enumerate(configs):
            path = str(Path(tmp) / f"t{i}.lance")
            lance.write_dataset(pa.table({"id": pa.array(np.arange(args.rows, dtype=np.int64)),
                                          "vector": numpy_to_fsl(Z)}), path,
                                max_rows_per_file=sink.flush_rows)
            built = build_in_child(path, opts, how)
            label = f"{label} ({built['how']})"
            tbl = conn.open_table(f"t{i}")
            for search, f in [("tbl.search(z)", lambda s: s),
                           (".refine_factor(10)", lambda s: s.refine_factor(10)),
                           (".nprobes(64)", lambda s: s.nprobes(64))]:
                t0 = time.perf_counter()
                got = [f(tbl.search(q)).limit(10).select(["id", "_distance"]).to_arrow()["id"]
                       .to_numpy() for q in ZQ]
                ms = (time.perf_counter() - t0) / len(ZQ) * 1e3
                rec = float(np.mean([len(np.intersect1d(g, t)) / 10 for g, t in zip(got, truth)]))
                rows.append((label, search, rec, ms, built))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"# LanceDB `table.search` on a compact target ({dt.date.today()}, {machine()})", "",
             f"`python benchmarks/store_query.py --rows {args.rows}"
             + (f" --corpus {args.corpus}" if args.corpus else "")
             + (" --no-ivf-pq" if args.no_ivf_pq else "") + "`: "
             f"{args.rows:,} rows of 64-d float16 (cosine), {len(ZQ)} queries, recall@10 "
             f"against a flat scan of the same vectors; {-(-len(Z) // sink.flush_rows)} "
             "fragment(s). Build: "
             "wall seconds of the child process, its peak RSS and its RSS before the build.", "",
             "| index | search | recall@10 | ms/query | build s | build peak RSS (before) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c:.3f} | {d:.1f} | {e['wall_s']:.1f} | {e['peak_mb']:.0f} MB "
              f"({e['before_mb']:.0f} MB) |" for a, b, c, d, e in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
