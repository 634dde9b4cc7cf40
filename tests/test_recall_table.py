"""The recall table of the code index (tldr_index.recall_table): its rescored recall equals an
actual exact re-ranking of the shortlist, searches pick (nprobe, shortlist) from it, a target
beyond it gets one clear error, and an index of format 1 (no rescored table) still loads and
keeps the old rules. Small seeded structured data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import make_structured

from tldr_index.code_index import CodeIndex
from tldr_index.codecs import get_codec
from tldr_index.errors import InvalidInputError, InvalidParameterError
from tldr_index.recall_table import (DEFAULT_MIN_PROBE_FRACTION, DEFAULT_TABLE_RECALL,
                                     ROW_COST, SATURATION_GAP, RecallTable, drop_self)
from tldr_index.search import rerank

D_ORIG, D = 24, 8


@pytest.fixture(scope="module")
def built():
    """Originals (2,000 x 24), a reduced view (first 8 coordinates, normalised), PQ codes of
    it, the true top 10 in the original space of 60 rows (self excluded), and the index."""
    X = make_structured(2000, D_ORIG, latent=6, clusters=10, seed=4)
    Z = X[:, :D] / np.linalg.norm(X[:, :D], axis=1, keepdims=True)
    codec = get_codec("pq", D, bytes=4, n_iter=5).fit(Z, seed=0)
    codes = codec.encode(Z)
    rows = np.sort(np.random.default_rng(1).choice(len(X), 60, replace=False))
    sims = X[rows] @ X.T
    sims[np.arange(len(rows)), rows] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :10]
    index = CodeIndex.build(Z, codes, codec, metric="cosine", eval_rows=rows, eval_truth=truth)
    return X, Z, codec, codes, rows, truth, index


def test_rescored_recall_equals_an_exact_rerank_of_the_shortlist(built):
    X, Z, _, _, rows, truth, index = built
    t = index.recall_table
    assert t.truth == "original" and t.queries == 60 and t.k == 10
    assert t.shortlist == [10, 20, 50, 100, 200, 400, 1000] and t.nprobe[-1] == index.nlist
    for i, p in enumerate(t.nprobe):
        _, I = index.search(Z[rows], 1001, nprobe=p)
        for j, s in enumerate(t.shortlist):
            cand = drop_self(I, rows, s)
            _, top = rerank(X[rows], cand, lambda keys: X[keys], 10, "cosine")
            got = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(top, truth)])
            assert t.rescored[i][j] == pytest.approx(got, abs=1e-4), (p, s)
        raw = np.mean([len(np.intersect1d(a, b)) / 10
                       for a, b in zip(drop_self(I, rows, 10), truth)])
        assert t.raw[i] == pytest.approx(raw, abs=1e-4)
    # a longer shortlist never loses recall (a superset); every list probed = the exhaustive
    # scan; more lists help long shortlists
    R = np.array(t.rescored)
    assert (np.diff(R, axis=1) >= 0).all()
    assert t.vs_exhaustive[-1] == 1.0 and R[-1, -1] > R[0, -1]


def _pairs(t: RecallTable, rows_per_list: float):
    return [(p * rows_per_list + ROW_COST * s, p, s, t.rescored[i][j])
            for i, p in enumerate(t.nprobe) for j, s in enumerate(t.shortlist)]


def test_the_cheapest_pair_reaching_the_target(built):
    *_, index = built
    t = index.recall_table
    rpl = index.n / index.nlist
    pairs = _pairs(t, rpl)
    target = sorted(r for *_, r in pairs)[len(pairs) // 2]
    want = min((c, p, s) for c, p, s, r in pairs if r >= target)[1:]
    assert t.rescored_choice(target, "o", rows_per_list=rpl) == want
    # default: the smallest nprobe within SATURATION_GAP of every list at the longest
    # shortlist, then the shortest shortlist reaching DEFAULT_TABLE_RECALL there
    p, s = t.rescored_choice(None, "o", rows_per_list=rpl)
    sat = next(i for i, row in enumerate(t.rescored)
               if row[-1] >= t.rescored[-1][-1] - SATURATION_GAP)
    assert p == max(t.nprobe[sat], math.ceil(DEFAULT_MIN_PROBE_FRACTION * index.nlist))
    i = max(i for i, q in enumerate(t.nprobe) if q <= p)
    j = t.shortlist.index(s)
    assert t.rescored[i][j] >= DEFAULT_TABLE_RECALL or s == t.shortlist[-1]
    assert all(v < DEFAULT_TABLE_RECALL for v in t.rescored[i][:j])
    # a fixed shortlist: the smallest nprobe reaching the target at that column
    p2, s2 = t.rescored_choice(0.0, "o", rows_per_list=rpl, shortlist=100)
    assert (p2, s2) == (t.nprobe[0], 100)
    # the table beyond reach: one error naming the best pair (ties: the cheapest)
    small = RecallTable(nprobe=[1, 4], vs_exhaustive=[0.5, 1.0], shortlist=[10, 100],
                        raw=[0.3, 0.4], rescored=[[0.3, 0.8], [0.4, 0.8]], truth="original")
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'target_recall' parameter of search must be at most the best rescored "
            "recall@10 the stored table reaches (0.8 at nprobe 1, shortlist 100). Got 0.9 "
            "instead.")):
        small.rescored_choice(0.9, "search", rows_per_list=100)
    # the default beyond the table: the longest shortlist, the smallest saturated nprobe
    assert small.rescored_choice(None, "s", rows_per_list=100) == (1, 100)  # ceil(4 / 4) = 1
    assert small.rescored_choice(None, "s", rows_per_list=100, default_recall=0.35) == (1, 100)
    assert small.rescored_choice(None, "s", rows_per_list=100, nprobe=4,
                                 default_recall=0.35) == (4, 10)
    # min_shortlist: the default skips the shorter columns (even those reaching the recall),
    # and past the longest column takes the longest
    assert small.rescored_choice(None, "s", rows_per_list=100, nprobe=4, default_recall=0.35,
                                 min_shortlist=11) == (4, 100)
    assert small.rescored_choice(None, "s", rows_per_list=100, nprobe=4, default_recall=0.35,
                                 min_shortlist=500) == (4, 100)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'target_recall' parameter of s must be at most the best recall@10 the stored "
            "table reaches against exact search (0.4 at nprobe 4). Got 0.5 instead.")):
        small.raw_nprobe(0.5, "s")
    assert small.raw_nprobe(None, "s") == 4 and small.raw_nprobe(0.3, "s") == 1


def test_format_1_tables_still_load(built):
    *_, codec, codes, _, _, index = built
    data = index.to_bytes()
    n = int.from_bytes(data[:8], "little")
    head = json.loads(data[8:8 + n])
    info = json.loads(head["__metadata__"]["info"])
    t = info["recall_table"]
    info["recall_table"] = {"nprobe": t["nprobe"], "vs_exhaustive": t["vs_exhaustive"],
                            "vs_exact": [0.4] * len(t["nprobe"]), "k": 10, "queries": 60}
    head["__metadata__"]["info"] = json.dumps(info, sort_keys=True)
    head["__metadata__"]["format_version"] = "1"
    new_head = json.dumps(head).encode()
    new_head += b" " * (-len(new_head) % 8)
    old = len(new_head).to_bytes(8, "little") + new_head + data[8 + n:]
    back = CodeIndex.from_bytes(old, codes, codec)
    assert not back.recall_table.has_rescored and back.recall_table.vs_exact[0] == 0.4
    assert back.default_nprobe() == min(p for p, r in zip(t["nprobe"], t["vs_exhaustive"])
                                        if r >= 0.95)
    assert back.nprobe_for(0.4, against="exact") == t["nprobe"][0]


def test_eval_rows_errors(built):
    _, Z, codec, codes, rows, truth, _ = built
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'eval_rows' and 'eval_truth' parameters of CodeIndex.build go together: pass "
            "both or neither. Got no eval_truth.")):
        CodeIndex.build(Z, codes, codec, eval_rows=rows)
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'eval_rows' input of CodeIndex.build must be a 1-d array of row positions in "
            "[0, 2000). Got shape (60,), dtype int64 instead.")):
        CodeIndex.build(Z, codes, codec, eval_rows=rows + 2000, eval_truth=truth)
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'eval_truth' input of CodeIndex.build must be an int array of shape (60, k). "
            "Got shape (59, 10), dtype int64 instead.")):
        CodeIndex.build(Z, codes, codec, eval_rows=rows, eval_truth=truth[1:])
