"""The code index in the product: built by ``shrink`` from ``index_min_rows`` rows and stored in
Lance and Parquet targets, used by ``search`` / ``CompactCollection.search`` (``nprobe``,
``target_recall``, ``exhaustive``, ``index_fallback``), kept consistent by ``add`` (a row added is
found by indexed search) and never left stale by ``reindex``. Small seeded structured data
(1,000 rows, 24 lists); ``index_min_rows`` lowered so that the index is built."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, parquet_source
from conftest import make_structured

import tldr_index
from connectors import open_target
from tldr_index.code_index import ARTIFACT_NAME, CodeIndex
from tldr_index.compact import CompactModel
from tldr_index.errors import InvalidParameterError, ModelFormatError
from tldr_index.pipeline import shrink
from tldr_index.reindex import reindex
from tldr_index.search import search
from tldr_index.searcher import read_codes

FAST = dict(epochs=1, threads=1, eval_queries=0, dim=8, pq_bytes=4)
N = 1000


def _stored_index(uri: str) -> CodeIndex | None:
    tgt = open_target(uri)
    data = tgt.artifact(ARTIFACT_NAME)
    if data is None:
        return None
    _, codes = read_codes(tgt, tgt.layout.id_column, tgt.layout.codes_column)
    return CodeIndex.from_bytes(data, codes, CompactModel.of_target(tgt).codec)


@pytest.fixture(scope="module", params=["lancedb", "parquet"])
def indexed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("si")
    X = make_structured(N + 60, 32, seed=3)
    if request.param == "lancedb":
        src = lancedb_source(str(root), X[:N])
        tgt = src + "_c"
    else:
        src = parquet_source(str(root), X[:N])
        tgt = f"parquet://{root}/target"
    shrink(src, tgt, work_dir=root / "w", index_min_rows=500, **FAST)
    return src, tgt, X


def test_index_is_stored_and_matches_the_codes(indexed):
    _, tgt, _ = indexed
    t = open_target(tgt)
    assert t.artifacts() == [ARTIFACT_NAME]
    index = _stored_index(tgt)
    assert index.n == N and index.nlist > 1
    assert index.recall_table.nprobe[-1] == index.nlist
    assert index.recall_table.vs_exhaustive[-1] == 1.0


def test_small_collections_get_no_index(tmp_path):
    X = make_structured(300, 32, seed=4)
    src = parquet_source(str(tmp_path), X)
    tgt = f"parquet://{tmp_path}/t"
    shrink(src, tgt, work_dir=tmp_path / "w", **FAST)  # default index_min_rows
    assert open_target(tgt).artifacts() == []
    res = search(tgt, X[:5], k=5)
    assert res.engine == "pq-codes" and res.nprobe is None
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'nprobe' parameter of search needs a code index and target "
            f"'{tgt}' has none (fewer than index_min_rows rows when it was written, or its rows "
            "changed since): every code is scanned. Got nprobe=2.")):
        search(tgt, X[:5], k=5, nprobe=2)


def test_all_lists_equal_the_exhaustive_scan(indexed):
    _, tgt, X = indexed
    Q = X[N:N + 40]
    nlist = _stored_index(tgt).nlist
    ex = search(tgt, Q, k=10, exhaustive=True)
    ix = search(tgt, Q, k=10, nprobe=nlist)
    assert ex.engine == "pq-codes" and ix.engine == "code-index" and ix.nprobe == nlist
    # same scores up to float32 rounding (1e-5); ids equal except where scores tie
    np.testing.assert_allclose(ix.distances, ex.distances, atol=1e-5)
    same = (ix.ids == ex.ids).mean()
    tied = np.isclose(ix.distances, ex.distances, atol=1e-5).all()
    assert same >= 0.99 and tied
    # the default nprobe comes from the stored table (smallest reaching 0.95 of the exhaustive)
    d = search(tgt, Q, k=10)
    t = _stored_index(tgt).recall_table
    want = min(p for p, r in zip(t.nprobe, t.vs_exhaustive) if r >= 0.95)
    assert d.engine == "code-index" and d.nprobe == want
    # and the same through tldr_index.open (loaded once, reused)
    with tldr_index.open(tgt) as c:
        r1 = c.search(Q, k=10, nprobe=nlist)
        s1 = c._searcher()
        r2 = c.search(Q, k=10, nprobe=nlist)
        assert c._searcher() is s1
    np.testing.assert_array_equal(r1.ids, ix.ids)
    np.testing.assert_array_equal(r2.ids, ix.ids)


def test_target_recall_and_bad_nprobe(indexed):
    _, tgt, X = indexed
    Q = X[N:N + 5]
    index = _stored_index(tgt)
    t = index.recall_table
    # target_recall picks from the stored table against exact search of the reduced vectors
    r = search(tgt, Q, k=5, target_recall=t.vs_exact[0])
    assert r.nprobe == t.nprobe[0]
    r = search(tgt, Q, k=5, target_recall=max(t.vs_exact))
    assert r.nprobe == t.nprobe[t.vs_exact.index(max(t.vs_exact))]
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'nprobe' parameter of search must be an int in the range [1, {index.nlist}]. "
            f"Got 0 instead.")):
        search(tgt, Q, k=5, nprobe=0)
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'nprobe' parameter of search must be an int in the range [1, {index.nlist}]. "
            f"Got {index.nlist + 1} instead.")):
        search(tgt, Q, k=5, nprobe=index.nlist + 1)
    best = max(t.vs_exact)
    at = t.nprobe[t.vs_exact.index(best)]
    assert best < 1.0  # 4-byte PQ of 8-d vectors: not exact
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'target_recall' parameter of search must be at most the best recall@10 the "
            f"stored table reaches against exact search ({best} at nprobe {at}). Got 1.0 "
            f"instead.")):
        search(tgt, Q, k=5, target_recall=1.0)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'target_recall' parameter of search must be a float in the range [0.0, 1.0]. "
            "Got 1.5 instead.")):
        search(tgt, Q, k=5, target_recall=1.5)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'nprobe' and 'target_recall' parameters of search are exclusive: pass one. Got "
            "nprobe=2 and target_recall=0.9.")):
        search(tgt, Q, k=5, nprobe=2, target_recall=0.9)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'nprobe' parameter of search has no meaning with exhaustive=True (every code "
            "is scanned). Got nprobe=2.")):
        search(tgt, Q, k=5, nprobe=2, exhaustive=True)
