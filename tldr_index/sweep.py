"""Compatibility module: selection (``sweep``, ``method="auto"``, ``target_recall``) lives in
:mod:`tldr_index.shrink.select` now; its public names are re-exported unchanged."""

from .shrink.plan import CRITERIA, DEFAULT_DIMS, selection_plan  # noqa: F401
from .shrink.select import (EXIT_NOT_REACHED, PQ_TRAIN_ROWS, SweepConfig,  # noqa: F401
                            SweepResult, choose, measure, measured_line, stage_select, sweep,
                            unreached_advice)
