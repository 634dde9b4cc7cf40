"""Recall per byte: every codec of :mod:`tldr_index.codecs` on the original vectors and after the
product's default map (TLDR ranking objective, d=64 and d=128), side by side, in one run.

Protocol: the first ``--queries`` rows of the corpus are queries, the rest the database (the
corpus rows are unit norm; cosine = inner product). Ground truth: the exact top-10 by inner product
of the original vectors. For every (representation, codec, bytes): fit on the database rows (RQ and
OPQ on a seeded subsample, see the flags), encode every database row, search the codes with the
(reduced, L2-normalised) float queries, and report recall@10 of
* raw: the codec's own top-10;
* rescored@100: its top-100 re-ranked exactly with the original vectors, then the top-10.
Fit, encode and search seconds are wall-clock on this machine (shared; expect up to 2x noise);
the encode-rate table adds CPU seconds per 1M rows (``time.process_time``, every thread), the
steadier figure under load.
TLDR fit seconds (kNN graph included) are reported once per d and not added to the codec's.
Rows are marked ``product`` (a TLDR map, then a codec: what tldr-index writes) or ``on originals``
(the codec applied to the original vectors: what a store offers). The fitted TLDR maps are cached
in ``benchmarks/_cache/frontier/`` (the model's own safetensors file, keyed by a digest of the
database rows, d, the seed and the TLDR parameters), so a rerun does not refit them
(``--no-map-cache`` refits). The jobs run cheapest first (sign/SQ/RaBitQ/PQ everywhere, then
OPQ/RQ on the reduced vectors, then OPQ/RQ on the originals at 8, 16, 32 B and the rest), and the
results files are rewritten after each, so a run stopped early keeps everything it finished.
The report ends with the per-budget "best on originals vs best product" table and issue 14's
target checks (PASS/FAIL with the numbers).

Without ``--corpus`` the shipped sample (tldr_index/data/sample.npz, 6,000 x 384) is used.

Usage:
    python benchmarks/frontier.py --corpus ../shared/data/pydoc-minilm.npz
    python benchmarks/frontier.py                        # shipped sample, quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import CACHE_ROOT, add_corpus_arg, select_corpus  # noqa: E402
from benchmarks._frontier_report import budget_table, float_checks, target_checks, write  # noqa: E402
from tldr_index.codecs import codec_from_state, feasible_bytes, get_codec  # noqa: E402
from tldr_index.baselines import PCA  # noqa: E402
from tldr_index.qat import codec_for  # noqa: E402
from tldr_index.threads import thread_limit  # noqa: E402

#: the codec name of the rows whose map was fine-tuned through its RQ codes (QAT)
QAT = "rq-qat"

BUDGETS = (8, 16, 24, 32, 48, 64)


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12), dtype=np.float32)


def exact_topk(Q: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    out = []
    for s in range(0, len(Q), 256):
        S = Q[s:s + 256] @ X.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(S, part, 1), axis=1)
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[:k], b)) / k for a, b in zip(found, truth)]))


def rescore(cand: np.ndarray, Q: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    """Exact inner products of the original vectors for each query's candidates; top-k."""
    S = np.einsum("qd,qcd->qc", Q, X[cand])
    return np.take_along_axis(cand, np.argsort(-S, axis=1)[:, :k], axis=1)


def configs(dim: int, budgets: list[int], codecs: list[str], original: bool,
            args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(codec name, get_codec kwargs) with code_size <= max(budgets) (RaBitQ: every bits)."""
    out: list[tuple[str, dict[str, Any]]] = []
    top = max(budgets)
    for name in codecs:
        if name in ("pq", "opq", "rq"):
            allowed = budgets
            if original and name == "rq" and args.original_rq is not None:
                allowed = args.original_rq
            if original and name == "opq" and args.original_opq is not None:
                allowed = args.original_opq
            if not original and name == "rq" and args.rq_budgets is not None:
                allowed = args.rq_budgets
            extra: dict[str, Any] = {"max_train_rows": args.train_rows}
            if name == "rq":
                extra = {"max_train_rows": args.rq_train_rows, "beam": args.rq_beam}
            if name == "opq":
                extra.update(opq_train_rows=args.opq_train_rows, opq_iter=args.opq_iter)
            for b in allowed:
                if b in feasible_bytes(name, dim):
                    out.append((name, {"bytes": b, **extra}))
        elif name == "rabitq":
            for bits in (1, 2, 4):
                if dim * bits % 8 == 0 and (dim * bits // 8 + 4 <= 2 * top):
                    out.append((name, {"bits": bits}))
        elif name in ("sign", "sq8", "sq4"):
            if feasible_bytes(name, dim) and feasible_bytes(name, dim)[0] <= top:
                out.append((name, {}))
    return out


def label(name: str, kw: dict[str, Any], size: int) -> str:
    if name == QAT:
        return f"RQ{size} (QAT)"
    if name == "rabitq":
        return f"RaBitQ {kw['bits']}-bit ({size} B)"
    if name in ("sign", "sq8", "sq4"):
        return {"sign": "sign bits", "sq8": "SQ8", "sq4": "SQ4"}[name] + f" ({size} B)"
    return f"{name.upper()}{size}"


def run_codec(name, kw, Z, Zq, Q, X, truth, seed, n_cand, probe=(), codec=None
              ) -> dict[str, Any]:
    """Fit, encode and search one codec; ``probe``: RQ beams to re-encode with (same codebooks,
    rebuilt through :func:`codec_from_state`), for the encode-rate / recall trade-off;
    ``codec``: an already trained codec (QAT's codebooks: no fit here, fit_s 0)."""
    dim = Z.shape[1]
    c = get_codec(name, dim, **kw) if codec is None else codec
    t0 = time.perf_counter()
    if codec is None:
        c.fit(Z, seed=seed)
    t1, c1 = time.perf_counter(), time.process_time()
    codes = c.encode(Z)
    t2, c2 = time.perf_counter(), time.process_time()
    _, I = c.search(Zq, codes, n_cand)
    t3 = time.perf_counter()
    out = {"codec": name, "label": label(name, kw, c.code_size), "bytes": c.code_size,
           "config": c.config(), "recall_raw": recall(I[:, :10], truth),
           "recall_rescored": recall(rescore(I, Q, X, 10), truth),
           "fit_s": t1 - t0, "encode_s": t2 - t1, "search_s": t3 - t2,
           "encode_rows_per_s": len(Z) / max(t2 - t1, 1e-9),
           "encode_cpu_s_per_1m": (c2 - c1) / len(Z) * 1e6}
    if probe:
        tensors, cfg = c.state()
        out["beam_probe"] = []
        for beam in [b for b in probe if b != cfg.get("beam")]:
            cb = codec_from_state(tensors, {**cfg, "beam": beam})
            t0, c0 = time.perf_counter(), time.process_time()
            cc = cb.encode(Z)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            _, I = cb.search(Zq, cc, n_cand)
            out["beam_probe"].append({"beam": beam, "encode_s": secs,
                                      "encode_rows_per_s": len(Z) / max(secs, 1e-9),
                                      "encode_cpu_s_per_1m": cpu / len(Z) * 1e6,
                                      "recall_raw": recall(I[:, :10], truth),
                                      "recall_rescored": recall(rescore(I, Q, X, 10), truth)})
    return out


def float_recall(Z, Zq, Q, X, truth, n_cand: int) -> dict[str, float]:
    """Recall@10 of the float reduced vectors (exact search), raw and rescored@``n_cand``."""
    flo = exact_topk(Zq, Z, n_cand)
    return {"float_recall_raw": recall(flo[:, :10], truth),
            "float_recall_rescored": recall(rescore(flo, Q, X, 10), truth)}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def kind_of(rep: str) -> str:
    """``product`` (a TLDR map, then a codec: what tldr-index writes) or ``on originals``."""
    return "on originals" if rep == "original" else "product"


def jobs(reps: dict, budgets: list[int], codecs: list[str], args: argparse.Namespace
         ) -> list[tuple[str, str, dict[str, Any]]]:
    """(rep, codec, kwargs) in run order: the cheap codecs everywhere, then OPQ/RQ at 8, 16 and
    32 B (the targets' budgets; reduced vectors first, then the originals), then the other
    budgets likewise (the slow fits last)."""
    cheap, slow = [], []
    for rep, (Z, _) in reps.items():
        for name, kw in configs(Z.shape[1], budgets, codecs, rep == "original", args):
            (slow if name in ("opq", "rq") else cheap).append((rep, name, kw))
        if rep != "original" and Z.shape[1] in args.qat_dims:
            slow += [(rep, QAT, {"bytes": b}) for b in args.qat_budgets
                     if b <= Z.shape[1]]
    slow.sort(key=lambda j: (j[2]["bytes"] not in (8, 16, 32), j[0] == "original",
                             j[2]["bytes"], j[1], j[0]))
    return cheap + slow


def map_cache_key(X: np.ndarray, d: int, seed: int, params: dict) -> str:
    """A digest of the database rows (their content, not the path), d, the seed and the TLDR
    parameters: a changed corpus or parameter gives a new cache entry."""
    h = hashlib.sha256(np.ascontiguousarray(X).view(np.uint8).ravel())
    h.update(json.dumps({"d": d, "seed": seed, "params": params}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()[:20]


def fitted_map(X: np.ndarray, d: int, seed: int, use_cache: bool = True, **params):
    """The product's default TLDR map (``TLDR(n_components=d, **params)``, ranking objective;
    ``params``: e.g. ``qat="rq", qat_bytes=8``) fitted on ``X``: loaded from
    ``benchmarks/_cache/frontier/`` when an earlier run saved it there (the model's own
    safetensors file, plus a JSON note of its fit seconds), else fitted and saved.
    Returns ``(model, info)``."""
    from tldr_index import TLDR

    proto = TLDR(n_components=d, random_state=seed, **params)
    key = map_cache_key(X, d, seed, proto.get_params())
    tag = f"-qat-{params['qat']}{params['qat_bytes']}" if params.get("qat") else ""
    path = CACHE_ROOT / "frontier" / f"tldr-d{d}{tag}-{key}.safetensors"
    note = path.with_suffix(".json")
    if use_cache and path.is_file() and note.is_file():
        info = json.loads(note.read_text())
        return TLDR.load(path), {**info, "cached": True, "cache": path.name}
    t0 = time.perf_counter()
    model = proto.fit(X)
    info = {"tldr_fit_s": time.perf_counter() - t0, "fit_rows": len(X), "key": key,
            "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_avg_at_fit": os.getloadavg()[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    note.write_text(json.dumps(info, indent=1))
    return model, {**info, "cached": False}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--dims", default="64,128", help="TLDR output dims ('' for none)")
    ap.add_argument("--codecs", default="sign,sq8,sq4,rabitq,pq,opq,rq",
                    help="codecs to run on every representation (cheap ones run first)")
    ap.add_argument("--original-rq", default=None,
                    help="budgets for RQ on the original vectors (default: all); RQ training "
                         "cost grows with bytes^2 x D")
    ap.add_argument("--original-opq", default=None,
                    help="budgets for OPQ on the original vectors (default: all)")
    ap.add_argument("--rq-budgets", default=None,
                    help="budgets for RQ on the TLDR-reduced vectors (default: all)")
    ap.add_argument("--opq-iter", type=int, default=10, help="OPQ rotation/PQ alternations")
    ap.add_argument("--train-rows", type=int, default=20_000, help="PQ/OPQ k-means rows")
    ap.add_argument("--opq-train-rows", type=int, default=10_000)
    ap.add_argument("--rq-train-rows", type=int, default=20_000)
    ap.add_argument("--rq-beam", type=int, default=5)
    ap.add_argument("--beam-probe", default="1,2",
                    help="RQ beams to re-encode with (same codebooks): encode rate and recall "
                         "of a smaller beam ('' for none)")
    ap.add_argument("--beam-probe-bytes", default="16,32", help="RQ sizes the beam probe runs at")
    ap.add_argument("--qat-dims", default="128",
                    help="TLDR dims that also get a map fine-tuned through its RQ codes (QAT, "
                         "TLDR(qat='rq'): what shrink --qat on writes) at each --qat-budgets size "
                         "('' for none)")
    ap.add_argument("--qat-budgets", default="8,16,24,32",
                    help="RQ sizes of the QAT rows (each is a fit of its own)")
    ap.add_argument("--qat-epochs", type=int, default=4)
    ap.add_argument("--skip-original", action="store_true",
                    help="only the TLDR-reduced vectors (e.g. to run each d in its own process)")
    ap.add_argument("--no-map-cache", action="store_true",
                    help="refit the TLDR maps even when benchmarks/_cache holds them")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/FAISS threads [default: the cores that look idle]")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "frontier"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only merge the rows of earlier runs' .json files into --out")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    for key in ("original_rq", "original_opq", "rq_budgets"):
        v = getattr(args, key)
        setattr(args, key, None if v is None else [int(b) for b in v.split(",") if b])
    args.qat_dims = [int(d) for d in args.qat_dims.split(",") if d]
    args.qat_budgets = [int(b) for b in args.qat_budgets.split(",") if b]
    args.beam_probe = [int(b) for b in args.beam_probe.split(",") if b]
    args.beam_probe_bytes = [int(b) for b in args.beam_probe_bytes.split(",") if b]
    codecs = args.codecs.split(",")
    dims = [int(d) for d in args.dims.split(",") if d]

    if args.merge:
        merge(args, budgets)
        return
    with thread_limit(args.threads, owner="frontier"):
        run(args, budgets, codecs, dims, argv)


def run(args: argparse.Namespace, budgets: list[int], codecs: list[str], dims: list[int],
        argv: list[str] | None) -> None:
    """The measurement (see the module docstring)."""
    corpus = select_corpus(args.corpus)
    X_all = np.load(corpus)["X"].astype(np.float32)
    Q, X = unit(X_all[:args.queries]), unit(X_all[args.queries:])
    print(f"corpus {corpus} {X_all.shape}: {len(X)} database rows, {len(Q)} queries", flush=True)
    t0 = time.perf_counter()
    truth = exact_topk(Q, X, 10)
    print(f"exact top-10: {time.perf_counter() - t0:.1f} s", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/frontier.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
            "corpus": str(corpus), "shape": list(X_all.shape), "queries": len(Q),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
            "load_avg_start": os.getloadavg()[0], "candidates": args.candidates,
            "rq_beam": args.rq_beam, "rq_train_rows": args.rq_train_rows,
            "train_rows": args.train_rows, "opq_train_rows": args.opq_train_rows,
            "opq_iter": args.opq_iter, "threads": torch_threads(), "reps": {}}
    rows: list[dict] = []
    t_all = time.perf_counter()
    reps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not args.skip_original:
        reps["original"] = (X, Q)
        meta["reps"]["original"] = {}
    for d in dims:  # the maps first (cached): the product rows need them
        model, info = fitted_map(X, d, args.seed, use_cache=not args.no_map_cache)
        Z, Zq = unit(model.transform(X)), unit(model.transform(Q))
        info.update(float_recall(Z, Zq, Q, X, truth, args.candidates))
        pca = PCA(d).fit(X)  # the baseline of the float target (issue 14: TLDR >= PCA + 0.10)
        info["pca"] = float_recall(unit(pca.transform(X)), unit(pca.transform(Q)), Q, X, truth,
                                   args.candidates)
        rep = f"tldr{d}"
        reps[rep], meta["reps"][rep] = (Z, Zq), info
        cached = f" (cached: {info['cache']})" if info.get("cached") else ""
        print(f"TLDR d={d}: fit {info['tldr_fit_s']:.1f} s{cached}, float recall@10 "
              f"{info['float_recall_raw']:.3f} / rescored {info['float_recall_rescored']:.3f}",
              flush=True)
    # Cheapest first, results rewritten after every configuration: a run stopped early keeps
    # every finished row (and the product rows come before the slow on-original fits).
    for rep, name, kw in jobs(reps, budgets, codecs, args):
        Z, Zq = reps[rep]
        probe = args.beam_probe if name == "rq" and kw["bytes"] in args.beam_probe_bytes else ()
        codec = None
        if name == QAT:  # its own map (the ranking fit, then QAT), its own codebooks
            d, b = Z.shape[1], kw["bytes"]
            model, info = fitted_map(X, d, args.seed, use_cache=not args.no_map_cache,
                                     qat="rq", qat_bytes=b, qat_epochs=args.qat_epochs)
            Z, Zq = unit(model.transform(X)), unit(model.transform(Q))
            meta["reps"][f"{rep} + QAT RQ{b}"] = {**info, **float_recall(Z, Zq, Q, X, truth,
                                                                         args.candidates)}
            codec = codec_for(model)
        r = run_codec(name, kw, Z, Zq, Q, X, truth, args.seed, args.candidates, probe=probe,
                      codec=codec)
        r.update(rep=rep, dim=Z.shape[1], kind=kind_of(rep))
        rows.append(r)
        print(f"{rep:9s} {r['label']:24s} {r['bytes']:4d} B  raw {r['recall_raw']:.3f}  "
              f"resc {r['recall_rescored']:.3f}  fit {r['fit_s']:6.1f} s  enc "
              f"{r['encode_s']:5.1f} s ({r['encode_rows_per_s']:,.0f} rows/s)  search "
              f"{r['search_s']:4.1f} s", flush=True)
        for p in r.get("beam_probe", []):
            print(f"          beam {p['beam']}: {p['encode_rows_per_s']:,.0f} rows/s, raw "
                  f"{p['recall_raw']:.3f}, resc {p['recall_rescored']:.3f}", flush=True)
        meta["seconds_so_far"] = time.perf_counter() - t_all
        write(out, meta, rows, budgets, args, corpus, X, Q)
    meta["seconds_so_far"] = time.perf_counter() - t_all
    meta["finished"] = True
    write(out, meta, rows, budgets, args, corpus, X, Q)
    print("\n".join(budget_table(rows, budgets)))
    print("\n".join(target_checks(rows, budgets)))
    print("\n".join(float_checks(meta)))
    print(f"wrote {out}.md / .json")


def merge(args: argparse.Namespace, budgets: list[int]) -> None:
    """One results file from several runs of the same protocol (e.g. one process per d)."""
    rows: list[dict] = []
    meta: dict[str, Any] = {"reps": {}, "seconds_so_far": 0.0, "merged_commands": []}
    for path in args.merge:
        run = json.loads(Path(path).read_text())
        rows += [{**r, "kind": r.get("kind", kind_of(r["rep"]))} for r in run["rows"]]
        meta["reps"].update(run["meta"]["reps"])
        meta["seconds_so_far"] += run["meta"].get("seconds_so_far", 0.0)
        meta["merged_commands"].append(run["meta"]["command"])
        for key, value in run["meta"].items():  # the first run's settings
            if key not in ("reps", "seconds_so_far", "command", "finished"):
                meta.setdefault(key, value)
        meta["finished"] = meta.get("finished", True) and run["meta"].get("finished", False)
    meta["command"] = " ; ".join(meta["merged_commands"])
    n, _ = meta["shape"]
    write(Path(args.out), meta, rows, budgets, args, meta["corpus"],
          np.empty((n - meta["queries"], 0)), np.empty((meta["queries"], 0)))
    print("\n".join(budget_table(rows, budgets)))
    print("\n".join(target_checks(rows, budgets)))


if __name__ == "__main__":
    main()
