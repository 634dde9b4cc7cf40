"""Fit TLDR on float32 memmaps far larger than the working set, and measure peak RSS.

Data: the shared corpus (40,000 x 384) tiled with Gaussian noise (sigma 0.02 per coordinate on
unit vectors, then re-normalised) into ``<rows> x 384`` float32 memmaps under benchmarks/_cache/
(2M rows = 3.07 GB). Each fit runs in a fresh child process; its peak RSS is the child's
``ru_maxrss``. Training uses the default sub-sample (max_train_rows=200,000) and an OPQ graph.

Usage:
    python benchmarks/out_of_core.py                   # 250k and 2M rows -> results/out_of_core.md
    python benchmarks/out_of_core.py --rows 100000     # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import (CACHE_ROOT, add_corpus_arg, corpus_path, corpus_tag, machine,  # noqa: E402
                               select_corpus)

CACHE = CACHE_ROOT

CHILD = r"""
import json, resource, sys, time, numpy as np
sys.path.insert(0, {root!r})
from tldr_index import TLDR
X = np.memmap({path!r}, dtype=np.float32, mode="r", shape=({rows}, 384))
t0 = time.perf_counter()
m = TLDR(64, knn_method="opq", random_state=0).fit(X)
fit_s = time.perf_counter() - t0
Z = m.transform(X[:1000])
print(json.dumps({{"fit_s": fit_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n_train": m.fit_info_["n_train"], "seconds": m.fit_info_["seconds"],
                  "graph": {{k: v for k, v in m.fit_info_["graph"].items() if k in ("method", "factory", "seconds")}},
                  "val_recall_initial": m.fit_info_["val_recall_initial"],
                  "val_recall_best": m.fit_info_["val_recall_best"], "finite": bool(np.isfinite(Z).all())}}))
"""


def tiled_memmap(rows: int, seed: int = 0) -> Path:
    """Create (once) a ``rows x 384`` float32 memmap of the tiled corpus; memory: one 40k block."""
    path = CACHE / f"tiled_{rows}{corpus_tag()}.f32"
    if path.exists() and path.stat().st_size == rows * 384 * 4:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    base = np.load(corpus_path())["X"].astype(np.float32)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for start in range(0, rows, len(base)):
            n = min(len(base), rows - start)
            block = base[:n] + rng.normal(0, 0.02, size=(n, 384)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            f.write(block.astype(np.float32).tobytes())
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="250000,2000000")
    add_corpus_arg(ap)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "out_of_core.md"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        t0 = time.perf_counter()
        path = tiled_memmap(rows)
        gen_s = time.perf_counter() - t0
        code = CHILD.format(root=str(ROOT), path=str(path), rows=rows)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(rows=rows, file_gb=path.stat().st_size / 1e9, gen_s=gen_s)
        results.append(res)
        print(json.dumps(res), flush=True)
    lines = [f"# Out-of-core fit ({dt.date.today()}, {machine()})", "",
             f"Command: `python benchmarks/out_of_core.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             "TLDR(64, knn_method='opq') on a float32 np.memmap; peak RSS of a fresh child process.",
             "", "| rows | file GB | train rows | graph | fit s (moments / kNN / train) | peak RSS MB | val recall@10 PCA -> TLDR |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["seconds"]
        lines.append(f"| {r['rows']:,} | {r['file_gb']:.2f} | {r['n_train']:,} | {r['graph'].get('method')} "
                     f"| {r['fit_s']:.0f} ({s['moments']:.0f} / {s['knn']:.0f} / {s['train']:.0f}) "
                     f"| {r['peak_rss_mb']:.0f} | {r['val_recall_initial']:.3f} -> {r['val_recall_best']:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
