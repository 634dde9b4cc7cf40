"""Quality of TLDR objectives vs PCA on the shared corpus (recall@10, 20-NN accuracy, fit cost).

Protocol (shared/data/README.md): 38,000 database rows, 2,000 query rows, ground truth = exact
cosine top-10 in the original 384-d space. Every method is fitted on the database rows only.
The exact kNN graph of the database (k=10) is computed once and reused by every TLDR fit; its
time is added to each TLDR fit time (a user pays it once per fit).

Usage:
    python benchmarks/quality.py                       # full table -> benchmarks/results/quality.md
    python benchmarks/quality.py --dims 64 --methods pca,ranking --no-pq   # quick look
    python benchmarks/quality.py --dims 32,64 --methods ranking --epochs 6,8 --seeds 0,1
                                    # TLDR fits at 6 and 8 epochs, two seeds each (one graph)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import (add_corpus_arg, select_corpus, cosine_topk, knn_accuracy, load_corpus, machine,  # noqa: E402
                                recall)
from tldr_index import PCA, TLDR  # noqa: E402
from tldr_index.comparisons import original_pq_search  # noqa: E402
from tldr_index.knn import knn_graph  # noqa: E402
from tldr_index.quantizer import ProductQuantizer  # noqa: E402

# CPU budget for the paper's objective: a 512-wide projector, 10 epochs (the paper: 8192, 100 epochs,
# on a GPU). A 20-epoch, 1024-wide run at d=16 early-stopped at epoch 8 (see results/quality.md).
BARLOW = dict(objective="barlow", projector="mlp-1-512", epochs=10, batch_size=1024)
METHODS = {
    "pca": lambda d: PCA(d),
    "pca-whiten": lambda d: PCA(d, whiten=True),
    "barlow-linear": lambda d: TLDR(d, n_neighbors=3, **BARLOW),
    "barlow-flinear": lambda d: TLDR(d, n_neighbors=3, encoder="flinear-1-512", **BARLOW),
    "ranking": lambda d: TLDR(d),                                  # the library default
    "ranking+barlow": lambda d: TLDR(d, objective="ranking+barlow", projector="mlp-1-512"),
    # the default before issue 17 (the graph is the shared exact one either way)
    "ranking-previous": lambda d: TLDR(d, epochs=8, learning_rate=3e-3, patience=None,
                                       validation_rows=500),
}


def opq_baseline(db, q, truth, n_bytes, seed=0):
    """OPQ + PQ of the original 384-d vectors at ``n_bytes`` per vector (the library's
    :func:`tldr_index.comparisons.original_pq_search`: 20k training rows, 10 OPQ iterations)."""
    I, secs = original_pq_search(db, db, q, n_bytes, 10, metric="cosine", opq=True,
                                 random_state=seed)
    return recall(I, truth), secs


def fit_row(name: str, d: int, epochs: int | None, seed: int, db, q, truth, ldb, lq, graph,
            t_graph: float, pq_bytes: list[int], pq_seed: int) -> dict:
    """Fit ``METHODS[name](d)`` (TLDR: ``epochs`` if given, ``random_state=seed``, the shared
    exact graph) and measure it: recall@10, 20-NN accuracy, fit seconds, PQ recall per byte
    count."""
    model = METHODS[name](d)
    if isinstance(model, TLDR):
        model.set_params(random_state=seed, **({} if epochs is None else {"epochs": epochs}))
        t0 = time.perf_counter()
        model.fit(db, graph=graph.neighbors[:, :model.n_neighbors])
        secs = time.perf_counter() - t0 + t_graph
    else:
        t0 = time.perf_counter()
        model.fit(db)
        secs = time.perf_counter() - t0
    zdb, zq = model.transform(db), model.transform(q)
    row = {"method": name, "d": d, "recall@10": recall(cosine_topk(zq, zdb, 10), truth),
           "acc@20": knn_accuracy(cosine_topk(zq, zdb, 20), ldb, lq),
           "fit_s": secs, "fit_ms_per_row": 1000 * secs / len(db)}
    if isinstance(model, TLDR):
        row.update(epochs_run=len(model.history_) - 1, seed=seed, best_epoch=model.best_epoch_)
    for nb in pq_bytes:
        if d % nb == 0:
            pq = ProductQuantizer(nb, random_state=pq_seed).fit(zdb)
            _, I = pq.search(zq, pq.encode(zdb), 10)
            row[f"pq{nb}_recall@10"] = recall(I, truth)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--dims", default="16,32,64,128")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "ranking-previous"),
                    help="comma-separated names of METHODS [default: all but ranking-previous]")
    ap.add_argument("--pq-bytes", default="16,32")
    ap.add_argument("--no-pq", action="store_true")
    ap.add_argument("--no-opq", action="store_true", help="skip the OPQ-384 baselines")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated random states of the TLDR fits [default: --seed]")
    ap.add_argument("--epochs", default=None,
                    help="comma-separated epoch counts, one TLDR fit each [default: the "
                         "method's own]")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    epoch_list = [int(x) for x in args.epochs.split(",")] if args.epochs else [None]
    dims = [int(x) for x in args.dims.split(",")]
    methods = args.methods.split(",")
    pq_bytes = [] if args.no_pq else [int(x) for x in args.pq_bytes.split(",")]

    db, q, ldb, lq = load_corpus()
    truth = cosine_topk(q, db, 10)
    truth20 = cosine_topk(q, db, 20)
    rows = [{"method": "original-384", "d": 384, "recall@10": recall(truth, truth),
             "acc@20": knn_accuracy(truth20, ldb, lq)}]
    t0 = time.perf_counter()
    graph = knn_graph(db, 10, method="exact", metric="cosine")
    t_graph = time.perf_counter() - t0
    print(f"exact kNN graph (k=10) of {len(db)} rows: {t_graph:.1f} s", flush=True)

    for d in dims:
        for name in methods:
            for epochs in (epoch_list if isinstance(METHODS[name](d), TLDR) else [None]):
                for seed in (seeds if isinstance(METHODS[name](d), TLDR) else [args.seed]):
                    rows.append(fit_row(name, d, epochs, seed, db, q, truth, ldb, lq, graph,
                                        t_graph, pq_bytes, args.seed))
                    print(json.dumps(rows[-1]), flush=True)
    for nb in [] if args.no_opq else pq_bytes:
        r, secs = opq_baseline(db, q, truth, nb, args.seed)
        rows.append({"method": f"opq-384 ({nb} B)", "d": 384, f"pq{nb}_recall@10": r, "fit_s": secs})
        print(json.dumps(rows[-1]), flush=True)
    write(rows, args, pq_bytes, t_graph)


def write(rows, args, pq_bytes, t_graph) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    cols = ["method", "d", "epochs_run", "seed", "recall@10", "acc@20", "fit_s", "fit_ms_per_row",
            "best_epoch"] + \
        [f"pq{nb}_recall@10" for nb in pq_bytes]
    fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"# Quality on the shared corpus ({dt.date.today()}, {machine()})", "",
             f"Command: `python benchmarks/quality.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Exact kNN graph of the 38,000 database rows: {t_graph:.1f} s (included in TLDR fit_s).",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
