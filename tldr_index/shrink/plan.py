"""Every parameter and cross-parameter check of ``shrink`` and ``sweep``, in one place.

:func:`plan_shrink` and :func:`plan_sweep` check the arguments (names, ranges, choices), open the
source, check what depends on it (``dim`` below the source's dimension, the codec's byte budget
at ``dim`` (:mod:`tldr_index.shrink.budget`), enough rows for the neighbours and for the codebooks,
a target other than the source) and return a
frozen plan; nothing is written before a plan exists. The CLI calls :func:`default_target` and
:func:`check_engine_options` for the same rules. Cost: opening the source and counting its rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors import absolute_uri, default_target_uri, open_source, parse_uri

from ..code_index import INDEX_MIN_ROWS
from ..errors import InvalidInputError, InvalidParameterError
from ..validation import check_bool, check_choice, check_float, check_int
from .options import FitOptions, GraphOptions
from .qat_rule import qat_codec
from .qat_select import measured_candidates, qat_label, selection_qat
from .budget import CODECS, DEFAULT_BYTES, DEFAULT_CODEC, check_codec_args, code_bytes, \
    codec_fits, default_pq_bytes, needs_kmeans, resolve_bytes

log = logging.getLogger(__name__)

STAGES = ("scan", "knn", "select", "train", "encode", "write", "verify", "publish")
METHODS = ("tldr", "pca", "none", "auto")
ENGINES = ("local", "ray")
ENGINE_OPTIONS = ("workers", "shard_rows", "num_cpus")
#: the default training sample is ``n_rows // 5`` clipped to [DEFAULT_SAMPLE, MAX_DEFAULT_SAMPLE]
#: (:func:`default_sample`). Issue 17, interpolated rows, exhaustive search
#: (benchmarks/results/shrink_new_vs_current.md): at 250k rows recall@10 0.476 / 0.955 rescored
#: with 50,000 rows vs 0.477 / 0.956 with 100,000 (the kNN graph and training at half the CPU);
#: at 1M, 50,000 rows gave 0.301 / 0.885 vs 0.305 / 0.891, more than half a point below, so
#: large collections keep 100,000.
DEFAULT_SAMPLE = 50_000
MAX_DEFAULT_SAMPLE = 100_000
DEFAULT_PQ_BYTES = DEFAULT_BYTES
DEFAULT_EVAL_QUERIES = 200
DEFAULT_DIMS = (16, 32, 64, 128)
CRITERIA = ("pq", "rescored", "float")
SWEEP_BATCH_ROWS = 8192


# ---------------------------------------------------------------------------------- defaults

def default_sample(n_rows: int) -> int:
    """Training rows when ``sample`` is not given: ``n_rows // 5`` clipped to
    ``[DEFAULT_SAMPLE, MAX_DEFAULT_SAMPLE]`` (50,000 up to 250,000 rows, 100,000 from 500,000)."""
    return int(min(MAX_DEFAULT_SAMPLE, max(DEFAULT_SAMPLE, n_rows // 5)))


def default_work_dir(target_uri: str) -> Path:
    """``$TLDR_INDEX_WORK`` or ``./tldr-work``, then ``<target name>-<8 hex of the target URI>``."""
    p = parse_uri(target_uri)
    name = p.collection or p.table or os.path.basename(p.path.rstrip("/")) or "target"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removesuffix(".lance"))
    tag = hashlib.sha256(absolute_uri(target_uri).encode()).hexdigest()[:8]
    base = Path(os.environ.get("TLDR_INDEX_WORK") or "tldr-work")
    return base / f"{name}-{tag}"


def default_sweep_work_dir(source_uri: str) -> Path:
    """``sweep-`` + :func:`default_work_dir` of the source, beside it."""
    base = default_work_dir(source_uri)
    return base.parent / f"sweep-{base.name}"


def default_target(source_uri: str, dim: int | None) -> str:
    """The target beside the source: ``<collection>_tldr<dim>`` (``_tldr`` when ``dim`` is
    chosen by a selection). Raises for a Parquet source (no default)."""
    return default_target_uri(source_uri, suffix=f"_tldr{dim or ''}")


# ---------------------------------------------------------------------------------- checks

def check_engine_options(engine: str, options: dict | None, owner: str = "shrink") -> dict:
    """The engine options as a new dict: known keys only, ints >= 1, and only with ``ray``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(ENGINE_OPTIONS))
    if unknown:
        raise InvalidParameterError(
            f"The 'engine_options' parameter of {owner} takes the keys "
            f"{', '.join(ENGINE_OPTIONS)}. Got unknown key(s) {', '.join(map(repr, unknown))}.")
    if options and engine != "ray":
        raise InvalidParameterError(
            f"The 'engine_options' parameter of {owner} applies to engine='ray' only. Got "
            f"{options} with engine={engine!r}.")
    for key, value in options.items():
        check_int(value, key, low=1, owner=owner, allow_none=True)
    return options


def check_feasible(src, n_rows: int, n_train: int, method: str, neighbors: int, needs_pq: bool,
                   owner: str) -> None:
    """Enough rows: at least 2, more training rows than ``neighbors`` (TLDR) and, with PQ
    codes, 256 training rows (256 centroids per byte)."""
    if n_rows == 1:
        raise InvalidInputError(
            f"Source '{src.uri}' has 1 row; {owner} needs at least 2 (a one-row table cannot be "
            f"shrunk: there is no neighbour to keep and nothing to learn a map from).")
    if method not in ("pca", "none") and neighbors >= n_train:
        raise InvalidParameterError(
            f"The 'neighbors' parameter of {owner} must be an int in the range [1, "
            f"{n_train - 1}] (fewer than the {n_train} training rows). Got {neighbors} instead.")
    if needs_pq and n_train < 256:
        hint = ("Pass bytes=0 (--bytes 0) to store no codes." if owner == "shrink" else
                "Pass bytes=[0] (--bytes 0) to measure no codes.")
        raise InvalidParameterError(
            f"PQ codes need at least 256 training rows (256 centroids per byte); source "
            f"'{src.uri}' gives {n_train}. {hint}")


def selection_plan(src, dim: int | None, dims: Sequence[int] | None, pq_bytes,
                   method: str, target_recall: float | None, *, owner: str,
                   criterion: str = "pq", codecs: Sequence[str] = (DEFAULT_CODEC,),
                   bits: int | None = None) -> dict:
    """Validated candidates ``[[method, d, codec, code_bytes], ...]`` of a selection (JSON-able:
    it is part of the run's identity; ``codec`` None with 0 bytes: float vectors only).

    The candidate list (kept small so a sweep stays fast): every d of ``dims`` (default 16, 32,
    64, 128 below the source's dimension) x each reduced method (``auto``: TLDR and PCA) x each
    codec of ``codecs`` (default the one requested, PQ unless told) at each budget of
    ``pq_bytes`` (default 16 or the nearest feasible size), skipping combinations the codec
    cannot meet at that d; plus, with ``method="auto"`` (or ``"none"``), the identity map
    (``none``, d = D) with every codec of :data:`CODECS` (``none``: of ``codecs``) that meets the
    budget exactly at D, so a selection never returns less than the best on-original codec it
    measured at that budget."""
    if target_recall is not None:
        check_float(target_recall, "target_recall", low=0.0, low_inclusive=False, high=1.0,
                    owner=owner)
    check_choice(criterion, "criterion", CRITERIA, owner=owner)
    codecs = list(codecs)
    for c in codecs:
        check_codec_args(c, bits, owner)
    if dim is not None:
        cand_dims = [dim]
    elif dims is not None:
        cand_dims = [check_int(d, "dims", low=1, owner=owner) for d in dims]
        if not cand_dims:
            raise InvalidParameterError(f"The 'dims' parameter of {owner} must list at least one "
                                        f"dimension. Got {list(dims)!r} instead.")
    else:
        cand_dims = [d for d in DEFAULT_DIMS if d < src.dim] or [max(1, src.dim // 2)]
    if method == "none":
        cand_dims = []
    for d in cand_dims:
        if d >= src.dim:
            raise InvalidParameterError(
                f"The 'dims' parameter of {owner} must hold ints in the range [1, "
                f"{src.dim - 1}] (smaller than the dimension {src.dim} of source '{src.uri}'). "
                f"Got {d} instead.")
    budgets = pq_bytes if isinstance(pq_bytes, (list, tuple)) else [pq_bytes]
    budgets = [None if b is None else check_int(b, "bytes", low=0, owner=owner)
               for b in budgets]
    methods = ["tldr", "pca"] if method == "auto" else ([] if method == "none" else [method])
    cands: list[list] = []

    def add(m: str, d: int, codec: str | None, size: int) -> None:
        if [m, d, codec, size] not in cands:
            cands.append([m, d, codec, size])

    defaults: list[int] = []  # the sizes a default budget (None) gave the reduced candidates
    for d in sorted(set(cand_dims)):
        for b in budgets:
            for codec in codecs:
                if b == 0:
                    size = 0
                else:
                    try:
                        size = code_bytes(codec, d, b, bits, owner)
                    except InvalidParameterError:
                        log.info("Candidate d=%d with %s %s bytes skipped (infeasible).", d,
                                 codec, b)
                        continue
                if b is None:
                    defaults.append(size)
                for m in methods:
                    add(m, d, codec if size else None, size)
    if method in ("auto", "none"):
        D = src.dim
        ident = []
        for b in budgets:  # the identity map at the same budgets as the reduced candidates
            if b is None:
                ident += sorted(set(defaults)) or [DEFAULT_BYTES]
            else:
                ident.append(b)
        for budget in dict.fromkeys(ident):
            if budget == 0:
                add("none", D, None, 0)
                continue
            for codec in (CODECS if method == "auto" else codecs):
                if codec == "rabitq" and bits is not None and (D * bits % 8 or
                                                               D * bits // 8 + 4 != budget):
                    continue  # rabitq at the bits asked for only
                if codec_fits(codec, D, budget):
                    add("none", D, codec, budget)
    if not cands:
        raise InvalidParameterError(
            f"The 'bytes' parameter of {owner} (--bytes) must be a budget that codec(s) "
            f"{', '.join(codecs)} can meet at one of the dims {sorted(set(cand_dims)) or [src.dim]}"
            f". Got {pq_bytes!r} instead.")
    return {"candidates": cands, "methods": list(dict.fromkeys(c[0] for c in cands)),
            "target_recall": target_recall, "criterion": criterion}


def candidate_text(method: str, d: int, codec: str | None, size: int,
                   qat: str | None = None) -> str:
    """``tldr d=64 PQ 16 B`` (``float`` without codes; `` +QAT`` when fitted through them)."""
    return (f"{method} d={d} " + (f"{(codec or 'pq').upper()} {size} B" if size else "float")
            + qat_label(qat))


def plan_text(method: str, dim: int | None, pq_bytes: int | None, select: dict | None,
              codec: str = DEFAULT_CODEC) -> str:
    """What a shrink will fit, for its first log line: ``tldr to d=64, PQ 16 bytes``, or the
    candidates of a selection (``dim``/``pq_bytes`` are only known after the ``select`` stage)."""
    if select is None:
        return f"{method} to d={dim}, " + (f"{codec.upper()} {pq_bytes} bytes" if pq_bytes
                                           else "no codes")
    cands = ", ".join(candidate_text(*c) for c in measured_candidates(select))
    goal = (f"the smallest reaching recall@10 >= {select['target_recall']}"
            if select.get("target_recall") is not None else "the better method")
    return f"{'/'.join(select['methods'])}, choosing {goal} among {cands}"


# ---------------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class ShrinkPlan:
    """A checked shrink: every argument validated against the others and the source.

    ``dim``/``code_bytes``/``codec``/``method`` are the requested ones (None dim/code_bytes with
    a selection: the ``select`` stage chooses). ``src`` is the opened source (read only)."""

    src: Any = field(repr=False, compare=False)
    source_uri: str
    target_uri: str
    source_abs: str
    target_abs: str
    method: str
    dim: int | None
    code_bytes: int | None
    codec: str
    neighbors: int
    epochs: int | None
    sample: int
    device: str
    seed: int
    reduced_dtype: str
    eval_queries: int
    shortlist: int
    batch_rows: int
    threads: int | None
    skip_invalid: bool
    engine: str
    engine_options: dict
    select: dict | None
    n_rows: int
    index_min_rows: int = INDEX_MIN_ROWS
    graph_options: GraphOptions = GraphOptions()
    fit_options: FitOptions = FitOptions()

    @property
    def params(self) -> dict:
        """The run's parameters as recorded in the work directory and the target (JSON)."""
        p = {"dim": self.dim, "method": self.method, "codec": self.codec,
             "code_bytes": self.code_bytes, "pq_bytes": self.code_bytes,
             "neighbors": self.neighbors, "epochs": self.epochs, "sample": self.sample,
             "random_state": self.seed, "reduced_dtype": self.reduced_dtype,
             "vector_column": self.src.vector_column, "id_column": self.src.id_column,
             "eval_queries": self.eval_queries, "shortlist": self.shortlist,
             "batch_rows": self.batch_rows, "skip_invalid": self.skip_invalid,
             "engine": self.engine, "index_min_rows": self.index_min_rows}
        if self.select is not None:
            p["select"] = self.select
        for opts in (self.graph_options, self.fit_options):
            if opts.changed():  # recorded only when set: default runs keep their parameters
                p[opts.name] = opts.changed()
        return p

    @property
    def ray_scan(self) -> bool:
        """The scan runs on Ray (engine 'ray' without a selection, which needs every row here)."""
        return self.engine == "ray" and self.select is None

    def text(self) -> str:
        return plan_text(self.method, self.dim, self.code_bytes, self.select, self.codec)

    @property
    def pq_bytes(self) -> int | None:
        """Old name of :attr:`code_bytes`."""
        return self.code_bytes


def plan_shrink(source_uri: str, target_uri: str | None = None, *, dim: int | None = None,
                method: str = "tldr", target_recall: float | None = None, dims=None,
                pq_bytes: int | None = None, neighbors: int = 3, epochs: int | None = None,
                sample: int | None = None, device: str = "auto", random_state: int = 0,
                vector_column: str | None = None, id_column: str | None = None,
                reduced_dtype: str = "float16", eval_queries: int = DEFAULT_EVAL_QUERIES,
                shortlist: int | None = None, batch_rows: int = 8192,
                threads: int | None = None, source_options: dict | None = None,
                skip_invalid: bool = False, engine: str = "local",
                engine_options: dict | None = None, codec: str = DEFAULT_CODEC,
                bits: int | None = None, bytes: int | None = None,  # noqa: A002
                index_min_rows: int = INDEX_MIN_ROWS,
                graph_options: GraphOptions | dict | None = None,
                fit_options: FitOptions | dict | None = None) -> ShrinkPlan:
    """Check the arguments of :func:`tldr_index.shrink.shrink` (same names and meaning), open
    the source and return the plan. Raises :class:`InvalidParameterError` /
    :class:`InvalidInputError` (one line naming the parameter, the rule and the value)."""
    from ..reducer import resolve_device
    from ..search import default_shortlist

    o = "shrink"
    check_choice(method, "method", METHODS, owner=o)
    dim = check_int(dim, "dim", low=1, owner=o,
                    allow_none=target_recall is not None or method in ("none", "auto"))
    neighbors = check_int(neighbors, "neighbors", low=1, owner=o)
    check_int(epochs, "epochs", low=1, owner=o, allow_none=True)
    sample = check_int(sample, "sample", low=2, owner=o, allow_none=True)
    check_int(pq_bytes, "pq_bytes", low=0, owner=o, allow_none=True)
    check_int(bytes, "bytes", low=0, owner=o, allow_none=True)
    pq_bytes = resolve_bytes(bytes, pq_bytes, o)
    check_codec_args(codec, bits, o)
    resolve_device(device, owner=o)  # checks the name; cuda without a GPU: refused now
    check_choice(reduced_dtype, "reduced_dtype", ("float16", "float32"), owner=o)
    eval_queries = check_int(eval_queries, "eval_queries", low=0, owner=o)
    index_min_rows = check_int(index_min_rows, "index_min_rows", low=1, owner=o)
    shortlist = check_int(shortlist, "shortlist", low=1, owner=o, allow_none=True) \
        or default_shortlist(10)
    batch_rows = check_int(batch_rows, "batch_rows", low=1, owner=o)
    random_state = check_int(random_state, "random_state", low=0, owner=o)
    check_int(threads, "threads", low=1, owner=o, allow_none=True)
    check_bool(skip_invalid, "skip_invalid", owner=o)
    check_choice(engine, "engine", ENGINES, owner=o)
    engine_options = check_engine_options(engine, engine_options)
    graph_options = GraphOptions.coerce(graph_options, owner=o)
    fit_options = FitOptions.coerce(fit_options, owner=o)
    if engine == "ray":
        from .ray_engine import require_ray
        require_ray(o)

    src = open_source(source_uri, vector_column=vector_column, id_column=id_column,
                      **(source_options or {}))
    if target_uri is None:
        target_uri = default_target(source_uri, dim)
    source_abs, target_abs = absolute_uri(source_uri), absolute_uri(target_uri)
    if source_abs.rstrip("/") == target_abs.rstrip("/"):
        raise InvalidParameterError(
            f"The target must differ from the source. Got '{target_uri}' for both.")
    if engine == "ray":
        from .ray_engine import check_supported
        check_supported(source_uri, target_uri)
    select = None
    if method == "auto" or target_recall is not None:
        select = selection_plan(src, dim, dims, pq_bytes, method, target_recall, owner=o,
                                codecs=[codec], bits=bits)
    elif method == "none":
        if dim is not None and dim != src.dim:
            raise InvalidParameterError(
                f"The 'dim' parameter of shrink must be None or {src.dim} (the dimension of "
                f"source '{src.uri}') with method='none' (the identity map). Got {dim} instead.")
        dim = src.dim
    elif dim >= src.dim:
        raise InvalidParameterError(
            f"The 'dim' parameter of shrink must be an int in the range [1, {src.dim - 1}] "
            f"(smaller than the dimension {src.dim} of source '{src.uri}'). Got {dim} instead.")

    def warn(size: int) -> None:
        log.warning("pq_bytes (--pq-bytes) not given and the default %d does not divide "
                    "dim=%d (PQ bytes must divide d: one sub-vector per byte): the codes take "
                    "%d bytes, the largest divisor of %d up to %d. Pass pq_bytes "
                    "(--pq-bytes) to choose another size.", DEFAULT_PQ_BYTES, dim, size,
                    dim, DEFAULT_PQ_BYTES)

    if select is None:
        pq_bytes = code_bytes(codec, dim, pq_bytes, bits, o,
                              warn=warn if codec in ("pq", "opq") else None)
    n_rows = src.count()
    if sample is None:
        sample = default_sample(n_rows)
    kmeans = needs_kmeans([codec]) and bool(pq_bytes) if select is None else \
        needs_kmeans(c[2] for c in select["candidates"] if c[3])
    check_feasible(src, n_rows, min(n_rows, sample), method, neighbors, kmeans, o)
    if select is None:  # 'on': can it?
        qat_codec(fit_options.qat, method=method, codec=codec, dim=dim, code_bytes=pq_bytes,
                  n_train=min(n_rows, sample), selection=False, owner=o)
    else:  # which candidates are fitted through their codes
        select["qat"] = selection_qat(select["candidates"], fit_options.qat,
                                      min(n_rows, sample), codecs=[codec], owner=o)
    return ShrinkPlan(src=src, source_uri=source_uri, target_uri=target_uri,
                      source_abs=source_abs, target_abs=target_abs, method=method, dim=dim,
                      code_bytes=pq_bytes, codec=codec, neighbors=neighbors, epochs=epochs,
                      sample=sample, device=device, seed=random_state, reduced_dtype=reduced_dtype,
                      eval_queries=eval_queries, shortlist=shortlist, batch_rows=batch_rows,
                      threads=threads, skip_invalid=skip_invalid, engine=engine,
                      engine_options=engine_options, select=select, n_rows=n_rows,
                      index_min_rows=index_min_rows, graph_options=graph_options,
                      fit_options=fit_options)


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: the candidates (``select``, as :func:`selection_plan`) and the run."""

    src: Any = field(repr=False, compare=False)
    source_uri: str
    source_abs: str
    method: str
    neighbors: int
    epochs: int | None
    sample: int
    device: str
    seed: int
    eval_queries: int
    shortlist: int
    threads: int | None
    select: dict
    n_rows: int
    criterion: str
    target_recall: float | None
    fit_options: FitOptions = FitOptions()

    @property
    def params(self) -> dict:
        """What identifies the reusable scan and graph in the sweep's work directory."""
        return {"sample": self.sample, "neighbors": self.neighbors, "random_state": self.seed,
                "graph": self.method not in ("pca", "none"), "batch_rows": SWEEP_BATCH_ROWS}


def plan_sweep(source_uri: str, *, dims: Sequence[int] | None = None,
               pq_bytes: Sequence[int | None] | None = None, method: str = "tldr",
               target_recall: float | None = None, criterion: str = "pq", neighbors: int = 3,
               epochs: int | None = None, sample: int | None = None, eval_queries: int = 500,
               shortlist: int | None = None, device: str = "auto", random_state: int = 0,
               threads: int | None = None, vector_column: str | None = None,
               id_column: str | None = None, source_options: dict | None = None,
               codecs: Sequence[str] | None = None, bits: int | None = None,
               bytes: Sequence[int | None] | None = None,  # noqa: A002
               fit_options: FitOptions | dict | None = None) -> SweepPlan:
    """Check the arguments of :func:`tldr_index.shrink.select.sweep`, open the source and return
    the plan (same rules and messages as :func:`plan_shrink`, owner ``sweep``; ``fit_options``
    as shrink's, its ``qat`` deciding which TLDR candidates are fitted through their codes,
    :mod:`tldr_index.shrink.qat_select`)."""
    from ..search import default_shortlist

    o = "sweep"
    check_choice(method, "method", METHODS, owner=o)
    neighbors = check_int(neighbors, "neighbors", low=1, owner=o)
    check_int(epochs, "epochs", low=1, owner=o, allow_none=True)
    sample = check_int(sample, "sample", low=2, owner=o, allow_none=True)
    eval_queries = check_int(eval_queries, "eval_queries", low=1, owner=o)
    shortlist = check_int(shortlist, "shortlist", low=1, owner=o, allow_none=True) or \
        default_shortlist(10)
    random_state = check_int(random_state, "random_state", low=0, owner=o)
    check_choice(device, "device", ("auto", "cpu", "cuda"), owner=o)
    fit_options = FitOptions.coerce(fit_options, owner=o)
    src = open_source(source_uri, vector_column=vector_column, id_column=id_column,
                      **(source_options or {}))
    budgets = resolve_bytes(None if bytes is None else list(bytes),
                            None if pq_bytes is None else list(pq_bytes), o)
    codecs = [DEFAULT_CODEC] if not codecs else list(codecs)
    select = selection_plan(src, None, None if dims is None else list(dims),
                            budgets or [None], method, target_recall,
                            owner=o, criterion=criterion, codecs=codecs, bits=bits)
    n_rows = src.count()
    if sample is None:
        sample = default_sample(n_rows)
    check_feasible(src, n_rows, min(n_rows, sample), method, neighbors,
                   needs_kmeans(c[2] for c in select["candidates"] if c[3]), o)
    select["qat"] = selection_qat(select["candidates"], fit_options.qat, min(n_rows, sample),
                                  codecs=codecs, owner=o)
    return SweepPlan(src=src, source_uri=source_uri, source_abs=absolute_uri(source_uri),
                     method=method, neighbors=neighbors, epochs=epochs, sample=sample,
                     device=device, seed=random_state, eval_queries=eval_queries,
                     shortlist=shortlist, threads=threads, select=select, n_rows=n_rows,
                     criterion=criterion, target_recall=target_recall,
                     fit_options=fit_options)
