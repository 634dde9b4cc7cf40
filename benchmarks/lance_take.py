"""Random access to a Lance table for rescoring: the ways to read 100 random rows' vectors.

What rescoring a shortlist of 100 from a Lance source costs per query (the issue's target:
<= 1 ms), by way of reading: ``LanceDataset.take`` (all columns, the vector column only, sorted or
unsorted positions, numpy / list / Arrow indices, ``block_size`` and cache options of
``lance.dataset``), ``_take_rows`` by row id, ``LanceFragment.take``, and
``lance.file.LanceFileReader.take_rows`` on the data file (``batch_size`` / ``batch_readahead``);
against a memory-mapped float16 copy (the rescore cache layout) for scale. Data: ``--rows`` x
``--dim`` float32 standard normal vectors (values do not change the cost) plus an int64 id
column, one ``lance.write_dataset`` (default settings: one fragment per 1M rows). 200 sets of
100 random rows; two warm-up sets, then the mean wall and CPU ms per set. Runs from a clone: the
table is generated (no corpus).

    python benchmarks/lance_take.py --work /tmp/take              # 1M x 384
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._corpus import machine  # noqa: E402


def write(uri: str, n: int, dim: int) -> float:
    import lance
    import pyarrow as pa

    rng = np.random.default_rng(0)

    def batches():
        for s in range(0, n, 65_536):
            m = min(65_536, n - s)
            X = rng.standard_normal((m, dim), dtype=np.float32)
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.arange(s, s + m, dtype=np.int64)),
                 pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), dim)],
                names=["id", "vector"])

    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
    t0 = time.perf_counter()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), uri)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shortlist", type=int, default=100)
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every way")
    ap.add_argument("--work", required=True, help="directory for the table (kept, reused)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lance_take.md"))
    args = ap.parse_args(argv)
    import lance
    import pyarrow as pa
    from lance.file import LanceFileReader

    from tldr_index.rescore_cache import to_float32

    load0 = os.getloadavg()
    uri = os.path.join(args.work, f"orig_{args.rows}x{args.dim}.lance")
    wrote = write(uri, args.rows, args.dim) if not os.path.exists(uri) else None
    ds = lance.dataset(uri)
    frags = ds.get_fragments()
    n, S = args.rows, args.shortlist
    rng = np.random.default_rng(1)
    sets = [np.sort(rng.choice(n, S, replace=False)) for _ in range(args.sets)]
    shuffled = [rng.permutation(s) for s in sets]
    fid = np.array([f.fragment_id for f in frags], np.int64)
    starts = np.cumsum([0] + [f.count_rows() for f in frags])

    def row_ids(pos: np.ndarray) -> list:
        f = np.searchsorted(starts, pos, side="right") - 1
        return ((fid[f] << 32) + (pos - starts[f])).tolist()

    readers = [LanceFileReader(os.path.join(uri, "data", f.data_files()[0].path),
                               columns=["vector"]) for f in frags]

    def file_take(s: np.ndarray, **kw) -> list:
        fi = np.searchsorted(starts, s, side="right") - 1
        return [readers[g].take_rows((s[fi == g] - starts[g]).tolist(), **kw).to_table()
                for g in np.unique(fi)]

    f16 = np.lib.format.open_memmap(os.path.join(args.work, f"f16_{n}x{args.dim}.npy"), "w+",
                                    np.float16, (n, args.dim))
    for a in range(0, n, 65_536):  # the rescore cache layout (written on every run)
        f16[a:a + 65_536] = ds.take(list(range(a, min(n, a + 65_536))), columns=["vector"]) \
            .column(0).combine_chunks().values.to_numpy().reshape(-1, args.dim)
    small = lance.dataset(uri, block_size=4096)
    cached = lance.dataset(uri, index_cache_size_bytes=1 << 30, metadata_cache_size_bytes=1 << 30)
    ways = [
        ("take, all columns, sorted positions (list)", lambda s: ds.take(s.tolist())),
        ("take, columns=[vector], sorted positions", lambda s: ds.take(s.tolist(),
                                                                       columns=["vector"])),
        ("take, columns=[vector], unsorted positions", None),
        ("take, columns=[vector], numpy indices", lambda s: ds.take(s, columns=["vector"])),
        ("take, columns=[vector], Arrow indices", lambda s: ds.take(pa.array(s),
                                                                    columns=["vector"])),
        ("lance.dataset(block_size=4096).take, [vector]",
         lambda s: small.take(s.tolist(), columns=["vector"])),
        ("lance.dataset(1 GiB index/metadata caches).take, [vector]",
         lambda s: cached.take(s.tolist(), columns=["vector"])),
        ("_take_rows by row id, [vector]", lambda s: ds._take_rows(row_ids(s),
                                                                   columns=["vector"])),
        ("LanceFragment.take, [vector] (fragment 0)",
         lambda s: frags[0].take((s % frags[0].count_rows()).tolist(), columns=["vector"])),
        ("LanceFileReader(columns=[vector]).take_rows per file", file_take),
        ("... batch_size=100, batch_readahead=1",
         lambda s: file_take(s, batch_size=S, batch_readahead=1)),
        ("... batch_size=128, batch_readahead=4",
         lambda s: file_take(s, batch_size=128, batch_readahead=4)),
        ("float16 memory-mapped copy (rescore cache), np.take + to_float32",
         lambda s: to_float32(np.take(f16, s, axis=0))),
    ]
    del f16
    f16 = np.load(os.path.join(args.work, f"f16_{n}x{args.dim}.npy"), mmap_mode="r")
    for root, _, files in os.walk(uri):  # every file in the page cache once, as in a long-
        for name in files:               # running searcher (both sides warm)
            with open(os.path.join(root, name), "rb") as fh:
                while fh.read(1 << 24):
                    pass
    for a in range(0, n, 65_536):
        np.asarray(f16[a:a + 65_536]).max()
    times: dict[str, list] = {name: [] for name, _ in ways}
    for rnd in range(args.rounds):  # interleaved rounds: a way is not favoured by its turn
        for name, fn in ways:
            use = sets
            if fn is None:
                fn, use = (lambda s: ds.take(s.tolist(), columns=["vector"])), shuffled
            fn(use[0])
            fn(use[1])
            t0, c0 = time.perf_counter(), time.process_time()
            for s in use[2:]:
                fn(s)
            k = len(use) - 2
            times[name].append(((time.perf_counter() - t0) / k * 1e3,
                                (time.process_time() - c0) / k * 1e3))
            print(f"round {rnd} {name:70s} {times[name][-1][0]:7.3f} ms "
                  f"{times[name][-1][1]:7.3f} ms CPU", flush=True)
    rows = [(name, float(np.median([w for w, _ in t])), float(np.median([c for _, c in t])),
             min(w for w, _ in t)) for name, t in times.items()]
    load = os.getloadavg()
    lines = [f"# Reading {S} random rows' vectors from a Lance table of {n:,} x {args.dim} "
             f"float32 ({dt.date.today()}, {machine()}, lance {lance.__version__})", "",
             f"`python benchmarks/lance_take.py {' '.join(sys.argv[1:])}`: {len(frags)} "
             f"fragment(s), every file read once before timing (page cache warm), "
             f"{args.rounds} interleaved rounds of every way, each {args.sets - 2} timed sets "
             f"of {S} random rows after 2 warm-up sets; the median and the best round's mean "
             f"per set; load average at the start {load0[0]:.2f} / {load0[1]:.2f} / "
             f"{load0[2]:.2f}, at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
             f"(shared 2-core machine)"
             + (f"; table written in {wrote:.1f} s" if wrote else "") + ".", "",
             f"| way | ms per {S} rows (wall, median round) | ms CPU (median) | ms wall (best "
             f"round) |", "|---|---|---|---|"]
    lines += [f"| {name} | {w:.2f} | {c:.2f} | {b:.2f} |" for name, w, c, b in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
