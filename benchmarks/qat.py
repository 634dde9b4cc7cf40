"""Quantization-aware training (QAT) vs "map, then PQ" on the shared dev corpus.

Data: ``--corpus PATH`` (the recorded run: ../shared/data/pydoc-minilm.npz, 40,000 MiniLM
docstring embeddings, 384-d, unit norm; default: the shipped sample, so it runs from a clone). The
first ``--queries`` rows are queries, the rest the database (and the training rows of every fit).
Ground truth: exact cosine top-10 of the original vectors. recall@10 of

* raw: ADC search (float query, PQ-coded database, FAISS ``IndexPQ`` by inner product after the
  product's L2 normalisation) top-10;
* rescored@100: the ADC top-100 re-ranked by exact cosine on the original vectors, top-10.

Rows: the default TLDR d=64 then PQ (``tldr_index.quantizer.ProductQuantizer`` trained on the
reduced database vectors); the same map with the seeded random rotation QAT starts from, then PQ;
and TLDR d=64 with ``qat="pq"`` at the same bytes, whose trained codebook encodes the database
(``tldr_index.qat.quantizer_for``). One kNN graph (exact, k=3) is built once and passed to every
fit.

``--codec rq`` (a section of its own, ``--out``): the product's RQ codec (``get_codec("rq")``,
beam 5, FAISS ``ResidualQuantizer``) on the prepared (L2-normalised) vectors, scored by its
look-up-table ADC (inner product): RQ on the 384-d originals (one row per ``--rq-seeds`` codec
seed: RQ training is seed-sensitive); for each ``--dims`` d the default TLDR map, then RQ (codec
fitted on the reduced database with the seed the QAT start uses, so that row *is* QAT's epoch 0,
and with each ``--rq-seeds``); and TLDR with ``qat="rq"`` at the same bytes, whose trained
codebooks encode the database (``tldr_index.qat.codec_for``). Fit times:
the codec's training for the originals; ranking fit + codec training for map-then-RQ; the whole
``fit`` (ranking fit, RQ start, QAT epochs) for QAT.
Fit times are wall-clock on a shared, loaded machine: record them, compare only recall.

``--codec opq`` / ``--codec rabitq`` (a section of its own, ``--out``): for each ``--dims`` d the
default TLDR map, then the product's codec (``get_codec``: OPQ at each ``--bytes``; RaBitQ at each
``--bits``, ``d x bits / 8 + 4`` bytes) fitted on the prepared reduced database with the seed the
QAT start uses (that row *is* QAT's epoch 0) and with each ``--codec-seeds``; and TLDR with
``qat="opq"``/``"rabitq"`` at the same bytes, whose trained codec encodes the database
(``tldr_index.qat.codec_for``). ``--opq-refit D:BYTES`` adds a QAT-OPQ fit with the rotation
refitted to the codebooks after each epoch (``tldr_index.qat.OPQ_REFIT_ROTATION``).

Usage:
    python benchmarks/qat.py --corpus ../shared/data/pydoc-minilm.npz   # -> benchmarks/results/qat.md
    python benchmarks/qat.py --bytes 16 --out /tmp/qat.md
    python benchmarks/qat.py --corpus ../shared/data/pydoc-minilm.npz --codec rq --dims 64 128 \
        --out /tmp/qat_rq.md
    python benchmarks/qat.py --corpus ../shared/data/pydoc-minilm.npz --codec opq --dims 64 128 \
        --bytes 8 16 --opq-refit 64:8 --out /tmp/qat_opq.md
    python benchmarks/qat.py --corpus ../shared/data/pydoc-minilm.npz --codec rabitq --dims 128 \
        256 --bits 1 --out /tmp/qat_rabitq.md
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
from benchmarks._corpus import add_corpus_arg, cosine_topk, machine, recall, select_corpus  # noqa: E402,E501
from tldr_index import TLDR  # noqa: E402
from tldr_index.knn import knn_graph  # noqa: E402
from tldr_index.codecs import Codec, get_codec  # noqa: E402
from tldr_index.compact import prepare_rows  # noqa: E402
import tldr_index.qat as qat_module  # noqa: E402
from tldr_index.qat import codec_for, quantizer_for, random_rotation  # noqa: E402
from tldr_index.quantizer import ProductQuantizer  # noqa: E402


def adc_recalls(pq: ProductQuantizer, Zdb: np.ndarray, Zq: np.ndarray, db: np.ndarray,
                q: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(raw recall@10, rescored@100 recall@10) of ADC search with ``pq``."""
    _, cand = pq.search(Zq, pq.encode(Zdb), 100)
    raw = recall(cand[:, :10], truth)
    exact = np.einsum("qd,qkd->qk", q, db[cand])
    order = np.argsort(-exact, axis=1)[:, :10]
    return raw, recall(np.take_along_axis(cand, order, 1), truth)


def codec_recalls(codec: Codec, Zdb: np.ndarray, Zq: np.ndarray, db: np.ndarray,
                  q: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(raw recall@10, rescored@100 recall@10) of ``codec`` (fitted) on prepared rows."""
    _, cand = codec.search(prepare_rows(Zq, "cosine"),
                           codec.encode(prepare_rows(Zdb, "cosine")), 100)
    raw = recall(cand[:, :10], truth)
    exact = np.einsum("qd,qkd->qk", q, db[cand])
    order = np.argsort(-exact, axis=1)[:, :10]
    return raw, recall(np.take_along_axis(cand, order, 1), truth)


def rq_rows(a, db: np.ndarray, q: np.ndarray, truth: np.ndarray, graph) -> list[tuple]:
    """The ``--codec rq`` rows (see the module docstring)."""
    rows = []
    for M in a.bytes:
        for seed in a.rq_seeds:
            t0 = time.perf_counter()
            c = get_codec("rq", db.shape[1], bytes=M).fit(prepare_rows(db, "cosine"), seed)
            t = time.perf_counter() - t0
            rows.append((f"RQ{M} on the {db.shape[1]}-d originals (codec seed {seed})", M,
                         *codec_recalls(c, db, q, db, q, truth), t, "RQ training (beam 5)"))
            print(rows[-1], flush=True)
    for d in a.dims:
        t0 = time.perf_counter()
        base = TLDR(d, random_state=a.seed, epochs=a.epochs).fit(db, graph=graph)
        t_base = time.perf_counter() - t0
        Zdb, Zq = base.transform(db), base.transform(q)
        start_seed = base.seed_ % (2**31 - 1)  # what the QAT start fits its RQ codec with
        for M in a.bytes:
            for seed in [start_seed, *a.rq_seeds]:
                t0 = time.perf_counter()
                c = get_codec("rq", d, bytes=M).fit(prepare_rows(Zdb, "cosine"), seed)
                t = time.perf_counter() - t0
                what = "= the QAT start" if seed == start_seed else f"codec seed {seed}"
                rows.append((f"TLDR d={d}, then RQ{M} ({what})", M,
                             *codec_recalls(c, Zdb, Zq, db, q, truth), t_base + t,
                             f"ranking fit {t_base:.0f} s + RQ training {t:.0f} s"))
                print(rows[-1], flush=True)
        default = (qat_module.RQ_TRAIN_BEAM, qat_module.RQ_CODEBOOK_LEARNING_RATE)
        runs = [(M, default) for M in a.bytes]
        runs += [(M, v) for dm, v in a.rq_variants if dm[0] == d and dm[1] in a.bytes
                 for M in [dm[1]]]
        for M, (beam, lr) in runs:
            qat_module.RQ_TRAIN_BEAM, qat_module.RQ_CODEBOOK_LEARNING_RATE = beam, lr
            try:
                t0 = time.perf_counter()
                m = TLDR(d, random_state=a.seed, epochs=a.epochs, qat="rq", qat_bytes=M,
                         qat_epochs=a.qat_epochs).fit(db, graph=graph)
                t_fit = time.perf_counter() - t0
            finally:
                qat_module.RQ_TRAIN_BEAM, qat_module.RQ_CODEBOOK_LEARNING_RATE = default
            info = m.fit_info_["qat"]
            tag = "" if (beam, lr) == default else f", variant: train beam {beam}, lr {lr:g}"
            rows.append((f"TLDR d={d} + QAT RQ{M} ({a.qat_epochs} epochs{tag})", M,
                         *codec_recalls(codec_for(m), m.transform(db), m.transform(q), db, q,
                                        truth), t_fit,
                         f"best epoch {info['best_epoch']}, validation "
                         f"{info['val_recall_start']:.4f} -> {info['val_recall_best']:.4f}; "
                         f"QAT phase {info['seconds']:.0f} s (train beam {info['train_beam']}, "
                         f"codebook lr {info['learning_rates']['codebook']:g})"))
            print(rows[-1], flush=True)
    return rows


def codec_qat_rows(a, db: np.ndarray, q: np.ndarray, truth: np.ndarray, graph) -> list[tuple]:
    """The ``--codec opq`` / ``--codec rabitq`` rows (see the module docstring)."""
    rows = []
    for d in a.dims:
        sizes = a.bytes if a.codec == "opq" else [d * b // 8 + 4 for b in a.bits]
        t0 = time.perf_counter()
        base = TLDR(d, random_state=a.seed, epochs=a.epochs).fit(db, graph=graph)
        t_base = time.perf_counter() - t0
        Zdb, Zq = base.transform(db), base.transform(q)
        start_seed = base.seed_ % (2**31 - 1)  # what the QAT start fits its codec with
        for M in sizes:
            for seed in [start_seed, *a.rq_seeds]:
                t0 = time.perf_counter()
                c = get_codec(a.codec, d, bytes=M).fit(prepare_rows(Zdb, "cosine"), seed)
                t = time.perf_counter() - t0
                what = "= the QAT start" if seed == start_seed else f"codec seed {seed}"
                rows.append((f"TLDR d={d}, then {_label(a.codec, d, M)} ({what})", M,
                             *codec_recalls(c, Zdb, Zq, db, q, truth), t_base + t,
                             f"ranking fit {t_base:.0f} s + codec training {t:.1f} s"))
                print(rows[-1], flush=True)
        runs = [(M, False) for M in sizes]
        runs += [(M, True) for dm in a.opq_refit if dm[0] == d and dm[1] in sizes for M in [dm[1]]]
        for M, refit in runs:
            qat_module.OPQ_REFIT_ROTATION = refit
            try:
                t0 = time.perf_counter()
                m = TLDR(d, random_state=a.seed, epochs=a.epochs, qat=a.codec, qat_bytes=M,
                         qat_epochs=a.qat_epochs).fit(db, graph=graph)
                t_fit = time.perf_counter() - t0
            finally:
                qat_module.OPQ_REFIT_ROTATION = False
            info = m.fit_info_["qat"]
            tag = ", variant: rotation refitted per epoch" if refit else ""
            rows.append((f"TLDR d={d} + QAT {_label(a.codec, d, M)} ({a.qat_epochs} epochs{tag})",
                         M, *codec_recalls(codec_for(m), m.transform(db), m.transform(q), db, q,
                                           truth), t_fit,
                         f"best epoch {info['best_epoch']}, validation "
                         f"{info['val_recall_start']:.4f} -> {info['val_recall_best']:.4f}; "
                         f"QAT phase {info['seconds']:.0f} s"))
            print(rows[-1], flush=True)
    return rows


def _label(codec: str, d: int, size: int) -> str:
    if codec == "rabitq":
        return f"RaBitQ {(size - 4) * 8 // d}-bit"
    return f"{codec.upper()}{size}"


def _dim_bytes(text: str) -> tuple[int, int]:
    d, m = text.split(":")
    return int(d), int(m)


def _variant(text: str) -> tuple[tuple[int, int], tuple[int, float]]:
    d, m, beam, lr = text.split(":")
    return (int(d), int(m)), (int(beam), float(lr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_arg(ap)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64, help="TLDR d (--codec pq)")
    ap.add_argument("--codec", choices=("pq", "rq", "opq", "rabitq"), default="pq")
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128],
                    help="TLDR d (--codec rq, opq, rabitq)")
    ap.add_argument("--bits", type=int, nargs="+", default=[1], choices=(1, 2, 4),
                    help="RaBitQ bits per dimension (--codec rabitq; bytes = d x bits / 8 + 4)")
    ap.add_argument("--opq-refit", type=_dim_bytes, nargs="*", default=[],
                    help="extra QAT-OPQ fits D:BYTES with the rotation refitted per epoch "
                         "(tldr_index.qat.OPQ_REFIT_ROTATION), e.g. 64:8")
    ap.add_argument("--rq-variants", type=_variant, nargs="*", default=[],
                    help="extra QAT-RQ fits D:BYTES:TRAIN_BEAM:CODEBOOK_LR (--codec rq), e.g. "
                         "128:8:1:1e-4 (the default: tldr_index.qat.RQ_TRAIN_BEAM and "
                         "RQ_CODEBOOK_LEARNING_RATE)")
    ap.add_argument("--rq-seeds", "--codec-seeds", type=int, nargs="+", default=[0, 1],
                    help="codec training seeds of the reference rows (--codec rq, opq, rabitq)")
    ap.add_argument("--bytes", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--qat-epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "qat.md")
    ap.add_argument("--epochs", type=int, default=None, help="ranking-fit epochs (default: TLDR's)")
    ap.add_argument("--rows", type=int, default=0,
                    help="use only the corpus's first ROWS rows (0: all; smoke runs)")
    a = ap.parse_args()
    if a.rows < 0 or (a.rows and a.rows <= a.queries):
        ap.error(f"--rows must be 0 (all) or more than --queries ({a.queries}). Got {a.rows}.")
    corpus = select_corpus(a.corpus)

    X = np.load(corpus)["X"].astype(np.float32)
    X = X[:a.rows] if a.rows else X
    q, db = X[:a.queries], X[a.queries:]
    truth = cosine_topk(q, db, 10)
    t0 = time.perf_counter()
    graph = knn_graph(db, 3, method="exact", metric="cosine", random_state=a.seed)
    t_knn = time.perf_counter() - t0
    load = os.getloadavg()[0]
    if a.codec == "rq":
        return write_rq(a, corpus, db, q, rq_rows(a, db, q, truth, graph), t_knn, load)
    if a.codec in ("opq", "rabitq"):
        return write_codec(a, corpus, db, q, codec_qat_rows(a, db, q, truth, graph), t_knn, load)
    rows = []

    t0 = time.perf_counter()
    base = TLDR(a.dim, random_state=a.seed, epochs=a.epochs).fit(db, graph=graph)
    t_base = time.perf_counter() - t0
    Zdb, Zq = base.transform(db), base.transform(q)
    R = random_rotation(a.dim, base.seed_)
    for M in a.bytes:
        t0 = time.perf_counter()
        pq = ProductQuantizer(M, random_state=a.seed).fit(Zdb)
        t_pq = time.perf_counter() - t0
        rows.append((f"TLDR d={a.dim}, then PQ{M}", M, *adc_recalls(pq, Zdb, Zq, db, q, truth),
                     t_base + t_pq, "ranking fit + PQ k-means"))
        t0 = time.perf_counter()
        pq = ProductQuantizer(M, random_state=a.seed).fit(Zdb @ R.T)
        t_pq = time.perf_counter() - t0
        rows.append((f"TLDR d={a.dim}, random rotation, then PQ{M}", M,
                     *adc_recalls(pq, Zdb @ R.T, Zq @ R.T, db, q, truth), t_base + t_pq,
                     "ranking fit + PQ k-means"))
    for M in a.bytes:
        t0 = time.perf_counter()
        m = TLDR(a.dim, random_state=a.seed, epochs=a.epochs, qat="pq", qat_bytes=M,
                 qat_epochs=a.qat_epochs).fit(db, graph=graph)
        t_fit = time.perf_counter() - t0
        info = m.fit_info_["qat"]
        rows.append((f"TLDR d={a.dim} + QAT PQ{M} ({a.qat_epochs} epochs)", M,
                     *adc_recalls(quantizer_for(m), m.transform(db), m.transform(q), db, q,
                                  truth), t_fit,
                     f"start {info['start']}, best epoch {info['best_epoch']}, validation "
                     f"{info['val_recall_start']:.3f} -> {info['val_recall_best']:.3f}; "
                     f"QAT phase {info['seconds']:.0f} s"))

    table, cmd = _table(rows)
    _write(a.out, f"# Quantization-aware training vs map-then-PQ\n\n"
           f"`{cmd}` ({dt.date.today()}, {machine()}; shared and loaded: timings are "
           f"recorded, only recall is compared).\n\n"
           + _corpus_line(corpus, db, q, "", t_knn) + f"\n\n{table}\n")


def _table(rows: list[tuple]) -> tuple[str, str]:
    """The results table of ``rows`` (printed) and the command line that made it."""
    lines = ["| method | bytes/vector | recall@10 raw (ADC) | recall@10 rescored@100 | fit s "
             "| notes |", "|---|---|---|---|---|---|"]
    for name, M, raw, resc, t, note in rows:
        lines.append(f"| {name} | {M} | {raw:.3f} | {resc:.3f} | {t:.0f} | {note} |")
    table = "\n".join(lines)
    print(table)
    return table, ("python benchmarks/qat.py " + " ".join(sys.argv[1:])).strip()


def _corpus_line(corpus: Path, db: np.ndarray, q: np.ndarray, codec_note: str,
                 t_knn: float) -> str:
    return (f"Corpus: `{corpus.name}`, {len(db):,} database rows (also the training rows), "
            f"{len(q):,} queries (the first rows), recall@10 against the exact cosine top-10 of "
            f"the originals.{codec_note} kNN graph (exact, k=3) built once in {t_knn:.0f} s and "
            f"passed to every fit (not in the fit times).")


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


def write_rq(a, corpus: Path, db: np.ndarray, q: np.ndarray, rows: list[tuple], t_knn: float,
             load: float) -> None:
    table, cmd = _table(rows)
    _write(a.out, f"## Quantization-aware training through RQ codes vs map-then-RQ vs RQ on the "
           f"originals\n\n"
           f"`{cmd}` ({dt.date.today()}, {machine()}; load average {load:.1f} at the "
           f"start, {os.getloadavg()[0]:.1f} at the end; shared: timings are recorded, only "
           f"recall is compared).\n\n"
           + _corpus_line(corpus, db, q, " RQ: the product's codec (beam 5), inner-product ADC "
                          "on L2-normalised rows.", t_knn) + f"\n\n{table}\n")


def write_codec(a, corpus: Path, db: np.ndarray, q: np.ndarray, rows: list[tuple], t_knn: float,
                load: float) -> None:
    table, cmd = _table(rows)
    name = {"opq": "OPQ", "rabitq": "RaBitQ"}[a.codec]
    note = (" OPQ: the product's codec (FAISS OPQMatrix rotation, then PQ), inner-product ADC"
            if a.codec == "opq" else " RaBitQ: the product's codec (centre, seeded rotation, "
            "per-vector factor), float-query estimator") + " on L2-normalised rows."
    _write(a.out, f"## Quantization-aware training through {name} codes vs map-then-{name}\n\n"
           f"`{cmd}` ({dt.date.today()}, {machine()}; load average {load:.1f} at the "
           f"start, {os.getloadavg()[0]:.1f} at the end; shared: timings are recorded, only "
           f"recall is compared).\n\n" + _corpus_line(corpus, db, q, note, t_knn)
           + f"\n\n{table}\n")


if __name__ == "__main__":
    main()
