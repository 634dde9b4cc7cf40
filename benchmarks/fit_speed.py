"""Time and quality of the default fit, ``TLDR(d).fit(X)``: the new defaults against the previous
ones, in one run (issue 17).

Protocol (shared/data/README.md): the corpus's database rows (38,000 of the shared corpus) are
fitted, its held-out queries searched; recall@10 = overlap of the cosine top-10 in the reduced
space with the exact top-10 in the original space. Each configuration fits from scratch (its own
kNN graph), with the library's thread policy (``n_jobs=None``: the cores that look idle), and the
configurations alternate per dimension so that a change of load hits both.

* ``new``: ``TLDR(d)``, the library defaults.
* ``current``: ``TLDR(d, **PREVIOUS)``, the defaults before issue 17 passed explicitly (exact kNN
  graph, 8 epochs at learning rate 3e-3, no patience, 500 validation rows).
* ``refine0``, ``nprobe8``, ``batch512``, ``batch128``, ``train16k``, ``train16k-refine0``: cheaper variants of the default (``VARIANTS``).

Usage:
    python benchmarks/fit_speed.py --corpus ../shared/data/pydoc-minilm.npz  # -> results/fit_speed.md
    python benchmarks/fit_speed.py --dims 8 --out /tmp/fit_speed              # quick look (sample)
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import (add_corpus_arg, cosine_topk, load_corpus, machine,  # noqa: E402
                                recall, select_corpus)
from tldr_index import TLDR  # noqa: E402

PREVIOUS = {"knn_method": "exact", "epochs": 8, "learning_rate": 3e-3, "patience": None,
            "validation_rows": 500}
#: cheaper variants of the default measured for issue 17 (``--configs``): the OPQ graph without
#: its exact re-rank or with half the probed lists, half the steps at twice the batch, and twice
#: the steps at half the batch (the loss costs O(batch^2) per step), and the OPQ index trained
#: on 16,384 rows (with and without the exact re-rank)
VARIANTS = {"refine0": {"knn_params": {"refine": 0}}, "nprobe8": {"knn_params": {"nprobe": 8}},
            "batch512": {"batch_size": 512, "learning_rate": 6e-3},
            "batch128": {"batch_size": 128, "learning_rate": 3e-3},
            "train16k": {"knn_params": {"train_rows": 16_384}},
            "train16k-refine0": {"knn_params": {"train_rows": 16_384, "refine": 0}}}
CONFIGS = {"new": {}, "current": PREVIOUS, **VARIANTS}


def run(d: int, config: str, db, q, truth, seed: int) -> dict:
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    model = TLDR(d, random_state=seed, **CONFIGS[config]).fit(db)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sec = model.fit_info_["seconds"]
    graph = model.fit_info_["graph"]
    return {"d": d, "config": config, "fit_s": wall, "cpu_s": cpu, "load": load,
            "moments_s": sec["moments"], "knn_s": sec["knn"], "train_s": sec["train"],
            "graph": graph.get("method"), "epochs_run": len(model.history_) - 1,
            "best_epoch": model.best_epoch_,
            "recall@10": recall(cosine_topk(model.transform(q), model.transform(db), 10), truth)}


def markdown(rows: list[dict], command: str, n_rows: int) -> str:
    lines = [f"# Default fit, new vs previous defaults ({dt.date.today()}, {machine()})", "",
             f"Command: `{command}`  ",
             f"Rows fitted: {n_rows:,}; the cores were shared with other jobs (load average "
             "in the table): absolute times are noisy, compare new/current of the same d.", "",
             "| d | config | fit | CPU | load | moments | kNN graph | train | graph | epochs run "
             "| best epoch | recall@10 |", "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['config']} | {r['fit_s']:.1f} s | {r['cpu_s']:.1f} s | "
            f"{r['load']:.1f} | {r['moments_s']:.1f} s | {r['knn_s']:.1f} s | "
            f"{r['train_s']:.1f} s | {r['graph']} | {r['epochs_run']} | {r['best_epoch']} | "
            f"{r['recall@10']:.4f} |")
    lines += ["", "| d | fit new / current | recall@10 new - current (points) |", "|---|---|---|"]
    for d in sorted({r["d"] for r in rows}):
        by = {r["config"]: r for r in rows if r["d"] == d}
        if {"new", "current"} <= set(by):
            lines.append(f"| {d} | {by['new']['fit_s'] / by['current']['fit_s']:.2f} | "
                         f"{100 * (by['new']['recall@10'] - by['current']['recall@10']):+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_arg(ap)
    ap.add_argument("--dims", default="64,32")
    ap.add_argument("--configs", default="new,current")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fit_speed"))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    command = "python benchmarks/fit_speed.py " + shlex.join(argv if argv is not None
                                                             else sys.argv[1:])
    db, q, _, _ = load_corpus()
    truth = cosine_topk(q, db, 10)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in [int(x) for x in args.dims.split(",")]:
        for config in args.configs.split(","):
            rows.append(run(d, config, db, q, truth, args.seed))
            print(json.dumps(rows[-1]), flush=True)
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
            out.with_suffix(".md").write_text(markdown(rows, command, len(db)))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
