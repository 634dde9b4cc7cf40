"""Querying a compact LanceDB target with LanceDB's own API (issue 12 item 13).

``table.search(z)`` without ``distance_type`` must rank by the target's metric (the index carries
it) and, above ``index_min_rows``, the IVF_FLAT index at LanceDB's default ``nprobes`` must keep
recall@10 within 0.02 of a flat scan of the same reduced vectors.
"""

from __future__ import annotations

import os

import lance
import lancedb
import numpy as np
import pytest

from tests._pipeline_helpers import lancedb_source
from tests.conftest import make_structured

import tldr_index
from connectors.lance_store import LanceSink
from tldr_index.errors import InvalidParameterError
from tldr_index.pipeline import shrink


def _exact_cosine(X: np.ndarray, Q: np.ndarray, k: int = 10) -> np.ndarray:
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return np.argsort(-(Qn @ Xn.T), axis=1, kind="stable")[:, :k]


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def _target(tmp_path, n: int, batch_rows: int = 8192, **sink_options):
    X = make_structured(n + 100, dim=32, latent=10, clusters=40, seed=5)
    db, Q = X[:n], X[n:]
    src = lancedb_source(str(tmp_path), db, ids=np.arange(n, dtype=np.int64))
    tgt = src.rsplit("/", 1)[0] + "/docs_small"
    shrink(src, tgt, dim=16, pq_bytes=4, method="pca", source_options={"distance": "cosine"},
           sink_options=sink_options, batch_rows=batch_rows, random_state=0)
    return db, Q, tgt, os.path.join(str(tmp_path), "db")


def _lancedb_hits(db_dir: str, tgt: str, Q: np.ndarray, flat: bool = False,
                  column: str = "id") -> list[np.ndarray]:
    z, _ = tldr_index.open(tgt).encode(Q)                       # the README's one-liner
    tbl = lancedb.connect(db_dir).open_table("docs_small")
    out = []
    for q in z:
        s = tbl.search(q)
        if flat:
            s = s.distance_type("cosine").bypass_vector_index()
        out.append(s.limit(10).select(["id", "_distance"]).to_arrow()[column].to_numpy())
    return out


def test_small_cosine_target_is_searched_with_cosine_by_default(tmp_path):
    X, Q, tgt, db_dir = _target(tmp_path, 1500)
    tbl = lancedb.connect(db_dir).open_table("docs_small")
    [idx] = tbl.list_indices()
    assert idx.index_type == "IvfFlat" and idx.columns == ["vector"]
    got = _lancedb_hits(db_dir, tgt, Q)
    flat = _lancedb_hits(db_dir, tgt, Q, flat=True)
    # one partition of exact distances: the flat cosine scan's distances (ids up to near-ties)
    d_got = np.stack(_lancedb_hits(db_dir, tgt, Q, column="_distance"))
    d_flat = np.stack(_lancedb_hits(db_dir, tgt, Q, flat=True, column="_distance"))
    np.testing.assert_allclose(d_got, d_flat, atol=2e-3)
    assert _recall(got, np.stack(flat)) >= 0.98
    z, _ = tldr_index.open(tgt).encode(Q)
    l2 = [tbl.search(q).distance_type("l2").bypass_vector_index().limit(10).to_arrow()["id"]
          .to_numpy() for q in z]
    assert [g.tolist() for g in got] != [x.tolist() for x in l2]  # the metric matters here


@pytest.mark.parametrize("flush_rows", [None, 1500])
def test_indexed_target_keeps_flat_recall_at_default_nprobes(tmp_path, monkeypatch, flush_rows):
    # 6,000 rows, index from 1,000 rows, 128 rows per partition: 46 partitions, of which
    # LanceDB's default nprobes (20) scans fewer than half. flush_rows=1500: 4 fragments, so the
    # index is built one fragment segment at a time (connectors/lance_index.py) and merged
    segments = []
    uncommitted = lance.LanceDataset.create_index_uncommitted

    def spy(self, *args, **kwargs):
        segments.append(kwargs["fragment_ids"])
        return uncommitted(self, *args, **kwargs)

    monkeypatch.setattr(lance.LanceDataset, "create_index_uncommitted", spy)
    X, Q, tgt, db_dir = _target(tmp_path, 6000, index_min_rows=1000,
                                index_rows_per_partition=128,
                                **({"flush_rows": flush_rows, "batch_rows": 1500} if flush_rows
                                   else {}))
    tbl = lancedb.connect(db_dir).open_table("docs_small")
    frags = [f.fragment_id for f in lance.dataset(os.path.join(db_dir, "docs_small.lance"))
             .get_fragments()]
    assert len(frags) == (4 if flush_rows else 1)
    assert segments == ([[f] for f in frags] if flush_rows else [])
    [idx] = tbl.list_indices()
    assert idx.index_type == "IvfFlat"
    stats = tbl.index_stats(idx.name)
    assert stats.distance_type == "cosine" and stats.num_indices == 1
    assert stats.num_indexed_rows == 6000 and stats.num_unindexed_rows == 0
    [desc] = lance.dataset(os.path.join(db_dir, "docs_small.lance")).describe_indices()
    assert len(desc.segments) == 1  # the fragment segments were merged into one
    truth = _exact_cosine(X, Q)
    got = _recall(_lancedb_hits(db_dir, tgt, Q), truth)
    flat = _recall(_lancedb_hits(db_dir, tgt, Q, flat=True), truth)
    assert flat > 0.5 and abs(got - flat) <= 0.02, (got, flat)


def test_index_options_for_sizes():
    sink = LanceSink("/nonexistent/x.lance", uri="lance:///nonexistent/x.lance",
                     index_min_rows=100_000)

    class Lay:
        distance = "cosine"
    sink.layout = Lay()
    assert sink.index_options_for(5_000) == {"index_type": "IVF_FLAT", "num_partitions": 1,
                                             "metric": "cosine"}
    assert sink.index_options_for(1_000_000) == {"index_type": "IVF_FLAT", "num_partitions": 244,
                                                 "metric": "cosine", "sample_rate": 64,
                                                 "max_iters": 10}
    assert sink.index_options_for(10 ** 9)["num_partitions"] == 4096
    Lay.distance = "l2"
    assert sink.index_options_for(5_000) is None
    with pytest.raises(InvalidParameterError, match=r"The 'index_rows_per_partition' parameter "
                       r"of LanceSink must be an int in the range \[1, inf\)\. Got 0 instead\."):
        LanceSink("/nonexistent/x.lance", uri="lance:///nonexistent/x.lance",
                  index_rows_per_partition=0)
