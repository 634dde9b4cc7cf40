"""Qdrant: scroll source, aliased target, retries; embedded engines (memory and path) and, when
``QDRANT_URL`` is set, a real server."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pytest
from _connector_helpers import MODEL, make_table, stage_target, write_target
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException

from connectors import open_sink, open_source, open_target, parse_uri
from connectors.arrow_utils import vectors_to_numpy
from connectors.qdrant_store import client_for, close_clients, point_id
from tldr_index.errors import (InvalidInputError, MissingColumnError, SourceNotFoundError,
                               StoreUnavailableError, TargetExistsError)

N, DIM = 120, 8


@pytest.fixture(autouse=True)
def _close():
    yield
    close_clients()


def _fill(client: QdrantClient, name: str, *, named: str | None = None, distance=m.Distance.EUCLID,
          ids=None, n: int = N, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    params = m.VectorParams(size=DIM, distance=distance)
    client.create_collection(name, vectors_config={named: params} if named else params)
    ids = list(range(1, n + 1)) if ids is None else ids
    client.upsert(name, points=m.Batch(
        ids=ids, vectors={named: X.tolist()} if named else X.tolist(),
        payloads=[{"title": f"t{i}", "tags": ["a", str(i % 3)], "n": i} for i in range(n)]))
    return X


def _checksum(client, name: str) -> tuple[int, str]:
    """Count and a checksum of every point (id, vector, payload) to prove a source is untouched."""
    h = hashlib.sha256()
    pts, _ = client.scroll(name, limit=10_000, with_vectors=True, with_payload=True)
    for p in sorted(pts, key=lambda p: str(p.id)):
        h.update(json.dumps([str(p.id), p.vector, p.payload], sort_keys=True).encode())
    return client.count(name, exact=True).count, h.hexdigest()


@pytest.fixture()
def mem(request):
    """A fresh in-memory Qdrant per test, with collection 'docs' (unnamed vector, Euclid)."""
    base = f"qdrant+memory://{request.node.name}-{uuid.uuid4().hex[:6]}"
    client = client_for(parse_uri(base + "/docs"))
    X = _fill(client, "docs")
    return base, client, X


def test_round_trip_memory(mem):
    base, client, X = mem
    before = _checksum(client, "docs")
    src = open_source(base + "/docs")
    assert (src.id_column, src.vector_column, src.dim, src.distance) == ("id", "vector", DIM, "l2")
    assert src.payload_columns == ["payload"] and src.count() == N
    sizes = [b.num_rows for b in src.iter_batches(50)]
    assert sizes == [50, 50, 20]  # take: tests/test_store_contract.py

    write_target(src, base + "/docs_compact", d=4)
    tgt = open_target(base + "/docs_compact")
    assert tgt.collection == "docs_compact__v1"
    assert tgt.model_bytes == MODEL and tgt.metadata["dims"] == [DIM, 4]
    got = tgt.to_table()
    assert got.column("id").to_pylist() == list(range(1, N + 1))
    np.testing.assert_array_equal(vectors_to_numpy(got.column("vector")), X[:, :4])
    pl = [json.loads(s) for s in got.column("payload").to_pylist()]
    assert pl[5] == {"title": "t5", "tags": ["a", "2"], "n": 5}
    info = client.get_collection("docs_compact")
    assert info.config.params.vectors.size == 4
    assert info.config.params.vectors.distance == m.Distance.EUCLID
    hits = tgt.search(X[10, :4], k=3)
    assert hits.column("id")[0].as_py() == 11 and hits.column("_distance")[0].as_py() < 1e-5
    assert _checksum(client, "docs") == before


def test_named_vector_and_string_ids(request):
    base = f"qdrant+memory://{request.node.name}"
    client = client_for(parse_uri(base + "/docs"))
    uids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    X = _fill(client, "docs", named="dense", distance=m.Distance.COSINE, ids=uids)
    src = open_source(base + "/docs", payload_columns=["title", "n"])
    assert src.vector_column == "dense" and src.distance == "cosine"
    assert src.schema.field("id").type == pa.string()
    assert src.schema.field("n").type == pa.int64()
    write_target(src, base + "/small", d=4)
    tgt = open_target(base + "/small")
    t = tgt.to_table()
    assert sorted(t.column("id").to_pylist()) == sorted(uids)
    assert set(client.get_collection("small").config.params.vectors) == {"dense"}
    # cosine collections store normalised vectors
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = Xn[:, :4] / np.linalg.norm(Xn[:, :4], axis=1, keepdims=True)
    order = {u: i for i, u in enumerate(uids)}
    rows = [order[u] for u in t.column("id").to_pylist()]
    np.testing.assert_allclose(vectors_to_numpy(t.column("dense")), Y[rows], rtol=1e-5, atol=1e-6)
    with pytest.raises(MissingColumnError, match=r"^Vector 'sparse' not found in source '.*'\. "
                       r"Available vectors: dense\.$"):
        open_source(base + "/docs", vector_column="sparse")


def test_lance_to_qdrant_string_ids_are_mapped(tmp_path, request):
    import lance

    path = str(tmp_path / "s.lance")
    lance.write_dataset(make_table(60, DIM, id_kind="str"), path)
    uri = f"qdrant+memory://{request.node.name}/out"
    write_target(open_source(path), uri, d=4)
    tgt = open_target(uri)
    client = client_for(parse_uri(uri))
    p = client.retrieve(tgt.collection, ids=[point_id("doc-00007")], with_payload=True)[0]
    assert p.payload["id"] == "doc-00007" and p.payload["text"] == "text 7"
    assert point_id("doc-00007") == str(uuid.uuid5(uuid.UUID(tgt.record["qdrant"]["id_namespace"]),
                                                   "doc-00007"))
    assert sorted(tgt.to_table().column("id").to_pylist()) == [f"doc-{i:05d}" for i in range(60)]
    assert tgt.search(np.zeros(4, np.float32) + 1, k=2).column("id").type == pa.string()


def test_alias_switch_is_atomic_and_previous_removed(mem):
    base, client, _ = mem
    src = open_source(base + "/docs")
    uri = base + "/docs_compact"
    write_target(src, uri, d=4)  # refused without overwrite, staged invisible: test_store_contract
    sink = stage_target(src, uri, d=6, overwrite=True)
    sink.publish()
    tgt = open_target(uri)
    assert tgt.collection == "docs_compact__v2" and tgt.metadata["dims"] == [DIM, 6]
    names = {c.name for c in client.get_collections().collections}
    assert names == {"docs", "docs_compact__v2"}
    sink = stage_target(src, uri, d=2, overwrite=True)
    sink.abort()
    assert {c.name for c in client.get_collections().collections} == names
    with pytest.raises(TargetExistsError, match=r"is an existing collection, not an alias"):
        write_target(src, base + "/docs", d=2, overwrite=True)
    client.update_collection_aliases(change_aliases_operations=[m.CreateAliasOperation(
        create_alias=m.CreateAlias(collection_name="docs", alias_name="users_alias"))])
    before = _checksum(client, "docs")
    with pytest.raises(TargetExistsError, match=r"^Target '.*/users_alias' is an alias of "
                       r"collection 'docs', which is not a tldr-index target; refusing to replace "
                       r"it even with overwrite=True\.$"):
        write_target(src, base + "/users_alias", d=2, overwrite=True)
    assert _checksum(client, "docs") == before
    assert {c.name for c in client.get_collections().collections} == names


def test_upsert_retries_with_backoff(mem):
    base, client, _ = mem
    src = open_source(base + "/docs")
    sink = open_sink(base + "/out", upsert_batch=40, backoff_s=0.01, max_retries=3)
    sleeps = []
    sink.retry.sleep = sleeps.append
    real = client.upsert
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise ResponseHandlingException(ConnectionError("connection reset"))
        return real(*a, **kw)

    client.upsert = flaky
    try:
        from _connector_helpers import reduce_batch
        b = reduce_batch(next(src.iter_batches(N)), src, 4)
        sink.create(b.schema, codes_column="pq_codes", distance="l2")
        sink.append(b)
        assert len(sleeps) == 2 and 0.005 <= sleeps[0] <= 0.01 and sleeps[1] > sleeps[0] / 2
        assert client.count(sink.collection, exact=True).count == N
        calls["n"] = -100  # now every call fails
        client.upsert = lambda *a, **kw: (_ for _ in ()).throw(
            ResponseHandlingException(ConnectionError("down")))
        with pytest.raises(StoreUnavailableError, match=r"failed to upsert 40 points into "
                           r"'out__v1' after 4 attempt\(s\) .*: down"):
            sink.append(b)
    finally:
        client.upsert = real
        sink.abort()
    assert "out__v1" not in {c.name for c in client.get_collections().collections}


def test_embedded_path_mode(tmp_path):
    d = str(tmp_path / "qd")
    client = client_for(parse_uri(f"qdrant+path://{d}/docs"))
    X = _fill(client, "docs", n=60, distance=m.Distance.DOT)
    src = open_source(f"qdrant+path://{d}/docs")
    assert src.distance == "ip"
    write_target(src, f"qdrant+path://{d}/docs_compact", d=4)
    close_clients()  # persisted: a new client reads it back
    tgt = open_target(f"qdrant+path://{d}/docs_compact")
    assert tgt.model_bytes == MODEL and tgt.count() == 60
    np.testing.assert_array_equal(vectors_to_numpy(tgt.to_table().column("vector")), X[:, :4])


def test_unreachable_and_missing(mem):
    base, _, _ = mem
    with pytest.raises(StoreUnavailableError, match=r"^Qdrant at http://127\.0\.0\.1:9 is "
                       r"unreachable while trying to list aliases: .*\.$"):
        open_source("qdrant://127.0.0.1:9/docs", timeout=2)
    with pytest.raises(SourceNotFoundError, match=r"^Qdrant collection 'nope' not found in "
                       r"in-memory Qdrant '.*'\. Existing collections: docs\.$"):
        open_source(base + "/nope")
    with pytest.raises(SourceNotFoundError, match=r"Embedded Qdrant storage '/nonexistent/x' not "
                       r"found"):
        open_source("qdrant+path:///nonexistent/x/docs")


def test_empty_collection_and_api_key_never_leaks(request, monkeypatch):
    base = f"qdrant+memory://{request.node.name}"
    client = client_for(parse_uri(base + "/e"))
    client.create_collection("e", vectors_config=m.VectorParams(size=4, distance=m.Distance.DOT))
    with pytest.raises(InvalidInputError, match=r"^Source 'qdrant\+memory://.*/e' is empty: it "
                       r"has 0 rows\.$"):
        open_source(base + "/e")
    secret = "sk-very-secret-key"
    monkeypatch.setenv("QDRANT_API_KEY", secret)
    X = _fill(client, "docs", n=20)
    src = open_source(base + "/docs")
    sink = open_sink(base + "/out")
    from _connector_helpers import reduce_batch
    b = reduce_batch(next(src.iter_batches(100)), src, 4)
    with sink:
        sink.create(b.schema, codes_column="pq_codes")
        sink.append(b)
        sink.store_model(MODEL, {"note": f"leaked {secret}"})
        sink.verify(20)
        sink.publish()
    meta = json.dumps(client.get_collection("out").config.metadata)
    assert secret not in meta and "leaked ***" in meta
    assert X.shape == (20, DIM)


@pytest.mark.qdrant_server
@pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="set QDRANT_URL to a Qdrant server")
def test_real_server_round_trip():
    from urllib.parse import urlsplit

    u = urlsplit(os.environ["QDRANT_URL"])
    scheme = "qdrant+https" if u.scheme == "https" else "qdrant"
    name = f"tldr_test_{uuid.uuid4().hex[:8]}"
    base = f"{scheme}://{u.hostname}:{u.port or 6333}"
    client = client_for(parse_uri(f"{base}/{name}"))
    try:
        X = _fill(client, name, n=200)
        src = open_source(f"{base}/{name}")
        write_target(src, f"{base}/{name}_compact", d=4)
        tgt = open_target(f"{base}/{name}_compact")
        assert tgt.count() == 200 and tgt.model_bytes == MODEL
        info = client.get_collection(tgt.collection)
        assert info.config.quantization_config is not None  # PQ is real on a server
        np.testing.assert_array_equal(
            vectors_to_numpy(tgt.to_table().sort_by("id").column("vector")), X[:, :4])
    finally:
        for c in client.get_collections().collections:
            if c.name.startswith(name):
                client.delete_collection(c.name)


def test_embedded_compact_collection_close_releases_the_path_and_exit_is_quiet(tmp_path):
    """``tldr_index.open("qdrant+path://...")``: ``close()`` / ``with`` release the storage lock
    (another client can open the path); a command on an embedded store ends without the
    ``QdrantClient.__del__`` ImportError traceback (clients are closed at exit)."""
    import re
    import subprocess
    import sys

    from _pipeline_helpers import make_nested

    import tldr_index
    from tldr_index.pipeline import shrink

    d = str(tmp_path / "qd")
    X = make_nested(300, 16, between=6, within=4, seed=2)
    client = client_for(parse_uri(f"qdrant+path://{d}/docs"))
    client.create_collection("docs", vectors_config=m.VectorParams(size=16,
                                                                   distance=m.Distance.EUCLID))
    client.upsert("docs", points=m.Batch(ids=list(range(300)), vectors=X.tolist()))
    tgt = f"qdrant+path://{d}/docs_c"
    shrink(f"qdrant+path://{d}/docs", tgt, dim=4, pq_bytes=2, epochs=1, threads=1,
           eval_queries=0, work_dir=tmp_path / "w")
    close_clients()
    c = tldr_index.open(tgt)
    assert c.count() == 300
    with pytest.raises(RuntimeError, match="already accessed by another instance"):
        QdrantClient(path=d)                      # locked while the collection is open
    c.close()
    c.close()                                     # idempotent
    other = QdrantClient(path=d)                  # the lock is released
    assert other.count("docs", exact=True).count == 300
    other.close()
    with tldr_index.open(tgt) as c2:
        assert c2.count() == 300
        hits = c2.search(X[:2], k=3)
    assert hits.ids.shape == (2, 3) and c2.closed
    t = re.escape(tgt)
    with pytest.raises(InvalidInputError, match=rf"^The compact collection '{t}' is closed; "
                                                rf"search\(\) needs an open one \(tldr_index\."
                                                rf"open\('{t}'\) again\)\.$"):
        c2.search(X[:2], k=3)
    other = QdrantClient(path=d)
    other.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "tldr_index", "info", "--target", tgt],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "rows" in run.stdout
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr


def test_point_ids_of_a_page_that_mixes_integers_and_uuids():
    """One page of a Qdrant (or Qdrant Edge) source with integer and UUID ids: one clear line."""
    from types import SimpleNamespace

    import pyarrow as pa

    from connectors.qdrant_clients import point_ids

    pts = [SimpleNamespace(id=1), SimpleNamespace(id="5c56c793-69f3-4fbf-87e6-c4bf54c28c26")]
    assert point_ids(pts[:1], pa.uint64(), "qdrant+path://x/c").to_pylist() == [1]
    with pytest.raises(InvalidInputError, match=r"^Point ids of source 'qdrant\+path://x/c' must "
                       r"be all integers or all UUIDs\. Got a mix \(first page: uint64\)\.$"):
        point_ids(pts, pa.uint64(), "qdrant+path://x/c")
