"""What only the Qdrant Edge store does (the real Qdrant engine, embedded): shrink -> search with
product quantization on an HNSW graph, reindex + rollback through the engine's API, a reader during
publish, named vectors, and bad input (not a shard, a shard locked by another process, a missing
named vector, quantization settings refused): one line each, nothing written, the source
untouched (point count and a checksum over ids, vectors and payload)."""

from __future__ import annotations

import contextlib

import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import qdrant_edge as qe
from _connector_helpers import stage_target, write_target
from conftest import make_structured

from connectors import (absolute_uri, default_target_uri, open_sink, open_source, open_target,
                        parse_uri)
from connectors.qdrant_edge_store import close_shards, release_shard
from tldr_index.errors import (InvalidInputError, InvalidParameterError, MissingColumnError,
                               StoreUnavailableError, TargetExistsError, UnsupportedURIError)
from tldr_index.pipeline import shrink
from tldr_index.reindex import reindex, rollback

N, DIM = 400, 16


@pytest.fixture(autouse=True)
def _close():
    yield
    close_shards()


def make_shard(path: str, X: np.ndarray, *, names: tuple[str, ...] = ("",), ids=None) -> str:
    """A Qdrant Edge shard written through the engine itself; payload ``text``, ``n``."""
    ids = list(range(1, 3 * len(X) + 1, 3)) if ids is None else ids
    sh = qe.EdgeShard.create(path, qe.EdgeConfig(vectors={
        n: qe.EdgeVectorParams(size=X.shape[1] if n in ("", "a") else 2,
                               distance=qe.Distance.Euclid) for n in names}))
    pts = []
    for i, x in zip(ids, X):
        v = x.tolist() if names == ("",) else {n: x.tolist() if n == "a" else [1.0, 2.0]
                                               for n in names}
        pts.append(qe.Point(i, v, {"text": f"doc {i}", "n": i}))
    sh.update(qe.UpdateOperation.upsert_points(pts))
    sh.flush()
    sh.close()
    return "qdrant+edge://" + path


def checksum(path: str) -> tuple[int, str]:
    """Point count and sha256 over ids, vectors and payload, read through the engine."""
    sh = qe.EdgeShard.load(path)
    try:
        h = hashlib.sha256()
        recs, off = sh.scroll(qe.ScrollRequest(limit=100_000, with_vector=True, with_payload=True))
        for r in recs:
            h.update(json.dumps([str(r.id), r.vector, r.payload], sort_keys=True).encode())
        return sh.count(qe.CountRequest(exact=True)), h.hexdigest()
    finally:
        sh.close()


def test_shrink_then_search_on_edge_with_product_quantization(tmp_path):
    X = make_structured(N, DIM, seed=3, normalize=False)
    src = make_shard(str(tmp_path / "docs"), X)
    before = checksum(str(tmp_path / "docs"))
    uri = "qdrant+edge://" + str(tmp_path / "docs_c")
    shrink(src, uri, dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0,
           reduced_dtype="float32")
    close_shards()
    assert checksum(str(tmp_path / "docs")) == before  # the source is read-only
    live = os.path.realpath(tmp_path / "docs_c")
    assert os.path.basename(live) == ".docs_c.tldr-v1"
    with open(os.path.join(live, "edge_config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["quantization_config"] == {"product": {"compression": "x8", "always_ram": True}}
    sh = qe.EdgeShard.load(live)  # a plain Qdrant Edge shard: the engine reads it as such
    info = sh.info()
    assert info.points_count == info.indexed_vectors_count == N  # HNSW and PQ built
    sh.close()
    tgt = open_target(uri)
    Y = {i: v for b in tgt.iter_batches() for i, v in zip(
        b.column("id").to_pylist(), np.asarray(b.column("vector").to_pylist(), np.float32))}
    ids = np.array(sorted(Y))
    Ymat = np.stack([Y[i] for i in ids])
    rng = np.random.default_rng(0)
    hits = raw = 0
    for q in rng.choice(len(ids), 20, replace=False):
        exact = ids[np.argsort(((Ymat - Ymat[q]) ** 2).sum(1))[:10]]
        got = tgt.search(Ymat[q], k=10, hnsw_ef=64).column("id").to_pylist()
        hits += len(set(got) & set(exact.tolist()))
        approx = tgt.search(Ymat[q], k=10, rescore=False).column("_distance").to_numpy()
        raw += int(np.abs(approx[0]) > 1e-4)  # PQ distances, not the stored vectors'
    assert hits / 200 >= 0.9  # HNSW + PQ, rescored: close to exact on the reduced vectors
    assert raw > 0  # quantization is in force (local mode would return exact distances)
    # the compact collection's own search goes through the engine and finds each query's row
    import tldr_index

    with tldr_index.open(uri) as coll:
        found = coll.search(X[:5], k=3)
    assert found.engine == "store" and found.ids[:, 0].tolist() == [1, 4, 7, 10, 13]


def test_reindex_and_rollback(tmp_path):
    X = make_structured(N, DIM, seed=4, normalize=False)
    path = str(tmp_path / "docs")
    src = make_shard(path, X)
    uri = "qdrant+edge://" + str(tmp_path / "docs_c")
    shrink(src, uri, dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0)
    close_shards()
    sh = qe.EdgeShard.load(path)  # the user changes the source with the engine's own calls
    sh.update(qe.UpdateOperation.delete_points([1, 4, 7]))
    sh.update(qe.UpdateOperation.upsert_points([qe.Point(10_000, X[0].tolist(), {"text": "new"})]))
    sh.flush()
    sh.close()
    reindex(uri, refit="never", threads=1)
    close_shards()
    ids = sorted(open_target(uri).ids().to_pylist())
    assert 10_000 in ids and 1 not in ids and len(ids) == N - 2
    rollback(uri)
    close_shards()
    ids = sorted(open_target(uri).ids().to_pylist())
    assert 10_000 not in ids and 1 in ids and len(ids) == N


def test_reader_during_publish_never_sees_a_partial_collection(tmp_path):
    X = make_structured(N, DIM, seed=5, normalize=False)
    src = open_source(make_shard(str(tmp_path / "docs"), X))
    uri = "qdrant+edge://" + str(tmp_path / "docs_c")
    write_target(src, uri, d=4)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            t = open_target(uri)
            seen.append((t.metadata["dims"][1], t.count(), len(t.ids())))
            release_shard(t.real)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for d in (2, 3, 4):
            write_target(src, uri, d=d, overwrite=True, keep_previous=True)
    finally:
        stop.set()
        reader.join()
    assert len(seen) >= 3 and all(c == n == N for _, c, n in seen)  # every open: a whole version
    assert {d for d, _, _ in seen} <= {2, 3, 4}


def test_named_vectors(tmp_path):
    X = make_structured(50, DIM, seed=6, normalize=False)
    uri = make_shard(str(tmp_path / "nv"), X, names=("a", "b"))
    before = checksum(str(tmp_path / "nv"))
    with pytest.raises(InvalidInputError, match=r"^Source '.*/nv' has 2 named vectors \(a, b\); "
                       r"pass vector_column= to choose one\.$"):
        open_source(uri)
    with pytest.raises(MissingColumnError, match=r"^Vector 'c' not found in source '.*/nv'\. "
                       r"Available vectors: a, b\.$"):
        open_source(uri, vector_column="c")
    close_shards()
    assert checksum(str(tmp_path / "nv")) == before
    src = open_source(uri, vector_column="a")
    got = np.concatenate([np.asarray(b.column("a").to_pylist()) for b in src.iter_batches(16)])
    np.testing.assert_allclose(got, X, rtol=1e-6)
    assert src.dim == DIM and src.count() == 50


def test_close_releases_the_shard(tmp_path):
    X = make_structured(N, DIM, seed=13, normalize=False)
    src = make_shard(str(tmp_path / "docs"), X)
    uri = "qdrant+edge://" + str(tmp_path / "docs_c")
    shrink(src, uri, dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0)
    close_shards()
    load = [sys.executable, "-c", "import qdrant_edge as q, sys; q.EdgeShard.load(sys.argv[1])",
            os.path.realpath(tmp_path / "docs_c")]
    import tldr_index

    c = tldr_index.open(uri)
    other = tldr_index.open(uri)
    assert c.search(X[:2], k=3).ids[:, 0].tolist() == [1, 4]
    assert subprocess.run(load, capture_output=True).returncode != 0  # held here: locked
    c.close()
    assert subprocess.run(load, capture_output=True).returncode != 0  # `other` still holds it
    other.close()
    assert subprocess.run(load, capture_output=True).returncode == 0  # released
    with tldr_index.open(uri) as again:  # a second open after close works
        assert again.search(X[:1], k=1).ids[0, 0] == 1
    assert subprocess.run(load, capture_output=True).returncode == 0


# ----------------------------------------------------------------------------------- bad input

def test_not_a_shard(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    with pytest.raises(InvalidInputError, match=r"^The path of 'qdrant\+edge://.*/plain' must be "
                       r"a Qdrant Edge shard directory \(holding edge_config\.json, wal/ and "
                       r"segments/\)\. Got a directory without edge_config\.json: '.*/plain'\.$"):
        open_source("qdrant+edge://" + str(d))
    assert os.listdir(d) == ["notes.txt"]  # the engine was never asked (it creates segments/)
    with pytest.raises(TargetExistsError, match=r"^Target '.*/plain' exists and is not a "
                       r"tldr-index Qdrant Edge target"):
        write_target(open_source(make_shard(str(tmp_path / "docs"), np.eye(4, 6,
                     dtype=np.float32) + 1)), "qdrant+edge://" + str(d), d=2, overwrite=True)
    assert os.listdir(d) == ["notes.txt"]
    assert not [n for n in os.listdir(tmp_path) if "tldr-staging" in n]
    with pytest.raises(InvalidInputError, match=r"^The path of 'qdrant\+edge://.*/notes\.txt' "
                       r"must be a Qdrant Edge shard directory \(holding edge_config\.json, wal/ "
                       r"and segments/\)\. Got not a directory holding edge_config\.json: "
                       r"'.*/notes\.txt'\.$"):
        open_source("qdrant+edge://" + str(d / "notes.txt"))
    assert (d / "notes.txt").read_text() == "hi"


@contextlib.contextmanager
def shard_held_elsewhere(path: str):
    """Another process holds the Qdrant Edge shard at ``path`` open until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import qdrant_edge as q, sys; s = q.EdgeShard.load(sys.argv[1]); "
         "print('open', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        yield
    finally:
        holder.communicate("", timeout=30)


def test_shard_locked_by_another_process(tmp_path):
    path = str(tmp_path / "docs")
    uri = make_shard(path, make_structured(30, DIM, seed=7, normalize=False))
    before = checksum(path)
    with shard_held_elsewhere(path):
        with pytest.raises(StoreUnavailableError, match=r"^Qdrant Edge shard '.*/docs' of "
                           r"'qdrant\+edge://.*/docs' is locked by another process \(the engine "
                           r"admits one open handle per shard\); close it there first\.$"):
            open_source(uri)
    assert checksum(path) == before


def test_target_locked_by_another_process(tmp_path):
    src = open_source(make_shard(str(tmp_path / "docs"), make_structured(30, DIM, seed=7,
                                                                        normalize=False)))
    uri = "qdrant+edge://" + str(tmp_path / "out")
    write_target(src, uri, d=4)
    close_shards()
    live = os.path.realpath(tmp_path / "out")
    with shard_held_elsewhere(live):
        with pytest.raises(StoreUnavailableError, match=r"^Qdrant Edge shard '.*/\.out\.tldr-v1' "
                           r"of 'qdrant\+edge://.*/out' is locked by another process"):
            open_target(uri).count()
    assert open_target(uri).count() == 30 and os.path.realpath(tmp_path / "out") == live


@pytest.mark.parametrize("opts, message", [
    ({"quantization": "int4"}, r"^The 'quantization' parameter of QdrantEdgeSink must be one of "
                               r"'auto', 'none', 'pq', .*'turbo4'\. Got 'int4'"),
    ({"compression": "x3"}, r"^The 'compression' parameter of QdrantEdgeSink must be one of "
                            r"'x4', 'x8', 'x16', 'x32', 'x64'\. Got 'x3'"),
    ({"hnsw_threads": -1}, r"^The 'hnsw_threads' parameter of QdrantEdgeSink must be an int in "
                           r"the range \[0, 1024\]\. Got -1 instead\.$"),
    ({"quantization": "binary", "compression": "x16"},
     r"^The 'compression' parameter of QdrantEdgeSink applies to product quantization only "
     r"\('auto' or 'pq'\)\. Got compression='x16' with quantization='binary'\.$"),
])
def test_quantization_settings_refused(tmp_path, opts, message):
    path = str(tmp_path / "docs")
    src = open_source(make_shard(path, make_structured(30, DIM, seed=8, normalize=False)))
    close_shards()
    before = checksum(path)
    with pytest.raises(InvalidParameterError, match=message):
        stage_target(src, "qdrant+edge://" + str(tmp_path / "out"), d=4, **opts)
    assert sorted(os.listdir(tmp_path)) == ["docs"]  # nothing written
    close_shards()
    assert checksum(path) == before  # the source untouched: count, ids, vectors, payload


@pytest.mark.parametrize("kind, config", [
    ("scalar", {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}),
    ("binary2", {"binary": {"always_ram": True, "encoding": "two_bits"}}),
    ("turbo4", {"turbo": {"always_ram": True, "bits": "bits4"}}),
    ("none", None),
])
def test_other_quantizations_reach_the_engine(tmp_path, kind, config):
    src = open_source(make_shard(str(tmp_path / "docs"), make_structured(
        30, DIM, seed=9, normalize=False)))
    sink = stage_target(src, "qdrant+edge://" + str(tmp_path / "out"), d=4, quantization=kind)
    sink.publish()
    with open(os.path.join(os.path.realpath(tmp_path / "out"), "edge_config.json")) as fh:
        assert json.load(fh).get("quantization_config") == config
    assert open_target("qdrant+edge://" + str(tmp_path / "out")).count() == 30


def test_uri():
    p = parse_uri("qdrant+edge:///data/shards/docs/")
    assert (p.kind, p.path, p.mode) == ("qdrant-edge", "/data/shards/docs", "edge")
    assert absolute_uri("qdrant+edge://rel/docs") == "qdrant+edge://" + os.path.abspath("rel/docs")
    assert default_target_uri("qdrant+edge:///d/docs") == "qdrant+edge:///d/docs_compact"
    with pytest.raises(UnsupportedURIError, match=r"^The 'uri' parameter must hold a path after "
                       r"the scheme"):
        parse_uri("qdrant+edge://")


def test_open_sink_checks_before_writing(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"^The 'workers' parameter of QdrantEdgeSink "
                       r"must be an int in the range \[1, 64\]\. Got 0 instead\.$"):
        open_sink("qdrant+edge://" + str(tmp_path / "x"), workers=0)
    assert os.listdir(tmp_path) == []
