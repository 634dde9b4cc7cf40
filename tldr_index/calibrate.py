"""Calibrate a compact collection's recall table on the user's own queries:
``tldr_index.open(uri).calibrate(queries)`` / ``tldr-index calibrate``.

The table a code index stores at build (:mod:`tldr_index.recall_table`) is measured on held-out
*rows of the collection*, which are easier queries than most real ones (their neighbours are
near-copies in the same lists): on 1M interpolated MiniLM rows the table promised 0.95 at
nprobe 8 / shortlist 100, where the corpus's held-out queries got 0.737
(benchmarks/results/search.md). Calibration measures the same table (raw and rescored recall@k
per nprobe and shortlist) on queries the user gives, against exact search of the originals, and
stores it in the target in place of the build table (in the code index's JSON metadata, one
atomic switch of the target record: :meth:`connectors.Target.store_artifact`), where
``search(..., target_recall=R)`` and the default pick read it. The table says which kind it is
(``query_kind``: ``"queries"``, and ``queries``: how many).

Truth: the exact top ``k`` of each query among the target's rows, in the original space, read
from a rescore cache (:mod:`tldr_index.rescore_cache`: row positions directly; float16 rounding
of the originals, which can swap near ties) or else from the source (one scan of its ids and
vectors; ids not in the target are skipped). Cost: ``n x N x D`` multiply-adds for the truth
(at 1M x 384 and 500 queries ~2e11: tens of seconds on two cores) plus one read of the
originals (source: ``4 D`` bytes per row; cache: ``2 D``), then one index search per stored
nprobe of the ``n`` queries for the longest shortlist; memory: the blocks of
:func:`tldr_index.knn.exact_search` and ``n x 2k`` truth ids.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pyarrow as pa

from .errors import InvalidInputError
from .recall_table import RECALL_K, RecallTable, measure

log = logging.getLogger(__name__)

#: fewest queries a calibration accepts: the table's recall@10 of n queries has a standard error
#: of at most ``sqrt(R (1 - R) / n)`` (0.03 at R = 0.95, n = 50)
MIN_QUERIES = 50
#: what a calibrated table's ``query_kind`` says (a build table: ``"rows"`` or None)
QUERY_KIND = "queries"


def standard_error(recall: float, n: int) -> float:
    """Upper bound of the standard error of a mean recall ``recall`` over ``n`` queries (each
    query's recall in [0, 1]): ``sqrt(recall (1 - recall) / n)``."""
    return math.sqrt(max(recall * (1 - recall), 0.0) / max(n, 1))


def check_queries(n: int, owner: str = "calibrate") -> None:
    if n < MIN_QUERIES:
        raise InvalidInputError(
            f"The 'queries' parameter of {owner} must hold at least {MIN_QUERIES} queries (the "
            f"recall of fewer is too noisy to pick an nprobe from). Got {n} instead.")


def exact_truth(searcher, Q: np.ndarray, k: int, *, cache=None, source=None) -> np.ndarray:
    """``(n, k)`` target row positions of the exact top ``k`` of ``Q`` (original space, the
    model's metric) from ``cache`` (an opened :class:`~tldr_index.rescore_cache.RescoreCache`)
    or ``source`` (a connector Source; ids the target lacks are skipped, ``-1`` pads)."""
    from .knn import exact_search

    metric = searcher.model.metric
    if cache is not None:
        _, pos = exact_search(cache.array, Q, k, metric=metric, device="cpu")
        return pos
    from .evaluate import source_vectors

    svec = source_vectors(source)
    extra = min(svec.n_rows, 2 * k)
    _, spos = exact_search(svec, Q, extra, metric=metric, device="cpu")
    import pyarrow.compute as pc

    sids = svec.ids[np.where(spos >= 0, spos, 0)]
    tids = searcher.ids
    at = pc.index_in(pa.array(sids.ravel()).cast(tids.type), value_set=tids)
    tpos = np.asarray(at.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
    tpos = np.where(spos.ravel() >= 0, tpos, -1).reshape(spos.shape)
    out = np.full((len(Q), k), -1, np.int64)
    for i, row in enumerate(tpos):
        got = row[row >= 0][:k]
        out[i, :len(got)] = got
    return out


def calibrated_table(searcher, Q: np.ndarray, k: int = RECALL_K, *, cache=None,
                     source=None) -> RecallTable:
    """The recall table of ``searcher``'s code index measured on queries ``Q`` (original space,
    checked) against their exact top ``k`` (see the module docstring)."""
    index = searcher.index
    model = searcher.model
    truth = exact_truth(searcher, Q, k, cache=cache, source=source)
    Yp = model.prepare(model.encode(Q))
    own = np.full(len(Q), -1, np.int64)  # queries are not rows: nothing to drop
    table = measure(lambda q, n, p: index.search(q, min(n, index.n), nprobe=p)[1], index.nlist,
                    index.n, Yp, own, truth, truth_space="original", k=k)
    table.query_kind = QUERY_KIND
    return table


def open_truth_source(searcher, *, rescore_cache: str | os.PathLike | None = None,
                      source: str | None = None, source_options: dict | None = None):
    """``(cache, source)``, one of them None: where the truth of a calibration is read (the
    rescore cache when given, checked against the searcher's rows; else the source)."""
    from .rescore_cache import RescoreCache
    from .search import open_source_of

    tgt, dim = searcher.target, searcher.model.input_dim
    if rescore_cache is not None:
        return RescoreCache.open(rescore_cache, searcher.ids, dim, tgt.uri), None
    src = open_source_of(tgt, source, **(source_options or {}))
    if src.dim != dim:
        raise InvalidInputError(
            f"Source '{src.uri}' has {src.dim}-d vectors but the model of target '{tgt.uri}' "
            f"expects {dim}-d input; calibrate against the source it was shrunk from (source=, "
            f"--source).")
    return None, src


def store_table(live, searcher, table: RecallTable):
    """Store a copy of ``searcher``'s code index carrying ``table`` in ``live`` (the target
    opened again): one atomic switch of its record. Raises :class:`InvalidInputError` (nothing
    stored) if the target changed since ``searcher`` read it. Returns the stored index."""
    from .code_index import ARTIFACT_NAME

    if live.version_key() != searcher.target.version_key():
        raise InvalidInputError(
            f"Target '{live.uri}' changed while calibrate measured it (another writer); nothing "
            f"was stored. Call refresh() and calibrate again.")
    index = searcher.index.copy()
    index.recall_table = table
    live.store_artifact(ARTIFACT_NAME, index.to_bytes())
    return index


__all__ = ["calibrated_table", "open_truth_source", "store_table", "check_queries", "exact_truth", "standard_error", "MIN_QUERIES",
           "QUERY_KIND"]
