"""Recall per byte: every codec of :mod:`tldr_index.codecs` on the original vectors and after the
product's default map (TLDR ranking objective, d=64 and d=128), side by side, in one run.

Protocol: the first ``--queries`` rows of the corpus are queries, the rest the database (the
corpus rows are unit norm; cosine = inner product). Ground truth: the exact top-10 by inner product
of the original vectors. For every (representation, codec, bytes): fit on the database rows (RQ and
OPQ on a seeded subsample, see the flags), encode every database row, search the codes with the
(reduced, L2-normalised) float queries, and report recall@10 of
* raw: the codec's own top-10;
* rescored@100: its top-100 re-ranked exactly with the original vectors, then the top-10.
Fit, encode and search seconds are wall-clock on this machine (shared; expect up to 2x noise).
TLDR fit seconds (kNN graph included) are reported once per d and not added to the codec's.

Without ``--corpus`` the shipped sample (tldr_index/data/sample.npz, 6,000 x 384) is used.

Usage:
    python benchmarks/frontier.py --corpus ../shared/data/pydoc-minilm.npz
    python benchmarks/frontier.py                        # shipped sample, quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import add_corpus_arg, select_corpus  # noqa: E402
from tldr_index.codecs import feasible_bytes, get_codec  # noqa: E402
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
    if name == "rabitq":
        return f"RaBitQ {kw['bits']}-bit ({size} B)"
    if name in ("sign", "sq8", "sq4"):
        return {"sign": "sign bits", "sq8": "SQ8", "sq4": "SQ4"}[name] + f" ({size} B)"
    return f"{name.upper()}{size}"


def run_codec(name, kw, Z, Zq, Q, X, truth, seed, n_cand) -> dict[str, Any]:
    dim = Z.shape[1]
    c = get_codec(name, dim, **kw)
    t0 = time.perf_counter()
    c.fit(Z, seed=seed)
    t1 = time.perf_counter()
    codes = c.encode(Z)
    t2 = time.perf_counter()
    _, I = c.search(Zq, codes, n_cand)
    t3 = time.perf_counter()
    return {"codec": name, "label": label(name, kw, c.code_size), "bytes": c.code_size,
            "config": c.config(), "recall_raw": recall(I[:, :10], truth),
            "recall_rescored": recall(rescore(I, Q, X, 10), truth),
            "fit_s": t1 - t0, "encode_s": t2 - t1, "search_s": t3 - t2,
            "encode_rows_per_s": len(Z) / max(t2 - t1, 1e-9)}


def budget_table(rows: list[dict], budgets: list[int]) -> list[str]:
    """Per budget: the best configuration with bytes <= budget (by raw, and by rescored)."""
    reps = sorted({r["rep"] for r in rows}, key=lambda s: (s != "original", s))
    lines = ["| bytes <= | " + " | ".join(f"best on {r} (raw / rescored@100)" for r in reps) + " |",
             "|---|" + "---|" * len(reps)]
    for b in budgets:
        cells = []
        for rep in reps:
            cand = [r for r in rows if r["rep"] == rep and r["bytes"] <= b]
            if not cand:
                cells.append("—")
                continue
            br = max(cand, key=lambda r: r["recall_raw"])
            bs = max(cand, key=lambda r: r["recall_rescored"])
            cell = f"{br['label']} {br['recall_raw']:.3f} / {br['recall_rescored']:.3f}"
            if bs is not br:
                cell += f"; rescored best {bs['label']} {bs['recall_rescored']:.3f}"
            cells.append(cell)
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, key, title in ((axes[0], "recall_raw", "raw"),
                           (axes[1], "recall_rescored", "rescored@100")):
        for (rep, codec) in sorted({(r["rep"], r["codec"]) for r in rows}):
            pts = sorted((r["bytes"], r[key]) for r in rows if r["rep"] == rep and r["codec"] == codec)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    ls="-" if rep == "original" else "--", label=f"{rep} {codec}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per vector")
        ax.set_title(f"recall@10, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@10 vs exact top-10 of the originals")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--dims", default="64,128", help="TLDR output dims ('' for none)")
    ap.add_argument("--codecs", default="sign,sq8,sq4,rabitq,pq,opq,rq",
                    help="run in this order (cheapest first)")
    ap.add_argument("--original-rq", default=None,
                    help="budgets for RQ on the original vectors (default: all); RQ training "
                         "cost grows with bytes x D")
    ap.add_argument("--original-opq", default=None,
                    help="budgets for OPQ on the original vectors (default: all)")
    ap.add_argument("--rq-budgets", default=None,
                    help="budgets for RQ on the TLDR-reduced vectors (default: all)")
    ap.add_argument("--opq-iter", type=int, default=10, help="OPQ rotation/PQ alternations")
    ap.add_argument("--train-rows", type=int, default=20_000, help="PQ/OPQ k-means rows")
    ap.add_argument("--opq-train-rows", type=int, default=10_000)
    ap.add_argument("--rq-train-rows", type=int, default=20_000)
    ap.add_argument("--rq-beam", type=int, default=5)
    ap.add_argument("--skip-original", action="store_true",
                    help="only the TLDR-reduced vectors (e.g. to run each d in its own process)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "frontier"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only merge the rows of earlier runs' .json files into --out")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    for key in ("original_rq", "original_opq", "rq_budgets"):
        v = getattr(args, key)
        setattr(args, key, None if v is None else [int(b) for b in v.split(",") if b])
    codecs = args.codecs.split(",")
    dims = [int(d) for d in args.dims.split(",") if d]

    if args.merge:
        merge(args, budgets)
        return
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
            "command": "python benchmarks/frontier.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "corpus": str(corpus), "shape": list(X_all.shape), "queries": len(Q),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared)",
            "reps": {}}
    rows: list[dict] = []
    t_all = time.perf_counter()
    # Cheapest first, results rewritten after every configuration: a run stopped early still
    # leaves every finished row in the results files.
    for rep_dim in ([] if args.skip_original else [None]) + dims:
        if rep_dim is None:
            rep, Z, Zq, info = "original", X, Q, {}
        else:
            from tldr_index import TLDR
            t0 = time.perf_counter()
            model = TLDR(n_components=rep_dim, random_state=args.seed).fit(X)
            fit_s = time.perf_counter() - t0
            Z, Zq = unit(model.transform(X)), unit(model.transform(Q))
            flo = exact_topk(Zq, Z, args.candidates)
            rep = f"tldr{rep_dim}"
            info = {"tldr_fit_s": fit_s, "float_recall_raw": recall(flo[:, :10], truth),
                    "float_recall_rescored": recall(rescore(flo, Q, X, 10), truth)}
            print(f"TLDR d={rep_dim}: fit {fit_s:.1f} s, float recall@10 "
                  f"{info['float_recall_raw']:.3f} / rescored {info['float_recall_rescored']:.3f}",
                  flush=True)
        meta["reps"][rep] = info
        for name, kw in configs(Z.shape[1], budgets, codecs, rep == "original", args):
            r = run_codec(name, kw, Z, Zq, Q, X, truth, args.seed, args.candidates)
            r.update(rep=rep, dim=Z.shape[1])
            rows.append(r)
            print(f"{rep:9s} {r['label']:24s} {r['bytes']:4d} B  raw {r['recall_raw']:.3f}  "
                  f"resc {r['recall_rescored']:.3f}  fit {r['fit_s']:6.1f} s  enc "
                  f"{r['encode_s']:5.1f} s ({r['encode_rows_per_s']:,.0f} rows/s)  search "
                  f"{r['search_s']:4.1f} s", flush=True)
            meta["seconds_so_far"] = time.perf_counter() - t_all
            write(out, meta, rows, budgets, args, corpus, X_all, X, Q)
    print("\n".join(budget_table(rows, budgets)))
    print(f"wrote {out}.md / .json")


def merge(args: argparse.Namespace, budgets: list[int]) -> None:
    """One results file from several runs of the same protocol (e.g. one process per d)."""
    rows: list[dict] = []
    meta: dict[str, Any] = {"reps": {}, "seconds_so_far": 0.0, "merged_commands": []}
    for path in args.merge:
        run = json.loads(Path(path).read_text())
        rows += run["rows"]
        meta["reps"].update(run["meta"]["reps"])
        meta["seconds_so_far"] += run["meta"].get("seconds_so_far", 0.0)
        meta["merged_commands"].append(run["meta"]["command"])
        for key in ("date", "corpus", "shape", "queries", "machine"):
            meta.setdefault(key, run["meta"][key])
    meta["command"] = " ; ".join(meta["merged_commands"])
    n, dim = meta["shape"]
    write(Path(args.out), meta, rows, budgets, args, meta["corpus"], np.empty((n, 0)),
          np.empty((n - meta["queries"], 0)), np.empty((meta["queries"], 0)))
    print("\n".join(budget_table(rows, budgets)))


def write(out: Path, meta: dict, rows: list[dict], budgets: list[int], args, corpus, X_all, X,
          Q) -> None:
    total = meta["seconds_so_far"]
    Path(str(out) + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Recall per byte: codecs on the originals vs after TLDR ({meta['date']})", "",
             f"Command: `{meta['command']}`  ", f"Corpus: `{corpus}` {meta['shape'][0]} x "
             f"{meta['shape'][1]}: {len(X)} database rows, {len(Q)} queries; recall@10 against the "
             f"exact top-10 of the originals (inner product of unit rows); rescored = the codec's "
             f"top-{args.candidates} re-ranked with the original vectors.  ",
             f"Machine: {meta['machine']}; the run took {total:.0f} s (TLDR fits included).", "",
             "## Best per budget (code bytes per vector <= budget)", ""]
    lines += budget_table(rows, budgets)
    lines += ["", "## TLDR maps (float, before any codec)", "",
              "| map | fit s | float recall@10 raw / rescored@100 |", "|---|---|---|"]
    for rep, info in meta["reps"].items():
        if rep == "original":
            continue
        lines.append(f"| {rep} | {info['tldr_fit_s']:.1f} | {info['float_recall_raw']:.3f} / "
                     f"{info['float_recall_rescored']:.3f} |")
    lines += ["", "## Every configuration", "",
              "| vectors | codec | bytes | recall@10 raw | rescored@100 | fit s | encode s "
              "(rows/s) | search s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rep']} (d={r['dim']}) | {r['label']} | {r['bytes']} | "
                     f"{r['recall_raw']:.3f} | {r['recall_rescored']:.3f} | {r['fit_s']:.1f} | "
                     f"{r['encode_s']:.1f} ({r['encode_rows_per_s']:,.0f}) | {r['search_s']:.1f} |")
    lines += ["", "Notes: RaBitQ is this package's numpy implementation (float queries, one float32 "
              "factor per vector, included in its bytes). Sign bits are searched symmetrically "
              "(sign of the query; Hamming). PQ/OPQ/RQ use 256 centroids per byte; RQ is FAISS's "
              f"ResidualQuantizer (beam {args.rq_beam}, trained on {args.rq_train_rows} rows), "
              "scored by inner product (no norm byte). Configurations left out of this run "
              "(flags above) are simply absent."]
    if plot(rows, Path(str(out) + ".png")):
        lines += ["", f"![frontier]({out.name}.png)"]
    Path(str(out) + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
