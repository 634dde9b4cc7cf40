"""RQ encoding cost: CPU seconds per 1M rows of the two beam-search engines on the same codebooks.

For each d (``--dims``) and code size (``--bytes``): the corpus rows (after the queries) are
reduced to d by PCA and L2-normalised (encoding cost does not depend on where the d-dim vectors
come from, so the TLDR fit is skipped here; recall lives in ``benchmarks/frontier.py``), an
:class:`~tldr_index.codecs.RQCodec` is trained on ``--train-rows`` of them, and ``--rows`` rows are
encoded at every beam of ``--beams`` with ``--threads`` torch/FAISS threads by
* ``torch``: :func:`tldr_index.codecs.rq.beam_encode` (one GEMM per codebook, worker threads);
* ``faiss``: FAISS's ``ResidualQuantizer.compute_codes`` with its codebook look-up tables, called
  once with ``threads`` OpenMP threads (what ``RQCodec.encode`` did before);
* ``codec``: ``RQCodec.encode`` at that beam, the product's path
  (:func:`tldr_index.codecs.rq.lut_encode`): FAISS's table beam search fed with float64
  row-codebook inner products, on chunks of rows in ``threads`` worker threads of one OpenMP
  thread each.

Batch independence: the same rows are encoded again by FAISS and by the codec in batches of
1-13, 100, 246, 333 and 700 rows (cycled); "batch-same" is the share of rows whose code equals
the one-call code (the codec must give 1; FAISS's float32 GEMM does not).

Reported: CPU seconds (``time.process_time``, every thread of the process) and wall seconds per
1M rows, both extrapolated linearly from ``--rows``; the share of rows whose codes are identical;
the mean squared reconstruction error of each. On a machine shared with other jobs wall time is
noisy; CPU time is the steadier figure. "1M rows on T idle cores" is estimated as CPU seconds
with T threads / T (assumes the cores scale; FAISS and the torch workers split rows).

Usage:
    python benchmarks/rq_encode.py --corpus ../shared/data/pydoc-minilm.npz
    python benchmarks/rq_encode.py                     # shipped sample, quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import add_corpus_arg, select_corpus  # noqa: E402
from tldr_index.codecs import codec_from_state, get_codec  # noqa: E402
from tldr_index.codecs.rq import beam_encode  # noqa: E402
from tldr_index.threads import thread_limit  # noqa: E402


def pca_unit(X: np.ndarray, d: int, fit_rows: int = 10_000) -> np.ndarray:
    mu = X[:fit_rows].mean(0)
    vt = np.linalg.svd(X[:fit_rows] - mu, full_matrices=False)[2]
    Z = (X - mu) @ vt[:d].T
    return np.ascontiguousarray(Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12),
                                dtype=np.float32)


#: Batch sizes (cycled) of the batch-independence check.
BATCHES = (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 100, 246, 333, 700)


def in_batches(fn, X: np.ndarray) -> np.ndarray:
    """``fn`` over consecutive batches of :data:`BATCHES` rows (cycled), concatenated."""
    parts, s, i = [], 0, 0
    while s < len(X):
        k = BATCHES[i % len(BATCHES)]
        parts.append(fn(X[s:s + k]))
        s, i = s + k, i + 1
    return np.concatenate(parts)


def timed(fn) -> tuple[np.ndarray, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--queries", type=int, default=1000, help="leading rows left out")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--bytes", default="8,16,32", help="RQ code sizes M")
    ap.add_argument("--beams", default="1,2,4,5")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", type=int, default=20_000,
                    help="rows encoded per measurement (beyond the corpus: its rows repeated "
                         "with seeded noise, 0.05 per dimension, then L2-normalised)")
    ap.add_argument("--codec-only", action="store_true",
                    help="time RQCodec.encode only (no torch / FAISS engines, no batch check): "
                         "for --rows 1000000")
    ap.add_argument("--train-rows", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rq_encode"))
    args = ap.parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    corpus = select_corpus(args.corpus)
    X = np.load(corpus)["X"].astype(np.float32)[args.queries:]
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/rq_encode.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "corpus": str(corpus), "rows": min(args.rows, len(X)),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
            "load_avg_start": os.getloadavg()[0]}
    rows: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in ints(args.dims):
        Z = pca_unit(X, d)
        E = Z[:args.rows] if args.rows <= len(Z) else grow(Z, args.rows, args.seed)
        for m in ints(args.bytes):
            if m > d:
                continue
            with thread_limit(max(ints(args.threads)), owner="rq_encode"):
                codec = get_codec("rq", d, bytes=m, max_train_rows=args.train_rows)
                t0 = time.perf_counter()
                codec.fit(Z[-args.train_rows:], seed=args.seed)
                fit_s = time.perf_counter() - t0
            books = codec.codebooks_
            tensors, cfg = codec.state()
            beam_encode(E[:256], books, 1)  # warm-up: first torch calls
            err = lambda c: float(((E - codec.decode(c)) ** 2).sum(1).mean())  # noqa: E731,B023
            for beam in ints(args.beams):
                cb = codec_from_state(tensors, {**cfg, "beam": beam})
                for th in ints(args.threads):
                    with thread_limit(th, owner="rq_encode"):
                        cc, cpu_c, wall_c = timed(lambda: cb.encode(E))  # noqa: B023
                        if args.codec_only:
                            r = {"d": d, "bytes": m, "beam": beam, "threads": th,
                                 "fit_s": fit_s, "rows": len(E), "codec_cpu_s": cpu_c,
                                 "codec_wall_s": wall_c, "codec_mse": err(cc),
                                 "load_avg": os.getloadavg()[0]}
                            rows.append(r)
                            print(f"d={d} RQ{m} beam {beam} threads {th}: {len(E):,} rows in "
                                  f"{wall_c:.1f} s wall, {cpu_c:.1f} CPU s (load "
                                  f"{r['load_avg']:.1f})", flush=True)
                            continue
                        ct, cpu_t, wall_t = timed(lambda: beam_encode(E, books, beam))  # noqa: B023
                        cf, cpu_f, wall_f = timed(lambda: cb.rq_.compute_codes(E))  # noqa: B023
                        faiss_batch = in_batches(cb.rq_.compute_codes, E)
                        codec_batch = in_batches(cb.encode, E)
                    k = 1e6 / len(E)
                    r = {"d": d, "bytes": m, "beam": beam, "threads": th, "fit_s": fit_s,
                         "torch_cpu_s_per_1m": cpu_t * k, "torch_wall_s_per_1m": wall_t * k,
                         "faiss_cpu_s_per_1m": cpu_f * k, "faiss_wall_s_per_1m": wall_f * k,
                         "codec_cpu_s_per_1m": cpu_c * k, "codec_wall_s_per_1m": wall_c * k,
                         "codec_engine": "lut",
                         "same_rows": float((ct == cf).all(1).mean()),
                         "codec_same_rows": float((cc == cf).all(1).mean()),
                         "faiss_batch_same": float((faiss_batch == cf).all(1).mean()),
                         "codec_batch_same": float((codec_batch == cc).all(1).mean()),
                         "codec_mse": err(cc),
                         "torch_mse": err(ct), "faiss_mse": err(cf),
                         "load_avg": os.getloadavg()[0]}
                    rows.append(r)
                    print(f"d={d} RQ{m} beam {beam} threads {th}: CPU s/1M torch "
                          f"{r['torch_cpu_s_per_1m']:.0f}, faiss {r['faiss_cpu_s_per_1m']:.0f}, "
                          f"codec {r['codec_cpu_s_per_1m']:.0f} (wall {r['torch_wall_s_per_1m']:.0f}"
                          f" / {r['faiss_wall_s_per_1m']:.0f} / {r['codec_wall_s_per_1m']:.0f}), "
                          f"same rows {r['same_rows']:.4f}, mse {r['torch_mse']:.5f} / "
                          f"{r['faiss_mse']:.5f}, batch-same FAISS {r['faiss_batch_same']:.5f} "
                          f"codec {r['codec_batch_same']:.5f}", flush=True)
                write(out, meta, rows)
    write(out, meta, rows)
    print(f"wrote {out}.md / .json")


def grow(Z: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows: the rows of ``Z`` repeated, plus seeded Gaussian noise (0.05 per dimension),
    L2-normalised (encoding cost does not depend on the values, only on n, d, M and the beam)."""
    rng = np.random.default_rng(seed)
    E = Z[np.arange(n) % len(Z)] + 0.05 * rng.standard_normal((n, Z.shape[1]), dtype=np.float32)
    return np.ascontiguousarray(E / np.linalg.norm(E, axis=1, keepdims=True), dtype=np.float32)


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if rows and "torch_cpu_s_per_1m" not in rows[0]:
        write_codec_only(out, meta, rows)
        return
    lines = [f"# RQ encoding cost: torch beam_encode, FAISS and the codec ({meta['date']})", "",
             f"Command: `{meta['command']}`  ",
             f"Corpus: `{meta['corpus']}`, PCA to d and L2-normalised; {meta['rows']:,} rows "
             f"encoded per measurement, extrapolated to 1M.  ",
             f"Machine: {meta['machine']}, load average {meta['load_avg_start']:.1f} at the start "
             "(wall times under load are noisy; CPU seconds count every thread).", "",
             "CPU s per 1M rows: **torch** = beam_encode, **FAISS** = one compute_codes call with "
             "`threads` OpenMP threads, **codec** = RQCodec.encode (lut_encode: FAISS's table "
             "beam search after a float64 GEMM, on row chunks in `threads` single-threaded "
             "workers). **batch-same**: share of rows whose code is unchanged when the rows are "
             "encoded in batches of 1-13, 100, 246, 333, 700 rows (cycled). \"idle "
             "cores\" = codec CPU s / threads: the wall time 1M rows would take on that many idle "
             "cores if the workers scale (an estimate, not a measurement).", "",
             "| d | RQ bytes | beam | threads | torch CPU s / 1M | FAISS CPU s / 1M | codec CPU s "
             "/ 1M (engine) | codec: 1M rows on `threads` idle cores (s) | wall s per 1M torch / "
             "FAISS / codec | same codes torch=FAISS | same codes codec=FAISS | batch-same FAISS / "
             "codec | MSE torch / FAISS / codec | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['bytes']} | {r['beam']} | {r['threads']} | "
            f"{r['torch_cpu_s_per_1m']:.0f} | {r['faiss_cpu_s_per_1m']:.0f} | "
            f"{r['codec_cpu_s_per_1m']:.0f} ({r['codec_engine']}) | "
            f"{r['codec_cpu_s_per_1m'] / r['threads']:.0f} | {r['torch_wall_s_per_1m']:.0f} / "
            f"{r['faiss_wall_s_per_1m']:.0f} / {r['codec_wall_s_per_1m']:.0f} | "
            f"{r['same_rows']:.4f} | {r['codec_same_rows']:.4f} | "
            f"{r['faiss_batch_same']:.5f} / {r['codec_batch_same']:.5f} | "
            f"{r['torch_mse']:.5f} / {r['faiss_mse']:.5f} / {r['codec_mse']:.5f} | "
            f"{r['load_avg']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def write_codec_only(out: Path, meta: dict, rows: list[dict]) -> None:
    lines = [f"# RQ encoding: RQCodec.encode, measured ({meta['date']})", "",
             f"Command: `{meta['command']}`  ",
             f"Corpus: `{meta['corpus']}`, PCA to d and L2-normalised, {rows[0]['rows']:,} "
             "rows per measurement (beyond the corpus: its rows repeated with seeded noise).  ",
             f"Machine: {meta['machine']}, load average {meta['load_avg_start']:.1f} at the start "
             "(shared cores: wall times under load are noisy; CPU seconds count every thread).",
             "", "| d | RQ bytes | beam | threads | rows | wall s | CPU s | MSE | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['bytes']} | {r['beam']} | {r['threads']} | "
                     f"{r['rows']:,} | {r['codec_wall_s']:.1f} | {r['codec_cpu_s']:.1f} | "
                     f"{r['codec_mse']:.5f} | {r['load_avg']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
