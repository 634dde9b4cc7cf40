"""tldr_index.open(): encode (numpy and Arrow, thread-safe), add (batches, idempotent retries,
collisions, payload), search, on LanceDB, Parquet and in-memory Qdrant targets."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pyarrow as pa
import pytest
from _pipeline_helpers import lancedb_source, make_nested, parquet_source, qdrant_source

import tldr_index
from connectors import open_target
from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy
from tldr_index.compact import CompactModel
from tldr_index.errors import InvalidInputError
from tldr_index.pipeline import shrink
from tldr_index.reindex import reindex

FAST = dict(epochs=1, threads=1, eval_queries=0)


@pytest.fixture(scope="module")
def lance_compact(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc")
    X = make_nested(900, 32)
    src = lancedb_source(str(root), X[:800])
    shrink(src, src + "_c", dim=8, pq_bytes=4, work_dir=root / "w", **FAST)
    return src + "_c", X


def _rows(uri: str) -> dict:
    t = open_target(uri).to_table()
    lay = open_target(uri).layout
    V = vectors_to_numpy(t.column(lay.vector_column).combine_chunks()).astype(np.float32)
    return {i: (V[r], t.column("text")[r].as_py()) for r, i in
            enumerate(t.column(lay.id_column).to_pylist())}


def test_encode_numpy_arrow_batches_and_threads(lance_compact):
    uri, X = lance_compact
    c = tldr_index.open(uri)
    model = CompactModel.from_bytes(open_target(uri).model_bytes)
    Q = X[800:900]
    z, codes = c.encode(Q)
    np.testing.assert_array_equal(z, model.encode(Q))           # the stored map, exactly
    np.testing.assert_array_equal(codes, model.encode_codes(model.encode(Q)))
    assert z.dtype == np.float32 and codes.shape == (100, 4) and codes.dtype == np.uint8
    fsl = numpy_to_fsl(Q)
    for form in (fsl, pa.chunked_array([fsl.slice(0, 30), fsl.slice(30)]),
                 pa.record_batch([pa.array(np.arange(100)), fsl], names=["id", "vector"]),
                 pa.table({"id": np.arange(100), "vector": fsl})):
        z2, c2 = c.encode(form)
        np.testing.assert_array_equal(z2, z)
        np.testing.assert_array_equal(c2, codes)
    out = c.encode_batch(pa.table({"id": np.arange(100), "vector": fsl}))  # map_batches shape
    assert out.schema.names == ["id", "vector", "vector_reduced", "pq_codes"]
    np.testing.assert_array_equal(vectors_to_numpy(out.column(2)), z)
    results = [None] * 4

    def work(i):
        results[i] = c.encode(Q)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, z)
    with pytest.raises(InvalidInputError, match=r"^The 'vectors' parameter must have shape "
                                                r"\(n, 32\) \(the dimension of the source vectors "
                                                rf"of target '{uri}'\)\. Got \(3, 16\) instead\.$"):
        c.encode(Q[:3, :16])
    bad = Q[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"^The 'vectors' parameter must contain only "
                                                r"finite values\. Got NaN or inf in row 1\.$"):
        c.encode(bad)


def test_add_is_idempotent_refuses_collisions_and_keeps_payload(lance_compact, tmp_path):
    uri, X = lance_compact
    c = tldr_index.open(uri)
    n0 = c.count()
    ids = np.arange(50, dtype=np.int64) + 100_000
    texts = [f"new {i}" for i in ids]
    assert c.add(ids, X[800:850], payload={"text": texts}, batch_rows=16) == 50
    assert c.count() == n0 + 50
    rows = _rows(uri)
    want = c.model.encode(X[800:850])
    for j, i in enumerate(ids):
        np.testing.assert_allclose(rows[int(i)][0], want[j], rtol=2e-3, atol=2e-3)
        assert rows[int(i)][1] == texts[j]
    assert c.add(ids, X[800:850], payload={"text": texts}) == 0   # a retried call: no-op
    version = open_target(uri).version
    with pytest.raises(InvalidInputError, match=rf"^The 'ids' parameter of add must not name rows "
                                                rf"already in target '{uri}' with a different "
                                                rf"vector \(pass upsert=True to replace them\)\. "
                                                rf"Got 2 such id\(s\), first 100000\.$"):
        c.add(ids[:2], X[850:852])
    with pytest.raises(InvalidInputError, match=r"^The 'ids' parameter of add must not repeat an "
                                                r"id with different vectors\. Got id 7 twice with "
                                                r"different vectors\.$"):
        c.add([7, 7], X[850:852])
    with pytest.raises(InvalidInputError, match=r"^The 'payload' parameter of add must only hold "
                                                rf"columns of target '{uri}' \(text, year\)\. Got "
                                                r"unknown column\(s\): colour\.$"):
        c.add([200_001], X[850:851], payload={"colour": ["red"]})
    assert open_target(uri).version == version                    # nothing was written
    assert c.add(ids[:2], X[850:852], upsert=True) == 2
    rows = _rows(uri)
    np.testing.assert_allclose(rows[100_000][0], c.model.encode(X[850:851])[0], rtol=2e-3,
                               atol=2e-3)
    batch = pa.record_batch([pa.array([300_000, 300_001]), numpy_to_fsl(X[860:862]),
                             pa.array(["b0", "b1"])], names=["id", "vector", "text"])
    assert c.add(batch) == 2 and _rows(uri)[300_001][1] == "b1"
    hits = c.search(X[800:803], k=5)
    assert hits.ids.shape == (3, 5) and set(hits.ids.ravel()) <= set(rows) | {300_000, 300_001}
    # rows added only here are not in the source: the nightly reindex removes them
    rep = reindex(uri, work_dir=tmp_path / "rw")
    assert (rep.status, rep.deleted, c.count() if c.refresh() is None else 0) == \
        ("updated", 52, n0)


def test_add_on_parquet_and_qdrant(tmp_path):
    X = make_nested(700, 16, between=6, within=4, seed=2)
    for name, src, tgt in (
            ("pq", parquet_source(str(tmp_path), X[:600]), f"parquet://{tmp_path}/out/"),
            ("qd", (q := qdrant_source(X[:600])), q.rsplit("/", 1)[0] + "/docs_c")):
        shrink(src, tgt, dim=4, pq_bytes=2, work_dir=tmp_path / f"w{name}", **FAST)
        c = tldr_index.open(tgt)
        ids = list(range(90_000, 90_040))
        payload = [{"text": f"q {i}"} for i in ids] if name == "qd" else {"text": [f"q {i}" for
                                                                                   i in ids]}
        assert c.add(ids, X[600:640], payload=payload) == 40
        assert c.add(ids, X[600:640], payload=payload) == 0
        t = open_target(tgt).to_table()
        assert t.num_rows == 640
        row = t.filter(pa.compute.equal(t.column("id"), 90_003))
        got = json.loads(row.column("payload")[0].as_py())["text"] if name == "qd" else \
            row.column("text")[0].as_py()
        assert got == "q 90003"
        np.testing.assert_allclose(vectors_to_numpy(row.column("vector").combine_chunks())[0],
                                   c.model.encode(X[603:604])[0], rtol=2e-3, atol=2e-3)


def test_search_rescore_after_add_keeps_code_distance_of_rows_without_original(tmp_path, caplog):
    """README "Keep it fresh": search(rescore=True) right after add(). Rows only in the compact
    collection have no original vector: they keep their code distance and are counted."""
    from tldr_index.search import exact_distances

    X = make_nested(700, 16, between=6, within=4, seed=3)
    src = lancedb_source(str(tmp_path), X[:600])
    shrink(src, src + "_c", dim=8, pq_bytes=4, work_dir=tmp_path / "w", **FAST)
    c = tldr_index.open(src + "_c")
    Q = X[600:604]
    before = c.search(Q, k=10, rescore=True)
    assert before.not_rescored == 0 and before.rescored
    new_ids = np.arange(500_000, 500_004)
    assert c.add(new_ids, Q) == 4                 # each query's own vector, not in the source
    approx = c.search(Q, k=c.count())             # code distances of every row
    code_d = {int(i): float(d) for i, d in zip(approx.ids[0], approx.distances[0])}
    hits = c.search(Q[:1], k=10, rescore=True)
    ids, dist = hits.ids[0], hits.distances[0]
    added = np.isin(ids, new_ids)
    assert hits.not_rescored == int(added.sum()) and hits.not_rescored >= 1
    assert 500_000 in ids                          # the query's own copy ranks in the top 10
    src_vec = {int(i): X[r] for r, i in enumerate(np.arange(600) * 7 + 3)}
    # the two searches score 4 and 1 queries: FAISS's RQ look-up tables come from a float32 GEMM
    # over the query batch, whose rounding moves <q, x_hat> by a few float32 units of its size,
    # and the l2 code distance ||q||^2 - 2 <q, x_hat> + ||x_hat||^2 inherits that absolute error
    # (here ~1e-5 on terms ~30): same distance to 1e-6 of ||q||^2, far from an exact one (0)
    scale = float(c.model.prepare(c.model.encode(Q[:1]))[0] @ c.model.prepare(
        c.model.encode(Q[:1]))[0])
    for i, d in zip(ids, dist):
        if int(i) in code_d and int(i) >= 500_000:
            assert d == pytest.approx(code_d[int(i)], abs=1e-6 * scale)  # kept its code distance
        else:
            exact = exact_distances(Q[:1], src_vec[int(i)][None, None, :], c.model.metric)[0, 0]
            assert d == pytest.approx(float(exact), rel=1e-5, abs=1e-5)  # rescored exactly
    assert np.all(np.diff(dist) >= 0)
    assert any(r.levelname == "WARNING" and r.getMessage() == (
        f"search: {hits.not_rescored} of the 10 hits have no row in source '{src}' (rows added "
        f"to the compact collection only?) and keep their approximate code distance instead "
        f"of an exact one.") for r in caplog.records)
    assert c.search(Q, k=10).not_rescored == 0     # without rescore: nothing to count


@pytest.fixture()
def fresh_compact(lance_compact, tmp_path):
    """A private copy of the module's Lance target (its adds do not reach other tests)."""
    import shutil

    from connectors.uri import parse_uri

    uri, X = lance_compact
    p = parse_uri(uri)
    shutil.copytree(p.path, tmp_path / "db" / f"{p.table}.lance")
    return f"lancedb://{tmp_path / 'db'}/{p.table}", X


def test_read_consistency_interval_another_handles_add(fresh_compact, monkeypatch):
    """None (default): the version opened plus this handle's own adds, until refresh();
    timedelta(0): the live version at every search; an interval: checked at most that often."""
    import datetime as dt

    import tldr_index.compact_collection as cc

    uri, X = fresh_compact
    q = X[850:851]
    none = tldr_index.open(uri)
    zero = tldr_index.open(uri, read_consistency_interval=dt.timedelta(0))
    hour = tldr_index.open(uri, read_consistency_interval=dt.timedelta(hours=1))
    n0 = none.count()
    for c in (none, zero, hour):
        assert c._searcher().n_rows == n0 and 500_000 not in c.search(q, k=10).ids
    with tldr_index.open(uri) as writer:
        assert writer.add([500_000], q) == 1
        assert 500_000 in writer.search(q, k=10).ids      # its own add
    assert 500_000 in zero.search(q, k=10).ids and zero._searcher().n_rows == n0 + 1
    assert 500_000 not in none.search(q, k=10).ids and none._searcher().n_rows == n0
    assert 500_000 not in hour.search(q, k=10).ids
    later = cc.time.monotonic() + 7200.0
    monkeypatch.setattr(cc.time, "monotonic", lambda: later)   # the hour has passed
    assert 500_000 in hour.search(q, k=10).ids
    assert 500_000 not in none.search(q, k=10).ids            # None never re-checks on its own
    none.refresh()
    assert 500_000 in none.search(q, k=10).ids and none._searcher().n_rows == n0 + 1
    assert none.add([500_001], X[851:852]) == 1              # own add: seen at once
    assert 500_001 in none.search(X[851:852], k=10).ids and none._searcher().n_rows == n0 + 2
    for c in (none, zero, hour):
        c.close()


def test_read_consistency_interval_errors(lance_compact):
    import datetime as dt

    from tldr_index.errors import InvalidParameterError

    uri, _ = lance_compact
    for bad in (5, dt.timedelta(seconds=-1)):
        with pytest.raises(InvalidParameterError, match=(
                r"^The 'read_consistency_interval' parameter of open must be None \(never "
                r"re-check the target\) or a datetime\.timedelta >= 0 \(check the live version "
                r"at most that often; timedelta\(0\): every search\)\. Got ") + re.escape(
                    f"{bad!r}.") + "$"):
            tldr_index.open(uri, read_consistency_interval=bad)


def test_searches_from_many_threads_while_one_adds(fresh_compact):
    """Every search sees one whole version (its ids and codes agree) while another thread adds
    rows; afterwards every added row is searched."""
    uri, X = fresh_compact
    c = tldr_index.open(uri)
    n0 = c.count()
    errors, stop = [], threading.Event()

    def search():
        while not stop.is_set():
            try:
                r = c.search(X[860:864], k=5)
                assert r.ids.shape == (4, 5)
                s = c._searcher()
                assert len(s.ids) == len(s.codes)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for b in range(3):
        c.add(np.arange(600_000 + 10 * b, 600_010 + 10 * b), X[870 + 10 * b:880 + 10 * b])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert c._searcher().n_rows == n0 + 30
    hits = c.search(X[870:900], k=10)
    assert all(600_000 + i in hits.ids[i] for i in range(30))
    c.close()
