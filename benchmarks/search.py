"""Search speed at scale: tldr-index's IVF index over the codes against the exhaustive code scan,
LanceDB's own IVF_PQ / IVF_RQ on the original vectors, and FAISS IVF-RaBitQ on the originals.

Data: ``--rows`` interpolated rows (``benchmarks/_interpolated.py``: each row between a corpus row
and one of its true neighbours, plus noise, unit norm; no copies) of the selected corpus, its
held-out query rows (the first ``--queries``). Truth: the exact cosine top-10 of the originals.

Compact side: the default map to d = 64 (``--map tldr``: a TLDR fitted on ``--sample`` rows;
``--map pca``: PCA of the same rows, quicker) + PQ16 (16 B per vector, cosine), then
:class:`tldr_index.code_index.CodeIndex` (nlist = 2 sqrt(N)) for each ``--scans``: "fastscan"
(the default index: 4-bit fast-scan codes of its own, 12 B + FAISS's 8-byte id) and "codes"
(FAISS IndexIVFPQ over the collection's PQ16 codes); "shortlist S" takes the top S of the index
and ranks them by the exact cosine of the originals read from a float16 memory-mapped copy (the
``--rescore-cache`` layout, converted by :func:`tldr_index.rescore_cache.to_float32`; every page
of it is read once before timing, as in a long-running searcher); ``take_positions`` on a Lance
table of the originals is timed apart. LanceDB:
``IvfPq(cosine, 48 sub-vectors)`` and ``IvfRq(cosine, 1 bit)`` on a table of the 384-d
originals (one after the other, on the same table), raw = no refine, rescored@100 =
``refine_factor(10)``. FAISS: ``RR384,IVF{n},RaBitQ`` (inner product) on the originals,
rescored from the originals in RAM.

Product rows: the same map, PQ16 codes and (first ``--scans``) code index written as a compact
collection (a Parquet target with float16 reduced vectors, the index stored as ``shrink`` stores
it, the Lance table of the originals as its source) and searched through the product API,
``c = tldr_index.open(target)`` kept open and ``c.search(q, k=10, rescore=True, ...)`` one
query per call, at the default pick of the stored table and at ``target_recall=0.95``;
rescored from its rescore cache (``write_rescore_cache``, ``rescore_cache=``) and, at the default,
from the source (Lance take by id). Their RAM per vector is what the open searcher holds
(:meth:`tldr_index.searcher.CodeSearcher.bytes_per_vector`: the collection's codes, the ids and
the index); the rescore caches (memory-mapped, ``2 D`` bytes per row) are page cache, not counted.

Speed: one query per call; "1 thread" pins the whole process to one core (every thread of it,
LanceDB's pools included) and calls one query after another; "2 threads" pins it to two cores
and runs two calling threads. With 1 thread the queries per second of the process's CPU time
(``time.process_time``) are given too: less sensitive to other jobs on a shared machine. RAM per vector: what the searched structure holds per row (codes,
factors, row ids, list assignment), plus its centroids spread over the rows; LanceDB: bytes of
its index files on disk per row (the index rows: the index alone, see the product rows for
what an open collection holds). The 2-core machine these results come from is shared with other
jobs: timings are noisy, compare the ratios within one run.

    python benchmarks/search.py --corpus ../shared/data/pydoc-minilm.npz        # 1M rows
    python benchmarks/search.py --rows 3000 --queries 20 --out /tmp/s.md        # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._corpus import add_corpus_arg, cosine_topk, machine, recall, select_corpus  # noqa: E402
from benchmarks._interpolated import interpolated, queries  # noqa: E402

K = 10
SHORTLIST = 100


# ------------------------------------------------------------------------------------ helpers
def pin(n_cpus: int) -> list[int]:
    """Pin every thread of this process (and the threads it starts later) to ``n_cpus`` cores."""
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))[:n_cpus]
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass
    return cpus


CPU_QPS: dict = {}  # fn -> queries per CPU second of its last 1-thread qps() run


def qps(fn, Q: np.ndarray, threads: int, budget_s: float) -> float:
    """Queries/s of ``fn(q)`` one query per call on ``threads`` cores (see the docstring); stops
    after ``budget_s`` seconds (at least 10 queries per thread). With 1 thread, also the queries
    per second of process CPU time, in ``CPU_QPS[fn]``."""
    pin(threads)
    fn(Q[0])  # warm-up
    done, t0, c0 = 0, time.perf_counter(), time.process_time()

    def worker(part: np.ndarray) -> int:
        n = 0
        for q in part:
            fn(q)
            n += 1
            if n >= 10 and time.perf_counter() - t0 > budget_s:
                break
        return n

    if threads == 1:
        done = worker(Q)
        CPU_QPS[fn] = done / max(time.process_time() - c0, 1e-9)
    else:
        with cf.ThreadPoolExecutor(threads) as ex:
            done = sum(ex.map(worker, np.array_split(Q, threads)))
    return done / (time.perf_counter() - t0)


def rescore(q: np.ndarray, ids: np.ndarray, originals: np.ndarray, k: int = K) -> np.ndarray:
    """Top ``k`` of the shortlist ``ids`` by the exact inner product with the originals."""
    ids = np.sort(ids[ids >= 0])
    s = originals[ids] @ q
    top = np.argpartition(-s, min(k, len(s)) - 1)[:k]
    return ids[top[np.argsort(-s[top])]]


def fit_map(kind: str, sample: np.ndarray, d: int, seed: int):
    """``(transform, label, weight (d, D), bias (d,))``: the d-dim map fitted on ``sample``
    (TLDR default or PCA), its linear form for a compact model (the product rows)."""
    if kind == "tldr":
        from tldr_index import TLDR

        model = TLDR(n_components=d, random_state=seed).fit(sample)
        t = model._model_tensors()
        # np.asarray: TLDR.transform of a *sliced* np.memmap reads the rows from the file's
        # start (tldr_index.vectors.as_vectors keeps the parent's offset), so pass plain arrays
        return ((lambda X: np.asarray(model.transform(np.asarray(X)), np.float32)), f"TLDR d={d}",
                np.asarray(t["weight"], np.float32), np.asarray(t["bias"], np.float32))
    mu = sample.mean(0)
    C = (sample - mu).T.astype(np.float64) @ (sample - mu)
    W = np.linalg.eigh(C)[1][:, ::-1][:, :d].T.astype(np.float32)
    return ((lambda X: ((np.asarray(X, np.float32) - mu) @ W.T).astype(np.float32)), f"PCA d={d}",
            W, (-(W @ mu)).astype(np.float32))


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -------------------------------------------------------------------------------------- runs
def held_out_truth(X: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, truth)``: ``n`` database rows and their exact cosine top 10 among the others
    (self excluded): what shrink's encode stage gives the code index's recall table."""
    rows = np.sort(np.random.default_rng([seed, 0xE7]).choice(len(X), n, replace=False))
    top = cosine_topk(np.asarray(X[rows]), X, K + 1)
    keep = top != rows[:, None]
    return rows, np.stack([t[m][:K] for t, m in zip(top, keep)])


def rescore_f16(q: np.ndarray, ids: np.ndarray, cache: np.ndarray, k: int = K) -> np.ndarray:
    """:func:`rescore` from a float16 copy of the originals (the ``--rescore-cache`` layout),
    converted as :meth:`tldr_index.rescore_cache.RescoreCache.take` does."""
    from tldr_index.rescore_cache import to_float32

    ids = np.sort(ids[ids >= 0])
    s = to_float32(np.take(cache, ids, axis=0)) @ q
    top = np.argpartition(-s, min(k, len(s)) - 1)[:k]
    return ids[top[np.argsort(-s[top])]]


def run_compact(args, X, Q, truth, rows: list, lance_uri: str | None, work: Path) -> dict:
    """The map + PQ16, the code index at the (nprobe, shortlist) pairs its recall table picks
    and at a grid, and the exhaustive code scan; rescoring from a float16 cache of the
    originals (memory-mapped, what ``search --rescore-cache`` reads)."""
    import resource

    from tldr_index.code_index import CodeIndex
    from tldr_index.codecs import get_codec

    rng = np.random.default_rng(0)
    sample = np.asarray(X[np.sort(rng.choice(len(X), min(args.sample, len(X)), replace=False))])
    t0 = time.perf_counter()
    transform, label, weight, bias = fit_map(args.map, sample, args.dim, 0)
    fit_s = time.perf_counter() - t0
    Z = np.concatenate([unit(transform(X[s:s + 65_536])) for s in range(0, len(X), 65_536)])
    ZQ = unit(transform(Q))
    codec = get_codec("pq", args.dim, bytes=args.pq_bytes).fit(Z[:min(len(Z), 65_536)], seed=0)
    codes = codec.encode(Z)
    ev_rows, ev_truth = held_out_truth(X, min(200, len(X) - 1))
    pin(1)
    indexes = {}
    extra_build = {}
    for scan in args.scans:
        t0, c0 = time.perf_counter(), time.process_time()
        indexes[scan] = CodeIndex.build(Z, codes, codec, metric="cosine", eval_rows=ev_rows,
                                        eval_truth=ev_truth, scan=scan)
        extra_build[f"index_build_s_{scan}"] = time.perf_counter() - t0
        extra_build[f"index_build_cpu_s_{scan}"] = time.process_time() - c0
    cache_path = work / "originals.f16.npy"
    cache = np.lib.format.open_memmap(cache_path, mode="w+", dtype=np.float16, shape=X.shape)
    for s in range(0, len(X), 65_536):
        cache[s:s + 65_536] = X[s:s + 65_536]
    cache.flush()
    del cache
    cache = np.load(cache_path, mmap_mode="r")
    for s in range(0, len(X), 65_536):  # map every page once (a long-running searcher has)
        np.asarray(cache[s:s + 65_536]).max()

    def add_rows(method: str, setting: str, sls: list, S_all: np.ndarray, search,
                 bpv: float) -> None:
        """Rows of one setting: raw top K, then each rescoring shortlist (``search(q, n)``
        gives the ids of one query's top ``n`` codes), rescored from the float16 cache."""
        rec_raw = recall(S_all[:, :K], truth)
        raw = {t: qps(lambda i: search(int(i[0]), K), np.arange(len(Q))[:, None], t,
                      args.budget) for t in args.threads}
        for sl in sls:
            rec_res = recall(np.stack([rescore_f16(q, s[:sl], cache)
                                       for q, s in zip(Q, S_all)]), truth)
            for t in args.threads:
                def fn(i):
                    return rescore_f16(Q[int(i[0])], search(int(i[0]), sl), cache)

                res = qps(fn, np.arange(len(Q))[:, None], t, args.budget)
                rows.append({"method": method, "setting": f"{setting}, shortlist {sl}",
                             "shortlist": sl, "threads": t, "recall_raw": rec_raw,
                             "recall_rescored": rec_res, "qps_raw": raw[t], "qps_rescored": res,
                             "bytes_per_vector": bpv,
                             "cpu_qps_rescored": CPU_QPS.pop(fn, None) if t == 1 else None})
                print(rows[-1], flush=True)

    top = max(max(args.shortlists), 1000)
    # diagnostic: exact (flat) search of the reduced float32 vectors: the map's own ceiling
    import faiss

    flat = faiss.IndexFlatIP(Z.shape[1])
    flat.add(Z)
    add_rows(f"flat scan of the reduced vectors ({label}, float32, diagnostic)", "exact",
             [100], flat.search(ZQ, top)[1], lambda i, n: flat.search(ZQ[i][None], n)[1][0],
             float(Z.shape[1] * 4))
    product = None
    if args.product:  # the collection as shrink would write it: Parquet, float16 vectors
        product = write_product_target(work, weight, bias, codec, Z, codes,
                                       indexes[args.scans[0]], lance_uri)
    del Z, flat
    extra: dict = {}
    extra_default: dict = {}
    for scan, index in indexes.items():
        t = index.recall_table
        rpl = index.n / index.nlist
        fs = index.fastscan_lists
        name = (f"tldr-index IVF{index.nlist} fast-scan {fs.code_bytes} B ({fs.M} x 4 bit) "
                f"over {label}" if fs is not None else
                f"tldr-index IVF{index.nlist} over {label} + PQ{args.pq_bytes} codes")
        bpv = index.bytes_per_vector()
        picks = {}
        for target in args.targets:
            try:
                p, sl = t.rescored_choice(target, "bench", rows_per_list=rpl)
            except Exception as exc:  # noqa: BLE001 - beyond the table: say so in the output
                print(f"target {target}: {exc}", flush=True)
                continue
            picks.setdefault(p, set()).add(sl)
        p, sl = t.rescored_choice(None, "bench", rows_per_list=rpl, min_shortlist=200)
        extra_default[f"default_pick_{scan}"] = f"nprobe {p}, shortlist {sl}"
        picks.setdefault(p, set()).add(sl)
        for p in args.nprobes:
            if p <= index.nlist:
                picks.setdefault(p, set()).update(args.shortlists)
        for p in sorted(picks):
            add_rows(name, f"nprobe {p}",
                     sorted(picks[p]), index.search(ZQ, top, nprobe=p)[1],
                     lambda i, n, p=p, index=index: index.search(ZQ[i][None], n, nprobe=p)[1][0],
                     bpv)
    # the exhaustive code scan (FAISS IndexPQ through the codec)
    add_rows(f"tldr-index exhaustive scan, {label} + PQ{args.pq_bytes}", "all codes",
             sorted(set(args.shortlists) | {100}), codec.search(ZQ, codes, top)[1],
             lambda i, n: codec.search(ZQ[i][None], codes, n)[1][0], float(args.pq_bytes))
    if product is not None:
        extra.update(run_product(args, Q, truth, rows, product, lance_uri))
    index = indexes[args.scans[0]]
    extra = {**extra, "map": label, "map_fit_s": fit_s, **extra_build, "nlist": index.nlist,
             **extra_default, "recall_table": index.recall_table.to_json(),
             "max_rss_gb": resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 2**20}
    # rescoring cost at a shortlist of 100: float32 RAM, float16 cache, Lance by position
    p = max(p for p in args.nprobes if p <= index.nlist)
    ids = [s[s >= 0] for s in (index.search(ZQ[i][None], SHORTLIST, nprobe=p)[1][0]
                               for i in range(min(len(Q), 200)))]
    pin(1)
    for key, fn in (("rescore_ram_f32_ms", lambda q, s: rescore(q, s, X)),
                    ("rescore_cache_f16_ms", lambda q, s: rescore_f16(q, s, cache))):
        t0 = time.perf_counter()
        for q, s in zip(Q, ids):
            fn(q, s)
        extra[key] = (time.perf_counter() - t0) / len(ids) * 1e3
    if lance_uri:
        import lance

        from connectors import open_source

        src = open_source(lance_uri)
        src.take_positions(ids[0])
        rng = np.random.default_rng(1)
        rand = [np.sort(rng.choice(len(X), SHORTLIST, replace=False)) for _ in range(50)]
        t0 = time.perf_counter()
        for s in rand:
            src.take_positions(s)
        extra["lance_take_positions_100_ms"] = (time.perf_counter() - t0) / len(rand) * 1e3
        ds = lance.dataset(src.path)
        frags = ds.get_fragments()
        fid = np.array([f.fragment_id for f in frags], np.int64)
        starts = np.cumsum([0] + [f.count_rows() for f in frags])

        def row_ids(pos: np.ndarray) -> list:
            f = np.searchsorted(starts, pos, side="right") - 1
            return ((fid[f] << 32) + (pos - starts[f])).tolist()

        for key, fn in (("lance_take_vector_only_100_ms",
                         lambda s: ds.take(s.tolist(), columns=["vector"])),
                        ("lance_take_rows_by_row_id_vector_only_100_ms",
                         lambda s: ds._take_rows(row_ids(s), columns=["vector"]))):
            fn(rand[0])
            t0 = time.perf_counter()
            for s in rand:
                fn(s)
            extra[key] = (time.perf_counter() - t0) / len(rand) * 1e3
        # the same rows by position and by row id
        a = ds.take(rand[0].tolist(), columns=["vector"]).column(0)
        b = ds._take_rows(row_ids(rand[0]), columns=["vector"]).column(0)
        extra["lance_row_id_take_matches_position_take"] = bool(a.equals(b))
    return extra


def write_product_target(work: Path, weight: np.ndarray, bias: np.ndarray, codec, Z: np.ndarray,
                         codes: np.ndarray, index, source: str | None) -> dict:
    """The benchmark's map, codes and code index written as a compact collection (a Parquet
    target with float16 reduced vectors, the code index stored as ``shrink`` stores it, the
    source: the Lance table of the originals) and its rescore cache (``write_rescore_cache``
    from that source, else from the float16 copy with its sidecar). Returns the URIs."""
    import pyarrow as pa

    from connectors import open_sink
    from connectors.arrow_utils import numpy_to_fsl
    from tldr_index.code_index import ARTIFACT_NAME
    from tldr_index.compact import CompactModel
    from tldr_index.rescore_cache_write import write_rescore_cache

    model = CompactModel(weight, bias, "cosine", codec, {
        "method": "tldr", "class": "TLDR", "foldable": True, "input_dim": int(weight.shape[1]),
        "output_dim": int(weight.shape[0]), "metric": "cosine", "library": "tldr-index"})
    uri = f"parquet://{work / 'compact'}"
    m, d = codes.shape[1], Z.shape[1]
    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float16(), d)),
                        ("pq_codes", pa.list_(pa.uint8(), m))])
    sink = open_sink(uri)
    sink.create(schema, id_column="id", vector_column="vector", distance="cosine",
                codes_column="pq_codes", overwrite=True)
    for s in range(0, len(Z), 65_536):
        part = np.asarray(Z[s:s + 65_536])
        sink.append(pa.RecordBatch.from_arrays(
            [pa.array(np.arange(s, s + len(part), dtype=np.int64)),
             numpy_to_fsl(part.astype(np.float16)),
             pa.FixedSizeListArray.from_arrays(pa.array(codes[s:s + len(part)].reshape(-1)), m)],
            schema=schema))
    sink.store_artifact(ARTIFACT_NAME, index.to_bytes())
    sink.store_model(model.to_bytes(), {
        "source": source, "source_columns": {"id": "id", "vector": "vector"},
        "dims": [int(weight.shape[1]), d], "method": "tldr", "metric": "cosine",
        "codes": {"codec": codec.name, "bytes": m, "column": "pq_codes"},
        "vector_dtype": "float16"})
    sink.verify(len(Z))
    sink.publish()
    out = {"target": uri, "cache": None}
    if source is not None:
        out["cache"] = str(write_rescore_cache(uri, work / "product_cache.f16.npy"))
    return out


def run_product(args, Q, truth, rows: list, product: dict, source: str | None) -> dict:
    """The product call: ``c = tldr_index.open(target)`` kept open, ``c.search(q, k=10,
    rescore=True, ...)`` one query per call (default read_consistency_interval: no version
    check per call), at the default pick and at the pick for 0.95 of the stored table;
    rescoring from the rescore cache and, at the default, from the source (Lance take by id)."""
    import tldr_index

    c = tldr_index.open(product["target"])
    s = c._searcher()
    bpv = s.bytes_per_vector()
    settings = [("default", {})]
    try:
        c.search(Q[:1], k=K, rescore=True, target_recall=0.95)
        settings.append(("target_recall=0.95", {"target_recall": 0.95}))
    except Exception as exc:  # noqa: BLE001 - beyond the table: say so in the output
        print(f"product target 0.95: {exc}", flush=True)
    cache = product["cache"]
    if cache:  # map every page of the searcher's cache once, as for the index rows (a
        # long-running searcher has): opened by the first search, once per version
        c.search(Q[:1], k=K, rescore=True, rescore_cache=cache)
        arr = s.cached(("rescore_cache", cache, False), lambda: None).array
        for a in range(0, len(arr), 65_536):
            np.asarray(arr[a:a + 65_536]).max()
    ways = ([("rescore cache", {"rescore_cache": cache})] if cache else []) + (
        [("source", {})] if source else [])
    extra = {"product_searcher_ram_b_per_vector": bpv,
             "product_searcher_resident_bytes": s.resident(), "product_ids": s.row_ids.kind}
    for name, kw in settings:
        # raw: the nprobe of the rescored pick (target_recall of a raw search is raw recall)
        rkw = {"nprobe": c.search(Q[:1], k=K, rescore=True, **kw).nprobe}
        got = c.search(Q, k=K, **rkw)
        rec_raw = recall(got.ids, truth)
        raw = {th: qps(lambda q: c.search(q, k=K, **rkw), Q, th, args.budget)
               for th in args.threads}
        for way, wkw in ways:
            if way == "source" and kw:
                continue  # the source's take dominates: measured at the default only
            res = c.search(Q[:args.lance_eval] if way == "source" else Q, k=K, rescore=True,
                           **kw, **wkw)
            rec = recall(res.ids, truth[:len(res.ids)])
            for th in args.threads:
                def fn(q):
                    return c.search(q, k=K, rescore=True, **kw, **wkw)

                r = qps(fn, Q, th, args.budget)
                rows.append({"method": "product: tldr_index.open(target).search(q, k=10, "
                                       f"rescore=True), rescored from the {way}",
                             "setting": f"{name}: nprobe {res.nprobe}, shortlist "
                                        f"{res.shortlist}" + (f" (recall: {len(res.ids)} "
                                                               f"queries)" if way == "source"
                                                               else ""),
                             "shortlist": res.shortlist, "threads": th, "recall_raw": rec_raw,
                             "recall_rescored": rec, "qps_raw": raw[th], "qps_rescored": r,
                             "bytes_per_vector": bpv,
                             "cpu_qps_rescored": CPU_QPS.pop(fn, None) if th == 1 else None})
                print(rows[-1], flush=True)
    if cache and args.calibrate:
        calibrated(args, c, Q, truth, rows, cache, source, extra)
    s = c._searcher()
    extra["product_searcher_ram_b_per_vector_end"] = s.bytes_per_vector()
    extra["product_codes_loaded_end"] = s.codes_loaded
    c.close()
    return extra


def calibrated(args, c, Q, truth, rows: list, cache: str, source: str | None,
               extra: dict) -> None:
    """``c.calibrate`` on the first half of the queries (truth from the source: exact float32,
    else the cache), then ``target_recall`` picks measured on the other half, against the
    stored (held-out rows) table's picks on the same half."""
    from tldr_index.calibrate import MIN_QUERIES

    half = len(Q) // 2
    if half < MIN_QUERIES:
        print(f"calibrated rows skipped: {half} queries per half, calibrate needs "
              f"{MIN_QUERIES}", flush=True)
        return
    Qa, Qb, Tb = Q[:half], Q[half:], truth[half:]
    before = {}
    for R in args.targets:
        try:
            got = c.search(Qb, k=K, rescore=True, target_recall=R, rescore_cache=cache)
            before[R] = (got.nprobe, got.shortlist, recall(got.ids, Tb))
        except Exception as exc:  # noqa: BLE001 - beyond the table
            before[R] = str(exc)
    t0 = time.perf_counter()
    table = c.calibrate(Qa, k=K, **({} if source else {"rescore_cache": cache}))
    extra["calibrate_s"] = time.perf_counter() - t0
    extra["recall_table_calibrated"] = table.to_json()
    extra["calibrate_truth"] = "source (float32)" if source else "rescore cache (float16)"
    bpv = c._searcher().bytes_per_vector()
    for R in args.targets:
        try:
            res = c.search(Qb, k=K, rescore=True, target_recall=R, rescore_cache=cache)
        except Exception as exc:  # noqa: BLE001 - beyond the calibrated table: say so
            print(f"calibrated target {R}: {exc}", flush=True)
            continue
        rec = recall(res.ids, Tb)
        raw = c.search(Qb, k=K, nprobe=res.nprobe)
        rec_raw = recall(raw.ids, Tb)
        b = before[R]
        extra[f"uncalibrated_target_recall_{R}_on_second_half"] = (
            b if isinstance(b, str) else f"nprobe {b[0]}, shortlist {b[1]}: {b[2]:.3f}")
        for th in args.threads:
            def fn(q):
                return c.search(q, k=K, rescore=True, target_recall=R, rescore_cache=cache)

            r = qps(fn, Qb, th, args.budget)
            rq = qps(lambda q: c.search(q, k=K, nprobe=res.nprobe), Qb, th, args.budget)
            rows.append({"method": "product: tldr_index.open(target).search(q, k=10, "
                                   "rescore=True), rescored from the rescore cache",
                         "setting": f"target_recall={R} calibrated on queries 1-{half} "
                                    f"(c.calibrate), measured on {half + 1}-{len(Q)}: nprobe "
                                    f"{res.nprobe}, shortlist {res.shortlist}",
                         "shortlist": res.shortlist, "threads": th, "recall_raw": rec_raw,
                         "recall_rescored": rec, "qps_raw": rq, "qps_rescored": r,
                         "bytes_per_vector": bpv,
                         "cpu_qps_rescored": CPU_QPS.pop(fn, None) if th == 1 else None})
            print(rows[-1], flush=True)


def write_table(X: np.ndarray, db: str):
    """A LanceDB table ``orig`` (id, 384-d float32 vector) of the originals, no index yet."""
    import lancedb
    import pyarrow as pa

    from connectors.arrow_utils import numpy_to_fsl

    def batches():
        for s in range(0, len(X), 65_536):
            part = np.asarray(X[s:s + 65_536])
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.arange(s, s + len(part), dtype=np.int64)), numpy_to_fsl(part)],
                names=["id", "vector"])

    schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), X.shape[1]))])
    conn = lancedb.connect(db)
    conn.create_table("orig", data=pa.RecordBatchReader.from_batches(schema, batches()))
    return conn


def run_lancedb(args, X, Q, truth, rows: list, conn, db: str, flush) -> dict:
    """LanceDB IVF_PQ then IVF_RQ (LanceDB's defaults but the partitions) on the table of the
    384-d originals."""
    from lancedb.index import IvfPq, IvfRq

    tbl = conn.open_table("orig")
    parts = max(1, min(int(round(np.sqrt(len(X)))), len(X) // 256))
    extra = {}
    for kind, cfg in [("IVF_PQ", IvfPq(distance_type="cosine", num_partitions=parts,
                                       num_sub_vectors=48)),
                      ("IVF_RQ", IvfRq(distance_type="cosine", num_partitions=parts,
                                       num_bits=1))]:
        if kind.lower() not in args.lancedb:
            continue
        pin(max(args.threads))
        idx_dir = Path(db) / "orig.lance" / "_indices"
        before = dir_bytes(idx_dir) if idx_dir.exists() else 0
        t0 = time.perf_counter()
        tbl.create_index("vector", config=cfg, replace=True)
        extra[f"{kind}_build_s"] = time.perf_counter() - t0
        tbl = conn.open_table("orig")
        bpv = (dir_bytes(idx_dir) - before) / len(X)  # the new index's files only
        for npb in args.lance_nprobes:
            def search(q, rf=None, k=K):
                s = tbl.search(q).distance_type("cosine").nprobes(npb)
                if rf:
                    s = s.refine_factor(rf)
                return s.limit(k).select(["id", "_distance"]).to_arrow()["id"].to_numpy()
            ev = Q[:min(len(Q), args.lance_eval)]
            rec_raw = recall(np.stack([search(q) for q in ev]), truth[:len(ev)])
            rec_res = recall(np.stack([search(q, SHORTLIST // K) for q in ev]), truth[:len(ev)])
            for t in args.threads:
                raw = qps(search, Q, t, args.budget)
                res = qps(lambda q: search(q, SHORTLIST // K), Q, t, args.budget)
                rows.append({"method": f"LanceDB {kind} on the 384-d originals "
                                       f"({parts} partitions"
                             + (", 48 sub-vectors)" if kind == "IVF_PQ" else ", 1 bit)"),
                             "setting": f"nprobes {npb} (recall: {len(ev)} queries)",
                             "threads": t, "recall_raw": rec_raw,
                             "recall_rescored": rec_res, "qps_raw": raw, "qps_rescored": res,
                             "bytes_per_vector": bpv})
                print(rows[-1], flush=True)
        flush()
    return extra


def run_rabitq(args, X, Q, truth, rows: list) -> dict:
    """FAISS IVF-RaBitQ (1 bit per dimension) on the originals, rescored from RAM."""
    import faiss

    D = X.shape[1]
    nlist = max(1, min(args.rabitq_nlist, len(X) // 39))
    index = faiss.index_factory(D, f"RR{D},IVF{nlist},RaBitQ", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    pin(max(args.threads))
    faiss.omp_set_num_threads(max(args.threads))
    t0 = time.perf_counter()
    index.train(np.asarray(X[np.sort(rng.choice(len(X), min(len(X), 64 * nlist), replace=False))]))
    for s in range(0, len(X), 65_536):
        index.add(np.ascontiguousarray(X[s:s + 65_536]))
    build_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    ivf = faiss.extract_index_ivf(index)
    code = index.sa_code_size()
    bpv = code + 8 + ivf.quantizer.ntotal * D * 4 / len(X)
    for p in [p for p in args.nprobes if p <= nlist]:
        ivf.nprobe = p
        _, S = index.search(Q, SHORTLIST)
        rec_raw = recall(S[:, :K], truth)
        rec_res = recall(np.stack([rescore(q, s, X) for q, s in zip(Q, S)]), truth)
        for t in args.threads:
            raw = qps(lambda q: index.search(q[None], K), Q, t, args.budget)
            res = qps(lambda q: rescore(q, index.search(q[None], SHORTLIST)[1][0], X), Q, t,
                      args.budget)
            rows.append({"method": f"FAISS IVF{nlist}-RaBitQ 1-bit on the originals "
                                   f"({code} B)", "setting": f"nprobe {p}", "threads": t,
                         "recall_raw": rec_raw, "recall_rescored": rec_res, "qps_raw": raw,
                         "qps_rescored": res, "bytes_per_vector": bpv})
            print(rows[-1], flush=True)
    return {"rabitq_build_s": build_s}


# ------------------------------------------------------------------------------------- output
def render(rows: list, extra: dict, args, n: int, nq: int) -> str:
    cmd = "python benchmarks/search.py " + " ".join(sys.argv[1:])
    lines = [f"# Search speed over {n:,} interpolated rows ({dt.date.today()}, {machine()})", "",
             f"`{cmd}`: {nq} queries, recall@10 against the exact cosine top-10 of the "
             f"384-d originals; one query per call; q/s on 1 and 2 pinned cores (shared, noisy "
             f"machine: compare ratios). Rescored: the shortlist ranked by the exact cosine of "
             f"the originals (tldr-index: read from a float16 memory-mapped copy of the "
             f"originals, the --rescore-cache layout; LanceDB: refine_factor 10; FAISS: float32 "
             f"in RAM; shortlist 100 unless the setting says another). Compact map: "
             f"{extra.get('map', '-')}.", "",
             "| method | setting | threads | recall@10 raw | q/s raw | recall@10 rescored "
             "| q/s rescored | q/s rescored per CPU second (1 thread) | RAM B/vector |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = r.get("cpu_qps_rescored")
        lines.append(f"| {r['method']} | {r['setting']} | {r['threads']} | {r['recall_raw']:.3f} "
                     f"| {r['qps_raw']:,.0f} | {r['recall_rescored']:.3f} "
                     f"| {r['qps_rescored']:,.0f} | {f'{cpu:,.0f}' if cpu else '-'} "
                     f"| {r['bytes_per_vector']:.1f} |")
    lines += ["", "Other figures: " + ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in extra.items() if not k.startswith("recall_table")), ""]
    t = extra.get("recall_table")
    if t and t.get("rescored"):
        lines += table_lines(f"Recall table stored in the code index at build ({t['queries']} "
                             f"held-out database rows as queries, self excluded, recall@10 "
                             f"against their exact top 10 in the {t['truth']} space; rescored = "
                             f"|top S ∩ true top 10| / 10):", t)
    t = extra.get("recall_table_calibrated")
    if t:
        lines += table_lines(f"Recall table after `c.calibrate(queries[:{t['queries']}])` "
                             f"({t['queries']} of the held-out corpus queries, truth: "
                             f"{extra.get('calibrate_truth')}; the same layout):", t)
    return "\n".join(lines) + "\n"


def table_lines(title: str, t: dict) -> list[str]:
    """A stored recall table (``RecallTable.to_json()``) as markdown lines under ``title``."""
    lines = [title, "", "| nprobe | vs exhaustive code scan | raw | " + " | ".join(
        f"rescored S={x}" for x in t["shortlist"]) + " |", "|---" * (3 + len(t["shortlist"])) + "|"]
    lines += [f"| {p} | {a} | {r} | " + " | ".join(str(v) for v in row) + " |"
              for p, a, r, row in zip(t["nprobe"], t["vs_exhaustive"], t["raw"], t["rescored"])]
    return lines + [""]


def plot(rows: list, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    def key(r: dict) -> str:
        sl = r.get("shortlist", SHORTLIST)
        return r["method"] + (f", shortlist {sl}" if sl != SHORTLIST else "")

    for m in dict.fromkeys(key(r) for r in rows):
        pts = sorted((r["recall_rescored"], r["qps_rescored"]) for r in rows
                     if key(r) == m and r["threads"] == 1)
        ax.plot(*zip(*pts), marker="o", label=m)
    ax.set_xlabel("recall@10 after rescoring (shortlist 100 unless named)")
    ax.set_ylabel("queries/s, one core")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--rows", type=int, default=1_000_000, help="interpolated database rows")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries used")
    ap.add_argument("--map", choices=("tldr", "pca"), default="tldr")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-bytes", type=int, default=16)
    ap.add_argument("--scans", default="fastscan,codes",
                    help="code index scans (tldr_index.code_index.SCANS): the first one's recall "
                         "table is printed")
    ap.add_argument("--sample", type=int, default=50_000, help="rows the map is fitted on")
    ap.add_argument("--nprobes", default="16,32,64", help="nprobe values (tldr-index, FAISS)")
    ap.add_argument("--shortlists", default="100,400,1000",
                    help="rescoring shortlists of tldr-index at --nprobes (LanceDB, FAISS: 100)")
    ap.add_argument("--targets", default="0.9,0.95",
                    help="rescored recall targets: the (nprobe, shortlist) the stored table "
                         "picks for each (plus the default pick) are measured")
    ap.add_argument("--lance-nprobes", default="20,50", help="LanceDB nprobes values")
    ap.add_argument("--lance-eval", type=int, default=300, help="queries for LanceDB's recall")
    ap.add_argument("--lancedb", default="ivf_pq,ivf_rq", help="LanceDB indexes ('' for none)")
    ap.add_argument("--rabitq-nlist", type=int, default=1024)
    ap.add_argument("--no-rabitq", action="store_true")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="skip the calibrated target_recall rows of the product")
    ap.add_argument("--no-product", dest="product", action="store_false",
                    help="skip the product rows (tldr_index.open(target).search)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds of timing per figure")
    ap.add_argument("--work", default=None, help="directory for the LanceDB table (temp)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.md"))
    args = ap.parse_args(argv)
    args.nprobes = [int(x) for x in args.nprobes.split(",") if x]
    args.lance_nprobes = [int(x) for x in args.lance_nprobes.split(",") if x]
    args.threads = [int(x) for x in args.threads.split(",") if x]
    args.shortlists = [int(x) for x in args.shortlists.split(",") if x]
    args.targets = [float(x) for x in args.targets.split(",") if x]
    args.lancedb = [x for x in args.lancedb.split(",") if x]
    args.scans = [x for x in args.scans.split(",") if x]
    select_corpus(args.corpus)
    os.environ.setdefault("LANCE_LOG", "error")
    import faiss
    import torch

    torch.set_num_threads(2)
    X = interpolated(args.rows)
    Q = unit(queries()[:args.queries])
    t0 = time.perf_counter()
    truth = cosine_topk(Q, X, K)
    extra: dict = {"truth_s": time.perf_counter() - t0,
                   "load_avg_1_5_15_start": " / ".join(f"{v:.1f}" for v in os.getloadavg())}
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    rows: list = []
    work = Path(args.work or tempfile.mkdtemp(prefix="tldr_search_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        """Write the table so far (a run stopped part-way still leaves its figures)."""
        out.write_text(render(rows, extra, args, len(X), len(Q)))
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "extra": extra,
                                                        "argv": sys.argv[1:]}, indent=1))
        plot(rows, out.with_suffix(".png"))

    try:
        lance_uri, conn = None, None
        if args.lancedb or args.product:  # the product rows rescore from it too
            t0 = time.perf_counter()
            conn = write_table(X, str(work / "db"))
            extra["lance_write_s"] = time.perf_counter() - t0
            from connectors import lancedb_uri
            lance_uri = lancedb_uri(str(work / "db"), "orig")
        extra.update(run_compact(args, X, Q, truth, rows, lance_uri, work))
        flush()
        if not args.no_rabitq:
            extra.update(run_rabitq(args, X, Q, truth, rows))
            flush()
        if args.lancedb:
            extra.update(run_lancedb(args, X, Q, truth, rows, conn, str(work / "db"), flush))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    extra["load_avg_1_5_15_end"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    flush()
    print(render(rows, extra, args, len(X), len(Q)))

if __name__ == "__main__":
    main()
