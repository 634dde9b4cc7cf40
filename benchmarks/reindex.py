"""``reindex`` after 1% new rows vs a full ``shrink`` of the same collection, timed in one run.

Data: the LanceDB table built by ``benchmarks/shrink.py`` (the shared corpus of 384-d MiniLM
embeddings tiled with noise to N rows, cosine; ``benchmarks/_cache/shrink/db_<N>/docs``). It is
never written: the dataset is copied to ``benchmarks/_cache/reindex/db/docs.lance`` first, and only
the copy grows.

Steps (one process, in order):

1. ``shrink`` the copy into ``docs_tldr64`` (d=64, 16-byte PQ, defaults otherwise): the full
   pipeline's wall time;
2. ``reindex`` with no change: the one-off pass that hashes the source for the first state
   (status ``nothing``);
3. append ``--new-frac`` x N new rows to the copy (random rows of the table + Gaussian noise of std
   0.03, re-normalised, new ids, same payload): same distribution, so no refit is expected;
4. ``reindex`` (``refit="auto"``: drift check included): scan + hash of N rows, encode of the new
   rows, one Lance ``merge_insert`` commit.

The ratio (4) / (1) is the figure; both are measured on the same machine minutes apart.

Usage:
    python benchmarks/reindex.py --rows 1000000          # -> benchmarks/results/reindex.md
    python benchmarks/reindex.py --rows 250000 --out /tmp/reindex.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import (CACHE_ROOT, add_corpus_arg, corpus_tag, machine,  # noqa: E402
                               select_corpus)

CACHE = CACHE_ROOT / "reindex"


def source_dataset(rows: int, explicit: str | None) -> Path:
    if explicit:
        if not (Path(explicit) / "_versions").is_dir():
            raise SystemExit(f"Error: --source '{explicit}' is not a Lance dataset.")
        return Path(explicit)
    from benchmarks import shrink as bench_shrink  # builds the table as benchmarks/shrink.py does
    bench_shrink.CACHE = CACHE_ROOT / f"shrink{corpus_tag()}"
    bench_shrink.CACHE.mkdir(parents=True, exist_ok=True)
    bench_shrink.make_source(rows)
    return bench_shrink.CACHE / f"db_{rows}" / "docs.lance"


def append_new_rows(path: Path, frac: float, seed: int = 7) -> int:
    """Append ``frac`` x N noisy copies of random rows, with new ids, to the dataset copy."""
    import lance
    import pyarrow as pa

    from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy

    ds = lance.dataset(str(path))
    n = ds.count_rows()
    m = max(1, int(round(frac * n)))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, m, replace=False))
    t = ds.take(rows)
    X = vectors_to_numpy(t.column("vector").combine_chunks()).astype(np.float32)
    X = X + 0.03 * rng.standard_normal(X.shape).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    top = int(ds.to_table(columns=["id"]).column(0).to_numpy().max()) + 1
    cols = {name: t.column(name) for name in t.column_names}
    cols["id"] = pa.array(np.arange(top, top + m, dtype=np.int64))
    cols["vector"] = numpy_to_fsl(X)
    lance.write_dataset(pa.table(cols, schema=ds.schema), str(path), mode="append")
    return m


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    add_corpus_arg(ap)
    ap.add_argument("--new-frac", type=float, default=0.01)
    ap.add_argument("--source", default=None, help="Lance dataset to copy (default: the shrink "
                                                   "benchmark's db_<rows>/docs.lance)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reindex.md"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from tldr_index.pipeline import shrink
    from tldr_index.reindex import reindex

    src_ds = source_dataset(args.rows, args.source)
    shutil.rmtree(CACHE, ignore_errors=True)
    (CACHE / "db").mkdir(parents=True)
    t0 = time.perf_counter()
    shutil.copytree(src_ds, CACHE / "db" / "docs.lance")
    copy_s = time.perf_counter() - t0
    source = f"lancedb://{CACHE / 'db'}/docs"
    target = f"lancedb://{CACHE / 'db'}/docs_tldr64"
    work = CACHE / "work"
    load0 = os.getloadavg()

    t0 = time.perf_counter()
    rep = shrink(source, target, dim=64, pq_bytes=16, work_dir=work / "shrink")
    full_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    first = reindex(target, work_dir=work / "reindex")
    first_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    added = append_new_rows(CACHE / "db" / "docs.lance", args.new_frac)
    append_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    inc = reindex(target, work_dir=work / "reindex")
    inc_s = time.perf_counter() - t0
    load1 = os.getloadavg()
    if inc.status != "updated" or inc.added != added:
        print(f"WARNING: expected status 'updated' with {added} added rows: {inc.to_json()}")

    ratio = inc_s / full_s
    lines = [
        "# reindex of 1% new rows vs a full shrink",
        "",
        f"Command: `python benchmarks/reindex.py --rows {args.rows} --new-frac {args.new_frac}`  ",
        f"Date: {dt.datetime.now().isoformat(timespec='minutes')}  ",
        f"Machine: {machine()}; load average before/after: {load0[0]:.1f} / {load1[0]:.1f} "
        "(the cores are shared with other jobs: absolute times are upper bounds, the ratio "
        "within this run is the figure)  ",
        f"Data: a copy of `benchmarks/_cache/shrink/db_{args.rows}/docs` ({rep.rows:,} x "
        f"{rep.source_dim}, {rep.metric}), copied in {copy_s:.0f} s; {added:,} new rows appended "
        f"in "
        f"{append_s:.1f} s.",
        "",
        "| step | wall | what |",
        "|---|---|---|",
        f"| full shrink | {full_s:.1f} s | d=64, 16-byte PQ; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in rep.stage_seconds.items()) + " |",
        f"| first reindex, no change | {first_s:.1f} s | status `{first.status}`: one pass "
        f"hashing the source for the first state (baseline `{first.baseline}`) |",
        f"| **reindex, +{added:,} rows ({args.new_frac:.0%})** | **{inc_s:.1f} s** | status "
        f"`{inc.status}`: " + ", ".join(f"{k} {v:.1f} s" for k, v in inc.seconds.items())
        + f"; drift ratio {inc.drift.get('ratio', float('nan')):.3f} |",
        "",
        f"**reindex / full shrink = {ratio:.1%}** (target: <= 5%).",
        "",
        "Reindex summary line:",
        "",
        "```json",
        inc.to_json(),
        "```",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps({"full_s": full_s, "first_s": first_s, "inc_s": inc_s, "ratio": ratio}))


if __name__ == "__main__":
    main()
