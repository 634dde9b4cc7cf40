"""The compact collection against Qdrant's own quantizers, all measured on the real engine (Qdrant
Edge), in one run: recall@10 and query latency, raw and with Qdrant's rescoring.

* Qdrant's quantizers on the original vectors (:mod:`connectors.qdrant_edge_quantizers`, the code
  behind ``tldr-index eval --store-quantizers``): binary 1 / 1.5 / 2 bit, scalar int8,
  TurboQuant 1 / 2 / 4 bit and product quantization (x16, x32, x64: the last two are the ratios
  closest to the compact collections' bytes), one shard per quantizer (cosine, float32, HNSW m=16,
  ef_construct=100, built by ``optimize``); rescoring re-ranks ``oversampling x 10`` candidates
  with the stored float32 originals.
* The compact collections: ``tldr-index shrink`` of the same rows (written into an unquantized
  Qdrant Edge shard, the source) into a Qdrant Edge target at each ``--compact`` ``d:bytes``
  (default 64:16 and 128:32), with the shard's quantization as the sink sets it ("auto": product
  quantization at the target's code bytes, x16 here), HNSW built before publish; a query is
  encoded by the stored model and searched through the target's shard; rescoring re-ranks with
  the stored reduced float16 vectors (not the originals). Latency includes the encode.

Data: ``--corpus PATH`` (an .npz with X), default the 6,000-row sample shipped in
tldr_index/data/sample.npz; ``--rows`` of it (L2-normalised) are stored, ``--queries`` held-out
rows are the queries, exact cosine ground truth by brute force (the queries are not stored).
Writes ``--out`` (markdown table) and the PNG beside it (recall@10 against code bytes, raw and
rescored).

Usage:
    python benchmarks/qdrant.py --corpus ../shared/data/pydoc-minilm.npz --rows 20000
    python benchmarks/qdrant.py --rows 2000 --queries 20 --kinds sq8,bq1 --compact 16:4 --out /tmp/q.md
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
DEFAULT_KINDS = "bq1,bq1.5,bq2,sq8,tq1,tq2,tq4,pqx16,pqx32,pqx64"
HNSW_EF = 128


def source_shard(path: str, X: np.ndarray) -> str:
    """The originals as an unquantized Qdrant Edge shard (the shrink source); its URI."""
    import qdrant_edge as qe

    sh = qe.EdgeShard.create(path, qe.EdgeConfig(
        vectors={"": qe.EdgeVectorParams(size=X.shape[1], distance=qe.Distance.Cosine)}))
    for s in range(0, len(X), 8192):
        sh.update(qe.UpdateOperation.upsert_points(
            [qe.Point(s + i, v, {"row": s + i}) for i, v in enumerate(X[s:s + 8192].tolist())]))
    sh.flush()
    sh.close()
    return "qdrant+edge://" + path


def compact_rows(src: str, root: str, Q: np.ndarray, truth: np.ndarray, d: int, m: int,
                 oversampling: float, epochs: int | None, threads: int | None) -> list[dict]:
    """Shrink ``src`` to a Qdrant Edge target at d / m bytes, then search it raw and rescored."""
    from connectors import open_target
    from connectors.qdrant_edge_store import close_shards
    from tldr_index.compact import CompactModel
    from tldr_index.pipeline import shrink

    uri = f"qdrant+edge://{root}/compact_{d}_{m}"
    t0 = time.perf_counter()
    shrink(src, uri, dim=d, pq_bytes=m, epochs=epochs, threads=threads, eval_queries=0,
           work_dir=f"{root}/work_{d}_{m}")
    secs = time.perf_counter() - t0
    close_shards()
    tgt = open_target(uri)
    model = CompactModel.of_target(tgt)
    quant = tgt.record.get("qdrant_edge", {}).get("quantization")
    import json
    with open(os.path.join(tgt.real, "edge_config.json")) as fh:
        qcfg = json.load(fh).get("quantization_config") or {}
    ratio = qcfg.get("product", {}).get("compression", "?")
    out = []
    for rescore in (False, True):
        hits, times = 0, []
        for q, want in zip(Q, truth):
            t1 = time.perf_counter()
            z = model.prepare(model.encode(q[None, :]))[0]
            res = tgt.search(z, k=10, hnsw_ef=HNSW_EF, rescore=rescore,
                             oversampling=oversampling if rescore else None)
            times.append(1000 * (time.perf_counter() - t1))
            hits += len(set(res.column("id").to_pylist()) & set(want.tolist()))
        out.append({"method": "tldr-index compact", "label": f"d={d}, {quant}: PQ {ratio}",
                    "bytes": 4 * d / int(ratio[1:]) if ratio != "?" else m, "stored": 2 * d,
                    "rescore": rescore, "recall": hits / truth.size,
                    "p50": float(np.median(times)), "build_s": secs})
        print(out[-1], flush=True)
    close_shards()
    return out


def quantizer_rows(B: np.ndarray, Q: np.ndarray, truth: np.ndarray, kinds: str,
                   oversampling: float, root: str) -> list[dict]:
    from connectors.qdrant_edge_quantizers import KINDS, measure_quantizers

    family = {"binary": "Qdrant BQ", "binary1.5": "Qdrant BQ", "binary2": "Qdrant BQ",
              "scalar": "Qdrant SQ8", "pq": "Qdrant PQ"}
    chunks = ((s, B[s:s + 8192]) for s in range(0, len(B), 8192))
    res = measure_quantizers(chunks, len(B), B.shape[1], "cosine", Q, 10, kinds=kinds,
                             oversampling=oversampling, hnsw_ef=HNSW_EF, work_dir=root,
                             on_step=lambda s: print(" ", s, flush=True))
    out = []
    for r in res:
        hits = sum(len(set(p.tolist()) & set(w.tolist())) for p, w in zip(r["positions"], truth))
        kind = KINDS[r["quantizer"]][0]
        out.append({"method": family.get(kind, "Qdrant TurboQuant"), "label": r["label"],
                    "bytes": r["bytes_per_vector"], "stored": 4 * B.shape[1],
                    "rescore": r["rescore"], "recall": hits / truth.size,
                    "p50": r["latency_ms"]["p50"], "build_s": r["build_s"]})
        print(out[-1], flush=True)
    return out


def plot(rows: list[dict], path: Path, title: str, note: str) -> None:
    from tldr_index.plots import Panel, line_panels

    panels = []
    for rescore, name in ((False, "raw (quantized scores)"), (True, "with Qdrant's rescoring")):
        p = Panel(name, "code bytes per vector (log2)")
        for r in rows:
            if r["rescore"] == rescore:
                xs, ys = p.series.setdefault(r["method"], ([], []))
                xs.append(r["bytes"])
                ys.append(r["recall"])
        ticks = sorted({r["bytes"] for r in rows})
        p.xticks = ticks if len(ticks) <= 12 else None
        panels.append(p)
    line_panels(panels, path, title=title, note=note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kinds", default=DEFAULT_KINDS,
                    help="Qdrant quantizers (connectors.qdrant_edge_quantizers.KINDS); '' none")
    ap.add_argument("--compact", default="64:16,128:32",
                    help="compact collections as d:pq_bytes, comma-separated; '' none")
    ap.add_argument("--epochs", type=int, default=None, help="TLDR epochs (default: its own)")
    ap.add_argument("--threads", type=int, default=None)
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
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        if a.kinds:
            rows += quantizer_rows(B, Q, truth, a.kinds, a.oversampling, root)
        if a.compact:
            src = source_shard(f"{root}/source", B)
            for spec in a.compact.split(","):
                d, m = (int(v) for v in spec.split(":"))
                rows += compact_rows(src, root, Q, truth, d, m, a.oversampling, a.epochs,
                                     a.threads)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    table = ["| method | quantization | code bytes / vector | stored vector bytes | rescore | "
             "recall@10 | median query ms | build s |", "|---|---|---:|---:|---|---:|---:|---:|"]
    table += [f"| {r['method']} | {r['label']} | {r['bytes']:g} | {r['stored']:,} | "
              f"{'yes x' + str(a.oversampling) if r['rescore'] else 'no'} | {r['recall']:.3f} | "
              f"{r['p50']:.2f} | {r['build_s']:.1f} |" for r in rows]
    cmd = (f"python benchmarks/qdrant.py{' --corpus ' + a.corpus if a.corpus else ''} --rows "
           f"{a.rows} --queries {a.queries} --kinds {a.kinds or chr(39) * 2} --compact "
           f"{a.compact or chr(39) * 2}{f' --epochs {a.epochs}' if a.epochs else ''}")
    png = Path(a.out).with_suffix(".png")
    title = (f"Qdrant Edge: compact collection vs Qdrant's quantizers ({a.rows:,} x {D}-d, "
             f"{corpus_path().name})")
    text = "\n".join([
        f"# Compact collections vs Qdrant's own quantizers on Qdrant Edge ({a.rows:,} x {D}-d "
        f"rows of {corpus_path().name}, {a.queries} queries, HNSW ef {HNSW_EF})", "",
        f"`{cmd}`, {dt.date.today().isoformat()}, {machine()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end, {wall / 60:.1f} min in all.", "",
        *table, "", f"![recall@10 against code bytes]({png.name})", "",
        "Every row is a real engine query (Qdrant Edge, HNSW ef 128, k 10) against exact cosine "
        "ground truth over the stored rows. Qdrant's quantizers keep the float32 originals "
        f"({4 * D} B per vector, on disk) beside their codes and rescore with them; a compact "
        "collection stores only the reduced float16 vectors (2 d B) beside its PQ codes and "
        "rescores with those. Code bytes are nominal (bits x D / 8; PQ x<r>: 4 D / r); the "
        "engine's per-vector extras are not counted. 'build s' is shrink (training + encode + "
        "write + HNSW) for the compact rows and upsert + optimize for Qdrant's; the machine is "
        "shared (2 cores, other jobs running), so latencies and times are noisy: compare within "
        "this run.", ""])
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    Path(a.out).write_text(text)
    plot(rows, png, title, cmd)


if __name__ == "__main__":
    main()
