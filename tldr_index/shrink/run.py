"""The state of one shrink (or sweep) run, and running one checkpointed stage of it."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..code_index import INDEX_MIN_ROWS
from ..errors import Interrupted, InvalidInputError
from ..progress import Progress
from .budget import DEFAULT_CODEC
from .memory import release_free_memory
from .options import FitOptions, GraphOptions
from .results import StageResult, StageResults
from .sampling import train_store
from .workdir import WorkDir


@dataclass
class ShrinkRun:
    """What the stages of a run read and write. ``method``/``dim``/``codec``/``code_bytes`` are the
    fitted
    ones (set by the ``select`` stage when a selection chooses them); ``engine`` is a
    :class:`tldr_index.shrink.engine.Engine`; ``results`` fills as stages finish."""

    src: Any
    work: WorkDir
    progress: Progress
    engine: Any
    source_uri: str
    source_abs: str
    fingerprint: str
    method: str
    neighbors: int
    epochs: int | None
    sample: int
    device: str
    seed: int
    eval_queries: int
    shortlist: int
    batch_rows: int
    resumed: bool
    select: dict | None = None
    dim: int | None = None
    code_bytes: int | None = None
    codec: str = DEFAULT_CODEC
    target_uri: str = ""
    reduced_dtype: str = "float16"
    overwrite: bool = False
    sink_options: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    published_already: bool = False
    skip_invalid: bool = False
    index_min_rows: int = INDEX_MIN_ROWS
    graph_options: GraphOptions = field(default_factory=GraphOptions)
    fit_options: FitOptions = field(default_factory=FitOptions)
    results: StageResults = field(default_factory=StageResults)
    #: per stage run here: CPU seconds (every thread) and the process's peak RSS after it (MB)
    usage: dict = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.src.distance

    @property
    def root(self) -> Path:
        """The work directory."""
        return self.work.root

    def train_store(self):
        """The run's training sample (:func:`tldr_index.shrink.sampling.train_store`)."""
        return train_store(self.work.root)

    def apply_selection(self) -> None:
        """Fit what the ``select`` stage chose."""
        sel = self.results.select
        if sel is not None and sel.chosen:
            ch = sel.chosen
            self.method, self.dim = ch["method"], ch["dim"]
            self.codec = ch.get("codec", "pq")
            self.code_bytes = ch.get("code_bytes", ch.get("pq_bytes"))


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MB (``ru_maxrss``: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def record_usage(run: "ShrinkRun", stage: str, cpu0: float) -> None:
    """Note ``stage``'s CPU seconds since ``cpu0`` (``time.process_time``) and the peak RSS."""
    run.usage[stage] = {"cpu_s": round(time.process_time() - cpu0, 3),
                        "peak_rss_mb": round(peak_rss_mb(), 1)}


StageFn = Callable[[ShrinkRun], tuple[list[Path], StageResult]]


def run_stage(run: ShrinkRun, stage: str, fn: StageFn, skipped: list, seconds: dict) -> None:
    """Run ``fn(run)`` as ``stage`` (or skip it when a resumed run has its checkpoint); records
    its result in ``run.results`` and its checkpoint in the work directory."""
    work, prog = run.work, run.progress
    rec = work.done(stage) if run.resumed else None
    if rec is not None:
        run.results.load(stage, rec["info"])
        skipped.append(stage)
        prog.end(stage, 0.0, note="checkpoint")
        return
    work.clear_after(stage)
    release_free_memory()  # the stage starts from what is live, not from the last one's holes
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        files, result = fn(run)
    except InvalidInputError:
        if stage == "scan":
            work.clear_all()  # bad source data: nothing worth keeping
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: say where; the checkpoints stay for --resume
        raise Interrupted.wrap(exc, stage, str(work.root)) from None
    seconds[stage] = time.perf_counter() - t0
    record_usage(run, stage, cpu0)
    result.seconds = seconds[stage]
    run.results.set(stage, result)
    work.mark_done(stage, files, result.to_json())
    prog.end(stage, seconds[stage])
