"""``sweep``, ``method="auto"`` and ``target_recall``: train several candidates from ONE kNN graph
and measure them on held-out rows.

A candidate is ``(method, d, codec, code_bytes)`` (the candidate list is
:func:`tldr_index.shrink.plan.selection_plan`'s: by default each d x method with the requested
codec, plus the identity map ``none`` with every codec that meets the budget on the original
vectors). :func:`sweep` runs the shrink pipeline's ``scan`` and ``knn`` stages once
(checkpointed in a work directory, so a second sweep of the same source reuses them), then for
every (method, d) fits the map on the same training sample with the same graph (the identity
map: no fit) and measures recall@10 against exact search in the original space on the SAME rows
held out from that sample for every candidate: of the reduced float vectors, of the codes alone
(the compact search, :func:`tldr_index.codecs.codec_topk`) and with the shortlist re-ranked
exactly (``search --rescore``). Since the on-original codecs are candidates measured on the same
rows, the choice is never worse on them than the best on-original codec at that budget.

Quantization-aware training (:mod:`tldr_index.shrink.qat_select`): a TLDR candidate for which
the run's ``qat`` fit option turns QAT on (:func:`tldr_index.shrink.qat_rule.qat_codec`, as for a
fixed shrink of it; ``auto``: RQ with d >= 8 x bytes, PQ with d >= 4 x bytes) is fitted through
its codes and measured with the codebooks QAT trained, labelled ``+QAT``; with ``auto`` its plain
version (the ranking fit QAT started from) stays a candidate beside it, with ``on`` it does not.
In :func:`tldr_index.shrink.shrink` the ``select`` stage keeps the chosen candidate's fitted map
(``select/model.safetensors``, with its QAT codebooks) and the ``train`` stage writes that map,
no refit, so the target's codes are the ones measured here (the report's ``recall_at_10`` is the
encode stage's estimate, on other rows).

Choice: ``criterion`` (default ``"pq"``: recall@10 of the compact search) decides. With
``target_recall`` the smallest candidate that reaches it wins, smallest meaning fewest PQ bytes,
then smallest d; ``method="auto"`` fits TLDR and PCA and keeps TLDR only where it is strictly
better (ties go to PCA, the cheaper and simpler map), and a ``+QAT`` candidate only where it is
strictly better than the plain map at the same d and codes. :func:`tldr_index.shrink.shrink` runs
the same selection as its ``select`` stage.

Cost: the kNN graph once, one fit per (method, d), one pass over the scanned rows per (method, d)
for the float search and per codec for the codes (plus its training: PQ/OPQ k-means, RQ's beam
search, slowest); a QAT candidate adds its fine-tune (``benchmarks/results/qat.md``: about 81 s
wall for d=128, RQ 8 B on 40,000 rows, on 2 shared cores), its own float and code passes, and,
after the first QAT candidate at the same d, its ranking fit again; memory: ``code_bytes`` per
row, the sample and each candidate's fitted map (``d x D`` floats plus QAT codebooks).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from ..progress import Progress, as_progress
from ..tables import fmt_float
from ..threads import auto_threads, thread_limit
from ..vectors import VectorStore
from . import train as training
from .options import FitOptions
from .plan import STAGES, candidate_text, default_sweep_work_dir, plan_sweep
from .qat_select import measured_candidates, qat_label
from .encode import PQ_TRAIN_ROWS
from .measure import codec_candidates
from .engine import LocalEngine
from .results import SelectResult
from .run import ShrinkRun, run_stage
from .sampling import held_out, sample_rows
from .train import stage_knn
from .workdir import WorkDir

log = logging.getLogger(__name__)

EXIT_NOT_REACHED = 6  # `tldr-index sweep --target-recall`: no candidate reaches it


@dataclass
class SweepConfig:
    """One candidate and its recall@10 on the held-out rows."""

    method: str
    dim: int
    code_bytes: int
    recall_float: float
    recall_pq: float | None
    recall_rescored: float | None
    fit_seconds: float
    codec: str | None = None
    #: the codec the TLDR map was fine-tuned through (QAT; its codes measured with the codebooks
    #: QAT trained), None for a plain fit
    qat: str | None = None

    @property
    def label(self) -> str:
        """``tldr d=128 RQ 8 B +QAT``: the candidate's name in tables, JSON and reasons."""
        return _name(self)

    @property
    def pq_bytes(self) -> int:
        """Old name of :attr:`code_bytes` (whatever the codec)."""
        return self.code_bytes

    def score(self, criterion: str) -> float:
        v = {"pq": self.recall_pq, "rescored": self.recall_rescored,
             "float": self.recall_float}[criterion]
        return self.recall_float if v is None else v


@dataclass
class SweepResult:
    source: str
    metric: str
    rows: int
    source_dim: int
    queries: int
    query_kind: str
    criterion: str
    target_recall: float | None
    configs: list[SweepConfig] = field(default_factory=list)
    chosen: SweepConfig | None = None
    reason: str = ""
    knn_runs: int = 0                 # kNN graphs built by this call (0: reused a checkpoint)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["configs"] = [config_dict(c) for c in self.configs]
        out["chosen"] = None if self.chosen is None else config_dict(self.chosen)
        return out

    def summary(self) -> list[str]:
        return [self.reason] if self.reason else []

    @property
    def results(self) -> list[dict]:
        """Rows for :func:`tldr_index.plots.recall_vs_bytes` (PQ codes and float32 vectors)."""
        rows = []
        for c in self.configs:
            name = f"{c.method}{qat_label(c.qat)}"
            rows.append({"method": name, "representation": "float32",
                         "bytes_per_vector": 4 * c.dim, "recall": {"10": c.recall_float}})
            if c.code_bytes:
                cn = (c.codec or "pq").upper()
                rows.append({"method": f"{name} + {cn}", "representation": f"{cn} codes",
                             "bytes_per_vector": c.code_bytes, "recall": {"10": c.recall_pq}})
        best: dict = {}  # the frontier: per method and size, the best recall
        for r in rows:
            key = (r["method"], r["bytes_per_vector"])
            if key not in best or (r["recall"]["10"] or 0) > (best[key]["recall"]["10"] or 0):
                best[key] = r
        return list(best.values())


# ---------------------------------------------------------------------------------- measuring

def planned_fits(plan: dict) -> list[tuple[str, int, str | None, int,
                                         list[tuple[str | None, int]]]]:
    """The maps a selection fits, ``(method, d, qat, qat_bytes, specs)`` with the ``(codec,
    code_bytes)`` measured on each, ordered by d then method: per (method, d) one fit per QAT
    candidate (:func:`tldr_index.shrink.qat_select.measured_candidates`), then the plain fit
    measured with every other codec (taken from the first QAT fit's ranking fit when there is
    one, :func:`tldr_index.shrink.train.fit_reducer`'s ``on_plain``)."""
    groups: dict[tuple[str, int], list[tuple[str | None, int, str | None]]] = {}
    for m, d, codec, size, q in measured_candidates(plan):
        groups.setdefault((m, d), []).append((codec, size, q))
    out = []
    for (m, d), specs in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        out += [(m, d, q, size, [(codec, size)]) for codec, size, q in specs if q is not None]
        plain = [(codec, size) for codec, size, q in specs if q is None]
        if plain:
            out.append((m, d, None, 0, plain))
    return out


def config_key(cfg: SweepConfig) -> tuple:
    """What tells the configs of one selection apart: method, d, codec, bytes, QAT codec."""
    return cfg.method, cfg.dim, cfg.codec, cfg.code_bytes, cfg.qat


def config_dict(cfg: SweepConfig) -> dict:
    """A config as JSON: its fields and its ``label``."""
    return {**asdict(cfg), "label": cfg.label}


def measure(c: ShrinkRun, plan: dict, models: dict | None = None
            ) -> tuple[list[SweepConfig], dict]:
    """Fit and measure every candidate of ``plan`` on the run ``c`` (its scan, training
    sample and kNN graph). Returns the configs and ``{"queries", "query_kind"}``; ``models``
    (a dict) receives each config's fitted map under :func:`config_key`.

    A QAT candidate's map is fitted with ``qat`` (``plan["qat"]``) and its codes are those of
    the codebooks QAT trained (:func:`tldr_index.qat.trained_codec`; no codec training): what a
    shrink of it writes. Cost: see the module docstring, plus each QAT candidate's fine-tune."""
    from ..knn import exact_search
    from ..qat import trained_codec
    from ..search import recall_at_k, rerank

    scan = VectorStore.open(c.work.root / "scan" / "vectors")
    train = c.train_store()
    n = scan.n_rows
    train_rows = sample_rows(n, min(n, c.sample), c.seed)
    qpos, kind = held_out(n, train_rows, max(1, c.eval_queries), c.seed)
    Q = scan.take(qpos)
    k = min(10, n - 1)
    c.progress.phase("select", "exact neighbours of the held-out rows", len(qpos), "queries")
    _, truth = exact_search(scan, Q, k, metric=c.metric, exclude=qpos,
                            progress=lambda done, total: c.progress.update("select", done))
    fits = planned_fits(plan)
    R = min(n - 1, max(c.shortlist, k))
    rng = np.random.default_rng([c.seed, 0x9B])
    pick = np.sort(rng.choice(train.n_rows, min(train.n_rows, PQ_TRAIN_ROWS), replace=False))
    pq_train = train.take(pick)
    configs: list[SweepConfig] = []
    quiet = dataclasses.replace(c, progress=Progress())
    plain_fits: dict[tuple[str, int], tuple] = {}   # (method, d) -> (plain map, fit seconds)
    for i, (method, dim, qat, qat_bytes, specs) in enumerate(fits):
        what = (candidate_text(method, dim, *specs[0], qat) if qat else f"{method} d={dim}")
        c.progress.phase("select", f"fitting and measuring {what}", len(fits), "fits")
        c.progress.update("select", i)
        t0 = time.perf_counter()
        if qat is None and (method, dim) in plain_fits:
            model, fit_s = plain_fits.pop((method, dim))
        else:
            wants_plain = qat is not None and (method, dim, None) in {f[:3] for f in fits} \
                and (method, dim) not in plain_fits

            def keep(m, key=(method, dim), t=t0) -> None:
                plain_fits[key] = (m, time.perf_counter() - t)

            model = training.fit_reducer(quiet, method, dim, qat=qat,
                                         qat_bytes=qat_bytes or None,
                                         on_plain=keep if wants_plain else None)
            fit_s = time.perf_counter() - t0
        trained = {}
        for codec, size in specs if qat else ():
            tc = trained_codec(model, codec, dim, size)   # as the encode stage
            if tc is not None:
                trained[(codec, size)] = tc
        found = codec_candidates(model.transform, dim, scan, pq_train, Q, R, metric=c.metric,
                                 codecs=[(cd, b) for cd, b in specs if cd], exclude=qpos,
                                 random_state=c.seed, trained=trained)
        r_float = recall_at_k(found["float"][:, :k], truth)
        for codec, size in specs:
            r_pq = r_resc = None
            if size:
                cand = found[(codec, size)]
                r_pq = recall_at_k(cand[:, :k], truth)
                _, resc = rerank(Q, cand, scan.take, k, c.metric, exclude=qpos)
                r_resc = recall_at_k(resc, truth)
            cfg = SweepConfig(method, dim, size, r_float, r_pq, r_resc, fit_s, codec, qat)
            configs.append(cfg)
            if models is not None:
                models[config_key(cfg)] = model
            log.info("%s: recall@10 float %.3f, codes %s, rescored %s (fit %.1f s).",
                     candidate_text(method, dim, codec, size, qat), r_float, fmt_float(r_pq),
                     fmt_float(r_resc), fit_s)
        c.progress.update("select", i + 1, len(fits))
    return configs, {"queries": len(qpos), "query_kind": kind}


def choose(configs: list[SweepConfig], plan: dict, queries: int) -> tuple[SweepConfig | None,
                                                                          str]:
    """The chosen config and a one-line reason (see the module docstring for the rule)."""
    crit, target = plan["criterion"], plan["target_recall"]
    what = {"pq": "recall@10 of the code search", "rescored": "recall@10 with --rescore",
            "float": "recall@10 of the reduced float vectors"}[crit]
    best: dict[tuple, SweepConfig] = {}
    notes = []
    for cfg in configs:  # per (d, codec, bytes): the better map (on ties PCA, then no QAT)
        key = (cfg.dim, cfg.codec or "", cfg.code_bytes)
        cur = best.get(key)
        if cur is None or cfg.score(crit) > cur.score(crit) or (
                cfg.score(crit) == cur.score(crit) and _simpler(cfg) < _simpler(cur)):
            best[key] = cfg
    for key, cfg in sorted(best.items()):
        other = [o for o in configs if (o.dim, o.codec or "", o.code_bytes) == key
                 and o is not cfg]
        if not other:
            continue
        vs = ", ".join(f"{o.method}{qat_label(o.qat)} {fmt_float(o.score(crit))}" for o in other)
        where = candidate_text("", cfg.dim, cfg.codec, cfg.code_bytes).strip()
        notes.append(f"{where}: {cfg.method}{qat_label(cfg.qat)} {fmt_float(cfg.score(crit))} "
                     f"vs {vs}")
    ordered = sorted(best.values(), key=lambda c: (c.pq_bytes or 4 * c.dim, c.dim))
    if target is None:
        chosen = max(ordered, key=lambda c: (c.score(crit), -c.pq_bytes, -c.dim))
        reason = f"best {what}: {_name(chosen)} ({fmt_float(chosen.score(crit))})"
    else:
        ok = [c for c in ordered if c.score(crit) >= target]
        if not ok:
            top = max(ordered, key=lambda c: c.score(crit))
            return None, (f"no candidate reaches {what} >= {target} on {queries} held-out rows "
                          f"(best: {_name(top)}, {fmt_float(top.score(crit))})")
        chosen = ok[0]
        reason = (f"smallest candidate with {what} >= {target}: {_name(chosen)} "
                  f"({fmt_float(chosen.score(crit))})")
    if notes:
        rules = (["TLDR kept only when strictly better"] if len(plan["methods"]) > 1 else []) \
            + (["+QAT only when strictly better than the plain map"]
               if any(cfg.qat for cfg in configs) else [])
        reason += (f"; {'auto' if len(plan['methods']) > 1 else 'qat auto'} "
                   f"({', '.join(rules)}): " + "; ".join(notes))
    return chosen, reason + f"; measured on {queries} held-out rows"


def _simpler(c: SweepConfig) -> tuple[bool, bool]:
    """Order of preference between configs of equal recall: PCA first, then no QAT."""
    return c.method != "pca", c.qat is not None


def _name(c: SweepConfig) -> str:
    return f"{c.method} d={c.dim} {(c.codec or 'pq').upper()} {c.code_bytes} B{qat_label(c.qat)}"


def measured_line(configs: list[SweepConfig]) -> str:
    """Every candidate's recall@10 (PQ codes / with --rescore / reduced float vectors)."""
    return "; ".join(f"{_name(c)} {fmt_float(c.recall_pq)} / {fmt_float(c.recall_rescored)} / "
                     f"{fmt_float(c.recall_float)}" for c in configs)


def unreached_advice(configs: list[SweepConfig], plan: dict, source_dim: int, *,
                     owner: str) -> str:
    """What was measured and which flag values could reach ``plan["target_recall"]`` when no
    candidate does (``owner``: "shrink" or "sweep", whose flags differ: shrink's ``--pq-bytes``
    takes one size, sweep's a list). Rules, from the figures alone:

    * the rescored search reaches the target: name the smallest such candidate (``--rescore``);
    * the float vectors of some d reach it but its PQ codes do not: more PQ bytes at that d
      (divisors of d above the largest measured, at most d), or no codes (``--pq-bytes 0``);
    * no float vector reaches it: larger dims (below the source's dimension), since PQ recall
      is bounded by the float recall of the same d.
    """
    crit, target = plan["criterion"], plan["target_recall"]
    best = max(configs, key=lambda c: c.score(crit))
    tips = []

    def flags(d: int, pqs: list[int]) -> str:
        if owner == "sweep":
            return f"--dims {d} --pq-bytes {','.join(map(str, pqs))}"
        return f"--dim {d} --pq-bytes {pqs[0]}"

    if crit != "rescored":
        resc = sorted((c for c in configs if (c.recall_rescored or 0) >= target),
                      key=lambda c: (c.pq_bytes, c.dim))
        if resc:
            c = resc[0]
            tips.append(f"search --rescore reaches it: {_name(c)} gives "
                        f"{fmt_float(c.recall_rescored)} rescored (shrink --dim {c.dim} --pq-bytes "
                        f"{c.pq_bytes}, then search --rescore; sweep --criterion rescored "
                        f"selects on it)")
    if crit == "pq":
        floats = sorted((c for c in configs if c.recall_float >= target),
                        key=lambda c: (c.dim, c.method))
        if floats:
            c = floats[0]
            have = max(x.pq_bytes for x in configs if x.dim == c.dim)
            more = [p for p in range(have + 1, c.dim + 1) if c.dim % p == 0 and p >= 2 * have]
            more = more[:2] if owner == "sweep" else more[:1]
            if more:
                tips.append(f"the float vectors of d={c.dim} reach {fmt_float(c.recall_float)} "
                            f"but {have}-byte codes lose it: more PQ bytes at that d "
                            f"({flags(c.dim, more)}; bytes must divide d)")
            tips.append(f"or store no codes and search the float vectors "
                        f"({flags(c.dim, [0])}, recall@10 {fmt_float(c.recall_float)})")
    if not any(c.recall_float >= target for c in configs):
        top = max(configs, key=lambda c: (c.recall_float, -c.dim))
        big = max(c.dim for c in configs)
        larger = [d for d in (2 * big, 4 * big) if d < source_dim] or \
            ([source_dim - 1] if big < source_dim - 1 else [])
        if larger:
            tips.append(f"no measured d reaches it even as float vectors (best "
                        f"{fmt_float(top.recall_float)} at d={top.dim}): try larger dims "
                        f"(--dims {','.join(map(str, larger))})")
        else:
            tips.append(f"no d below the source's {source_dim} reaches it even as float vectors "
                        f"(best {fmt_float(top.recall_float)} at d={top.dim})")
    tips.append(f"or lower --target-recall to {fmt_float(best.score(crit))} or less")
    note = (" shrink's --pq-bytes takes one size; compare several first with tldr-index sweep "
            "--pq-bytes B,B,..." if owner == "shrink" else "")
    return (f"Measured recall@10 (PQ / rescored / float): {measured_line(configs)}. "
            f"What would help: {'; '.join(tips)}.{note}")


def stage_select(c: ShrinkRun) -> tuple[list[Path], SelectResult]:
    """The ``select`` stage of shrink (``method="auto"`` / ``target_recall``): measure
    ``c.select``'s candidates on held-out rows, pick one, and return the stage result
    (``chosen``, ``reason``, every candidate's figures). Raises when ``target_recall`` is out
    of reach."""
    plan = c.select
    c.progress.begin("select", len(planned_fits(plan)), "fits")
    models: dict = {}
    configs, q = measure(c, plan, models)
    chosen, reason = choose(configs, plan, q["queries"])
    if chosen is None:
        raise InvalidParameterError(
            f"The 'target_recall' parameter of shrink cannot be reached: {reason}. "
            f"{unreached_advice(configs, plan, c.src.dim, owner='shrink')}")
    log.info("Selection: %s.", reason)
    # the chosen map, as fitted and measured: the train stage writes it (no refit)
    out = c.work.stage_dir("select", clear=True)
    models[config_key(chosen)].save(out / training.SELECTED_MODEL)
    picked = {"method": chosen.method, "dim": chosen.dim, "codec": chosen.codec,
              "code_bytes": chosen.code_bytes, "pq_bytes": chosen.code_bytes}
    if chosen.qat:
        picked["qat"] = chosen.qat
    return [out / training.SELECTED_MODEL], SelectResult(
        chosen=picked, reason=reason, criterion=plan["criterion"],
        target_recall=plan["target_recall"], queries=q["queries"], query_kind=q["query_kind"],
        candidates=[config_dict(x) for x in configs])


# ---------------------------------------------------------------------------------- sweep

def sweep(source_uri: str, *, dims: Sequence[int] | None = None,
          pq_bytes: Sequence[int | None] | None = None, method: str = "tldr",
          target_recall: float | None = None, criterion: str = "pq", neighbors: int = 3,
          epochs: int | None = None, sample: int | None = None, eval_queries: int = 500,
          shortlist: int | None = None, device: str = "auto",
          work_dir: str | os.PathLike | None = None, keep_work: bool = True,
          random_state: int = 0, threads: int | None = None,
          progress: Progress | bool | None = None, vector_column: str | None = None,
          id_column: str | None = None, source_options: dict | None = None,
          codecs: Sequence[str] | None = None, bits: int | None = None,
          bytes: Sequence[int | None] | None = None,  # noqa: A002
          fit_options: FitOptions | dict | None = None) -> SweepResult:
    """Train ``method`` ("tldr", "pca" or "auto": both) at every d of ``dims`` (default 16, 32,
    64, 128 below the source's dimension), codec of ``codecs`` (default ``["pq"]``; ``bits`` for
    rabitq) and code size of ``bytes`` (alias ``pq_bytes``; default 16 or the largest size the
    codec can meet at d below it) from one scan and ONE kNN graph; with ``method="auto"`` or
    ``"none"`` also the identity map with each codec that meets the budget on the original
    vectors (see :func:`tldr_index.shrink.plan.selection_plan` for the candidate list); measure
    each on the same ``eval_queries`` held-out rows; choose as :func:`choose`
    (``target_recall``, ``criterion``).

    ``fit_options`` as :func:`tldr_index.shrink.shrink`'s; its ``qat`` ("auto", the default,
    "on", "off") fits the TLDR candidates the rule names through their codes
    (:mod:`tldr_index.shrink.qat_select`: ``auto`` measures them beside their plain version,
    labelled ``+QAT``; ``on`` every TLDR candidate, refused where one cannot). A QAT candidate
    costs its fine-tune (about 81 s for d=128, RQ 8 B on 40,000 rows,
    ``benchmarks/results/qat.md``).

    ``work_dir`` (default ``./tldr-work/sweep-<source name>-<hash>``) keeps the scan and the
    graph (``keep_work``), so a later sweep of the same source with the same ``sample``,
    ``neighbors`` and seed reuses them (other settings start it over). Other parameters as
    :func:`tldr_index.shrink.shrink`.
    """
    t_all = time.perf_counter()
    o = "sweep"
    p = plan_sweep(source_uri, dims=dims, pq_bytes=pq_bytes, method=method,
                   target_recall=target_recall, criterion=criterion, neighbors=neighbors,
                   epochs=epochs, sample=sample, eval_queries=eval_queries,
                   shortlist=shortlist, device=device, random_state=random_state,
                   threads=threads, vector_column=vector_column, id_column=id_column,
                   source_options=source_options, codecs=codecs, bits=bits, bytes=bytes,
                   fit_options=fit_options)
    prog = as_progress(progress)
    src, plan = p.src, p.select
    fingerprint = src.fingerprint()
    work = WorkDir(work_dir if work_dir is not None else default_sweep_work_dir(source_uri),
                   STAGES)
    resumed = work.open({"source": p.source_abs, "fingerprint": fingerprint, "target": "sweep",
                         "params": p.params, "threads": threads or auto_threads()},
                        resume=True, overwrite=True)
    threads = threads or work.state.get("threads") or auto_threads()
    engine = LocalEngine()
    c = ShrinkRun(src=src, work=work, progress=prog, engine=engine, source_uri=source_uri,
                  source_abs=p.source_abs, fingerprint=fingerprint, method=method,
                  neighbors=p.neighbors, epochs=epochs, sample=p.sample, device=device,
                  seed=p.seed, eval_queries=p.eval_queries, shortlist=p.shortlist,
                  batch_rows=p.params["batch_rows"], resumed=resumed, select=plan,
                  fit_options=p.fit_options)
    seconds: dict[str, float] = {}
    skipped: list[str] = []
    try:
        with thread_limit(threads, owner=o):
            run_stage(c, "scan", engine.scan, skipped, seconds)
            run_stage(c, "knn", stage_knn, skipped, seconds)
            t0 = time.perf_counter()
            prog.begin("select", len(planned_fits(plan)), "fits")
            configs, q = measure(c, plan)
            seconds["measure"] = time.perf_counter() - t0
            prog.end("select", seconds["measure"])
    finally:
        prog.close()
        work.release()
    chosen, reason = choose(configs, plan, q["queries"])
    if chosen is None and target_recall is not None:
        reason += ". " + unreached_advice(configs, plan, src.dim, owner="sweep")
    log.info("Sweep: %s.", reason.rstrip("."))
    if not keep_work:
        work.clear_all()
    seconds["total"] = time.perf_counter() - t_all
    configs.sort(key=lambda x: (x.pq_bytes or 4 * x.dim, x.dim, x.method, x.qat or ""))
    return SweepResult(source=src.uri, metric=src.distance, rows=c.results.scan.rows,
                       source_dim=src.dim, queries=q["queries"], query_kind=q["query_kind"],
                       criterion=criterion, target_recall=target_recall, configs=configs,
                       chosen=chosen, reason=reason,
                       knn_runs=0 if "knn" in skipped or method in ("pca", "none") else 1,
                       seconds=seconds)
