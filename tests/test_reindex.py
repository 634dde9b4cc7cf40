"""reindex / rollback on real stores (LanceDB, Parquet, in-memory and embedded Qdrant): the target
after add/delete/modify equals a fresh shrink's ids and payloads and the model's own encoding, a
second run has nothing to do, readers never see a partial state, a second job is refused, drift
triggers a refit that recovers recall, and bad input leaves the live target untouched."""

from __future__ import annotations

import json
import re
import shutil
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _connector_helpers import tree_hashes
from _pipeline_helpers import make_nested, snapshot, table_of
from click.testing import CliRunner

from connectors import lancedb_uri, open_target, parse_uri, targets_built_from
from connectors.arrow_utils import vectors_to_numpy
from tldr_index.cli import main
from tldr_index.compact import CompactModel
from tldr_index.errors import (
    DuplicateIdError,
    InvalidInputError,
    InvalidParameterError,
    ModelFormatError,
)
from tldr_index.reindex.jobfile import load_job
from tldr_index.reindex.lock import JobLock, LockedError
from tldr_index.pipeline import shrink
from tldr_index.progress import Progress
from tldr_index.reindex import reindex, rollback

FAST = dict(epochs=1, threads=1, eval_queries=0)
N, DIM = 1200, 32


def _table(X, ids, tag="doc"):
    t = table_of(X, ids=pa.array(ids, type=pa.int64()))
    return t.set_column(2, "text", pa.array([f"{tag} {i}" for i in ids]))


class Store:
    """One source collection of ``kind`` whose content is always ``self.table``."""

    def __init__(self, kind: str, root: str, X: np.ndarray):
        self.kind, self.root = kind, root
        self.table = _table(X, np.arange(len(X), dtype=np.int64) * 7 + 3)
        if kind == "lancedb":
            self.db = os.path.join(root, "db")
            lancedb.connect(self.db).create_table("docs", data=self.table)
            self.uri, self.target = lancedb_uri(self.db, "docs"), lancedb_uri(self.db, "docs_c")
        elif kind == "parquet":
            self.dir = os.path.join(root, "pq")
            self._write_parquet()
            self.uri, self.target = f"parquet://{self.dir}/*.parquet", f"parquet://{root}/out/"
        else:
            from qdrant_client import models as m

            from connectors.qdrant_store import client_for
            mode = "qdrant+path://" + os.path.join(root, "qd") if kind == "qdrant-path" else \
                f"qdrant+memory://{uuid.uuid4().hex[:8]}"
            self.uri, self.target = f"{mode}/docs", f"{mode}/docs_c"
            self.client = client_for(parse_uri(self.uri))
            self.client.create_collection("docs", vectors_config=m.VectorParams(
                size=X.shape[1], distance=m.Distance.EUCLID))
            self._upsert(self.table)

    def _write_parquet(self):
        os.makedirs(self.dir, exist_ok=True)
        for f in os.listdir(self.dir):
            os.remove(os.path.join(self.dir, f))
        half = self.table.num_rows // 2
        pq.write_table(self.table.slice(0, half), os.path.join(self.dir, "a.parquet"))
        pq.write_table(self.table.slice(half), os.path.join(self.dir, "b.parquet"))

    def _upsert(self, t: pa.Table):
        from qdrant_client import models as m
        if t.num_rows == 0:
            return
        X = vectors_to_numpy(t.column("vector").combine_chunks())
        self.client.upsert("docs", points=m.Batch(
            ids=t.column("id").to_pylist(), vectors=X.tolist(),
            payloads=[{"text": a, "year": b} for a, b in zip(t.column("text").to_pylist(),
                                                             t.column("year").to_pylist())]))

    def mutate(self, add: pa.Table, delete: list[int], change: pa.Table) -> None:
        """Add rows, delete ids, replace rows (vector and/or payload), with the store's own ops."""
        import pyarrow.compute as pc
        drop = pa.array(delete + change.column("id").to_pylist(), type=pa.int64())
        keep = self.table.filter(pc.invert(pc.is_in(self.table.column("id"), value_set=drop)))
        self.table = pa.concat_tables([keep, change.cast(keep.schema), add.cast(keep.schema)])
        if self.kind == "lancedb":
            tbl = lancedb.connect(self.db).open_table("docs")
            tbl.add(add)
            if delete:
                tbl.delete(f"id IN ({','.join(map(str, delete))})")
            if change.num_rows:
                tbl.merge_insert("id").when_matched_update_all().execute(change)
        elif self.kind == "parquet":
            self._write_parquet()
        else:
            if delete:
                self.client.delete("docs", points_selector=delete)
            self._upsert(change)
            self._upsert(add)


def _changes(X_extra: np.ndarray, store: Store, rng: np.random.Generator):
    ids = store.table.column("id").to_numpy()
    add = _table(X_extra, np.arange(len(X_extra), dtype=np.int64) * 7 + 100_000, tag="new")
    pick = rng.choice(len(ids), 60, replace=False)
    delete = [int(i) for i in ids[pick[:30]]]
    ch = store.table.take(pa.array(np.sort(pick[30:])))
    V = vectors_to_numpy(ch.column("vector").combine_chunks()).copy()
    V[:20] += rng.normal(scale=0.3, size=V[:20].shape).astype(np.float32)  # 20 moved vectors
    ch = ch.set_column(1, "vector", pa.FixedSizeListArray.from_arrays(pa.array(V.ravel()), DIM))
    ch = ch.set_column(2, "text", pa.array([f"edited {i}" for i in ch.column("id").to_pylist()]))
    return add, delete, ch  # 100 new, 30 deleted, 30 changed (20 vectors + payload, 10 payload)


def _expected_vectors(target: str, table: pa.Table, ids: list) -> np.ndarray:
    t = open_target(target)
    model = CompactModel.from_bytes(t.model_bytes)
    order = {v: i for i, v in enumerate(table.column("id").to_pylist())}
    X = vectors_to_numpy(table.column("vector").combine_chunks())
    return model.encode(X[[order[i] for i in ids]])


@pytest.fixture(scope="module")
def data():
    X = make_nested(N + 100, DIM)
    return X[:N], X[N:]


@pytest.mark.parametrize("kind", ["lancedb", "parquet", "qdrant"])
def test_incremental_reindex_equals_fresh_shrink_then_nothing_then_rollback(kind, tmp_path,
                                                                            data):
    X, X_new = data
    s = Store(kind, str(tmp_path / "s"), X)
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    before = snapshot(s.target)
    work = tmp_path / "rw"
    first = reindex(s.target, work_dir=work)
    assert (first.status, first.exit_code, first.baseline) == ("nothing", 3, "unchanged-source")

    s.mutate(*_changes(X_new, s, np.random.default_rng(1)))
    rep = reindex(s.target, work_dir=work)
    assert (rep.status, rep.exit_code) == ("updated", 0), rep.to_json()
    assert (rep.added, rep.deleted, rep.changed) == (100, 30, 30)
    assert rep.target_rows_after == N + 70 == open_target(s.target).count()
    assert json.loads(rep.to_json())["status"] == "updated"

    # the same ids and payloads as a fresh shrink of the changed source (model differs)
    fresh = s.target.replace("docs_c", "docs_f").replace("/out/", "/fresh/")
    shrink(s.uri, fresh, dim=8, pq_bytes=4, method="pca", work_dir=tmp_path / "w1", **FAST)
    got, ref = snapshot(s.target), snapshot(fresh)
    assert got["ids"] == ref["ids"]
    for key in ref:
        if key.startswith("payload:"):
            assert got[key] == ref[key], key
    # every stored reduced vector is the model's encoding of the current source vector
    want = _expected_vectors(s.target, s.table, got["ids"])
    np.testing.assert_allclose(got["vectors"], want, rtol=2e-3, atol=2e-3)
    for name, t in snapshot(s.target)["model"].items():  # no refit: the model is unchanged
        np.testing.assert_array_equal(t, before["model"][name])

    again = reindex(s.target, work_dir=work)
    assert (again.status, again.exit_code, again.added, again.changed) == ("nothing", 3, 0, 0)

    out = rollback(s.target, work_dir=work)
    assert out["rows"] == N
    assert snapshot(s.target)["ids"] == before["ids"]


def test_embedded_qdrant_reindex_keeps_previous_collection(tmp_path):
    X = make_nested(320, 16, between=6, within=4, seed=4)
    s = Store("qdrant-path", str(tmp_path), X[:300])
    shrink(s.uri, s.target, dim=4, pq_bytes=2, work_dir=tmp_path / "w0", **FAST)
    live = open_target(s.target).collection
    add = _table(X[300:], np.arange(20, dtype=np.int64) + 50_000, tag="new")
    s.mutate(add, [3, 10], s.table.slice(0, 0))
    rep = reindex(s.target, work_dir=tmp_path / "rw")
    assert (rep.status, rep.added, rep.deleted) == ("updated", 20, 2)
    assert rep.previous == {"kind": "qdrant", "collection": live}
    names = {c.name for c in s.client.get_collections().collections}
    assert live in names and open_target(s.target).collection != live
    assert open_target(s.target).count() == 318
    rollback(s.target, work_dir=tmp_path / "rw")
    assert open_target(s.target).collection == live and open_target(s.target).count() == 300


@pytest.mark.parametrize("kind", ["lancedb", "parquet"])
def test_reader_never_sees_a_partial_state(kind, tmp_path, data):
    import tldr_index

    X, X_new = data
    s = Store(kind, str(tmp_path / "s"), X)
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    old = set(s.table.column("id").to_pylist())
    s.mutate(*_changes(X_new, s, np.random.default_rng(2)))
    new = set(s.table.column("id").to_pylist())
    compact = tldr_index.open(s.target)
    seen, hits, errors = [], [], []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                t = open_target(s.target)
                ids = set(pa.concat_arrays([b.column(0) for b in t.iter_columns(["id"])])
                          .to_pylist())
                seen.append(frozenset(ids))
                hits.append(compact.search(X[:2], k=5).ids)
        except Exception as exc:  # reported below
            errors.append(exc)

    th = threading.Thread(target=reader)
    th.start()
    try:
        while not seen and not errors:  # the reader is reading the old version
            threading.Event().wait(0.01)
        rep = reindex(s.target, work_dir=tmp_path / "rw")
        after = len(seen)
        while len(seen) < after + 2 and not errors:  # ... and then the new one
            threading.Event().wait(0.01)
    finally:
        stop.set()
        th.join()
    assert not errors, errors
    assert rep.status == "updated"
    assert frozenset(old) in seen and frozenset(new) in seen
    assert all(ids in (frozenset(old), frozenset(new)) for ids in seen)
    assert all(set(h.ravel().tolist()) <= old | new for h in hits)
    assert set(snapshot(s.target)["ids"]) == new


class _Pause(Progress):
    """Blocks the first scan update until released (a reindex caught in the middle)."""

    def __init__(self):
        self.inside, self.go = threading.Event(), threading.Event()

    def update(self, stage, completed, total=None):
        if stage == "scan" and not self.inside.is_set():
            self.inside.set()
            self.go.wait(30)


def test_second_reindex_is_refused_and_a_stale_lock_is_taken_over(tmp_path, data, caplog):
    X, X_new = data
    s = Store("lancedb", str(tmp_path / "s"), X)
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    s.mutate(*_changes(X_new, s, np.random.default_rng(3)))
    work = tmp_path / "rw"
    pause, result = _Pause(), {}
    th = threading.Thread(target=lambda: result.setdefault(
        "rep", reindex(s.target, work_dir=work, progress=pause)))
    th.start()
    assert pause.inside.wait(30)
    host = socket.gethostname()
    with pytest.raises(LockedError, match=rf"^Another job is running on this target: reindex of "
                                          rf"'{s.target}' \(pid {os.getpid()} on {host}, started "
                                          rf".*\) holds the lock {work}/lock\. Try again when it "
                                          rf"has finished\.$"):
        reindex(s.target, work_dir=work)
    r = CliRunner().invoke(main, ["reindex", "--target", s.target, "--work-dir", str(work)])
    assert r.exit_code == 5 and json.loads(r.stdout.splitlines()[-1])["status"] == "failed"
    pause.go.set()
    th.join()
    assert result["rep"].status == "updated" and not (work / "lock").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / "lock").write_text(json.dumps({"pid": dead.pid, "hostname": host, "what": "x",
                                           "started_utc": "2026-01-01T00:00:00+00:00"}))
    with caplog.at_level("WARNING", logger="tldr_index.reindex.lock"):
        rep = reindex(s.target, work_dir=work)
    assert rep.status == "nothing" and rep.stale_lock["pid"] == dead.pid
    assert "Taking over a stale lock" in caplog.text and not (work / "lock").exists()


def test_drift_triggers_refit_and_recall_recovers(tmp_path):
    A = make_nested(1000, DIM, seed=0)
    s = Store("lancedb", str(tmp_path / "s"), A)
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", epochs=2, threads=1,
           eval_queries=0)
    old_model = snapshot(s.target)["model"]["weight"]
    # new rows from another distribution: clustered structure only in the 24 directions the
    # current map discards (its null space), so their neighbours are lost until a refit
    null = np.linalg.svd(old_model)[2][8:]
    B = (make_nested(500, 24, between=12, within=6, seed=5) @ null).astype(np.float32)
    add = _table(B, np.arange(500, dtype=np.int64) + 100_000, tag="b")
    s.mutate(add, [], s.table.slice(0, 0))
    rep = reindex(s.target, work_dir=tmp_path / "rw")
    assert (rep.status, rep.exit_code, rep.refit_reason) == ("refitted", 4, "drift"), rep.to_json()
    d = rep.drift
    assert d["ratio"] < d["threshold"] == 0.7
    assert d["recall_new"] < 0.2 and d["after_refit"]["recall_new"] > d["recall_new"] + 0.4, d
    assert rep.target_rows_after == 1500 == open_target(s.target).count()
    assert not np.array_equal(snapshot(s.target)["model"]["weight"], old_model)
    assert reindex(s.target, work_dir=tmp_path / "rw").status == "nothing"
    rollback(s.target, work_dir=tmp_path / "rw")  # back to the old model and rows
    np.testing.assert_array_equal(snapshot(s.target)["model"]["weight"], old_model)
    assert open_target(s.target).count() == 1000


# ------------------------------------------------------------------------------- bad input

@pytest.fixture()
def lance_target(tmp_path, data):
    X, _ = data
    s = Store("lancedb", str(tmp_path / "s"), X)
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    return s


def _untouched(s: Store):
    import lance
    path = parse_uri(s.target).path
    return lance.dataset(path).version, tree_hashes(path), tree_hashes(os.path.join(s.db,
                                                                                    "docs.lance"))


def test_missing_or_corrupt_model_stops_before_writing(lance_target, tmp_path, data):
    s = lance_target
    _, X_new = data
    s.mutate(_table(X_new, np.arange(100, dtype=np.int64) + 100_000), [], s.table.slice(0, 0))
    path = parse_uri(s.target).path
    side = os.path.join(path, "_tldr")
    model = os.path.join(side, os.listdir(side)[0])
    rel = os.path.relpath(model, path)
    good = open(model, "rb").read()
    with open(model, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    state = _untouched(s)
    with pytest.raises(ModelFormatError, match=rf"^The model stored in target '{s.target}' is "
                                               rf"corrupt: expected {len(good)} bytes with "
                                               rf"sha256 "):
        reindex(s.target, work_dir=tmp_path / "rw")
    os.remove(model)
    with pytest.raises(ModelFormatError, match=rf"^The model file '{rel}' of target "
                                               rf"'{s.target}' is missing from '{path}'\.$"):
        reindex(s.target, work_dir=tmp_path / "rw")
    v, _, src = _untouched(s)
    assert (v, src) == (state[0], state[2])
    assert not (tmp_path / "rw" / "lock").exists()


def test_wrong_dimension_and_colliding_ids_in_the_source(tmp_path, data):
    X, _ = data
    s = Store("parquet", str(tmp_path / "s"), X[:400])
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    out = parse_uri(s.target).path
    before = tree_hashes(out)
    bad = _table(np.ones((3, 16), np.float32), np.array([9001, 9002, 9003]))
    pq.write_table(bad, os.path.join(s.dir, "c.parquet"))
    with pytest.raises(InvalidInputError, match=r"^Vector column 'vector' of source "
                                                r"'parquet://.*' must have the same length in "
                                                r"every row\. Expected 32, got 16 at id 9001\.$"):
        reindex(s.target, work_dir=tmp_path / "rw")
    clash = _table(X[5:6] + 1.0, np.array([3]))  # id 3 exists with another vector
    pq.write_table(clash, os.path.join(s.dir, "c.parquet"))
    with pytest.raises(DuplicateIdError, match=r"^Id column 'id' of source 'parquet://.*' must "
                                               r"hold unique ids\. Got duplicate id 3 at row "
                                               r"400\.$"):
        reindex(s.target, work_dir=tmp_path / "rw")
    assert tree_hashes(out) == before


def test_job_file_unknown_keys_and_cli(lance_target, tmp_path, data):
    s = lance_target
    job = tmp_path / "job.toml"
    job.write_text('db = "s/db"\ncollection = "docs"\ntarget = "docs_c"\nrefit = "auto"\n'
                   'drift_treshold = 0.8\nfoo = 1\n')
    allowed = "batch_rows, collection, db, drift_queries, drift_threshold, refit, seed, " \
              "source, target, threads, work_dir"
    with pytest.raises(InvalidParameterError, match=rf"^Job file '{job}' has unknown key\(s\): "
                                                    rf"drift_treshold, foo\. Allowed keys: "
                                                    rf"{allowed}\.$"):
        load_job(job)
    version = _untouched(s)[0]
    r = CliRunner().invoke(main, ["reindex", "--config", str(job)])
    assert r.exit_code == 2 and "unknown key(s): drift_treshold, foo" in r.stdout
    assert _untouched(s)[0] == version

    job.write_text('db = "s/db"\ncollection = "docs"\ntarget = "docs_c"\nrefit = "never"\n'
                   'work_dir = "rw"\n')
    r = CliRunner().invoke(main, ["reindex", "--config", str(job), "--quiet"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "nothing"
    _, X_new = data
    s.mutate(_table(X_new[:40], np.arange(40, dtype=np.int64) + 100_000), [3], s.table.slice(0, 0))
    r = CliRunner().invoke(main, ["reindex", "--config", str(job), "--quiet"])
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert (r.exit_code, line["status"], line["added"], line["deleted"]) == (0, "updated", 40, 1)
    assert (tmp_path / "rw" / "history.json").exists()  # work_dir relative to the job file
    # without --target: the one target in --db built from --collection
    r = CliRunner().invoke(main, ["reindex", "--db", str(tmp_path / "s" / "db"), "--collection",
                                  "docs", "--work-dir", str(tmp_path / "rw"), "--quiet"])
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert (r.exit_code, line["status"], line["target"]) == (3, "nothing", s.target)
    r = CliRunner().invoke(main, ["rollback", "--db", str(tmp_path / "s" / "db"), "--target",
                                  "docs_c", "--work-dir", str(tmp_path / "rw")])
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"] == N


def test_without_target_the_one_target_built_from_the_source_is_picked(tmp_path, data):
    X, _ = data
    s = Store("lancedb", str(tmp_path / "s"), X[:600])

    def no_target() -> tuple[int, str]:
        r = CliRunner().invoke(main, ["reindex", "--db", s.db, "--collection", "docs", "-q",
                                      "--work-dir", str(tmp_path / "rw")])
        return r.exit_code, json.loads(r.stdout.strip().splitlines()[-1])["error"]

    assert targets_built_from(s.uri) == []
    assert no_target() == (2, f"Pass --target: 0 tldr-index targets in '{s.db}' were built "
                              f"from '{s.uri}'.")
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    lancedb.connect(s.db).create_table("plain", data=s.table)  # a table, not a target
    assert targets_built_from(s.uri) == [s.target]
    other = lancedb_uri(s.db, "docs_d")
    shrink(s.uri, other, dim=8, pq_bytes=4, work_dir=tmp_path / "w1", **FAST)
    assert targets_built_from(s.uri) == [s.target, other]
    assert no_target() == (2, f"Pass --target: 2 tldr-index targets in '{s.db}' were built "
                              f"from '{s.uri}' ({s.target}, {other}).")
    assert targets_built_from(f"parquet://{tmp_path}/pq/*.parquet") is None
    r = CliRunner().invoke(main, ["reindex", "--source", f"parquet://{tmp_path}/pq/*.parquet"])
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == (
        "--target is required unless the source is a LanceDB table (--db/--collection).")


def test_lock_file_of_another_host_is_refused(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text(json.dumps({"pid": 1, "hostname": "elsewhere", "what": "reindex of 'x'",
                                "started_utc": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(LockedError, match=r"^Another job holds the lock .* \(reindex of 'x', pid "
                                          r"1 on host elsewhere, started 2026-01-01T00:00:00"
                                          r"\+00:00\); its liveness cannot be checked from this "
                                          r"host\. Remove the file if that job is gone\.$"):
        JobLock(lock).acquire()


@pytest.mark.parametrize("kind", ["parquet", "qdrant"])
def test_refit_always_keeps_the_previous_version(kind, tmp_path, data):
    X, X_new = data
    s = Store(kind, str(tmp_path / "s"), X[:600])
    shrink(s.uri, s.target, dim=8, pq_bytes=4, work_dir=tmp_path / "w0", **FAST)
    before = snapshot(s.target)
    s.mutate(_table(X_new[:20], np.arange(20, dtype=np.int64) + 100_000), [3],
             s.table.slice(0, 0))
    rep = reindex(s.target, work_dir=tmp_path / "rw", refit="always")
    assert (rep.status, rep.exit_code, rep.refit_reason) == ("refitted", 4, "always")
    after = snapshot(s.target)
    assert after["ids"] == sorted(s.table.column("id").to_pylist()) and len(after["ids"]) == 619
    assert reindex(s.target, work_dir=tmp_path / "rw").status == "nothing"
    rollback(s.target, work_dir=tmp_path / "rw")
    back = snapshot(s.target)
    assert back["ids"] == before["ids"]
    np.testing.assert_array_equal(back["model"]["weight"], before["model"]["weight"])


def test_every_job_file_key_is_a_reindex_flag():
    """A job file holds what the flags hold: each key of jobfile.KEYS is an option of the CLI."""
    from tldr_index.cli.reindex_cmd import reindex as reindex_cmd
    from tldr_index.reindex.jobfile import KEYS

    assert set(KEYS) <= {p.name for p in reindex_cmd.params}


# -- where the reindex state lives (not the current directory) ------------------------------------

def test_default_reindex_dir_is_derived_from_the_target(tmp_path, monkeypatch):
    from tldr_index.reindex import default_reindex_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    here = tmp_path.resolve()
    assert default_reindex_dir("lancedb://./db/docs_c") == here / "db" / ".docs_c.tldr-reindex"
    assert default_reindex_dir("lance:///data/x.lance") == Path("/data/.x.lance.tldr-reindex")
    assert default_reindex_dir("parquet://out/") == here / ".out.tldr-reindex"
    assert default_reindex_dir("qdrant+path://./qd/docs_c") == here / "qd" / ".docs_c.tldr-reindex"
    server = default_reindex_dir("qdrant://vectors.example:6333/docs_c")
    assert server.parent == tmp_path / "state" / "tldr-index" / "reindex"
    assert re.fullmatch(r"docs_c-[0-9a-f]{8}", server.name)
    assert default_reindex_dir("qdrant://other.example:6333/docs_c") != server
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # ignored, as the XDG spec says
    assert default_reindex_dir("qdrant://vectors.example:6333/docs_c").parent == \
        Path.home() / ".local" / "state" / "tldr-index" / "reindex"
    monkeypatch.chdir("/")  # the same target from another directory: the same place
    assert default_reindex_dir(f"lancedb://{here}/db/docs_c") == \
        here / "db" / ".docs_c.tldr-reindex"


STATE_HOMES = {"lancedb": ("s", "db", ".docs_c.tldr-reindex"),
               "parquet": ("s", ".out.tldr-reindex"),
               "qdrant-path": ("s", "qd", ".docs_c.tldr-reindex")}


@pytest.mark.parametrize("kind", ["lancedb", "parquet", "qdrant-path"])
def test_reindex_in_one_directory_rollback_from_another(kind, tmp_path, monkeypatch):
    """The CLI as a user runs it: reindex from one working directory, rollback from another,
    no --work-dir; the state is beside the target, nothing is written to either directory."""
    X = make_nested(340, 16, between=6, within=4, seed=4)
    s = Store(kind, str(tmp_path / "s"), X[:300])
    shrink(s.uri, s.target, dim=4, pq_bytes=2, work_dir=tmp_path / "w0", **FAST)
    s.mutate(_table(X[300:], np.arange(40, dtype=np.int64) + 50_000, tag="new"), [3],
             s.table.slice(0, 0))
    one, two = tmp_path / "cron", tmp_path / "shell"
    one.mkdir()
    two.mkdir()
    monkeypatch.chdir(one)
    r = CliRunner().invoke(main, ["reindex", "--target", s.target, "--refit", "never",
                                  "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    state = tmp_path.joinpath(*STATE_HOMES[kind])
    assert (state / "history.json").is_file() and not (state / "lock").exists()
    assert open_target(s.target).count() == 339
    monkeypatch.chdir(two)
    r = CliRunner().invoke(main, ["rollback", "--target", s.target])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 300 and open_target(s.target).count() == 300
    assert list(one.iterdir()) == [] and list(two.iterdir()) == []
    if kind == "qdrant-path":  # the storage still opens with the state directory inside it
        assert open_target(s.target).collection in {
            c.name for c in s.client.get_collections().collections}


def test_nothing_recorded_names_where_it_looked_and_work_dir_overrides(lance_target, tmp_path,
                                                                     data, monkeypatch, caplog):
    from tldr_index.reindex import default_reindex_dir, legacy_reindex_dir

    s = lance_target
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLDR_INDEX_WORK", raising=False)
    home = default_reindex_dir(s.target)
    legacy = legacy_reindex_dir(s.target).absolute()
    assert home == tmp_path / "s" / "db" / ".docs_c.tldr-reindex"
    assert legacy.parent == tmp_path / "tldr-work"
    msg = (f"No reindex of target '{s.target}' is recorded in '{home}' (its reindex directory) "
           f"or in '{legacy}' (where earlier versions kept it); nothing to roll back to. Pass "
           f"work_dir (--work-dir) if the reindex ran with one.")
    with pytest.raises(InvalidInputError, match=f"^{re.escape(msg)}$"):
        rollback(s.target)
    r = CliRunner().invoke(main, ["rollback", "--target", s.target])
    assert r.exit_code == 1 and json.loads(r.stdout)["error"] == msg
    assert r.stderr.strip() == f"Error: {msg}"
    assert not home.exists() and not legacy.exists()  # looking creates nothing

    # --work-dir: the state goes there, and only there
    _, X_new = data
    s.mutate(_table(X_new[:40], np.arange(40, dtype=np.int64) + 100_000), [3], s.table.slice(0, 0))
    work = tmp_path / "elsewhere"
    r = CliRunner().invoke(main, ["reindex", "--target", s.target, "--work-dir", str(work),
                                  "--refit", "never", "--threads", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (work / "history.json").is_file() and not home.exists()
    with pytest.raises(InvalidInputError, match=f"^{re.escape(msg)}$"):
        rollback(s.target)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match=rf"^No reindex of target '{re.escape(s.target)}' "
                                                rf"is recorded in '{empty}' \(work_dir\); nothing "
                                                rf"to roll back to\. Pass work_dir \(--work-dir\) "
                                                rf"if the reindex ran with one\.$"):
        rollback(s.target, work_dir=empty)
    r = CliRunner().invoke(main, ["rollback", "--target", s.target, "--work-dir", str(work)])
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"] == N

    # state left in ./tldr-work by an earlier version is still used from that directory
    shutil.move(str(work), str(legacy))
    with caplog.at_level("WARNING", logger="tldr_index.reindex"):
        out = rollback(s.target)  # undoes the rollback: back to the reindexed rows
    assert out["rows"] == N + 39
    assert (f"Using the reindex state of '{s.target}' found in '{legacy}', where earlier "
            f"versions kept it (under the current directory or $TLDR_INDEX_WORK). Its place is "
            f"now '{home}' (found from any directory): move it there (mv '{legacy}' '{home}'), "
            f"or keep passing --work-dir '{legacy}'.") in caplog.messages
    assert not home.exists()


def test_failed_reindex_leaves_no_state_directory(tmp_path):
    from tldr_index.errors import SourceNotFoundError
    from tldr_index.reindex import default_reindex_dir

    target = lancedb_uri(str(tmp_path / "db"), "missing")
    with pytest.raises(SourceNotFoundError):
        reindex(target)
    assert not default_reindex_dir(target).exists() and not (tmp_path / "db").exists()
