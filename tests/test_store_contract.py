"""One contract for every store (Lance/LanceDB, Parquet, Qdrant local mode, Qdrant Edge: the real
Qdrant engine embedded, and a Qdrant server when ``QDRANT_URL`` is set: ``QDRANT_API_KEY`` is read
from the environment by the connector, never logged; each test uses collections named
``tldr_contract_<hex>`` and deletes them), in the style of qdrant-client's congruence tests: the
same calls on each store must give the same answers. Where the engines differ by design the test
says so: Qdrant local mode ignores quantization and searches by brute force, Qdrant Edge and a server
search an HNSW graph through product quantization (rescored with the stored vectors) - the answers
asked here are the same; :func:`test_quantization_reaches_the_engine` checks the config itself.

Covered: reading (batches, take by id and by position), write + atomic publish (staged target
invisible, an existing target refused, overwrite, abort), rows read back, a delta (add / delete /
replace) as one switch, in-place upserts, rollback and its handles, disk size, staging clean-up
after a killed write, and what a distributed engine can ask a store for (Ray read, shard writer). Store-specific behaviour
(LanceDB listing, Parquet part files, Qdrant aliases and retries...) stays in
``tests/test_connectors_<store>.py``.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import urllib.parse
import uuid

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _connector_helpers import MODEL, make_table, reduce_batch, stage_target, staging_leftovers
from _connector_helpers import write_target

from connectors import (IdDigest, discard_staging, disk_bytes, lancedb_uri, open_sink, open_source,
                        open_target, parse_uri)
from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy
from connectors.qdrant_edge_store import close_shards
from connectors.qdrant_store import client_for, close_clients
from tldr_index.errors import (InvalidInputError, SourceNotFoundError, TargetExistsError,
                               VerificationError)

N, DIM, D = 120, 8, 4
SERVER = os.environ.get("QDRANT_URL")
STORES = ["lancedb", "parquet", "qdrant", "qdrant-edge", pytest.param(
    "qdrant-server", marks=pytest.mark.skipif(
        not SERVER, reason="QDRANT_URL is not set: no Qdrant server to run the contract on (set "
                           "QDRANT_URL, and QDRANT_API_KEY if the server needs one)"))]
QDRANTS = ("qdrant", "qdrant-edge", "qdrant-server")
CLIENT_STORES = ("qdrant", "qdrant-server")  # through qdrant-client (aliases of collections)


def server_base() -> str:
    """``qdrant://host:port`` (``qdrant+https://`` for https) of ``QDRANT_URL``."""
    u = urllib.parse.urlsplit(SERVER if "://" in SERVER else "http://" + SERVER)
    scheme = "qdrant+https" if u.scheme == "https" else "qdrant"
    return f"{scheme}://{u.hostname}:{u.port or 6333}"


@pytest.fixture(autouse=True)
def _close():
    yield
    close_clients()  # releases the qdrant+path locks
    close_shards()  # and the Qdrant Edge shard locks


class Store:
    """A source collection of ``kind`` holding :func:`make_table` ``(N, DIM)`` and the URI of a
    target beside it, with the store-specific parts of the expected messages."""

    def __init__(self, kind: str, root: str):
        self.kind, self.root = kind, root
        self.table = make_table(N, DIM, seed=4)
        self.X = vectors_to_numpy(self.table.column("vector"))
        self.ids = self.table.column("id").to_pylist()
        if kind == "lancedb":
            db = os.path.join(root, "db")
            lancedb.connect(db).create_table("docs", data=self.table)
            self.uri, self.target = lancedb_uri(db, "docs"), lancedb_uri(db, "docs_c")
            self.parent = db
        elif kind == "parquet":
            d = os.path.join(root, "src")
            os.makedirs(d)
            for i, (s, e) in enumerate([(0, 50), (50, 90), (90, N)]):  # three files
                pq.write_table(self.table.slice(s, e - s), os.path.join(d, f"{'abc'[i]}.parquet"))
            self.uri, self.target = f"parquet://{d}", f"parquet://{root}/out"
            self.parent = root
        elif kind == "qdrant-edge":
            import qdrant_edge as qe

            sh = qe.EdgeShard.create(os.path.join(root, "docs"), qe.EdgeConfig(
                vectors={"": qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Euclid)}))
            sh.update(qe.UpdateOperation.upsert_points([
                qe.Point(i, x.tolist(), {"text": t, "year": y}) for i, x, t, y in zip(
                    self.ids, self.X, self.table.column("text").to_pylist(),
                    self.table.column("year").to_pylist())]))
            sh.flush()
            sh.close()
            self.uri = "qdrant+edge://" + os.path.join(root, "docs")
            self.target = "qdrant+edge://" + os.path.join(root, "docs_c")
            self.parent = root
        else:
            from qdrant_client import models as m

            if kind == "qdrant-server":  # a shared server: names of this test only
                self.coll, base = f"tldr_contract_{uuid.uuid4().hex[:10]}", server_base()
            else:
                self.coll, base = "docs", "qdrant+path://" + os.path.join(root, "qd")
            self.uri, self.target = f"{base}/{self.coll}", f"{base}/{self.coll}_c"
            self.parent = None
            self.client = client_for(parse_uri(self.uri))
            self.client.create_collection(self.coll, vectors_config=m.VectorParams(
                size=DIM, distance=m.Distance.EUCLID))
            self.client.upsert(self.coll, wait=True, points=m.Batch(
                ids=self.ids, vectors=self.X.tolist(),
                payloads=[{"text": t, "year": y} for t, y in zip(
                    self.table.column("text").to_pylist(), self.table.column("year").to_pylist())]))

    # -- expected store-specific messages
    def unknown_id(self, src, bad: int) -> str:
        if self.kind in QDRANTS:
            return (rf"^The 'ids' parameter of take must name points of source "
                    rf"'{re.escape(src.uri)}'\. Got unknown id {bad}\.$")
        return (rf"^The 'ids' parameter of take must name rows of source "
                rf"'{re.escape(src.uri)}'\. Got 1 unknown id\(s\), first {bad}\.$")

    def not_found(self) -> str:
        return {"lancedb": r"^LanceDB table 'docs_c' not found in LanceDB database '.*'\. "
                           r"Existing tables: docs\.$",
                "parquet": r"^Parquet target 'parquet://.*/out' not found: no directory "
                           r"'.*/out'\.$",
                "qdrant": r"^Qdrant collection 'docs_c' not found in embedded Qdrant '.*'\. "
                          r"Existing collections: docs, docs_c__v1\.$",
                "qdrant-edge": r"^Qdrant Edge target 'qdrant\+edge://.*/docs_c' not found: no "
                               r"shard at '.*/docs_c'\.$",
                "qdrant-server": rf"^Qdrant collection '{getattr(self, 'coll', '')}_c' not found "
                                 rf"in Qdrant at .*\. Existing collections: .*"}[self.kind]

    def exists(self) -> str:
        t = f"^Target '{re.escape(self.target)}' already exists"
        return t + {"lancedb": r"\. Pass overwrite=True to replace it \(the old rows stay "
                               r"available as an older Lance version\)\.$",
                    "parquet": r"\. Pass overwrite=True to replace it\.$",
                    "qdrant": r" \(alias of collection 'docs_c__v1'\)\. Pass overwrite=True to "
                              r"replace it\.$",
                    "qdrant-edge": r" \(version '\.docs_c\.tldr-v1'\)\. Pass overwrite=True to "
                                   r"replace it\.$",
                    "qdrant-server": rf" \(alias of collection '{getattr(self, 'coll', '')}_c__v1'\)"
                                     rf"\. Pass overwrite=True to replace it\.$"}[self.kind]

    def leftovers(self) -> list[str]:
        """Staging areas left: directories beside a file target, collections in Qdrant."""
        if self.kind in CLIENT_STORES:
            live = {a.collection_name for a in self.client.get_aliases().aliases}
            return sorted(c.name for c in self.client.get_collections().collections
                          if c.name.startswith(f"{self.coll}_c__") and c.name not in live)
        return staging_leftovers(self.parent)


    def drop(self) -> None:
        """Delete this test's aliases and collections on a server (nothing elsewhere)."""
        if self.kind != "qdrant-server":
            return
        from qdrant_client import models as m

        for a in self.client.get_aliases().aliases:
            if a.alias_name.startswith(self.coll):
                self.client.update_collection_aliases(change_aliases_operations=[
                    m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=a.alias_name))])
        for c in self.client.get_collections().collections:
            if c.name.startswith(self.coll):
                self.client.delete_collection(c.name)


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    s = Store(request.param, str(tmp_path))
    yield s
    s.drop()


def _by_id(tgt) -> dict:
    """id -> stored reduced vector (float32) of every row of a target."""
    out = {}
    for b in tgt.iter_batches(37):
        X = vectors_to_numpy(b.column(tgt.layout.vector_column)).astype(np.float32)
        out.update(zip(b.column(tgt.layout.id_column).to_pylist(), X))
    return out


def _source_rows(src, ids: list[int], X: np.ndarray) -> pa.RecordBatch:
    """Rows in the source's batch schema with ``ids`` and vectors ``X`` (payload of row 0)."""
    first = next(src.iter_batches(len(ids)))
    cols = []
    for f in src.schema:
        if f.name == src.id_column:
            cols.append(pa.array(ids, type=f.type))
        elif f.name == src.vector_column:
            cols.append(numpy_to_fsl(X.astype(np.float32)))
        else:
            cols.append(first.column(f.name).slice(0, len(ids)))
    return pa.RecordBatch.from_arrays(cols, schema=src.schema)


# ----------------------------------------------------------------------------------------- read

def test_read_batches_and_take(store):
    src = open_source(store.uri)
    assert (src.id_column, src.vector_column, src.dim, src.distance, src.count()) == \
        ("id", "vector", DIM, "l2", N)
    batches = list(src.iter_batches(32))
    assert max(b.num_rows for b in batches) <= 32 and sum(b.num_rows for b in batches) == N
    assert all(b.schema == src.schema for b in batches)
    got = pa.concat_arrays([b.column(src.id_column) for b in batches]).to_pylist()
    assert got == store.ids  # stream order: the stored order (Qdrant: point ids, ascending)
    np.testing.assert_array_equal(
        np.concatenate([vectors_to_numpy(b.column(src.vector_column)) for b in batches]), store.X)
    ids = store.ids
    np.testing.assert_array_equal(src.take([ids[100], ids[3], ids[119], ids[3]]),
                                  store.X[[100, 3, 119, 3]])  # across files, repeats, any order
    assert src.take([]).shape == (0, DIM)
    with pytest.raises(InvalidInputError, match=store.unknown_id(src, 999_999)):
        src.take([ids[1], 999_999])
    assert src.fingerprint() == open_source(store.uri).fingerprint()


def test_take_by_position_equals_the_scanned_rows(store):
    """Random access by stream position (what rescoring a shortlist reads): the same vectors as
    the scan at those positions and as ``take`` of their ids, in the order asked."""
    src = open_source(store.uri)
    scanned = np.concatenate([vectors_to_numpy(b.column(src.vector_column))
                              for b in src.iter_batches(32)]).astype(np.float32)
    pos = [100, 3, 119, 3, 0, 55, 49, 50, 89, 90]  # across files / row groups, repeats, any order
    got = src.take_positions(pos)
    assert got.dtype == np.float32 and got.shape == (len(pos), DIM)
    np.testing.assert_array_equal(got, scanned[pos])
    np.testing.assert_array_equal(got, src.take([store.ids[i] for i in pos]))
    np.testing.assert_array_equal(src.take_positions(np.arange(N)), scanned)
    assert src.take_positions([]).shape == (0, DIM)
    with pytest.raises(InvalidInputError, match=rf"^The 'positions' parameter of take_positions "
                       rf"must hold row positions of source '{re.escape(src.uri)}' in the range "
                       rf"\[0, {N}\)\. Got {N} instead\.$"):
        src.take_positions([1, N])
    with pytest.raises(InvalidInputError, match=r"^The 'positions' parameter of take_positions "
                       r"must be a 1-D sequence of ints \(row positions of source '.*'\)\. Got "
                       r"shape \(2,\) and dtype float64 instead\.$"):
        src.take_positions([1.0, 2.0])


# ------------------------------------------------------------------------------ write + publish

def test_write_publish_is_atomic(store):
    src = open_source(store.uri)
    sink = stage_target(src, store.target, d=D)
    with pytest.raises(SourceNotFoundError, match=store.not_found()):
        open_target(store.target)  # verified but not published: invisible
    assert sink.staging_ref() and store.leftovers()
    sink.publish()
    assert store.leftovers() == []
    tgt = open_target(store.target)
    assert (tgt.count(), tgt.model_bytes, tgt.metadata["dims"]) == (N, MODEL, [DIM, D])
    assert tgt.layout.id_column == "id" and tgt.layout.distance == "l2"
    assert sorted(tgt.ids().to_pylist()) == store.ids
    with pytest.raises(TargetExistsError, match=store.exists()):
        write_target(src, store.target, d=D)
    assert store.leftovers() == []
    sink = stage_target(src, store.target, d=2, overwrite=True)
    assert open_target(store.target).metadata["dims"] == [DIM, D]  # staged, not visible
    sink.publish()
    assert open_target(store.target).metadata["dims"] == [DIM, 2]
    sink = stage_target(src, store.target, d=3, overwrite=True)
    sink.abort()
    sink.abort()  # idempotent
    assert store.leftovers() == []
    assert open_target(store.target).metadata["dims"] == [DIM, 2]


def test_artifacts_are_published_with_the_rows(store):
    """Lance and Parquet keep named artifacts (the code index) listed with their sha256 in the
    record, published atomically with the rows; a delta or upsert drops them (they were built
    over the rows before: never a stale one). Qdrant keeps its own index and refuses them."""
    import hashlib

    from tldr_index.errors import InvalidParameterError

    src = open_source(store.uri)
    blob = bytes(range(256)) * 5
    if store.kind not in ("lancedb", "parquet"):
        with pytest.raises(InvalidInputError, match=r"^Target '.*' \(\w+Sink\) cannot store "
                           r"artifacts; only the file stores \(Lance, Parquet\) do\.$"):
            stage_target(src, store.target, d=D, artifacts={"code_index": blob})
        assert store.leftovers() == []
        write_target(src, store.target, d=D)
        with pytest.raises(InvalidInputError, match=r"^Target '.*' \(\w+Target\) cannot store "
                           r"artifacts; only the file stores \(Lance, Parquet\) do\.$"):
            open_target(store.target).store_artifact("code_index", blob)
        assert open_target(store.target).artifacts() == []
        return
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'name' parameter of store_artifact must be 1-64 characters of a-z, 0-9, '_' or "
            "'-'. Got '../x' instead.")):
        stage_target(src, store.target, d=D, artifacts={"../x": blob})
    sink = stage_target(src, store.target, d=D, artifacts={"code_index": blob})
    with pytest.raises(SourceNotFoundError):
        open_target(store.target)  # staged with the rows: invisible until publish
    sink.publish()
    tgt = open_target(store.target)
    assert tgt.artifacts() == ["code_index"] and tgt.artifact("code_index") == blob
    assert tgt.artifact("other") is None
    entry = tgt.record["artifacts"]["code_index"]
    assert (entry["sha256"], entry["size"]) == (hashlib.sha256(blob).hexdigest(), len(blob))
    # replaced by overwrite with another one; an overwrite without one lists none
    sink = stage_target(src, store.target, d=D, overwrite=True, artifacts={"code_index": blob[:7]})
    sink.publish()
    assert open_target(store.target).artifact("code_index") == blob[:7]
    # an upsert changes the rows: the artifact is no longer listed
    tgt = open_target(store.target)
    rows, deleted, want, _ = _delta(store, src, tgt, seed=2)
    tgt.upsert(rows, batch_rows=50, max_retries=0)
    assert open_target(store.target).artifacts() == []
    # and a delta drops it too
    write_target(src, store.target, d=D, overwrite=True, artifacts={"code_index": blob})
    tgt = open_target(store.target)
    digest = IdDigest()
    digest.update(pa.array(want, type=pa.int64()))
    tgt.apply_delta(rows, deleted, dict(tgt.metadata), expected_count=len(want),
                    expected_digest=digest.hexdigest(), batch_rows=50)
    assert open_target(store.target).artifacts() == []
    write_target(src, store.target, d=D, overwrite=True)
    assert open_target(store.target).artifacts() == []
    # stored after the rows (what reindex and add do): one switch of the record
    tgt = open_target(store.target)
    tgt.store_artifact("code_index", blob)
    assert open_target(store.target).artifact("code_index") == blob
    assert tgt.artifacts() == ["code_index"]
    tgt.store_artifact("code_index", blob[:9])  # replaced
    assert open_target(store.target).artifact("code_index") == blob[:9]
    # refused when the rows changed since the target was opened: nothing listed
    stale = open_target(store.target)
    open_target(store.target).upsert(rows, batch_rows=50, max_retries=0)
    with pytest.raises(VerificationError, match=re.escape(
            f"Target '{store.target}' changed since it was opened")):
        stale.store_artifact("code_index", blob)
    assert open_target(store.target).artifacts() == []


def test_rows_read_back_and_search(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    rows = _by_id(tgt)
    assert sorted(rows) == store.ids
    for i, v in zip(store.ids, store.X):
        np.testing.assert_array_equal(rows[i], v[:D])  # float32 reduced vectors, exact
    found, Y = tgt.fetch_vectors(pa.array([store.ids[5], 999_999, store.ids[0]]))
    assert sorted(found) == sorted([store.ids[5], store.ids[0]])
    for i, y in zip(found, Y):
        np.testing.assert_array_equal(y, rows[i])
    assert tgt.fetch_vectors(pa.array([], type=pa.int64()))[0] == []
    assert tgt.id_type() == pa.int64()
    hits = tgt.search(store.X[7, :D], k=3)
    assert hits.column("id")[0].as_py() == store.ids[7]
    assert hits.num_rows == 3 and hits.column("_distance")[0].as_py() == pytest.approx(0, abs=1e-5)


def test_quantization_reaches_the_engine(store):
    """The target's product quantization as the engine holds it. Engines differ by design here:
    qdrant-client local mode accepts the config and drops it (it searches by brute force, api-notes
    section 3), so that branch asserts it is gone; Lance and Parquet keep PQ codes as a column and
    have no engine-side quantization config."""
    if store.kind in ("lancedb", "parquet"):
        pytest.skip(f"{store.kind}: the PQ codes are a column; no engine quantization config")
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    if store.kind == "qdrant-edge":
        import json

        with open(os.path.join(os.path.realpath(parse_uri(store.target).path),
                               "edge_config.json")) as fh:
            assert "product" in json.load(fh)["quantization_config"]
        return
    cfg = store.client.get_collection(tgt.collection).config.quantization_config
    if store.kind == "qdrant":  # local mode drops quantization by design (brute-force search)
        assert cfg is None
    else:  # a real server keeps it
        assert cfg is not None and cfg.product is not None


# ------------------------------------------------------------------------------ delta, rollback

def _delta(store, src, tgt, seed=0):
    """New rows (3 added, 4 replaced), 5 deleted ids, and the ids the result must hold."""
    rng = np.random.default_rng(seed)
    ids = store.ids
    added = [10_000 + 3 * k for k in range(3)]
    replaced, deleted = ids[10:14], ids[50:55]
    X = rng.standard_normal((7, DIM)).astype(np.float32)
    rows = pa.Table.from_batches([reduce_batch(_source_rows(src, added + replaced, X), src, D)])
    schema = tgt.row_schema()
    if schema is not None:
        rows = rows.cast(schema)
    want = sorted(set(ids) - set(deleted) | set(added))
    return rows, pa.array(deleted, type=pa.int64()), want, dict(zip(added + replaced, X[:, :D]))


def test_delta_add_delete_replace_then_rollback(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    before, meta0 = _by_id(tgt), dict(tgt.metadata)
    h0 = tgt.current_handle()
    assert h0["kind"] == tgt.kind
    rows, deleted, want, new = _delta(store, src, tgt)
    digest = IdDigest()
    digest.update(pa.array(want, type=pa.int64()))
    staged: list[dict] = []
    prev = tgt.apply_delta(rows, deleted, {**meta0, "gen": 2}, expected_count=len(want),
                           expected_digest=digest.hexdigest(), batch_rows=50,
                           staged=staged.append)
    assert prev == h0  # the handle of the version replaced
    assert staged == ([] if store.kind == "lancedb" else [staged[0]])
    # nothing staged is left; Qdrant keeps the replaced collection (a copy) for rollback
    assert store.leftovers() == ([h0["collection"]] if store.kind in CLIENT_STORES else [])
    now = open_target(store.target)
    assert now.metadata == {**meta0, "gen": 2} and now.model_bytes == MODEL
    after = _by_id(now)
    assert sorted(after) == want
    for i, v in new.items():
        np.testing.assert_array_equal(after[i], v)
    for i in set(want) - set(new):
        np.testing.assert_array_equal(after[i], before[i])
    assert now.fetch_vectors(deleted)[0] == []

    left = now.rollback_to(prev)
    back = open_target(store.target)
    assert back.metadata == meta0 and sorted(_by_id(back)) == sorted(before)
    back.rollback_to(left)  # a second rollback undoes the first
    assert sorted(_by_id(open_target(store.target))) == want
    other = {"lancedb": "parquet", "parquet": "qdrant", "qdrant": "lance",
             "qdrant-edge": "qdrant", "qdrant-server": "lance"}[store.kind]
    with pytest.raises(InvalidInputError, match=rf"^The rollback record of target "
                       rf"'{re.escape(store.target)}' is for a {other} target\. Got a "
                       rf"{tgt.kind} target\.$"):
        back.rollback_to({"kind": other})


def test_delta_with_a_wrong_count_publishes_nothing(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    rows, deleted, want, _ = _delta(store, src, tgt)
    with pytest.raises(VerificationError, match=rf"must hold {len(want) + 1} rows"):
        tgt.apply_delta(rows, deleted, dict(tgt.metadata), expected_count=len(want) + 1,
                        expected_digest=None)
    now = open_target(store.target)
    assert sorted(now.ids().to_pylist()) == store.ids and now.metadata == tgt.metadata
    assert store.leftovers() == []


def test_upsert_adds_and_replaces(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    rows, _, _, new = _delta(store, src, tgt, seed=1)
    tgt.upsert(rows, batch_rows=3, max_retries=0)
    after = _by_id(open_target(store.target))
    assert sorted(after) == sorted(set(store.ids) | set(new))
    for i, v in new.items():
        np.testing.assert_array_equal(after[i], v)


def test_versions_kept_for_rollback_and_pruned(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    opts = tgt.keep_previous_options()
    assert opts == (None if store.kind == "lancedb" else {"keep_previous": True})
    write_target(src, store.target, d=2, overwrite=True, **(opts or {}))
    new = open_target(store.target)
    assert new.metadata["dims"] == [DIM, 2]
    new.rollback_to(tgt.current_handle())  # the replaced version was kept
    assert open_target(store.target).metadata["dims"] == [DIM, D]
    new.prune_versions(keep=[tgt.current_handle()])  # keeps the live and the named one
    assert open_target(store.target).metadata["dims"] == [DIM, D]


# ------------------------------------------------------------------------------------ disk size

def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _tree_blocks(path: str) -> int:
    return sum(os.lstat(os.path.join(r, f)).st_blocks * 512 for r, _, fs in os.walk(path)
               for f in fs)


def test_disk_bytes(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    tgt = open_target(store.target)
    if store.kind == "qdrant-server":  # files on the server's disk: unknown here
        assert src.disk_bytes() is None and tgt.disk_bytes() is None
        assert disk_bytes(store.target) is None
        return
    if store.kind == "qdrant":  # embedded: the live collection's storage folder, alias resolved
        p = parse_uri(store.target)
        folder = os.path.join(p.path, "collection", tgt.collection)
        assert tgt.collection != p.collection  # the target is an alias of a versioned collection
        assert src.disk_bytes() is None
        assert tgt.disk_bytes() == disk_bytes(store.target) == _tree_bytes(folder) > 0
        return
    if store.kind == "qdrant-edge":  # the live version's blocks: the engine's files are sparse
        live = os.path.realpath(parse_uri(store.target).path)
        assert tgt.disk_bytes() == disk_bytes(store.target) == _tree_blocks(live) > len(MODEL)
        assert _tree_blocks(live) < _tree_bytes(live) // 100  # 32 MiB WAL segments, preallocated
        assert src.disk_bytes() == disk_bytes(store.uri) == _tree_blocks(parse_uri(store.uri).path)
        assert disk_bytes(store.target + "_missing") is None
        write_target(src, store.target, d=D, overwrite=True)
        assert not os.path.exists(live)  # replaced without keep_previous: deleted
        assert open_target(store.target).disk_bytes() == _tree_blocks(
            os.path.realpath(parse_uri(store.target).path))
        return
    path = parse_uri(store.target).path
    tree = _tree_bytes(path)
    if store.kind == "lancedb":  # a new dataset: its data files and the model sidecar, no index
        tree = _tree_bytes(os.path.join(path, "data")) + _tree_bytes(os.path.join(path, "_tldr"))
    assert tgt.disk_bytes() == disk_bytes(store.target) == tree > len(MODEL)
    assert src.disk_bytes() == disk_bytes(store.uri) > N * DIM * 4 // 2
    if store.kind == "parquet":
        assert src.disk_bytes() == _tree_bytes(parse_uri(store.uri).path)
    assert disk_bytes(store.target + "_missing") is None
    write_target(src, store.target, d=D, overwrite=True)  # Lance keeps the old version
    assert open_target(store.target).disk_bytes() == tree


# ---------------------------------------------------------------------------------- staging

def test_killed_write_staging_is_discarded(store):
    src = open_source(store.uri)
    write_target(src, store.target, d=D)
    sink = stage_target(src, store.target, d=2, overwrite=True)  # then "killed": no abort
    ref = sink.staging_ref()
    assert store.leftovers()
    discard_staging(store.target, {"path": None, **ref})
    assert store.leftovers() == []
    discard_staging(store.target, ref)  # idempotent
    live = open_target(store.target)
    discard_staging(store.target, {"path": parse_uri(store.target).path,  # never the target
                                   "collection": getattr(live, "collection", None)})
    assert open_target(store.target).metadata["dims"] == [DIM, D] and live.count() == N


# --------------------------------------------------------------------------- distributed engine

def test_distributed_hooks(store):
    src = open_source(store.uri)
    sink = open_sink(store.target)
    if store.kind in QDRANTS:  # scrolled, not read by Ray; no shard files
        assert src.ray_read(["id", "vector"]) is None and sink.shard_writer() is None
        return
    batches = [reduce_batch(b, src, D) for b in src.iter_batches(50)]
    schema = batches[0].schema
    sink.create(schema, id_column="id", vector_column="vector", distance="l2",
                codes_column="pq_codes")
    writer = pickle.loads(pickle.dumps(sink.shard_writer()))  # travels to a worker
    shards = [writer(schema, iter(batches[1:])), writer(schema, iter(batches[:1]))]
    sink.adopt_shards(shards, N)
    digest = IdDigest()
    for b in batches:
        digest.update(b.column("id"))
    sink.store_model(MODEL, {"dims": [DIM, D]})
    sink.verify(N, digest.hexdigest())
    sink.publish()
    got = open_target(store.target).ids().to_pylist()
    assert got == store.ids[50:] + store.ids[:50]  # in the order the shards were adopted


# ------------------------------------------------------------------------------------- layering

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTTOM = {"tldr_index.errors", "tldr_index.validation", "tldr_index.artifact",
          "tldr_index.progress", "tldr_index.version", "tldr_index.oserrors",
          "tldr_index.threads", "tldr_index.faults"}
STORE_CLASSES = {f"{s}{r}" for s in ("Lance", "Parquet", "Qdrant")
                 for r in ("Source", "Sink", "Target")} | {
    f"QdrantEdge{r}" for r in ("Source", "Sink", "Target")}


def _modules(package: str):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path) as fh:
                    yield os.path.relpath(path, ROOT), ast.parse(fh.read())


def test_connectors_import_only_the_bottom_layer():
    bad = []
    for rel, tree in _modules("connectors"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.split(".")[0] == "tldr_index" and node.module not in BOTTOM:
                bad.append(f"{rel}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                bad += [f"{rel}: import {a.name}" for a in node.names
                        if a.name.split(".")[0] == "tldr_index" and a.name not in BOTTOM]
    assert bad == []


def test_the_engine_uses_stores_only_through_the_base_classes():
    """No store class, class-name switch or private attribute of a connector object outside
    connectors/ (a new store touches its own module and its tests)."""
    bad = []
    for rel, tree in _modules("tldr_index"):
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else \
                node.attr if isinstance(node, ast.Attribute) else None
            if name in STORE_CLASSES or name == "kind_of":
                bad.append(f"{rel}:{node.lineno} {name}")
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("connectors."):
                bad += [f"{rel}:{node.lineno} {a.name}" for a in node.names
                        if a.name in STORE_CLASSES or a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                    not node.attr.startswith("__") and isinstance(node.value, ast.Name) and \
                    node.value.id in ("src", "source", "sink", "tgt", "target", "new"):
                bad.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    assert bad == []
