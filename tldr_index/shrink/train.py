"""The ``knn`` and ``train`` stages: draw the training sample, build its kNN graph, fit TLDR
(per-epoch checkpoints, resumed exactly) or PCA. :func:`fit_reducer` also fits every candidate of
a selection (:mod:`tldr_index.shrink.select`).

Cost: the exact graph grows quadratically with the sample (up to 30,000 rows; the OPQ graph
above that about linearly), the epochs linearly; memory: the sample (``sample x D`` float32, read in blocks) and its graph.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..vectors import VectorStore
from .qat_rule import qat_codec
from .results import KnnResult, TrainResult
from .sampling import sample_rows

if TYPE_CHECKING:
    from .run import ShrinkRun

log = logging.getLogger(__name__)

#: what a train stage's result keeps of the QAT fit's info (:func:`tldr_index.qat.fine_tune`)
QAT_REPORT_KEYS = ("epochs", "best_epoch", "val_recall_start", "val_recall_best", "seconds")

def stage_knn(run: "ShrinkRun") -> tuple[list[Path], KnnResult]:
    """Draw the sample into ``knn/train`` (unless every row or the Ray scan's sample is used)
    and, for TLDR, build its kNN graph ``knn/graph.npy``."""
    from ..knn import graph_recall, knn_graph

    out = run.work.stage_dir("knn", clear=True)
    scan = run.train_store()  # knn/train was just cleared: the Ray scan's sample, or every row
    n_train = min(scan.n_rows, run.sample)
    prog = run.progress
    # PCA needs no graph: with every row as its sample, knn has nothing to count
    graph = run.method not in ("pca", "none")
    prog.begin("knn", n_train if graph or n_train < scan.n_rows else None, "rows")
    files: list[Path] = []
    if n_train < scan.n_rows:
        rows = sample_rows(scan.n_rows, n_train, run.seed)
        writer = VectorStore.create(out / "train", scan.dim, np.float32)
        prog.phase("knn", "drawing the sample", n_train, "rows")
        for s in range(0, n_train, 16_384):
            writer.append(scan.take(rows[s:s + 16_384]))
            prog.update("knn", min(s + 16_384, n_train))
        sub = writer.finalize()
        files += [sub.path, sub.root / VectorStore.META]
    train = run.train_store()
    result = KnnResult(n_train=n_train)
    if graph:
        prog.phase("knn", "kNN graph", n_train, "rows")
        g = knn_graph(train, run.neighbors, metric=run.metric, out=out / "graph.npy",
                      random_state=run.seed, device=run.device, **run.graph_options.kwargs(),
                      progress=lambda done, total: prog.update("knn", done, total),
                      on_phase=lambda name, total: prog.phase("knn", name, total, "rows"))
        prog.phase("knn", "graph recall", None)
        rec = graph_recall(train, g, n_queries=min(200, n_train), random_state=run.seed,
                           device=run.device)
        result.graph_method, result.graph_recall = g.method, rec
        result.graph_seconds = g.seconds
        files.append(out / "graph.npy")
        log.info("kNN graph (%s, k=%d) over %d rows: recall@%d %.3f on %d rows.", g.method,
                 run.neighbors, n_train, run.neighbors, rec, min(200, n_train))
    return files, result


def tldr_batch_size(n_train: int) -> int | None:
    """TLDR's batch (256 anchors) unless the sample minus TLDR's held-out validation rows is
    smaller; then all anchors in one batch."""
    from ..reducer import VALIDATION_ROWS

    anchors = n_train - min(VALIDATION_ROWS, n_train // 10)
    return None if anchors >= 256 else max(2, anchors)


def fit_reducer(run: "ShrinkRun", method: str, dim: int, ckpt_dir: Path | None = None,
                qat: str | None = None, *, qat_bytes: int | None = None,
                on_plain: Callable[[Any], None] | None = None):
    """Fit ``method`` ("tldr" with the run's kNN graph, "pca", or "none": the identity map, no
    training, ``dim`` = D) to ``dim`` on the run's training sample (also used by
    :mod:`tldr_index.shrink.select` for every candidate); ``qat`` (a codec name
    :func:`~tldr_index.shrink.qat_rule.qat_codec` returns, TLDR only): then fine-tune the map
    through its ``qat_bytes`` (default ``run.code_bytes``) codes (:mod:`tldr_index.qat`).

    ``on_plain(model)`` (with ``qat``): called once, when the fine-tune begins, with a copy of the
    map as the ranking fit left it (``qat`` None, no codebooks): the plain fit, at no extra
    cost. Cost: the fit (see the module docstring), plus QAT's fine-tune with ``qat``."""
    from ..baselines import PCA, IdentityMap
    from ..reducer import TLDR

    train = run.train_store()
    if method == "none":
        return IdentityMap().fit(train)
    if method == "pca":
        run.progress.begin("train", train.n_rows, "rows")
        run.progress.phase("train", "fitting PCA", None)
        return PCA(dim).fit(train)
    graph = np.load(run.work.root / "knn" / "graph.npy")
    opts = run.fit_options.kwargs()
    if run.epochs is not None:
        opts["epochs"] = run.epochs
    if qat is not None:
        opts.update(qat=qat, qat_bytes=qat_bytes or run.code_bytes)
    model = TLDR(dim, n_neighbors=run.neighbors, metric=run.metric,
                 max_train_rows=max(2, train.n_rows), device=run.device,
                 random_state=run.seed, **{"batch_size": tldr_batch_size(train.n_rows), **opts})
    run.progress.begin("train", None, "steps")
    in_qat = False

    def on_step(done: int, total: int, info: dict) -> None:
        nonlocal in_qat
        if info.get("phase") == "qat" and not in_qat:  # the fine-tuning begins
            in_qat = True
            if on_plain is not None:
                on_plain(plain_copy(model))
            run.progress.phase("train", f"fine-tuning through the {qat.upper()} codes (QAT)",
                               total, "steps")
        run.progress.update("train", done, total)

    model.fit(train, graph=graph, checkpoint_dir=ckpt_dir,
              resume=run.resumed and ckpt_dir is not None, progress=on_step)
    return model


def plain_copy(model):
    """A copy of a TLDR map being fitted with QAT, taken as the fine-tune begins: the ranking
    fit's folded map (``components_``/``bias_`` are set before :func:`tldr_index.qat.fine_tune`
    starts, which returns new arrays), marked as fitted without QAT. Cost: one copy of the map."""
    plain = copy.deepcopy(model)
    plain.qat = None
    plain.qat_codebook_ = plain.qat_rotation_ = None
    plain.fit_info_.pop("qat", None)
    return plain


#: the file of the select stage holding the chosen candidate's fitted map (what train writes)
SELECTED_MODEL = "model.safetensors"


def stage_train(run: "ShrinkRun") -> tuple[list[Path], TrainResult]:
    """Fit the run's method to its dim and save ``train/model.safetensors``. After a selection,
    the map the ``select`` stage fitted and measured for the chosen candidate (with its QAT
    codebooks, ``select/model.safetensors``) is written as it is: no refit."""
    out = run.work.stage_dir("train", clear=True, keep=("ckpt",) if run.resumed else ())
    chosen = run.work.root / "select" / SELECTED_MODEL
    if run.select is not None:
        qat = (run.results.select.chosen or {}).get("qat")
        if chosen.exists():
            from ..base import BaseReducer

            shutil.copyfile(chosen, out / "model.safetensors")
            model = BaseReducer.load(out / "model.safetensors")
            log.info("The selected candidate's map (fitted and measured in the select stage%s) "
                     "is the target's: no refit.", f", fine-tuned through its {qat.upper()} "
                     "codes" if qat else "")
            return [out / "model.safetensors"], train_result(run, model, qat)
        log.warning("The select stage kept no fitted map (%s missing): refitting the chosen "
                    "candidate with the same seed, sample and graph.", chosen)
    else:
        qat = qat_codec(run.fit_options.qat, method=run.method, codec=run.codec, dim=run.dim,
                        code_bytes=run.code_bytes, n_train=run.train_store().n_rows,
                        selection=False)
    if qat is not None:
        log.info("Quantization-aware training: after the ranking fit, the map is fine-tuned "
                 "through its %s %d B codes (fit option qat=%s).", qat.upper(), run.code_bytes,
                 run.fit_options.qat)
    model = fit_reducer(run, run.method, run.dim, out / "ckpt", qat=qat)
    model.save(out / "model.safetensors")
    return [out / "model.safetensors"], train_result(run, model, qat)


def train_result(run: "ShrinkRun", model, qat: str | None) -> TrainResult:
    """The train stage's result for ``model`` (fitted through ``qat`` codes, or None)."""
    fit = getattr(model, "fit_info_", {})
    q = fit.get("qat")
    return TrainResult(
        method=run.method, best_epoch=fit.get("best_epoch"),
        val_recall_initial=fit.get("val_recall_initial"),
        val_recall_best=fit.get("val_recall_best"),
        qat=None if q is None else {"codec": qat, "code_bytes": run.code_bytes,
                                    **{k: q[k] for k in QAT_REPORT_KEYS if k in q}})
