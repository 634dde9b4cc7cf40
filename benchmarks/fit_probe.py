"""Which change to the default TLDR fit buys recall@10 (issue 14: float d=64 default >= +10 points
over PCA, the default fit on 40k rows <= 2 min): variants of ``TLDR(d)`` side by side, one run.

Protocol (the one of ``benchmarks/frontier.py``): the first ``--queries`` rows (1,000) of the
corpus are queries, the rest (39,000 on the shared corpus) the database; every map is fitted on
the database rows only. Ground truth: the exact cosine top-10 of the original vectors; the map's
top-10 is searched among the L2-normalised reduced vectors.

* ``--graph shared`` (screening): one exact cosine kNN graph of the database with ``--graph-k``
  neighbours is computed once and every TLDR fit uses its first ``n_neighbors`` columns (its time
  is not in ``fit_s``);
* ``--graph own`` (what a user pays): each fit builds its own graph with the library default
  (``knn_method="auto"``: OPQ at this size), so ``fit_s`` and ``cpu_s`` are the full default fit.

``fit_s`` is wall-clock, ``cpu_s`` the process CPU seconds (every thread) of the fit; the load
average (1 min) is printed with every row: the machine is shared, compare rows of the same run.

Usage:
    python benchmarks/fit_probe.py --corpus ../shared/data/pydoc-minilm.npz --configs default,k10m3
    python benchmarks/fit_probe.py --corpus ../shared/data/pydoc-minilm.npz --graph own \\
        --configs default,k10m3 --seeds 0,1 --dims 32,64,128 --out benchmarks/results/fit_probe_own
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import (add_corpus_arg, cosine_topk, load_corpus, machine,  # noqa: E402
                                recall, select_corpus)
from tldr_index import PCA, TLDR  # noqa: E402
from tldr_index.knn import knn_graph  # noqa: E402

#: TLDR keyword arguments of each variant ("default" = ``TLDR(d)``); ``kKmM``: ``n_neighbors=K``,
#: ``neighbors_per_anchor=M`` (M of the K neighbours of each anchor in its batch)
CONFIGS: dict[str, dict] = {
    "default": {},
    "t03": {"teacher_temperature": 0.03},
    "t02": {"teacher_temperature": 0.02},
    "t08": {"teacher_temperature": 0.08},
    "e10": {"epochs": 10},
    "e10p3": {"epochs": 10, "patience": 3},
    "lr2": {"learning_rate": 2e-3},
    "lr8": {"learning_rate": 8e-3},
    "b512": {"batch_size": 512, "learning_rate": 6e-3},
    "b128": {"batch_size": 128, "learning_rate": 3e-3},
    "k10": {"n_neighbors": 10},
    "k1": {"n_neighbors": 1},
    "k3m3": {"n_neighbors": 3, "neighbors_per_anchor": 3, "batch_size": 128},
    "k10m3": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128},
    "k10m3b256": {"n_neighbors": 10, "neighbors_per_anchor": 3},
    "k20m3": {"n_neighbors": 20, "neighbors_per_anchor": 3, "batch_size": 128},
    "k10m7": {"n_neighbors": 10, "neighbors_per_anchor": 7, "batch_size": 64},
    "k30m7": {"n_neighbors": 30, "neighbors_per_anchor": 7, "batch_size": 64},
    "k20m7": {"n_neighbors": 20, "neighbors_per_anchor": 7, "batch_size": 64},
    "k10m3t03": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                 "teacher_temperature": 0.03},
    "random": {"init": "random"},
    "e12": {"epochs": 12},
    "k10m3e10": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128, "epochs": 10},
    "k10m3lr6": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                 "learning_rate": 6e-3},
    "k10m3lr6e10": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                    "learning_rate": 6e-3, "epochs": 10},
    "k5m3": {"n_neighbors": 5, "neighbors_per_anchor": 3, "batch_size": 128},
    "k10m1": {"n_neighbors": 10},
    "k10m2": {"n_neighbors": 10, "neighbors_per_anchor": 2, "batch_size": 170},
    "k30m7e10": {"n_neighbors": 30, "neighbors_per_anchor": 7, "batch_size": 64, "epochs": 10},
    "k30m3": {"n_neighbors": 30, "neighbors_per_anchor": 3, "batch_size": 128},
    "k10m4": {"n_neighbors": 10, "neighbors_per_anchor": 4, "batch_size": 100},
    "k10m3t08": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                 "teacher_temperature": 0.08},
    # dynamic hard negatives (``hN``: N of the current map's false neighbours per anchor, mined
    # from its reduced-space top ``hard_pool`` = 10 at the start of every epoch)
    "h1": {"hard_negatives": 1},
    "k10m3h1": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                "hard_negatives": 1},
    "k10m3h2": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                "hard_negatives": 2},
    "k10m3h3b96": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 96,
                   "hard_negatives": 3},
    "k30m7h2": {"n_neighbors": 30, "neighbors_per_anchor": 7, "batch_size": 64,
                "hard_negatives": 2},
    "k30m7h4": {"n_neighbors": 30, "neighbors_per_anchor": 7, "batch_size": 64,
                "hard_negatives": 4},
    "k30m15": {"n_neighbors": 30, "neighbors_per_anchor": 15, "batch_size": 32},
    "k50m15": {"n_neighbors": 50, "neighbors_per_anchor": 15, "batch_size": 32},
    "k50m15x": {"n_neighbors": 50, "neighbors_per_anchor": 15, "batch_size": 32,
                "knn_method": "exact"},
    # weight averaging (``emaX``: ema_decay 0.X)
    "k10m3ema99": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                   "ema_decay": 0.99},
    "k10m3ema998": {"n_neighbors": 10, "neighbors_per_anchor": 3, "batch_size": 128,
                    "ema_decay": 0.998},
    "k30m7ema998": {"n_neighbors": 30, "neighbors_per_anchor": 7, "batch_size": 64,
                    "ema_decay": 0.998},
}


#: probe-only variants: ``n_neighbors = k + h`` columns, the first k of the original-space graph
#: then the first h neighbours of each row in the PCA-d space (the initial map's neighbours, hard
#: negatives where PCA is wrong), ``neighbors_per_anchor`` drawn from all of them
HARD: dict[str, tuple[int, int, dict]] = {
    "k10h10m4": (10, 10, {"neighbors_per_anchor": 4, "batch_size": 100}),
    "k10h10m3": (10, 10, {"neighbors_per_anchor": 3, "batch_size": 128}),
    "k10h20m7": (10, 20, {"neighbors_per_anchor": 7, "batch_size": 64}),
    "k10h5m3": (10, 5, {"neighbors_per_anchor": 3, "batch_size": 128}),
}
CONFIGS.update({n: {"n_neighbors": k + h, **kw} for n, (k, h, kw) in HARD.items()})


def pca_graph(db, d: int, h: int) -> np.ndarray:
    """The first ``h`` cosine neighbours of each row of ``db`` in the PCA-``d`` space (own row
    excluded)."""
    z = PCA(d).fit(db).transform(db)
    return np.asarray(knn_graph(z, h, method="exact", metric="cosine").neighbors)


#: probe-only variants fitted in the PCA basis: rows and queries rotated by the orthogonal D x D
#: eigenvector matrix of the database (no centring, no truncation: cosine similarities, hence the
#: teacher and the ground truth, are unchanged; AdamW's per-coordinate step sizes then act per
#: principal direction)
ROTATED = {"default-rot": "default", "k10m3-rot": "k10m3"}
CONFIGS.update({n: CONFIGS[base] for n, base in ROTATED.items()})


#: probe-only variants with the reverse KL added to the ranking loss (``KL(P_x||P_z) + beta
#: KL(P_z||P_x)``: mass the map puts on rows the originals call far, i.e. false neighbours, costs
#: more), by wrapping ``tldr_index.trainer.ranking_loss`` for the duration of the fit
REVERSE = {"k10m3r025": ("k10m3", 0.25), "k10m3r1": ("k10m3", 1.0), "r1": ("default", 1.0)}
CONFIGS.update({n: CONFIGS[base] for n, (base, _) in REVERSE.items()})


def with_reverse_kl(beta: float):
    """A ranking loss of the same signature as :func:`tldr_index.losses.ranking_loss` that adds
    ``beta`` x the reverse KL (cosine metric only)."""
    import torch
    import torch.nn.functional as F

    def loss(x, z, log_scale, *, teacher_temperature=0.05, metric="cosine", teacher_scale=1.0,
             reduced=None):
        n = x.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        with torch.no_grad():
            t = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T / teacher_temperature
            log_p = F.log_softmax(t.masked_fill(eye, float("-inf")), dim=1)
        zn = F.normalize(z, dim=1)
        log_q = F.log_softmax((zn @ zn.T * log_scale.exp()).masked_fill(eye, float("-inf")), 1)
        p, q = log_p.exp(), log_q.exp()
        fwd = torch.where(eye, torch.zeros_like(p), p * (log_p - log_q)).sum(1).mean()
        # the diagonal is -inf on both sides: filled with 0 (q is 0 there) so no NaN gradient
        rev = (q * (log_q.masked_fill(eye, 0.0) - log_p.masked_fill(eye, 0.0))).sum(1).mean()
        return fwd + beta * rev
    return loss


def pca_rotation(db) -> np.ndarray:
    """The ``(D, D)`` orthogonal matrix of the database's principal directions (columns)."""
    x = db.astype(np.float64)
    x = x - x.mean(0)
    _, vecs = np.linalg.eigh(x.T @ x)
    return vecs[:, ::-1].astype(np.float32)


def fit_row(name: str, d: int, seed: int, db, q, truth, graph) -> dict:
    load = os.getloadavg()[0]
    if name in ROTATED:
        P = pca_rotation(db)
        db, q = np.ascontiguousarray(db @ P), np.ascontiguousarray(q @ P)
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "pca":
        model = PCA(d).fit(db)
    elif name in REVERSE:
        import tldr_index.trainer as tr
        keep = tr.ranking_loss
        tr.ranking_loss = with_reverse_kl(REVERSE[name][1])
        try:
            model = TLDR(d, random_state=seed, **CONFIGS[name])
            model.fit(db, graph=graph[:, :model.n_neighbors])
        finally:
            tr.ranking_loss = keep
    elif name in HARD:
        k, h, _ = HARD[name]
        g = np.concatenate([graph[:, :k], pca_graph(db, d, h)], axis=1)
        model = TLDR(d, random_state=seed, **CONFIGS[name]).fit(db, graph=g)
    else:
        model = TLDR(d, random_state=seed, **CONFIGS[name])
        model.fit(db, graph=None if graph is None else graph[:, :model.n_neighbors])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {"config": name, "d": d, "seed": seed if name != "pca" else None,
           "recall@10": recall(cosine_topk(model.transform(q), model.transform(db), 10), truth),
           "fit_s": wall, "cpu_s": cpu, "load": load}
    if name != "pca":
        sec = model.fit_info_["seconds"]
        row.update(knn_s=sec["knn"], train_s=sec["train"], epochs_run=len(model.history_) - 1,
                   best_epoch=model.best_epoch_, val_best=model.fit_info_["val_recall_best"])
    return row


def markdown(rows: list[dict], args, t_graph: float | None, n_db: int,
             diverged: list[str]) -> str:
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    lines = [f"# Default-fit probe ({dt.date.today()}, {machine()})", "",
             f"Command: `python benchmarks/fit_probe.py {shlex.join(sys.argv[1:])}`  ",
             f"Database {n_db:,} rows, {args.queries:,} queries; graph: "
             + (f"one exact cosine graph, k={args.graph_k}, {t_graph:.1f} s, shared by every fit "
                "(not in fit_s)" if t_graph is not None else "each fit its own (library default)")
             + ". Load = 1-min load average at the start of the fit (shared 2-core machine).", "",
             "| config | kwargs | d | seed | recall@10 | vs PCA (points) | fit_s | cpu_s | load "
             "| knn_s | train_s | epochs run | best epoch |", "|" + "---|" * 13]
    pca = {r["d"]: r["recall@10"] for r in rows if r["config"] == "pca"}
    for r in rows:
        gain = 100 * (r["recall@10"] - pca[r["d"]]) if r["d"] in pca else None
        kw = json.dumps(CONFIGS.get(r["config"], {})) if r["config"] != "pca" else ""
        lines.append(
            f"| {r['config']} | {kw} | {r['d']} | {fmt(r['seed'], 'd')} | {r['recall@10']:.4f} | "
            f"{fmt(gain, '+.1f')} | {r['fit_s']:.1f} | {r['cpu_s']:.1f} | {r['load']:.1f} | "
            f"{fmt(r.get('knn_s'), '.1f')} | {fmt(r.get('train_s'), '.1f')} | "
            f"{fmt(r.get('epochs_run'), 'd')} | {fmt(r.get('best_epoch'), 'd')} |")
    # mean over seeds per (config, d)
    lines += ["", "| config | d | seeds | mean recall@10 | spread (max - min) | mean vs PCA "
              "(points) | mean fit_s | mean cpu_s |", "|" + "---|" * 8]
    keys = list(dict.fromkeys((r["config"], r["d"]) for r in rows if r["config"] != "pca"))
    for c, d in keys:
        rs = [r for r in rows if (r["config"], r["d"]) == (c, d)]
        rec = np.array([r["recall@10"] for r in rs])
        gain = 100 * (rec.mean() - pca[d]) if d in pca else None
        lines.append(f"| {c} | {d} | {len(rs)} | {rec.mean():.4f} | {rec.max() - rec.min():.4f} | "
                     f"{fmt(gain, '+.1f')} | {np.mean([r['fit_s'] for r in rs]):.1f} | "
                     f"{np.mean([r['cpu_s'] for r in rs]):.1f} |")
    lines += [""] + [f"Diverged: {x}" for x in diverged] if diverged else []
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--configs", default="default", help="comma-separated names of CONFIGS")
    ap.add_argument("--dims", default="64")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--graph", choices=("shared", "own"), default="shared")
    ap.add_argument("--graph-k", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fit_probe"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"Error: --configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    dims = [int(x) for x in args.dims.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    db, q, _, _ = load_corpus(args.queries)
    truth = cosine_topk(q, db, 10)
    graph, t_graph = None, None
    if args.graph == "shared":
        t0 = time.perf_counter()
        graph = np.asarray(knn_graph(db, args.graph_k, method="exact", metric="cosine").neighbors)
        t_graph = time.perf_counter() - t0
        print(f"exact graph k={args.graph_k}: {t_graph:.1f} s", flush=True)
    rows: list[dict] = []
    diverged: list[str] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in dims:
        rows.append(fit_row("pca", d, 0, db, q, truth, graph))
        print(json.dumps(rows[-1]), flush=True)
        for seed in seeds:
            for name in names:
                try:
                    rows.append(fit_row(name, d, seed, db, q, truth, graph))
                except FloatingPointError as exc:  # a diverged variant is a result too
                    print(f"{name} d={d} seed={seed}: {exc}", flush=True)
                    diverged.append(f"{name} (d={d}, seed {seed}): {exc}")
                    continue
                print(json.dumps(rows[-1]), flush=True)
                out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
                out.with_suffix(".md").write_text(markdown(rows, args, t_graph, len(db), diverged))
    print(markdown(rows, args, t_graph, len(db), diverged))


if __name__ == "__main__":
    main()
