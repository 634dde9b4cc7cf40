"""``tldr_index.shrink``: a vector collection in, a compact collection out.

Modules, in the order a run uses them:

=================  ==============================================================================
plan               every parameter and cross-parameter check: :func:`plan_shrink` ->
                   :class:`ShrinkPlan` (also :func:`plan_sweep`, :func:`default_target`)
budget             the codec and its byte budget (``codec``, ``bits``, ``bytes``) at a dimension
run, results       the run's state (:class:`ShrinkRun`) and the typed, checkpointed stage results
workdir            the work directory: checkpoints re-checked by size and sha256
engine             :class:`LocalEngine` / :class:`RayEngine` (scan and write), chosen once
scan, ray_scan     the ``scan`` stage (this node / Ray tasks)
train              the ``knn`` and ``train`` stages
select             the ``select`` stage and :func:`sweep` (several candidates, one kNN graph)
measure            each candidate map x codec searched on the held-out rows (for ``select``)
encode             the ``encode`` stage and the recall estimate
write              ``write``, ``verify`` and ``publish`` (one sink transaction)
report             :class:`ShrinkReport`
api                :func:`shrink`
=================  ==============================================================================
"""

from .api import run_plan, shrink
from .budget import CODECS, DEFAULT_CODEC
from .engine import LocalEngine, RayEngine, make_engine
from .options import FitOptions, GraphOptions
from .plan import (DEFAULT_EVAL_QUERIES, DEFAULT_PQ_BYTES, DEFAULT_SAMPLE, ENGINE_OPTIONS, ENGINES,
                   METHODS, STAGES, ShrinkPlan, SweepPlan, check_engine_options, default_pq_bytes,
                   default_sample, default_target, default_work_dir, plan_shrink, plan_sweep)
from .report import ShrinkReport
from .run import ShrinkRun
from .select import EXIT_NOT_REACHED, SweepConfig, SweepResult, sweep

__all__ = ["shrink", "run_plan", "ShrinkReport", "ShrinkPlan", "SweepPlan", "plan_shrink",
           "plan_sweep", "check_engine_options", "default_pq_bytes", "default_target",
           "default_work_dir", "ShrinkRun", "LocalEngine", "RayEngine", "make_engine", "sweep",
           "SweepConfig", "SweepResult", "EXIT_NOT_REACHED", "STAGES", "METHODS", "ENGINES",
           "ENGINE_OPTIONS", "DEFAULT_SAMPLE", "DEFAULT_PQ_BYTES", "DEFAULT_EVAL_QUERIES",
           "CODECS", "DEFAULT_CODEC", "GraphOptions", "FitOptions", "default_sample"]
