"""The ``encode`` stage: reduce every row (``encode/reduced``), train the run's codec (pq, opq,
rq or rabitq) on the reduced, prepared sample, encode the codes (``encode/codes.u8``,
``code_bytes`` per row), write the compact model, and estimate recall@10 on ``eval_queries``
rows against exact search in the original space. A map fitted with quantization-aware training
for the run's codec and size (``TLDR(qat=...)``) brings its codebooks: they encode, untrained
(:func:`tldr_index.qat.trained_codec`).

Cost: one pass over the scanned rows (O(N D d) plus the codec's encoding: PQ O(N 256 d), RQ its
beam search, 10-100x PQ), the codec's training on up to 65,536 rows (PQ k-means; RQ caps at
20,000; RaBitQ a d x d QR), an exact search of ``eval_queries`` queries; memory: one batch, the
codes (``code_bytes`` per row) during the recall estimate.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..compact import CompactModel, prepare_rows
from ..qat import trained_codec
from ..threads import run_in_worker
from ..vectors import VectorStore
from .code_index_stage import build_code_index
from .encode_batches import FLOAT16_MAX, encode_block, read_rows
from .overlap import pipelined
from .results import EncodeResult

if TYPE_CHECKING:
    from .run import ShrinkRun

log = logging.getLogger(__name__)

PQ_TRAIN_ROWS = 65_536  # rows the codec is trained on (at most; RQ keeps 20,000 of them)


def stage_encode(run: "ShrinkRun") -> tuple[list[Path], EncodeResult]:
    """See the module docstring; with an engine that encodes in ``write`` (Ray), only the
    compact model is written here."""
    from ..base import BaseReducer
    from ..codecs import get_codec

    out = run.work.stage_dir("encode", clear=True)
    reducer = BaseReducer.load(run.work.root / "train" / "model.safetensors")
    train = run.train_store()
    run.progress.begin("encode", run.results.scan.rows, "rows")
    codec = None
    phases = run.usage.setdefault("encode_phases", {})  # wall seconds of its parts
    if run.code_bytes:
        codec = trained_codec(reducer, run.codec, run.dim, run.code_bytes)
        if codec is not None:
            log.info("Encoding with the %s codebooks the map was trained through (QAT); no "
                     "codec training.", run.codec.upper())
    if run.code_bytes and codec is None:
        with timed(phases, "codec_train"):
            rng = np.random.default_rng([run.seed, 0x9B])
            k = min(train.n_rows, PQ_TRAIN_ROWS)
            pick = np.sort(rng.choice(train.n_rows, k, replace=False))
            run.progress.phase("encode", f"{run.codec.upper()} training ({k:,} rows)", None)
            codec = get_codec(run.codec, run.dim, bytes=run.code_bytes)
            Z = prepare_rows(reducer.transform(train.take(pick)), run.metric)
            # k-means is one long native call: keep Ctrl-C responsive
            run_in_worker(codec.fit, Z, run.seed, name="pq-train")

    def compact_model(vector_dtype: str) -> CompactModel:
        return CompactModel.from_reducer(reducer, run.metric, codec, extra={
            "source": run.source_abs, "source_fingerprint": run.fingerprint,
            "source_columns": {"id": run.src.id_column, "vector": run.src.vector_column},
            "vector_dtype": vector_dtype})

    if run.engine.encodes_in_write:  # rows are encoded by the write stage (Ray)
        (out / "model.safetensors").write_bytes(compact_model(run.reduced_dtype).to_bytes())
        log.info("engine='ray': rows are encoded in the write stage; the recall estimate and the "
                 "code index are skipped (they need every code on this node): search scans "
                 "every code.")
        return [out / "model.safetensors"], EncodeResult(vector_dtype=run.reduced_dtype,
                                                         engine=run.engine.name)
    compact = compact_model(run.reduced_dtype)
    scan = VectorStore.open(run.work.root / "scan" / "vectors")
    n = scan.n_rows
    run.progress.phase("encode", "encoding", n, "rows")
    writer = VectorStore.create(out / "reduced", run.dim, np.float32)
    with timed(phases, "rows"):
        max_abs = encode_rows(scan, compact, writer, out / "codes.u8", run.batch_rows,
                              lambda done: run.progress.update("encode", done))
        reduced = writer.finalize()
    vector_dtype = run.reduced_dtype
    if vector_dtype == "float16" and max_abs > FLOAT16_MAX:
        log.warning("Reduced values reach %.3g, beyond float16: storing float32 vectors.", max_abs)
        vector_dtype = "float32"
        compact = compact_model(vector_dtype)
    (out / "model.safetensors").write_bytes(compact.to_bytes())
    result = EncodeResult(vector_dtype=vector_dtype, max_abs=max_abs)
    with timed(phases, "recall_estimate"):
        held_out = estimate_recall(run, compact, out, result)
    files = [reduced.path, reduced.root / VectorStore.META, out / "codes.u8",
             out / "model.safetensors"]
    with timed(phases, "code_index"):
        index_file = build_code_index(run, compact, out, n, held_out)
    if index_file is not None:
        files.append(index_file)
    return files, result


@contextmanager
def timed(phases: dict, name: str):
    """``phases[name]``: the wall seconds the block took (rounded to ms)."""
    t0 = time.perf_counter()
    yield
    phases[name] = round(time.perf_counter() - t0, 3)


def encode_rows(scan: VectorStore, compact: CompactModel, writer, codes_path: Path,
                batch_rows: int, progress) -> float:
    """Reduce and encode every row of ``scan`` into ``writer`` (a created VectorStore) and
    ``codes_path`` (``code_bytes`` per row), in row order, reading, encoding and writing
    overlapped in three threads (:func:`tldr_index.shrink.overlap.pipelined`); returns the
    largest absolute reduced value. ``progress(rows_done)`` after each block. Cost: one pass,
    about max(read, encode, write) per block; memory: a few blocks."""
    state = {"max_abs": 0.0, "done": 0}

    def compute(item):
        start, block = item
        Y, codes = encode_block(block, compact)
        return Y, codes, float(np.abs(Y).max()) if len(Y) else 0.0

    with open(codes_path, "wb") as fcodes:
        def write(item) -> None:
            Y, codes, top = item
            state["max_abs"] = max(state["max_abs"], top)
            writer.append(Y)
            if codes is not None:
                fcodes.write(codes.tobytes())
            state["done"] += len(Y)
            progress(state["done"])

        pipelined(scan.iter_chunks(batch_rows), compute, write, name="encode")
    return state["max_abs"]


def estimate_recall(run: "ShrinkRun", model: CompactModel, out: Path,
                    result: EncodeResult) -> tuple[np.ndarray, np.ndarray] | None:
    """recall@10 of the compact search (with and without exact re-ranking of a shortlist)
    against exact search in the original space, on ``eval_queries`` rows of the collection
    (self excluded), into ``result`` (left unset when there are too few rows). Returns those
    rows and their true top 10 ``(rows, truth)`` (the code index's recall table reuses them),
    or None."""
    from ..knn import drop_own, exact_search
    from ..search import recall_at_k, rerank

    scan = VectorStore.open(run.work.root / "scan" / "vectors")
    n = scan.n_rows
    nq = min(run.eval_queries, n - 1)
    k = min(10, n - 1)
    if nq < 1 or k < 1:
        return None
    t0 = time.perf_counter()
    prog = run.progress
    prog.phase("encode", "recall estimate (exact search)", nq, "queries")
    rows = np.sort(np.random.default_rng([run.seed, 0xE7]).choice(n, nq, replace=False))
    Q = scan.take(rows)
    _, truth = exact_search(scan, Q, k, metric=run.metric, exclude=rows, device=run.device,
                            progress=lambda done, total: prog.update("encode", done))
    prog.phase("encode", "recall estimate (compact search)", None)
    R = min(n, max(run.shortlist, k) + 1)
    Y = model.encode(Q)
    if model.code_bytes:
        codes = read_rows(out / "codes.u8", 0, n, model.code_bytes)
        _, cand = model.topk(codes, Y, R)
    else:
        _, cand = exact_search(out / "reduced", model.prepare(Y), R, metric=run.metric,
                               device=run.device)

    plain = drop_own(cand[:, :k + 1], rows, k)
    _, resc = rerank(Q, cand, scan.take, k, run.metric, exclude=rows)  # what search --rescore does
    result.recall_at_10 = recall_at_k(plain, truth)
    result.recall_at_10_rescored = recall_at_k(resc, truth)
    result.eval_queries, result.shortlist = int(nq), int(R - 1)
    result.eval_seconds = time.perf_counter() - t0
    log.info("recall@%d on %d rows: %.3f (%.3f with exact re-ranking of %d).", k, nq,
             result.recall_at_10, result.recall_at_10_rescored, R - 1)
    return rows, truth
