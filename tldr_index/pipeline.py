"""Compatibility module: ``shrink`` lives in :mod:`tldr_index.shrink` now. The public names
other modules, tests and examples import from here are re-exported unchanged."""

from connectors import disk_bytes  # noqa: F401

from .search import adc_topk, default_shortlist, info, recall_at_k, rerank, search  # noqa: F401
from .shrink.api import run_plan, shrink  # noqa: F401
from .shrink.encode_batches import CODES_COLUMN, FLOAT16_MAX  # noqa: F401
from .shrink.plan import (DEFAULT_EVAL_QUERIES, DEFAULT_PQ_BYTES, DEFAULT_SAMPLE,  # noqa: F401
                          ENGINE_OPTIONS, ENGINES, METHODS, STAGES, default_pq_bytes,
                          default_target, default_work_dir)
from .shrink.report import ShrinkReport  # noqa: F401
from .shrink.run import run_stage  # noqa: F401
from .shrink.sampling import sample_rows  # noqa: F401
from .shrink.scan import check_scan_counts  # noqa: F401
from .shrink.train import fit_reducer  # noqa: F401
