"""``shrink``: a vector collection in, a compact collection (reduced vectors + PQ codes + model) out.

Stages, each checkpointed in the work directory (see :mod:`tldr_index.shrink.workdir`):

==========  ==========================================================================================
scan        stream the source once (validated: nulls, lengths, NaN/inf, duplicate ids) into
            ``scan/vectors`` (a :class:`~tldr_index.vectors.VectorStore`, float32 or the source's
            float16) and ``scan/rows.arrow`` (ids + payload, Arrow IPC); later stages never read the
            source again. ``engine="ray"``: the same checks as Ray tasks
            (:mod:`tldr_index.shrink.ray_scan`), keeping only the training sample (``scan/sample``).
knn         draw the training sample (``sample`` rows, seeded) into ``knn/train`` and, for TLDR,
            build its kNN graph (``knn/graph.npy``, :func:`tldr_index.knn.knn_graph`).
train       fit TLDR on the sample with that graph (per-epoch checkpoints in ``train/ckpt``, resumed
            exactly) or PCA (``method="pca"``); after a selection, the map ``select`` fitted for the
            chosen candidate (no refit).
encode      reduce every row (``encode/reduced``), train the codec on the reduced sample, encode the codes
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
``code_bytes`` per row (the codes, searched in memory to estimate recall): the sample for training
(``sample x D`` float32 on disk, read in blocks), one batch of rows, the kNN graph of the sample.
"""

from __future__ import annotations

import logging
import os
import time

from connectors import disk_bytes, open_target

from ..code_index import INDEX_MIN_ROWS
from ..errors import ModelFormatError, SourceNotFoundError, TargetExistsError
from ..faults import wrap_progress
from ..oserrors import storage_errors
from ..progress import Progress, as_progress
from ..threads import auto_threads, thread_limit
from . import train as training
from .encode import stage_encode
from .engine import make_engine
from .budget import DEFAULT_CODEC
from .options import FitOptions, GraphOptions
from .plan import DEFAULT_EVAL_QUERIES, STAGES, ShrinkPlan, default_work_dir, \
    plan_shrink
from .report import ShrinkReport
from .run import ShrinkRun, run_stage
from .select import stage_select
from .workdir import WorkDir
from .write import WRITE_STAGES, discard_abandoned, stage_write

log = logging.getLogger(__name__)


def check_target(target_uri: str, overwrite: bool, run_id: str | None = None) -> bool:
    """Refuse an existing target unless ``overwrite``; True when it is already this run's output
    (a crash after publish)."""
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


def drop_empty_default_parent(work: WorkDir, work_dir) -> None:
    """Remove the default work parent (``./tldr-work`` or ``$TLDR_INDEX_WORK``) once it is
    empty, after a finished or a failed run; a ``work_dir`` the caller named is left alone."""
    if work_dir is None:
        try:
            work.root.parent.rmdir()
        except OSError:  # not empty (another run's checkpoints) or gone
            pass


def run_stages(run: ShrinkRun, skipped: list, seconds: dict) -> None:
    """Run (or skip, from checkpoints) every stage; fills ``skipped`` and ``seconds``."""
    stages = [("scan", run.engine.scan), ("knn", training.stage_knn)]
    if run.select is not None:
        stages.append(("select", stage_select))
    for stage, fn in stages + [("train", training.stage_train), ("encode", stage_encode)]:
        run_stage(run, stage, fn, skipped, seconds)
        if stage == "select":
            run.apply_selection()
    if run.published_already or run.work.done("publish") is not None:
        skipped += list(WRITE_STAGES)
        for stage in WRITE_STAGES:
            run.progress.end(stage, 0.0, note="checkpoint")
    else:
        discard_abandoned(run)
        stage_write(run, seconds)


def shrink(source_uri: str, target_uri: str | None = None, *, dim: int | None = None,
           method: str = "tldr", target_recall: float | None = None, dims=None,
           pq_bytes: int | None = None, neighbors: int = 3, epochs: int | None = None,
           sample: int | None = None, device: str = "auto",
           work_dir: str | os.PathLike | None = None, resume: bool = False,
           overwrite: bool = False, random_state: int = 0,
           progress: Progress | bool | None = None, vector_column: str | None = None,
           id_column: str | None = None, reduced_dtype: str = "float16",
           eval_queries: int = DEFAULT_EVAL_QUERIES, shortlist: int | None = None,
           keep_work: bool = False, batch_rows: int = 8192, threads: int | None = None,
           source_options: dict | None = None, sink_options: dict | None = None,
           skip_invalid: bool = False, engine: str = "local",
           engine_options: dict | None = None, codec: str = DEFAULT_CODEC,
           bits: int | None = None, bytes: int | None = None,  # noqa: A002
           index_min_rows: int = INDEX_MIN_ROWS,
           graph_options: GraphOptions | dict | None = None,
           fit_options: FitOptions | dict | None = None) -> ShrinkReport:
    """Shrink the collection at ``source_uri`` into a compact collection at ``target_uri``.

    Parameters
    ----------
    source_uri, target_uri : connector URIs (see :mod:`connectors.uri`); the target defaults to
        ``<collection>_tldr<dim>`` beside the source (required for Parquet).
    dim : reduced dimension d (smaller than the source's); None with ``target_recall`` or
        ``method="auto"`` (then the candidates are ``dims``) or ``"none"`` (d = D).
    method : "tldr" (default), "pca" (the baseline, through the same stages), "none" (the
        identity map: no training, weight = I, bias = 0, d = D; the codec is trained on the
        original vectors) or "auto": fit TLDR and PCA at each candidate d and consider the
        identity map with every codec that meets the budget on the original vectors, measure
        recall@10 on the same held-out rows and keep the best (never worse there than the best
        on-original codec measured; the decision is in the report's ``selection`` and the
        target's metadata; candidates: :func:`tldr_index.shrink.plan.selection_plan`; a TLDR
        candidate that ``fit_options.qat`` fine-tunes is fitted and measured with QAT,
        ``+QAT``, :mod:`tldr_index.shrink.qat_select`; the chosen map is written as measured).
    target_recall, dims : shrink to the smallest candidate (PQ bytes, then d) whose compact search
        reaches this recall@10 on held-out rows; candidates: ``dims`` (default 16, 32, 64, 128
        below the source's dimension) or ``dim``, each with ``pq_bytes`` (default per d); the
        kNN graph is built once (:mod:`tldr_index.shrink.select`).
    codec : "rq" (the default, :data:`tldr_index.shrink.DEFAULT_CODEC`: residual quantization
        with a beam-5 search, the most recall per byte at the default budget), "pq", "opq" or
        "rabitq": how the reduced vectors are encoded (:mod:`tldr_index.codecs`; encoding cost
        at d=64, 16 B: RQ about 60 CPU s per 1M rows, several times PQ's).
    bits : rabitq only: 1, 2 or 4 bits per dimension (code bytes d x bits / 8 + 4; default 1
        when ``bytes`` is not given).
    bytes : code bytes per row (pq/opq: a divisor of ``dim``; rq: at most ``dim``; rabitq:
        d x bits / 8 + 4); default 16 or the largest size the codec meets below it; 0 stores no
        codes. ``pq_bytes`` is its old name (an alias; both given must agree).
    neighbors, epochs, sample : TLDR's ``n_neighbors``, ``epochs`` (None: its default) and the
        training rows (``max_train_rows``; default ``rows // 5`` clipped to [50,000, 100,000],
        :func:`tldr_index.shrink.plan.default_sample`; drawn at random: the graph and
        the epochs cost time in proportion, the exact graph quadratically up to 30,000 rows, the
        OPQ graph above that about linearly).
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
    index_min_rows : rows from which a target that stores codes (Lance, Parquet) gets a code
        index (IVF over the codes, :mod:`tldr_index.code_index`, built at the end of ``encode``
        and stored beside the model); smaller collections are searched by the exhaustive scan.
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
        (:mod:`tldr_index.shrink.ray_engine`; Lance and Parquet sources and targets; needs
        ``pip install 'tldr-index[ray]'``); the kNN graph and training stay on this node.
        With "ray" the recall estimate is skipped and a reduced value beyond float16's range is
        an error (pass ``reduced_dtype="float32"``) instead of a switch to float32; with
        ``method="auto"`` or ``target_recall`` the scan stays on this node (the selection
        measures recall against every row).
    graph_options, fit_options : :class:`tldr_index.shrink.options.GraphOptions` /
        :class:`~tldr_index.shrink.options.FitOptions` (or dicts of their fields): how the kNN
        graph of the sample is built (``method`` "auto"/"exact"/"opq", the OPQ pass's
        ``train_rows``/``nprobe``/``refine``) and how TLDR is fitted (``learning_rate``,
        ``batch_size``, ``patience``, ``validation_rows``); default: the library's defaults.
        Set fields are recorded in the run's parameters (a resumed run must pass the same).
    engine_options : for "ray", ``workers`` (tasks in flight), ``shard_rows`` (rows per task and
        per written shard) and ``num_cpus`` (of a local Ray started here), used by
        :func:`tldr_index.shrink.ray_scan.scan_with_ray` and
        :func:`tldr_index.shrink.ray_engine.write_with_ray`.

    Raises :class:`TLDRError` subclasses with one-line messages (bad input, target exists, source
    missing or unreachable...); the source is never written and no partial target is published.
    """
    t_start = time.perf_counter()
    plan = plan_shrink(source_uri, target_uri, dim=dim, method=method,
                       target_recall=target_recall, dims=dims, pq_bytes=pq_bytes,
                       neighbors=neighbors, epochs=epochs, sample=sample, device=device,
                       random_state=random_state, vector_column=vector_column,
                       id_column=id_column, reduced_dtype=reduced_dtype,
                       eval_queries=eval_queries, shortlist=shortlist, batch_rows=batch_rows,
                       threads=threads, source_options=source_options,
                       skip_invalid=skip_invalid, engine=engine, engine_options=engine_options,
                       codec=codec, bits=bits, bytes=bytes, index_min_rows=index_min_rows,
                       graph_options=graph_options, fit_options=fit_options)
    prog = wrap_progress(as_progress(progress))  # test-only fault points, see faults
    return run_plan(plan, progress=prog, work_dir=work_dir, resume=resume, overwrite=overwrite,
                    keep_work=keep_work, sink_options=sink_options, t_start=t_start)


def run_plan(plan: ShrinkPlan, *, progress: Progress, work_dir=None, resume: bool = False,
             overwrite: bool = False, keep_work: bool = False, sink_options: dict | None = None,
             t_start: float | None = None) -> ShrinkReport:
    """Run a checked shrink (:func:`tldr_index.shrink.plan.plan_shrink`) to its report; the
    other arguments as :func:`shrink`."""
    t_start = time.perf_counter() if t_start is None else t_start
    src, target_uri, prog = plan.src, plan.target_uri, progress
    fingerprint = src.fingerprint()
    params = plan.params
    if not resume:  # refuse an existing target before anything is written
        check_target(target_uri, overwrite)
    work = WorkDir(work_dir if work_dir is not None else default_work_dir(target_uri), STAGES)

    def disk():  # disk full / not writable: one clear StorageError
        return storage_errors("Shrink", target_uri, work.root)

    with disk():
        resumed = work.open({"source": plan.source_abs, "fingerprint": fingerprint,
                             "target": plan.target_abs, "params": params,
                             "threads": plan.threads or auto_threads()},
                            resume=resume, overwrite=overwrite, rerun=True)
    try:
        # a resumed run keeps the first run's thread count (float sums then add up identically)
        threads = plan.threads or work.state.get("threads") or auto_threads()
        published_already = False
        if resume:
            try:
                published_already = check_target(target_uri, overwrite, run_id=work.state["run_id"])
            except TargetExistsError:
                if not resumed:
                    work.clear_all()  # nothing was done yet: leave no state behind
                raise
        engine = make_engine(plan.engine, plan.engine_options, scan_on_ray=plan.ray_scan)
        run = ShrinkRun(src=src, work=work, progress=prog, engine=engine,
                        source_uri=plan.source_uri, source_abs=plan.source_abs,
                        fingerprint=fingerprint, method=plan.method, neighbors=plan.neighbors,
                        epochs=plan.epochs, sample=plan.sample, device=plan.device, seed=plan.seed,
                        eval_queries=plan.eval_queries, shortlist=plan.shortlist,
                        batch_rows=plan.batch_rows, resumed=resumed, select=plan.select,
                        dim=plan.dim, code_bytes=plan.code_bytes, codec=plan.codec,
                        target_uri=target_uri,
                        reduced_dtype=plan.reduced_dtype, overwrite=overwrite,
                        sink_options=dict(sink_options or {}), params=params,
                        published_already=published_already, skip_invalid=plan.skip_invalid,
                        index_min_rows=plan.index_min_rows,
                        graph_options=plan.graph_options, fit_options=plan.fit_options)
        seconds: dict[str, float] = {}
        skipped: list[str] = []
        log.info("Shrinking %s (%d rows x %d, %s) -> %s: %s; work dir %s.", src.uri, plan.n_rows,
                 src.dim, src.distance, target_uri, plan.text(), work.root)
        if plan.engine == "ray" and plan.select is not None:
            log.info("engine='ray' with method='auto'/target_recall: the scan runs on this node (the "
                     "selection measures recall against every row).")
        try:
            with thread_limit(threads), disk(), engine.session():
                run_stages(run, skipped, seconds)
        finally:
            prog.close()
        r = run.results
        enc, scan = r.encode, r.scan
        report = ShrinkReport(
            source=src.uri, target=target_uri, method=run.method, metric=src.distance,
            rows=scan.rows, source_dim=src.dim, dim=run.dim, code_bytes=run.code_bytes or 0,
            codec=run.codec if run.code_bytes else None,
            vector_dtype=enc.vector_dtype, source_disk_bytes=disk_bytes(plan.source_uri),
            target_disk_bytes=disk_bytes(target_uri),
            graph_recall=r.knn.graph_recall,
            recall_at_10=enc.recall_at_10, recall_at_10_rescored=enc.recall_at_10_rescored,
            eval_queries=enc.eval_queries or 0,
            shortlist=enc.shortlist if enc.shortlist is not None else plan.shortlist,
            stage_seconds=seconds, skipped_stages=skipped, stage_usage=dict(run.usage),
            selection=r.select.to_json() if r.select is not None else None,
            qat=r.train.qat if r.train is not None else None,
            wall_seconds=time.perf_counter() - t_start, work_dir=str(work.root), resumed=resumed,
            skipped_invalid=scan.skipped_invalid or 0, first_invalid_id=scan.first_invalid_id)
        if not keep_work:
            work.clear_all()
        return report
    finally:
        work.release()  # after clear_all: no other run can start in a directory being cleared
        drop_empty_default_parent(work, work_dir)  # a failed run leaves no empty ./tldr-work
