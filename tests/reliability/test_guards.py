"""The suite's own checks can fail: ``source_state`` (behind ``source_guard``) sees a one-row
change in each store, and :class:`TargetWatcher` reports a target that differs from the one
expected."""

from __future__ import annotations

import time

import lancedb
from _pipeline_helpers import (lancedb_source, make_nested, parquet_source, qdrant_source,
                               snapshot, table_of)

from connectors import parse_uri
from connectors.qdrant_store import client_for
from tldr_index.pipeline import shrink

from ._harness import TargetWatcher
from .conftest import source_state


def test_source_state_sees_any_write(tmp_path):
    X = make_nested(50, 8, between=3, within=3)
    lan = lancedb_source(str(tmp_path), X)
    before = source_state(lan)
    lancedb.connect(str(tmp_path / "db")).open_table("docs").add(table_of(X[:1], ids=[10**6]))
    assert source_state(lan) != before

    par = parquet_source(str(tmp_path), X)
    before = source_state(par)
    with open(tmp_path / "pq" / "part-0.parquet", "r+b") as f:   # same size, one byte flipped
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    assert source_state(par) != before

    qd = qdrant_source(X)
    before = source_state(qd)
    from qdrant_client import models as m
    client_for(parse_uri(qd)).upsert("docs", points=[m.PointStruct(
        id=3, vector=(X[0] + 1e-3).tolist(), payload={"text": "doc 0", "year": 1990})])
    after = source_state(qd)
    assert after["count"] == before["count"] and after != before   # same count, new vector


def test_target_watcher_reports_a_different_target(tmp_path):
    X = make_nested(300, 8, between=3, within=3)
    src = lancedb_source(str(tmp_path), X)
    shrink(src, src + "_a", dim=4, pq_bytes=0, epochs=1, threads=1, eval_queries=10,
           work_dir=tmp_path / "w")
    wrong = snapshot(src + "_a")
    wrong["ids"] = wrong["ids"][:-1]                  # as if a row were missing
    with TargetWatcher(src + "_a", wrong) as watcher:
        time.sleep(0.5)
    assert watcher.seen == 0 and watcher.errors
    assert watcher.errors[0].startswith("partial or different target")
    with TargetWatcher(src + "_missing", wrong) as watcher:
        time.sleep(0.2)
    assert watcher.absent > 0 and watcher.errors == []
