"""The TLDR paper's figure in our terms: recall@10 against d, for TLDR (linear and factorized
linear, default ranking objective), PCA and whitened PCA, on float vectors and after PQ at
8 / 16 / 32 bytes per vector, with PQ and OPQ of the original 384-d vectors as references.

Protocol (as benchmarks/quality.py): shared corpus, 38,000 database rows, 2,000 query rows,
ground truth = exact cosine top-10 in the original 384-d space; every method fitted on the
database rows only; TLDR learns from the exact k=3 graph of the database (computed once).
Searches go through :mod:`tldr_index.comparisons` (the code ``tldr-index eval`` runs).

Usage:
    python benchmarks/paper_shape.py                                   # everything, fresh
    python benchmarks/paper_shape.py --reuse benchmarks/results/quality.json
        # OPQ-384 rows measured by quality.py (same protocol and seed) are taken from that file
    python benchmarks/paper_shape.py --render-only                     # md + png from the json

Writes benchmarks/results/paper_shape.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._corpus import add_corpus_arg, select_corpus, cosine_topk, load_corpus, machine, recall  # noqa: E402
from tldr_index import PCA, TLDR  # noqa: E402
from tldr_index.threads import thread_limit  # noqa: E402
from tldr_index.comparisons import original_pq_search, reduced_search  # noqa: E402
from tldr_index.knn import knn_graph  # noqa: E402

METHODS = {
    "tldr-linear": lambda d, seed: TLDR(d, random_state=seed),
    "tldr-flinear": lambda d, seed: TLDR(d, encoder="flinear-1-512", random_state=seed),
    "pca": lambda d, seed: PCA(d),
    "pca-whiten": lambda d, seed: PCA(d, whiten=True),
}
OUT = Path(__file__).parent / "results" / "paper_shape"


def reused_opq(path: str, n_bytes: int) -> float | None:
    """recall@10 of ``opq-384 (M B)`` in a quality.py result file, if it holds it."""
    for row in json.loads(Path(path).read_text()):
        if row.get("method") == f"opq-384 ({n_bytes} B)" and f"pq{n_bytes}_recall@10" in row:
            return float(row[f"pq{n_bytes}_recall@10"])
    return None


def run(args) -> dict:
    dims = [int(x) for x in args.dims.split(",")]
    pq_bytes = [int(x) for x in args.pq_bytes.split(",")]
    db, q, _, _ = load_corpus()
    truth = cosine_topk(q, db, 10)
    graph, t_graph = None, 0.0
    if any(m.startswith("tldr") for m in args.methods.split(",")):
        t0 = time.perf_counter()
        graph = knn_graph(db, 3, method="exact", metric="cosine")
        t_graph = time.perf_counter() - t0
        print(f"exact kNN graph (k=3) of {len(db)} rows: {t_graph:.1f} s", flush=True)
    rows = []
    for d in dims:
        for name in args.methods.split(","):
            model = METHODS[name](d, args.seed)
            t0 = time.perf_counter()
            if isinstance(model, TLDR):
                model.fit(db, graph=graph.neighbors)
            else:
                model.fit(db)
            fit_s = time.perf_counter() - t0 + (t_graph if isinstance(model, TLDR) else 0.0)
            found = reduced_search(model.transform, d, db, db, q, 10, metric="cosine",
                                   pq_bytes=pq_bytes, random_state=args.seed)
            row = {"method": name, "d": d, "fit_s": round(fit_s, 2),
                   **{f"{rep}_recall@10": recall(I, truth) for rep, I in found.items()}}
            if isinstance(model, TLDR):
                row["best_epoch"] = model.best_epoch_
            rows.append(row)
            print(json.dumps(row), flush=True)
    for nb in pq_bytes:
        for opq in (False, True):
            name = "opq-384" if opq else "pq-384"
            got = reused_opq(args.reuse, nb) if (opq and args.reuse) else None
            if got is not None:
                row = {"method": name, "d": 384, f"pq{nb}_recall@10": got,
                       "reused_from": args.reuse}
            else:
                I, secs = original_pq_search(db, db, q, nb, 10, metric="cosine", opq=opq,
                                             random_state=args.seed)
                row = {"method": name, "d": 384, f"pq{nb}_recall@10": recall(I, truth),
                       "fit_s": round(secs, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"date": str(dt.date.today()), "machine": machine(),
            "command": "python benchmarks/paper_shape.py " + " ".join(sys.argv[1:]),
            "graph_s": round(t_graph, 2), "dims": dims, "pq_bytes": pq_bytes, "rows": rows}


def render(res: dict, out: Path) -> None:
    """Markdown table + PNG plot from the result dict."""
    from tldr_index.plots import Panel, line_panels

    dims, pqb, rows = res["dims"], res["pq_bytes"], res["rows"]
    fitted = [m for m in dict.fromkeys(r["method"] for r in rows) if not m.endswith("-384")]
    cell = {(r["method"], r["d"]): r for r in rows}
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    reused = [r for r in rows if r.get("reused_from")]
    lines = [f"# recall@10 against d: the paper's figure on the shared corpus ({res['date']})", "",
             f"Machine: {res['machine']} (cores shared with other jobs: fit times are upper "
             f"bounds).", "", f"Command: `{res['command'].strip()}`", "",
             "38,000 database rows, 2,000 query rows, recall@10 against the exact cosine top-10 "
             "of the original 384-d vectors. TLDR: default ranking objective, exact k=3 graph "
             f"({res['graph_s']:.1f} s, included in its fit time); flinear = `flinear-1-512`.", ""]
    for rep, title in [("float", "float32 reduced vectors")] + \
            [(f"pq{m}", f"after PQ, {m} bytes per vector") for m in pqb]:
        lines += [f"### {title}", "", "| method | " + " | ".join(f"d={d}" for d in dims) + " |",
                  "|---|" + "---|" * len(dims)]
        for m in fitted:
            lines.append(f"| {m} | " + " | ".join(
                fmt(cell.get((m, d), {}).get(f"{rep}_recall@10")) for d in dims) + " |")
        if rep != "float":
            for m in ("pq-384", "opq-384"):
                r = next((r for r in rows if r["method"] == m and f"{rep}_recall@10" in r), None)
                if r is not None:
                    star = " (reused)" if r.get("reused_from") else ""
                    lines.append(f"| {m} (384-d, {rep[2:]} B){star} | "
                                 + " | ".join(fmt(r[f"{rep}_recall@10"]) for _ in dims) + " |")
        lines.append("")
    lines += ["### fit seconds (d: " + ", ".join(map(str, dims)) + ")", "",
              "| method | " + " | ".join(f"d={d}" for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for m in fitted:
        lines.append(f"| {m} | " + " | ".join(
            f"{cell.get((m, d), {}).get('fit_s', 0):.1f}" for d in dims) + " |")
    if reused:
        lines += ["", "Rows marked (reused) were measured by `python benchmarks/quality.py` with "
                  f"the same protocol and seed and read from `{reused[0]['reused_from']}` "
                  "(`--reuse`); everything else was measured by this run."]
    lines += ["", "Empty cells: PQ needs its bytes to divide d (32 bytes at d=16 is not run). "
              "pq-384 / opq-384: PQ and OPQ (FAISS `OPQ{M},PQ{M}`, 20k training rows) of the "
              "original 384-d vectors, the same at every d.",
              "", "![recall@10 against d](paper_shape.png)", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    panels = []
    for rep, title in [("float", "float32")] + [(f"pq{m}", f"PQ {m} bytes") for m in pqb]:
        p = Panel(title, "d (reduced dimension)", xticks=dims)
        for m in fitted:
            pts = [(d, cell[(m, d)].get(f"{rep}_recall@10")) for d in dims if (m, d) in cell]
            p.series[m] = ([x for x, _ in pts], [y for _, y in pts])
        if rep != "float":
            for m in ("pq-384", "opq-384"):
                r = next((r for r in rows if r["method"] == m and f"{rep}_recall@10" in r), None)
                if r is not None:
                    p.hlines[f"{m} (original vectors)"] = r[f"{rep}_recall@10"]
        panels.append(p)
    line_panels(panels, out.with_suffix(".png"),
                title="recall@10 vs d, shared corpus (38k x 384, MiniLM), 2k queries",
                note=f"{res['date']}, {res['machine']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--dims", default="16,32,64,128")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--pq-bytes", default="8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", default=None, metavar="QUALITY_JSON",
                    help="take the OPQ-384 rows from a benchmarks/quality.py result file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/FAISS threads [default: the cores that look idle]")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    select_corpus(args.corpus)
    out = Path(args.out)
    if args.render_only:
        res = json.loads(out.with_suffix(".json").read_text())
    else:
        with thread_limit(args.threads, owner="paper_shape"):
            res = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    render(res, out)


if __name__ == "__main__":
    main()
