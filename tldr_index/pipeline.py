"""``shrink``: a vector collection in, a compact collection (reduced vectors + PQ codes + model) out.

Stages, each checkpointed in the work directory (see :mod:`tldr_index.workdir`):

==========  ==========================================================================================
scan        stream the source once (validated: nulls, lengths, NaN/inf, duplicate ids) into
            ``scan/vectors`` (a :class:`~tldr_index.vectors.VectorStore`, float32 or the source's
            float16) and ``scan/rows.arrow`` (ids + payload, Arrow IPC); later stages never read the
            source again. ``engine="ray"``: the same checks as Ray tasks
            (:mod:`tldr_index.ray_scan`), keeping only the training sample (``scan/sample``).
knn         draw the training sample (``sample`` rows, seeded) into ``knn/train`` and, for TLDR,
            build its kNN graph (``knn/graph.npy``, :func:`tldr_index.knn.knn_graph`).
train       fit TLDR on the sample with that graph (per-epoch checkpoints in ``train/ckpt``, resumed
            exactly) or PCA (``method="pca"``).
encode      reduce every row (``encode/reduced``), train PQ on the reduced sample, encode the codes
            (``encode/codes.u8``), write the compact model, and estimate recall@10 on ``eval_queries``
            rows against exact search in the original space.
write       stage the target through the sink: ids, payload, reduced vectors, PQ codes, model.
verify      the staged target holds as many rows as the source and the same id set (digest).
publish     make the target visible atomically.
==========  ==========================================================================================

``resume=True`` skips finished stages (their checkpoints are re-checked by size and sha256) and
continues the unfinished one (training from its last epoch). ``write``, ``verify`` and ``publish``
share one sink transaction: after a crash there the write restarts from the encoded rows and the
abandoned staging area is removed. The source is only read. The work directory is removed after a
successful publish unless ``keep_work``.

Memory: independent of the number of rows N except for 8 bytes per id (duplicate detection) and
``pq_bytes`` per row (the codes, searched in memory to estimate recall): the sample for training
(``sample x D`` float32 on disk, read in blocks), one batch of rows, the kNN graph of the sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from connectors import discard_staging, disk_bytes  # noqa: F401 (disk_bytes re-exported)

from . import __version__
from .faults import wrap_progress
from .oserrors import storage_errors
from .threads import auto_threads, run_in_worker, thread_limit
from .validation import check_bool, check_choice, check_int
from .compact import CompactModel
from .encode_batches import CODES_COLUMN, FLOAT16_MAX  # noqa: F401 (re-exported)
from .errors import (Interrupted, InvalidInputError, InvalidParameterError, ModelFormatError,
                     SourceNotFoundError, TargetExistsError)
from .progress import Progress, as_progress
from .search import (adc_topk, default_shortlist, info, recall_at_k, rerank,  # noqa: F401
                     search)
from .vectors import VectorStore
from .workdir import WorkDir

log = logging.getLogger(__name__)

STAGES = ("scan", "knn", "select", "train", "encode", "write", "verify", "publish")
METHODS = ("tldr", "pca", "auto")
DEFAULT_SAMPLE = 100_000  # exact kNN graph ~3 min on 2 cores (benchmarks/results/shrink.md)
DEFAULT_PQ_BYTES = 16
DEFAULT_EVAL_QUERIES = 200
ENGINES = ("local", "ray")


@dataclass
class ShrinkReport:
    """What a shrink did. Sizes in bytes; ``None`` where a store cannot tell (remote Qdrant)."""

    source: str
    target: str
    method: str
    metric: str
    rows: int
    source_dim: int
    dim: int
    pq_bytes: int
    vector_dtype: str
    source_disk_bytes: int | None
    target_disk_bytes: int | None
    graph_recall: float | None
    recall_at_10: float | None
    recall_at_10_rescored: float | None
    eval_queries: int
    shortlist: int
    stage_seconds: dict = field(default_factory=dict)
    skipped_stages: list = field(default_factory=list)
    wall_seconds: float = 0.0
    work_dir: str = ""
    resumed: bool = False
    skipped_invalid: int = 0          # rows dropped by skip_invalid (NaN/inf, zero under cosine)
    first_invalid_id: object = None
    selection: dict | None = None    # method="auto" / target_recall: candidates and the choice

    @property
    def source_vector_bytes(self) -> int:
        """The source vectors as float32: ``rows x D x 4``."""
        return self.rows * self.source_dim * 4

    @property
    def codes_bytes(self) -> int:
        return self.rows * self.pq_bytes

    @property
    def search_compression(self) -> float | None:
        """float32 source vector / PQ code, per row (the in-memory search structure)."""
        return self.source_dim * 4 / self.pq_bytes if self.pq_bytes else None

    @property
    def disk_compression(self) -> float | None:
        if self.source_disk_bytes and self.target_disk_bytes:
            return self.source_disk_bytes / self.target_disk_bytes
        return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(source_vector_bytes=self.source_vector_bytes, codes_bytes=self.codes_bytes,
                   search_compression=self.search_compression,
                   disk_compression=self.disk_compression)
        return out


# ---------------------------------------------------------------------------------- helpers

def default_pq_bytes(dim: int) -> int:
    """16 bytes (the paper's setting) or the largest divisor of ``dim`` below it."""
    return max(m for m in range(1, min(DEFAULT_PQ_BYTES, dim) + 1) if dim % m == 0)


def default_work_dir(target_uri: str) -> Path:
    """``$TLDR_INDEX_WORK`` or ``./tldr-work``, then ``<target name>-<8 hex of the target URI>``."""
    from connectors import absolute_uri, parse_uri

    p = parse_uri(target_uri)
    name = p.collection or p.table or os.path.basename(p.path.rstrip("/")) or "target"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removesuffix(".lance"))
    tag = hashlib.sha256(absolute_uri(target_uri).encode()).hexdigest()[:8]
    base = Path(os.environ.get("TLDR_INDEX_WORK") or "tldr-work")
    return base / f"{name}-{tag}"


def _read_rows(path: Path, start: int, stop: int, width: int, dtype=np.uint8) -> np.ndarray:
    """Rows ``[start, stop)`` of a raw row-major file (plain reads: no mapping, no RSS growth)."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        f.seek(start * width * itemsize)
        buf = f.read((stop - start) * width * itemsize)
    return np.frombuffer(buf, dtype=dtype).reshape(stop - start, width)


def _plan_text(method: str, dim: int | None, pq_bytes: int | None, select: dict | None) -> str:
    """What a shrink will fit, for its first log line: ``tldr to d=64, PQ 16 bytes``, or the
    candidates of a selection (``dim``/``pq_bytes`` are only known after the ``select`` stage)."""
    if select is None:
        return f"{method} to d={dim}, PQ {pq_bytes} bytes"
    cands = ", ".join(f"d={d} PQ {p} B" for d, p in select["candidates"])
    goal = (f"the smallest reaching recall@10 >= {select['target_recall']}"
            if select.get("target_recall") is not None else "the better method")
    return f"{'/'.join(select['methods'])}, choosing {goal} among {cands}"


def _check_target(target_uri: str, overwrite: bool, run_id: str | None = None) -> bool:
    """Refuse an existing target unless ``overwrite``; True when it is already this run's output
    (a crash after publish)."""
    from connectors import open_target

    try:
        t = open_target(target_uri)
    except SourceNotFoundError:
        return False
    except ModelFormatError:
        raise TargetExistsError(
            f"Target '{target_uri}' exists and is not a tldr-index target; refusing to replace "
            f"it, even with overwrite=True (--overwrite). Choose another target.") from None
    if run_id is not None and t.metadata.get("run_id") == run_id:
        return True
    if not overwrite:
        raise TargetExistsError(
            f"Target '{target_uri}' already exists. Pass overwrite=True (--overwrite) to replace "
            f"it.")
    return False


# ---------------------------------------------------------------------------------- stages

def _stage_scan(c: SimpleNamespace) -> tuple[list[Path], dict]:
    from connectors import IdDigest
    from connectors.arrow_utils import vectors_to_numpy

    if c.ray_scan:
        return _stage_scan_ray(c)
    src, out = c.src, c.work.stage_dir("scan", clear=True)
    dtype = np.float16 if src.value_type == pa.float16() else np.float32
    writer = VectorStore.create(out / "vectors", src.dim, dtype)
    keep = [0] + list(range(2, len(src.schema)))  # id + payload (the vector column is index 1)
    spill_schema = pa.schema([src.schema.field(i) for i in keep])
    digest = IdDigest()
    total = src.count()
    c.progress.begin("scan", total, "rows")
    rows = 0
    with pa.OSFile(str(out / "rows.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, spill_schema) as ipc:
        for b in src.iter_batches(c.batch_rows, skip_invalid=c.skip_invalid):
            writer.append(vectors_to_numpy(b.column(1)))
            ipc.write_batch(pa.RecordBatch.from_arrays([b.column(i) for i in keep],
                                                       schema=spill_schema))
            digest.update(b.column(0))
            rows += b.num_rows
            c.progress.update("scan", rows)
    store = writer.finalize({"source": c.source_uri})
    skipped = src.skipped["rows"]
    check_scan_counts(src, total, rows, skipped, src.skipped["first_id"])
    files = [store.path, store.root / VectorStore.META, out / "rows.arrow"]
    return files, {"rows": rows, "ids_digest": digest.hexdigest(), "dtype": np.dtype(dtype).name,
                   "skipped_invalid": skipped, "first_invalid_id": src.skipped["first_id"]}


def check_scan_counts(src, total: int, rows: int, skipped: int, first_invalid_id) -> None:
    """After a scan of either engine: every row the source reported was read (``rows`` valid +
    ``skipped`` invalid), the skipped ones are logged, and at least 2 rows are left."""
    if rows + skipped != total:
        raise InvalidInputError(
            f"Source '{src.uri}' changed while it was read: it reported {total} rows but "
            f"{rows + skipped} were read. Run shrink again once it is stable.")
    if skipped:
        log.warning("Skipped %d invalid row(s) of %s (NaN/inf%s vectors), first at id %r.",
                    skipped, src.uri, ", zero under cosine" if src.distance == "cosine" else "",
                    first_invalid_id)
    if skipped and rows < 2:
        raise InvalidInputError(
            f"Source '{src.uri}' has {rows} valid row(s) after skipping {skipped} invalid "
            f"one(s) (skip_invalid=True); shrink needs at least 2.")


def _stage_scan_ray(c: SimpleNamespace) -> tuple[list[Path], dict]:
    """engine="ray": the scan as Ray tasks (:mod:`tldr_index.ray_scan`); this node keeps only the
    training sample (``scan/sample``), not a copy of every row."""
    from .ray_scan import scan_with_ray

    out = c.work.stage_dir("scan", clear=True)
    c.progress.begin("scan", c.src.count(), "rows")
    scan = scan_with_ray(c.src, out / "sample", sample=c.sample, seed=c.seed,
                         batch_rows=c.batch_rows, skip_invalid=c.skip_invalid,
                         progress=lambda done: c.progress.update("scan", done),
                         **c.engine_options)
    store = VectorStore.open(out / "sample")
    return [store.path, store.root / VectorStore.META], scan


def _sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x5A5])
    return np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)


def _train_store(c: SimpleNamespace) -> VectorStore:
    """The training sample: ``knn/train``, the Ray scan's ``scan/sample``, or the scan store
    itself when every row is used."""
    for sub in (c.work.root / "knn" / "train", c.work.root / "scan" / "sample"):
        if (sub / VectorStore.META).exists():
            return VectorStore.open(sub)
    return VectorStore.open(c.work.root / "scan" / "vectors")


def _stage_knn(c: SimpleNamespace) -> tuple[list[Path], dict]:
    from .knn import graph_recall, knn_graph

    out = c.work.stage_dir("knn", clear=True)
    scan = _train_store(c)  # knn/train was just cleared: the Ray scan's sample, or every row
    n_train = min(scan.n_rows, c.sample)
    # PCA needs no graph: with every row as its sample, knn has nothing to count
    c.progress.begin("knn", n_train if c.method != "pca" or n_train < scan.n_rows else None,
                     "rows")
    files: list[Path] = []
    if n_train < scan.n_rows:
        rows = _sample_rows(scan.n_rows, n_train, c.seed)
        writer = VectorStore.create(out / "train", scan.dim, np.float32)
        c.progress.phase("knn", "drawing the sample", n_train, "rows")
        for s in range(0, n_train, 16_384):
            writer.append(scan.take(rows[s:s + 16_384]))
            c.progress.update("knn", min(s + 16_384, n_train))
        sub = writer.finalize()
        files += [sub.path, sub.root / VectorStore.META]
    train = _train_store(c)
    meta: dict = {"n_train": n_train}
    if c.method != "pca":
        c.progress.phase("knn", "kNN graph", n_train, "rows")
        g = knn_graph(train, c.neighbors, metric=c.metric, out=out / "graph.npy",
                      random_state=c.seed, device=c.device,
                      progress=lambda done, total: c.progress.update("knn", done, total),
                      on_phase=lambda name, total: c.progress.phase("knn", name, total, "rows"))
        c.progress.phase("knn", "graph recall", None)
        rec = graph_recall(train, g, n_queries=min(200, n_train), random_state=c.seed,
                           device=c.device)
        meta.update(graph_method=g.method, graph_recall=rec, graph_seconds=g.seconds)
        files.append(out / "graph.npy")
        log.info("kNN graph (%s, k=%d) over %d rows: recall@%d %.3f on %d rows.", g.method,
                 c.neighbors, n_train, c.neighbors, rec, min(200, n_train))
    return files, meta


def _tldr_batch_size(n_train: int) -> int | None:
    """TLDR's batch (256 anchors) unless the sample minus TLDR's held-out validation rows is
    smaller; then all anchors in one batch."""
    anchors = n_train - min(500, n_train // 10)
    return None if anchors >= 256 else max(2, anchors)


def fit_reducer(c: SimpleNamespace, method: str, dim: int, ckpt_dir: Path | None = None):
    """Fit ``method`` ("tldr" with the run's kNN graph, or "pca") to ``dim`` on the run's
    training sample (also used by :mod:`tldr_index.sweep` for every candidate)."""
    from . import PCA, TLDR

    train = _train_store(c)
    if method == "pca":
        c.progress.begin("train", train.n_rows, "rows")
        c.progress.phase("train", "fitting PCA", None)
        return PCA(dim).fit(train)
    graph = np.load(c.work.root / "knn" / "graph.npy")
    model = TLDR(dim, n_neighbors=c.neighbors, metric=c.metric, epochs=c.epochs,
                 max_train_rows=max(2, train.n_rows), device=c.device,
                 batch_size=_tldr_batch_size(train.n_rows), random_state=c.seed)
    c.progress.begin("train", None, "steps")
    model.fit(train, graph=graph, checkpoint_dir=ckpt_dir,
              resume=c.resumed and ckpt_dir is not None,
              progress=lambda done, total, _info: c.progress.update("train", done, total))
    return model


def _stage_select(c: SimpleNamespace) -> tuple[list[Path], dict]:
    """``method="auto"`` / ``target_recall``: measure the candidates on held-out rows and keep
    the choice (see :func:`tldr_index.sweep.select`)."""
    from .sweep import select

    return [], select(c)


def _apply_selection(c: SimpleNamespace) -> None:
    sel = c.infos.get("select") or {}
    if sel.get("chosen"):
        ch = sel["chosen"]
        c.method, c.dim, c.pq_bytes = ch["method"], ch["dim"], ch["pq_bytes"]


def _stage_train(c: SimpleNamespace) -> tuple[list[Path], dict]:
    out = c.work.stage_dir("train", clear=True, keep=("ckpt",) if c.resumed else ())
    model = fit_reducer(c, c.method, c.dim, out / "ckpt")
    model.save(out / "model.safetensors")
    fit = getattr(model, "fit_info_", {})
    meta = {"method": c.method, "best_epoch": fit.get("best_epoch"),
            "val_recall_initial": fit.get("val_recall_initial"),
            "val_recall_best": fit.get("val_recall_best")}
    return [out / "model.safetensors"], meta


def _stage_encode(c: SimpleNamespace) -> tuple[list[Path], dict]:
    from . import load_model
    from .encode_batches import encode_block
    from .quantizer import ProductQuantizer

    out = c.work.stage_dir("encode", clear=True)
    reducer = load_model(c.work.root / "train" / "model.safetensors")
    train = _train_store(c)
    scan_rows = c.infos["scan"]["rows"]
    c.progress.begin("encode", scan_rows, "rows")
    pq = None
    if c.pq_bytes:
        rng = np.random.default_rng([c.seed, 0x9B])
        k = min(train.n_rows, 65_536)
        pick = np.sort(rng.choice(train.n_rows, k, replace=False))
        c.progress.phase("encode", f"PQ training ({k:,} rows)", None)
        pq = run_in_worker(  # k-means is one long native call: keep Ctrl-C responsive
            ProductQuantizer(c.pq_bytes, metric=c.metric, random_state=c.seed).fit,
            reducer.transform(train.take(pick)), name="pq-train")

    def compact_model(vector_dtype: str) -> CompactModel:
        return CompactModel.from_reducer(reducer, c.metric, pq, extra={
            "source": c.source_abs, "source_fingerprint": c.fingerprint,
            "source_columns": {"id": c.src.id_column, "vector": c.src.vector_column},
            "vector_dtype": vector_dtype})

    if c.engine == "ray":  # rows are encoded on Ray by the write stage (tldr_index.ray_engine)
        (out / "model.safetensors").write_bytes(compact_model(c.reduced_dtype).to_bytes())
        log.info("engine='ray': rows are encoded in the write stage; the recall estimate is "
                 "skipped (it needs every PQ code on this node).")
        return [out / "model.safetensors"], {"vector_dtype": c.reduced_dtype, "engine": "ray"}
    compact = compact_model(c.reduced_dtype)
    quantizer = compact.quantizer() if pq is not None else None
    scan = VectorStore.open(c.work.root / "scan" / "vectors")
    n = scan.n_rows
    c.progress.phase("encode", "encoding", n, "rows")
    writer = VectorStore.create(out / "reduced", c.dim, np.float32)
    max_abs = 0.0
    with open(out / "codes.u8", "wb") as fcodes:
        for start, block in scan.iter_chunks(c.batch_rows):
            Y, codes = encode_block(block, compact, quantizer)
            max_abs = max(max_abs, float(np.abs(Y).max()))
            writer.append(Y)
            if codes is not None:
                fcodes.write(codes.tobytes())
            c.progress.update("encode", start + len(block))
    reduced = writer.finalize()
    vector_dtype = c.reduced_dtype
    if vector_dtype == "float16" and max_abs > FLOAT16_MAX:
        log.warning("Reduced values reach %.3g, beyond float16: storing float32 vectors.", max_abs)
        vector_dtype = "float32"
        compact = compact_model(vector_dtype)
    (out / "model.safetensors").write_bytes(compact.to_bytes())
    meta = {"vector_dtype": vector_dtype, "max_abs": max_abs, **_evaluate(c, compact, out)}
    files = [reduced.path, reduced.root / VectorStore.META, out / "codes.u8",
             out / "model.safetensors"]
    return files, meta


def _evaluate(c: SimpleNamespace, model: CompactModel, out: Path) -> dict:
    """recall@10 of the compact search (with and without exact re-ranking of a shortlist) against
    exact search in the original space, on ``eval_queries`` rows of the collection (self excluded)."""
    from .knn import _drop_own, exact_search

    scan = VectorStore.open(c.work.root / "scan" / "vectors")
    n = scan.n_rows
    nq = min(c.eval_queries, n - 1)
    k = min(10, n - 1)
    if nq < 1 or k < 1:
        return {}
    t0 = time.perf_counter()
    c.progress.phase("encode", "recall estimate (exact search)", nq, "queries")
    rows = np.sort(np.random.default_rng([c.seed, 0xE7]).choice(n, nq, replace=False))
    Q = scan.take(rows)
    _, truth = exact_search(scan, Q, k, metric=c.metric, exclude=rows, device=c.device,
                            progress=lambda done, total: c.progress.update("encode", done))
    c.progress.phase("encode", "recall estimate (compact search)", None)
    R = min(n, max(c.shortlist, k) + 1)
    Y = model.encode(Q)
    if model.pq_bytes:
        codes = _read_rows(out / "codes.u8", 0, n, model.pq_bytes)
        _, cand = adc_topk(model, codes, Y, R)
    else:
        _, cand = exact_search(out / "reduced", model.prepare(Y), R, metric=c.metric,
                               device=c.device)

    plain = _drop_own(cand[:, :k + 1], rows, k)
    _, resc = rerank(Q, cand, scan.take, k, c.metric, exclude=rows)  # what search --rescore does

    res = {"recall_at_10": recall_at_k(plain, truth),
           "recall_at_10_rescored": recall_at_k(resc, truth),
           "eval_queries": int(nq), "shortlist": int(R - 1),
           "eval_seconds": time.perf_counter() - t0}
    log.info("recall@%d on %d rows: %.3f (%.3f with exact re-ranking of %d).", k, nq,
             res["recall_at_10"], res["recall_at_10_rescored"], R - 1)
    return res


def _stage_write(c: SimpleNamespace) -> dict:
    """write + verify + publish (one sink transaction); returns the stage infos."""
    from connectors import open_sink

    enc = c.infos["encode"]
    model_bytes = (c.work.root / "encode" / "model.safetensors").read_bytes()
    value_type = pa.float16() if enc["vector_dtype"] == "float16" else pa.float32()
    schema = c.src.target_schema(c.dim, c.pq_bytes or None, value_type=value_type,
                                 codes_column=CODES_COLUMN)
    n = c.infos["scan"]["rows"]
    out = c.work.stage_dir("write", clear=True)
    sink = open_sink(c.target_uri, **c.sink_options)
    (out / "staging.json").write_text(json.dumps(sink.staging_ref()))
    infos: dict = {}
    stage = "write"
    try:
        t0 = time.perf_counter()
        c.progress.begin("write", n, "rows")
        sink.create(schema, id_column=c.src.id_column, vector_column=c.src.vector_column,
                    distance=c.metric, codes_column=CODES_COLUMN if c.pq_bytes else None,
                    overwrite=c.overwrite)
        (out / "staging.json").write_text(json.dumps(sink.staging_ref()))
        if c.engine == "ray":
            from .ray_engine import write_with_ray

            pos = write_with_ray(c.src, sink, CompactModel.from_bytes(model_bytes), schema,
                                 codes_column=CODES_COLUMN if c.pq_bytes else None,
                                 batch_rows=c.batch_rows, skip_invalid=c.skip_invalid,
                                 progress=lambda done: c.progress.update("write", done),
                                 **c.engine_options)
        else:
            pos = _write_local(c, sink, schema, n)
        sink.store_model(model_bytes, _target_metadata(c))
        infos["write"] = {"rows": pos, "seconds": time.perf_counter() - t0}
        c.progress.end("write", infos["write"]["seconds"])
        c.work.mark_done("write", [], infos["write"])

        t0 = time.perf_counter()
        stage = "verify"
        c.progress.begin("verify", n, "rows")
        c.progress.phase("verify", "reading back the staged target", None)
        scan = c.infos["scan"]
        read = scan["rows"] + scan.get("skipped_invalid", 0)
        if c.src.count() != read or c.src.fingerprint() != c.fingerprint:
            raise InvalidInputError(
                f"Source '{c.src.uri}' changed during shrink (now {c.src.count()} rows, "
                f"fingerprint {c.src.fingerprint()}); nothing was published.")
        map_pieces = None
        if c.engine == "ray":  # read the staged files back in Ray tasks, digests merged here
            from .ray_engine import ray_map as map_pieces
        sink.verify(scan["rows"], scan["ids_digest"], map_pieces=map_pieces)
        infos["verify"] = {"rows": scan["rows"], "ids_digest": scan["ids_digest"],
                           "seconds": time.perf_counter() - t0}
        c.progress.update("verify", n)
        c.progress.end("verify", infos["verify"]["seconds"])
        c.work.mark_done("verify", [], infos["verify"])

        t0 = time.perf_counter()
        stage = "publish"
        c.progress.begin("publish", None, "")
        c.progress.update("publish", 0)
        c.progress.phase("publish", "building the index and switching atomically", None)
        # a Lance index build is one long native call: in a worker, so Ctrl-C is seen at once
        run_in_worker(sink.publish, name="publish")
        infos["publish"] = {"seconds": time.perf_counter() - t0}
        c.progress.update("publish", 1)
        c.progress.end("publish", infos["publish"]["seconds"])
        c.work.mark_done("publish", [], infos["publish"])
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            exc = Interrupted.wrap(exc, stage, str(c.work.root))
        if isinstance(exc, Interrupted) and exc.worker_running:
            # the publish goes on in its thread until the process exits: leave its staging area
            # alone (a resumed run removes it, or finds the target already published)
            log.info("Interrupted while publishing %s; its staging area is left for --resume.",
                     c.target_uri)
            raise exc from None
        try:
            sink.abort()
        except Exception as err:  # keep the original error
            log.warning("Could not remove the staging area of %s: %s", c.target_uri, err)
        if isinstance(exc, Interrupted):
            raise exc from None
        raise
    return infos


def _write_local(c: SimpleNamespace, sink, schema: pa.Schema, n: int) -> int:
    """Append the encoded rows (scan spill + ``encode/reduced`` + ``encode/codes.u8``) to ``sink``
    batch by batch; returns the rows written."""
    from .encode_batches import assemble_batch

    reduced = VectorStore.open(c.work.root / "encode" / "reduced")
    codes_path = c.work.root / "encode" / "codes.u8"
    pos = 0
    with pa.OSFile(str(c.work.root / "scan" / "rows.arrow"), "rb") as f:
        spill = pa.ipc.open_file(f)
        for i in range(spill.num_record_batches):
            b = spill.get_batch(i)
            m = b.num_rows
            codes = _read_rows(codes_path, pos, pos + m, c.pq_bytes) if c.pq_bytes else None
            sink.append(assemble_batch(b, reduced.read(pos, pos + m), codes, schema,
                                       vector_column=c.src.vector_column,
                                       codes_column=CODES_COLUMN))
            pos += m
            c.progress.update("write", pos)
    return pos


def _target_metadata(c: SimpleNamespace) -> dict:
    enc = c.infos["encode"]
    return {
        "source": c.source_abs, "source_version": c.fingerprint,
        "source_columns": {"id": c.src.id_column, "vector": c.src.vector_column},
        "dims": [c.src.dim, c.dim], "method": c.method, "metric": c.metric,
        "pq": {"bytes": c.pq_bytes, "nbits": 8, "column": CODES_COLUMN if c.pq_bytes else None},
        "vector_dtype": enc["vector_dtype"], "run_id": c.work.state["run_id"],
        "library_version": __version__,
        "recall": {k: enc.get(k) for k in ("recall_at_10", "recall_at_10_rescored",
                                             "eval_queries", "shortlist")},
        "graph_recall": c.infos.get("knn", {}).get("graph_recall"),
        "params": c.params,
        **({"selection": c.infos["select"]} if c.infos.get("select") else {}),
    }


# ---------------------------------------------------------------------------------- shrink

def run_stage(c: SimpleNamespace, stage: str, fn, skipped: list, seconds: dict) -> None:
    """Run ``fn(c)`` as ``stage`` (or skip it when a resumed run has its checkpoint); records
    its info in ``c.infos``. Also used by :func:`tldr_index.sweep.sweep` (scan and knn)."""
    work, prog = c.work, c.progress
    rec = work.done(stage) if c.resumed else None
    if rec is not None:
        c.infos[stage] = rec["info"]
        skipped.append(stage)
        prog.end(stage, 0.0, note="checkpoint")
        return
    work.clear_after(stage)
    t0 = time.perf_counter()
    try:
        files, stage_info = fn(c)
    except InvalidInputError:
        if stage == "scan":
            work.clear_all()  # bad source data: nothing worth keeping
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: say where; the checkpoints stay for --resume
        raise Interrupted.wrap(exc, stage, str(work.root)) from None
    seconds[stage] = time.perf_counter() - t0
    stage_info["seconds"] = seconds[stage]
    c.infos[stage] = stage_info
    work.mark_done(stage, files, stage_info)
    prog.end(stage, seconds[stage])


def _run_stages(c: SimpleNamespace, skipped: list, seconds: dict) -> None:
    """Run (or skip, from checkpoints) every stage; fills ``skipped`` and ``seconds``."""
    work, prog = c.work, c.progress
    stages = [("scan", _stage_scan), ("knn", _stage_knn)]
    if c.select is not None:
        stages.append(("select", _stage_select))
    for stage, fn in stages + [("train", _stage_train), ("encode", _stage_encode)]:
        run_stage(c, stage, fn, skipped, seconds)
        if stage == "select":
            _apply_selection(c)
    if c.published_already or work.done("publish") is not None:
        skipped += ["write", "verify", "publish"]
        for stage in ("write", "verify", "publish"):
            prog.end(stage, 0.0, note="checkpoint")
    else:
        staging = work.root / "write" / "staging.json"
        if staging.exists():
            discard_staging(c.target_uri, json.loads(staging.read_text()))
        for stage in ("write", "verify", "publish"):
            work.undo(stage)
        for stage, stage_info in _stage_write(c).items():
            seconds[stage] = stage_info["seconds"]


ENGINE_OPTIONS = ("workers", "shard_rows", "num_cpus")


def _check_engine_options(engine: str, options: dict | None) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(ENGINE_OPTIONS))
    if unknown:
        raise InvalidParameterError(
            f"The 'engine_options' parameter of shrink takes the keys {', '.join(ENGINE_OPTIONS)}. "
            f"Got unknown key(s) {', '.join(map(repr, unknown))}.")
    if options and engine != "ray":
        raise InvalidParameterError(
            f"The 'engine_options' parameter of shrink applies to engine='ray' only. Got "
            f"{options} with engine={engine!r}.")
    for key, value in options.items():
        check_int(value, key, low=1, owner="shrink", allow_none=True)
    return options


def _engine_session(c: SimpleNamespace):
    """engine="ray": one Ray session (started here unless running) for the scan and the write."""
    if c.engine != "ray":
        return contextlib.nullcontext()
    from .ray_engine import _RaySession, require_ray

    return _RaySession(require_ray(), c.engine_options.get("num_cpus"))


def shrink(source_uri: str, target_uri: str | None = None, *, dim: int | None = None,
           method: str = "tldr", target_recall: float | None = None, dims=None,
           pq_bytes: int | None = None, neighbors: int = 3, epochs: int | None = None,
           sample: int = DEFAULT_SAMPLE, device: str = "auto",
           work_dir: str | os.PathLike | None = None, resume: bool = False,
           overwrite: bool = False, random_state: int = 0,
           progress: Progress | bool | None = None, vector_column: str | None = None,
           id_column: str | None = None, reduced_dtype: str = "float16",
           eval_queries: int = DEFAULT_EVAL_QUERIES, shortlist: int | None = None,
           keep_work: bool = False, batch_rows: int = 8192, threads: int | None = None,
           source_options: dict | None = None, sink_options: dict | None = None,
           skip_invalid: bool = False, engine: str = "local",
           engine_options: dict | None = None) -> ShrinkReport:
    """Shrink the collection at ``source_uri`` into a compact collection at ``target_uri``.

    Parameters
    ----------
    source_uri, target_uri : connector URIs (see :mod:`connectors.uri`); the target defaults to
        ``<collection>_tldr<dim>`` beside the source (required for Parquet).
    dim : reduced dimension d (smaller than the source's); None with ``target_recall``.
    method : "tldr" (default), "pca" (the baseline, through the same stages) or "auto": fit
        both on the training sample, measure recall@10 on held-out rows and keep the better one
        (the decision is in the report's ``selection`` and the target's metadata).
    target_recall, dims : shrink to the smallest candidate (PQ bytes, then d) whose compact search
        reaches this recall@10 on held-out rows; candidates: ``dims`` (default 16, 32, 64, 128
        below the source's dimension) or ``dim``, each with ``pq_bytes`` (default per d); the
        kNN graph is built once (:func:`tldr_index.sweep.select`).
    pq_bytes : PQ code bytes per row (must divide ``dim``; default 16 or the largest divisor of
        ``dim`` below it; 0 stores no codes).
    neighbors, epochs, sample : TLDR's ``n_neighbors``, ``epochs`` (None: its default) and the
        training rows (``max_train_rows``, default 100,000, drawn at random: the graph and
        the epochs cost time in proportion, the graph quadratically up to 200,000 rows).
    device : "auto", "cpu" or "cuda" (training and the kNN graph).
    work_dir : checkpoints (default :func:`default_work_dir`: ``./tldr-work/<name>-<hash>``).
    resume : continue an interrupted run from its checkpoints.
    overwrite : replace an existing target (and discard a work directory that cannot be resumed).
    random_state : seed of every random choice (sample, graph, training, PQ): equal seeds give
        equal targets, interrupted or not.
    progress : a :class:`tldr_index.progress.Progress`, True for rich bars, None for silence.
    vector_column, id_column : source columns (default: detected).
    reduced_dtype : "float16" (default) or "float32" for the stored reduced vectors (float16
        falls back to float32 when values exceed its range).
    eval_queries, shortlist : rows used to estimate recall@10 at the end of ``encode`` (0: skip)
        and the shortlist re-ranked exactly for the rescored figure (default as in
        :func:`tldr_index.search.search`: 200).
    keep_work : keep the work directory after publishing.
    threads : CPU threads for torch and FAISS (None: the cores that look idle, see
        :mod:`tldr_index.threads`; a resumed run reuses the first run's count).
    source_options, sink_options : passed to ``open_source`` (e.g. ``{"distance": "cosine"}``)
        and ``open_sink``.
    skip_invalid : drop rows whose vector holds NaN/inf (or is zero, under cosine) and report
        them (``ShrinkReport.skipped_invalid``, ``first_invalid_id``) instead of failing.
    engine : "local" (default) or "ray": the scan as Ray tasks (this node keeps only the
        training sample) and encode + PQ + write of every row as a Ray Data job
        (:mod:`tldr_index.ray_engine`; Lance and Parquet sources and targets; needs
        ``pip install 'tldr-index[ray]'``); the kNN graph and training stay on this node.
        With "ray" the recall estimate is skipped and a reduced value beyond float16's range is
        an error (pass ``reduced_dtype="float32"``) instead of a switch to float32; with
        ``method="auto"`` or ``target_recall`` the scan stays on this node (the selection
        measures recall against every row).
    engine_options : for "ray", ``workers`` (tasks in flight), ``shard_rows`` (rows per task and
        per written shard) and ``num_cpus`` (of a local Ray started here), used by
        :func:`tldr_index.ray_scan.scan_with_ray` and :func:`tldr_index.ray_engine.write_with_ray`.

    Raises :class:`TLDRError` subclasses with one-line messages (bad input, target exists, source
    missing or unreachable...); the source is never written and no partial target is published.
    """
    from connectors import absolute_uri, default_target_uri, open_source

    t_start = time.perf_counter()
    check_choice(method, "method", METHODS, owner="shrink")
    dim = check_int(dim, "dim", low=1, owner="shrink", allow_none=target_recall is not None)
    neighbors = check_int(neighbors, "neighbors", low=1, owner="shrink")
    check_int(epochs, "epochs", low=1, owner="shrink", allow_none=True)
    sample = check_int(sample, "sample", low=2, owner="shrink")
    check_int(pq_bytes, "pq_bytes", low=0, owner="shrink", allow_none=True)
    from .reducer import resolve_device
    resolve_device(device, owner="shrink")  # checks the name; cuda without a GPU: refused now
    check_choice(reduced_dtype, "reduced_dtype", ("float16", "float32"), owner="shrink")
    eval_queries = check_int(eval_queries, "eval_queries", low=0, owner="shrink")
    shortlist = check_int(shortlist, "shortlist", low=1, owner="shrink", allow_none=True) \
        or default_shortlist(10)
    batch_rows = check_int(batch_rows, "batch_rows", low=1, owner="shrink")
    random_state = check_int(random_state, "random_state", low=0, owner="shrink")
    check_int(threads, "threads", low=1, owner="shrink", allow_none=True)
    check_bool(skip_invalid, "skip_invalid", owner="shrink")
    check_choice(engine, "engine", ENGINES, owner="shrink")
    engine_options = _check_engine_options(engine, engine_options)
    if engine == "ray":
        from .ray_engine import require_ray
        require_ray("shrink")
    prog = wrap_progress(as_progress(progress))  # test-only fault points, see faults

    src = open_source(source_uri, vector_column=vector_column, id_column=id_column,
                      **(source_options or {}))
    if target_uri is None:
        target_uri = default_target_uri(source_uri, suffix=f"_tldr{dim or ''}")
    source_abs, target_abs = absolute_uri(source_uri), absolute_uri(target_uri)
    if source_abs.rstrip("/") == target_abs.rstrip("/"):
        raise InvalidParameterError(
            f"The target must differ from the source. Got '{target_uri}' for both.")
    if engine == "ray":
        from .ray_engine import check_supported
        check_supported(source_uri, target_uri)
    select = None
    if method == "auto" or target_recall is not None:
        from .sweep import selection_plan

        select = selection_plan(src, dim, dims, pq_bytes, method, target_recall, owner="shrink")
    elif dim >= src.dim:
        raise InvalidParameterError(
            f"The 'dim' parameter of shrink must be an int in the range [1, {src.dim - 1}] "
            f"(smaller than the dimension {src.dim} of source '{src.uri}'). Got {dim} instead.")
    if select is None and pq_bytes is None:
        pq_bytes = default_pq_bytes(dim)
        if pq_bytes != DEFAULT_PQ_BYTES:
            log.warning("pq_bytes (--pq-bytes) not given and the default %d does not divide "
                        "dim=%d (PQ bytes must divide d: one sub-vector per byte): the codes take "
                        "%d bytes, the largest divisor of %d up to %d. Pass pq_bytes "
                        "(--pq-bytes) to choose another size.", DEFAULT_PQ_BYTES, dim, pq_bytes,
                        dim, DEFAULT_PQ_BYTES)
    if select is None and pq_bytes and dim % pq_bytes:
        raise InvalidParameterError(
            f"The 'pq_bytes' parameter of shrink must divide dim={dim} (one sub-vector per "
            f"byte) or be 0. Got {pq_bytes} instead.")
    n_rows = src.count()
    n_train = min(n_rows, sample)
    if n_rows == 1:
        raise InvalidInputError(
            f"Source '{src.uri}' has 1 row; shrink needs at least 2 (a one-row table cannot be "
            f"shrunk: there is no neighbour to keep and nothing to learn a map from).")
    if method != "pca" and neighbors >= n_train:
        raise InvalidParameterError(
            f"The 'neighbors' parameter of shrink must be an int in the range [1, "
            f"{n_train - 1}] (fewer than the {n_train} training rows). Got {neighbors} instead.")
    if (pq_bytes if select is None else any(p for _, p in select["candidates"])) \
            and n_train < 256:
        raise InvalidParameterError(
            f"PQ codes need at least 256 training rows (256 centroids per byte); source "
            f"'{src.uri}' gives {min(n_rows, sample)}. Pass pq_bytes=0 (--pq-bytes 0) to store "
            f"no codes.")
    fingerprint = src.fingerprint()
    params = {"dim": dim, "method": method, "pq_bytes": pq_bytes, "neighbors": neighbors,
              "epochs": epochs, "sample": sample, "random_state": random_state,
              "reduced_dtype": reduced_dtype, "vector_column": src.vector_column,
              "id_column": src.id_column, "eval_queries": eval_queries, "shortlist": shortlist,
              "batch_rows": batch_rows, "skip_invalid": skip_invalid, "engine": engine}
    if select is not None:
        params["select"] = select
    if not resume:  # refuse an existing target before anything is written
        _check_target(target_uri, overwrite)
    work = WorkDir(work_dir if work_dir is not None else default_work_dir(target_uri), STAGES)

    def disk():  # disk full / not writable: one clear StorageError
        return storage_errors("Shrink", target_uri, work.root)

    with disk():
        resumed = work.open({"source": source_abs, "fingerprint": fingerprint,
                             "target": target_abs, "params": params,
                             "threads": threads or auto_threads()},
                            resume=resume, overwrite=overwrite, rerun=True)
    # a resumed run keeps the first run's thread count (float sums then add up identically)
    threads = threads or work.state.get("threads") or auto_threads()
    published_already = False
    if resume:
        try:
            published_already = _check_target(target_uri, overwrite, run_id=work.state["run_id"])
        except TargetExistsError:
            if not resumed:
                work.clear_all()  # nothing was done yet: leave no state behind
                _drop_empty_default_parent(work, work_dir)
            raise
    c = SimpleNamespace(src=src, work=work, progress=prog, source_uri=source_uri, source_abs=source_abs,
             target_uri=target_uri, fingerprint=fingerprint, dim=dim, method=method,
             pq_bytes=pq_bytes, neighbors=neighbors, epochs=epochs, sample=sample,
             device=device, seed=random_state,
             metric=src.distance, reduced_dtype=reduced_dtype, eval_queries=eval_queries,
             shortlist=shortlist, batch_rows=batch_rows, overwrite=overwrite,
             sink_options=dict(sink_options or {}), resumed=resumed, params=params, infos={},
             published_already=published_already, skip_invalid=skip_invalid,
             engine=engine, engine_options=engine_options, select=select,
             ray_scan=engine == "ray" and select is None)
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    log.info("Shrinking %s (%d rows x %d, %s) -> %s: %s; work dir %s.", src.uri, n_rows,
             src.dim, src.distance, target_uri, _plan_text(method, dim, pq_bytes, select),
             work.root)
    if engine == "ray" and select is not None:
        log.info("engine='ray' with method='auto'/target_recall: the scan runs on this node (the "
                 "selection measures recall against every row).")
    try:
        with thread_limit(threads), disk(), _engine_session(c):
            _run_stages(c, skipped, seconds)
    finally:
        prog.close()
        _drop_empty_default_parent(work, work_dir)  # a failed run leaves no empty ./tldr-work
    enc = c.infos["encode"]
    report = ShrinkReport(
        source=src.uri, target=target_uri, method=c.method, metric=src.distance,
        rows=c.infos["scan"]["rows"], source_dim=src.dim, dim=c.dim, pq_bytes=c.pq_bytes,
        vector_dtype=enc["vector_dtype"], source_disk_bytes=disk_bytes(source_uri),
        target_disk_bytes=disk_bytes(target_uri),
        graph_recall=c.infos["knn"].get("graph_recall"),
        recall_at_10=enc.get("recall_at_10"),
        recall_at_10_rescored=enc.get("recall_at_10_rescored"),
        eval_queries=enc.get("eval_queries", 0), shortlist=enc.get("shortlist", shortlist),
        stage_seconds=seconds, skipped_stages=skipped, selection=c.infos.get("select"),
        wall_seconds=time.perf_counter() - t_start, work_dir=str(work.root), resumed=resumed,
        skipped_invalid=c.infos["scan"].get("skipped_invalid", 0),
        first_invalid_id=c.infos["scan"].get("first_invalid_id"))
    if not keep_work:
        work.clear_all()
        _drop_empty_default_parent(work, work_dir)
    return report


def _drop_empty_default_parent(work: WorkDir, work_dir) -> None:
    """Remove the default work parent (``./tldr-work`` or ``$TLDR_INDEX_WORK``) once it is
    empty, after a finished or a failed run; a ``work_dir`` the caller named is left alone."""
    if work_dir is None:
        try:
            work.root.parent.rmdir()
        except OSError:  # not empty (another run's checkpoints) or gone
            pass
