"""The recall table a code index stores (:class:`tldr_index.code_index.CodeIndex`), measured at
build on held-out rows, and how a search picks its ``nprobe`` and rescoring shortlist from it.

A table of format 2 holds, per ``nprobe`` (powers of two up to ``nlist``, plus ``nlist``: the
exhaustive scan) and per shortlist size ``S`` (:data:`RECALL_SHORTLISTS`, capped by the rows):

* ``raw[p]``: recall@10 of the indexed search's own top 10 against the true top 10;
* ``rescored[p][s]``: recall@10 after an exact re-ranking of the top ``S``, which is
  ``|top S ∩ true top 10| / 10``: an exact re-ranking of a shortlist ranks every true neighbour it
  holds above every other row it holds (they are the 10 nearest of all rows), so the re-ranked
  top 10 contains exactly the true neighbours of the shortlist (ties aside). No original vector
  is fetched to measure it;
* ``vs_exhaustive[p]``: overlap of the top 10 with the exhaustive code scan's top 10.

"True top 10" is exact search in the *original* space (``truth = "original"``: what shrink's
encode stage computes for its recall estimate, and what search's rescoring approaches) or, where
no originals were at hand (``reindex``), exact search of the reduced vectors indexed
(``truth = "reduced"``). The held-out queries are rows of the collection: each query's own row is
dropped from every list before counting (self excluded, as in the truth).

Tables of format 1 (indexes written before this one) hold ``vs_exhaustive`` and ``vs_exact``
(recall@10 vs exact reduced search, self included) only; :class:`RecallTable` reads both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidParameterError
from .validation import check_float

#: nprobe values tried for the recall table (those < nlist, plus nlist itself)
RECALL_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: shortlist sizes of the rescored table (those < the rows, plus rows - 1 if smaller)
RECALL_SHORTLISTS = (10, 20, 50, 100, 200, 400, 1000)
#: k of the stored recall table (recall@10)
RECALL_K = 10
#: the cost of re-ranking one shortlisted row (fetch its original by random access and compute
#: one exact D-dim distance), in scanned codes (a code costs its M table lookups): used to rank
#: (nprobe, shortlist) pairs, ``cost = nprobe x rows per list + ROW_COST x shortlist``. From RAM
#: (a float16 cache) a row costs ~0.3-1 us against ~1-3 ns per code; from a store, far more.
ROW_COST = 256
#: the default nprobe stays within this of the all-lists recall (raw; rescored: at the longest
#: shortlist of the table)
SATURATION_GAP = 0.001
#: the rescored recall of the table the default shortlist reaches. Held-out *database rows* are
#: easier queries than most real ones (measured on 250k interpolated MiniLM rows with the
#: corpus's held-out queries: the table said 0.985 at nprobe 64 / shortlist 100, the queries got
#: 0.889, the exhaustive scan 0.905), so the default asks the table for more than the 0.95 it
#: aims at, and for an nprobe that loses (almost) nothing even at the longest shortlist.
DEFAULT_TABLE_RECALL = 0.999
# (0.99 before the fast-scan lists. benchmarks/results/search.md, 1M interpolated rows,
# IVF2000, fast-scan 12 B, nprobe 64: the table's rows reach 0.978 at shortlist 100 and 0.9995
# at 1,000 where the corpus's held-out queries got 0.778 and 0.952: only the 0.999 column keeps
# them at 0.95)
#: and the default rescored search probes at least this fraction of the lists: the table's
#: queries find their neighbours in too few lists. Measured with the corpus's held-out queries
#: (benchmarks/shrink.py and benchmarks/search.py, interpolated MiniLM rows, TLDR d=64 + PQ16):
#: at 250k rows / 1,000 lists, nprobe 128 stays 1.0-1.2 points below the exhaustive scan at
#: shortlists 200-400 and nprobe 256 0.25 points (0.9535 vs 0.956 at 200); at 1M / 2,000 lists
#: the table saturates at nprobe 32, where the queries are 1.9-3.2 points below the exhaustive
#: scan at shortlists 100-400 (nprobe 128: 0.7-1.0 points).
DEFAULT_MIN_PROBE_FRACTION = 1 / 32
# (0.25 before the fast-scan lists and the 0.999 shortlist rule. benchmarks/results/search.md,
# 1M / 2,000 lists, fast-scan 12 B, shortlist 1,000, one core: the held-out queries got 0.939 at
# nprobe 32, 0.953 at 63 and 0.962 at 128, at 1,391, 1,304 and 949 queries per CPU second
# (scan + rescoring from the float16 cache), so 1/32 of the lists keeps 0.95; a quarter (500)
# scans 8x the codes of 63.)


@dataclass
class RecallTable:
    """See the module docstring. Lists are per ``nprobe`` (ascending); ``rescored`` is
    ``[nprobe][shortlist]``. ``truth`` is None in a format-1 table (or one built without exact
    recall)."""

    nprobe: list[int] = field(default_factory=list)
    vs_exhaustive: list[float] = field(default_factory=list)
    vs_exact: list[float] | None = None
    k: int = RECALL_K
    queries: int = 0
    shortlist: list[int] | None = None
    raw: list[float] | None = None
    rescored: list[list[float]] | None = None
    truth: str | None = None
    #: what the queries were: "rows" (held-out rows of the collection, self excluded: the
    #: table stored at build; None in tables written before this field) or "queries" (the
    #: user's own, :mod:`tldr_index.calibrate`)
    query_kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"nprobe": self.nprobe, "vs_exhaustive": self.vs_exhaustive,
                "vs_exact": self.vs_exact, "k": self.k, "queries": self.queries,
                "shortlist": self.shortlist, "raw": self.raw, "rescored": self.rescored,
                "truth": self.truth, "query_kind": self.query_kind}

    @property
    def calibrated(self) -> bool:
        """True for a table measured on the user's queries (:mod:`tldr_index.calibrate`)."""
        return self.query_kind == "queries"

    def describe(self) -> str:
        """Which queries the table was measured on, in words."""
        if self.calibrated:
            return f"{self.queries} user queries (calibrate)"
        return f"{self.queries} held-out collection rows (self excluded)"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RecallTable":
        """Format 1 (no shortlist/raw/rescored/truth keys) or 2."""
        return cls(nprobe=list(d["nprobe"]), vs_exhaustive=list(d["vs_exhaustive"]),
                   vs_exact=d.get("vs_exact"), k=int(d["k"]), queries=int(d["queries"]),
                   shortlist=d.get("shortlist"), raw=d.get("raw"), rescored=d.get("rescored"),
                   truth=d.get("truth"), query_kind=d.get("query_kind"))

    @property
    def has_rescored(self) -> bool:
        """True for a format-2 table (raw and rescored recall against a truth)."""
        return bool(self.nprobe) and self.rescored is not None and self.raw is not None

    def rows(self) -> list[tuple[int, float, float | None]]:
        ex = self.vs_exact or self.raw or [None] * len(self.nprobe)
        return list(zip(self.nprobe, self.vs_exhaustive, ex))

    # -- picking -------------------------------------------------------------------------------
    def _row_at_most(self, nprobe: int) -> int:
        """Index of the largest stored nprobe <= ``nprobe`` (recall grows with nprobe: a
        conservative estimate for an nprobe the table does not hold)."""
        return max(i for i, p in enumerate(self.nprobe) if p <= nprobe) \
            if nprobe >= self.nprobe[0] else 0

    def raw_nprobe(self, target: float | None, owner: str) -> int:
        """nprobe of a search without rescoring: the smallest whose ``raw`` recall reaches
        ``target``; default (None): the smallest within :data:`SATURATION_GAP` of every list's."""
        raw = self.raw
        if target is None:
            return next(p for p, r in zip(self.nprobe, raw) if r >= raw[-1] - SATURATION_GAP)
        target = check_float(target, "target_recall", low=0.0, high=1.0, owner=owner)
        return self.smallest_nprobe(raw, target, owner, "exact")

    def smallest_nprobe(self, col: list[float], target: float, owner: str, against: str) -> int:
        """The smallest stored nprobe whose recall in ``col`` (one value per nprobe, against
        ``against`` search) reaches ``target``; beyond the table, one error naming the best."""
        for p, r in zip(self.nprobe, col):
            if r >= target:
                return int(p)
        best = int(np.argmax(col))
        raise InvalidParameterError(
            f"The 'target_recall' parameter of {owner} must be at most the best recall@{self.k} "
            f"the stored table reaches against {against} search ({col[best]} at nprobe "
            f"{self.nprobe[best]}). Got {target} instead.")

    def rescored_choice(self, target: float | None, owner: str, *, rows_per_list: float,
                        default_recall: float = DEFAULT_TABLE_RECALL, nprobe: int | None = None,
                        shortlist: int | None = None, min_shortlist: int = 0
                        ) -> tuple[int, int]:
        """``(nprobe, shortlist)`` of a rescored search, with ``nprobe`` and/or ``shortlist``
        fixed where given (a value the table lacks reads the row/column of the largest stored
        one below it).

        With ``target``: the cheapest stored pair (see :data:`ROW_COST`) whose ``rescored``
        recall reaches it; beyond the table, one error naming the best pair. Default (``target``
        None): the smallest nprobe whose rescored recall at the longest shortlist is within
        :data:`SATURATION_GAP` of every list's, raised to :data:`DEFAULT_MIN_PROBE_FRACTION` of
        the lists, then the smallest shortlist whose recall at that nprobe reaches
        ``default_recall`` (else the longest) among those of at least ``min_shortlist`` rows
        (the searcher passes the shortlist of a search without an index, so that the default
        never re-ranks fewer rows than the exhaustive scan did): see
        :data:`DEFAULT_TABLE_RECALL` and :data:`DEFAULT_MIN_PROBE_FRACTION` for why the
        default is conservative."""
        R, Ss, ps = self.rescored, self.shortlist, self.nprobe
        si = list(range(len(Ss))) if shortlist is None else [
            max([j for j, s in enumerate(Ss) if s <= shortlist], default=0)]
        pi = list(range(len(ps))) if nprobe is None else [self._row_at_most(nprobe)]

        def cost(i: int, j: int) -> float:
            return ps[i] * rows_per_list + ROW_COST * Ss[j]

        if target is None:
            jl = si[-1]
            if nprobe is None:
                i = next(i for i in pi if R[i][jl] >= R[-1][jl] - SATURATION_GAP)
                nprobe = max(ps[i], min(ps[-1], math.ceil(DEFAULT_MIN_PROBE_FRACTION * ps[-1])))
            i = self._row_at_most(nprobe)
            long_enough = [j for j in si if Ss[j] >= min_shortlist] or si[-1:]
            j = next((j for j in long_enough if R[i][j] >= default_recall), long_enough[-1])
        else:
            target = check_float(target, "target_recall", low=0.0, high=1.0, owner=owner)
            pairs = [(cost(i, j), i, j) for i in pi for j in si if R[i][j] >= target]
            if not pairs:
                bi, bj = max(((i, j) for i in pi for j in si),
                             key=lambda ij: (R[ij[0]][ij[1]], -cost(*ij)))
                raise InvalidParameterError(
                    f"The 'target_recall' parameter of {owner} must be at most the best rescored "
                    f"recall@{self.k} the stored table reaches ({R[bi][bj]} at nprobe {ps[bi]}, "
                    f"shortlist {Ss[bj]}). Got {target} instead.")
            _, i, j = min(pairs)
        return int(nprobe if nprobe is not None else ps[i]), int(
            shortlist if shortlist is not None else Ss[j])


def overlap(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, how many of ``truth``'s ids (``-1``: none) are among ``found``'s."""
    hit = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return hit.any(axis=1).sum(axis=1)


def drop_self(I: np.ndarray, own: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` ids of each row of ``I`` other than the row's own id; ``-1`` pads."""
    bad = (I == own[:, None]) | (I < 0)
    order = np.argsort(bad, axis=1, kind="stable")[:, :n]
    out = np.take_along_axis(I, order, axis=1)
    out[np.take_along_axis(bad, order, axis=1)] = -1
    return out


def measure(search: Callable[[np.ndarray, int, int], np.ndarray], nlist: int, n_rows: int,
            queries: np.ndarray, own: np.ndarray, truth: np.ndarray | None, *,
            truth_space: str | None, nprobes: tuple[int, ...] = RECALL_NPROBES,
            shortlists: tuple[int, ...] = RECALL_SHORTLISTS, k: int = RECALL_K) -> RecallTable:
    """The table of an index (module docstring). ``search(Q, n, nprobe)`` returns row positions
    ``(len(Q), n)`` best first; ``queries`` are the rows ``own`` of the collection; ``truth``
    ``(len(Q), k)`` their true neighbours (self excluded), or None for ``vs_exhaustive`` only.

    Cost: one search per nprobe of ``len(queries)`` queries for the largest shortlist + 1
    candidates (the ``nlist`` one is an exhaustive scan; the others ``nprobe / nlist`` of it)."""
    ps = sorted({p for p in nprobes if p < nlist} | {nlist})
    cap = max(1, n_rows - 1)
    k = min(k, cap)
    Ss = sorted({min(s, cap) for s in shortlists if min(s, cap) >= k} | {k})
    top_n = max(Ss)
    own = np.asarray(own, dtype=np.int64)
    full = drop_self(search(queries, top_n + 1, nlist), own, top_n)
    t = RecallTable(nprobe=ps, vs_exhaustive=[], k=k, queries=len(queries), query_kind="rows")
    if truth is not None:
        t.shortlist, t.raw, t.rescored, t.truth = Ss, [], [], truth_space
    ex10 = full[:, :k]
    for p in ps:
        top = full if p == nlist else drop_self(search(queries, top_n + 1, p), own, top_n)
        t.vs_exhaustive.append(round(float(overlap(top[:, :k], ex10).mean()) / k, 4))
        if truth is not None:
            t.raw.append(round(float(overlap(top[:, :k], truth).mean()) / k, 4))
            t.rescored.append([round(float(overlap(top[:, :s], truth).mean()) / k, 4)
                               for s in Ss])
    return t


def check_eval(rows: Any, truth: Any, n: int, owner: str
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``eval_rows`` / ``eval_truth`` of :meth:`tldr_index.code_index.CodeIndex.build` (held-out
    row positions and their true top k) checked: both or neither, positions in ``[0, n)``."""
    if rows is None and truth is None:
        return None, None
    if rows is None or truth is None:
        which = "eval_truth" if rows is not None else "eval_rows"
        raise InvalidParameterError(f"The 'eval_rows' and 'eval_truth' parameters of {owner} go "
                                    f"together: pass both or neither. Got no {which}.")
    rows = np.asarray(rows)
    truth = np.asarray(truth)
    if rows.ndim != 1 or rows.dtype.kind not in "iu" or (len(rows) and (
            rows.min() < 0 or rows.max() >= n)):
        raise InvalidInputError(f"The 'eval_rows' input of {owner} must be a 1-d array of row "
                                f"positions in [0, {n}). Got shape {rows.shape}, dtype "
                                f"{rows.dtype} instead.")
    if truth.ndim != 2 or truth.shape[0] != len(rows) or truth.dtype.kind not in "iu":
        raise InvalidInputError(f"The 'eval_truth' input of {owner} must be an int array of "
                                f"shape ({len(rows)}, k). Got shape {truth.shape}, dtype "
                                f"{truth.dtype} instead.")
    return rows.astype(np.int64), truth.astype(np.int64)


def scaled_shortlist(shortlist: int, k: int, table_k: int) -> int:
    """A table shortlist for recall@``table_k`` applied to a search for ``k`` neighbours:
    ``max(k, ceil(shortlist x k / table_k))`` (an approximation for ``k > table_k``)."""
    return max(k, shortlist if k <= table_k else math.ceil(shortlist * k / table_k))


__all__ = ["RecallTable", "measure", "check_eval", "overlap", "drop_self", "scaled_shortlist",
           "RECALL_NPROBES", "RECALL_SHORTLISTS", "RECALL_K", "ROW_COST", "SATURATION_GAP",
           "DEFAULT_TABLE_RECALL", "DEFAULT_MIN_PROBE_FRACTION"]
