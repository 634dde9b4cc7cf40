"""The code index in the product: built by ``shrink`` from ``index_min_rows`` rows and stored in
Lance and Parquet targets, used by ``search`` / ``CompactCollection.search`` (``nprobe``,
``target_recall``, ``exhaustive``, ``index_fallback``), kept consistent by ``add`` (a row added is
found by indexed search) and never left stale by ``reindex``. Small seeded structured data
(1,000 rows, 24 lists); ``index_min_rows`` lowered so that the index is built. The Lance target
is indexed with lists over the collection's codes (``scan="codes"``: every list probed equals
the exhaustive code scan), the Parquet one with the default fast-scan lists (every list probed
equals the index's own exhaustive scan, close to the code scan)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, parquet_source
from conftest import make_structured

import tldr_index
import tldr_index.code_index as code_index
from connectors import open_target
from tldr_index.code_index import ARTIFACT_NAME, CodeIndex
from tldr_index.compact import CompactModel
from tldr_index.errors import InvalidParameterError, ModelFormatError
from tldr_index.pipeline import shrink
from tldr_index.recall_table import ROW_COST
from tldr_index.reindex import reindex
from tldr_index.search import search
from tldr_index.searcher import CodeSearcher, read_codes

FAST = dict(epochs=1, threads=1, eval_queries=0, dim=8, pq_bytes=4)
N = 1000


def _stored_index(uri: str) -> CodeIndex | None:
    tgt = open_target(uri)
    data = tgt.artifact(ARTIFACT_NAME)
    if data is None:
        return None
    _, codes = read_codes(tgt, tgt.layout.id_column, tgt.layout.codes_column)
    return CodeIndex.from_bytes(data, codes, CompactModel.of_target(tgt).codec)


def _same_as_own_exhaustive(tgt, Q, got, k=10):
    """``got`` (a search at nprobe = nlist) is the stored index's own exhaustive scan."""
    from tldr_index.searcher import CodeSearcher

    t = open_target(tgt)
    model = CompactModel.of_target(t)
    s = CodeSearcher.open(t, model)
    D, P = s.topk(model.encode(Q), k, s.index.nlist)
    np.testing.assert_allclose(got.distances, D, atol=1e-5)
    np.testing.assert_array_equal(got.ids, s.ids.to_numpy()[P])
    S, P2 = s.index.search_exhaustive(model.prepare(model.encode(Q)), k)
    np.testing.assert_array_equal(P, P2)


def _overlap(a, b):
    return np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)])


@pytest.fixture(scope="module", params=[("lancedb", "codes"), ("parquet", "fastscan")],
                ids=["lancedb-codes", "parquet-fastscan"])
def indexed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("si")
    X = make_structured(N + 60, 32, seed=3)
    store, scan = request.param
    if store == "lancedb":
        src = lancedb_source(str(root), X[:N])
        tgt = src + "_c"
    else:
        src = parquet_source(str(root), X[:N])
        tgt = f"parquet://{root}/target"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(code_index, "DEFAULT_SCAN", scan)
        shrink(src, tgt, work_dir=root / "w", index_min_rows=500, **FAST)
    assert _stored_index(tgt).scan == scan
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
    if _stored_index(tgt).scan == "codes":
        # same scores up to float32 rounding (1e-5); ids equal except where scores tie
        np.testing.assert_allclose(ix.distances, ex.distances, atol=1e-5)
        same = (ix.ids == ex.ids).mean()
        tied = np.isclose(ix.distances, ex.distances, atol=1e-5).all()
        assert same >= 0.99 and tied
    else:  # the fast-scan lists' own exhaustive scan, which approximates the code scan
        _same_as_own_exhaustive(tgt, Q, ix)
        assert _overlap(ix.ids, ex.ids) >= 0.6
    # the default nprobe comes from the stored table (the smallest within 0.001 of every list)
    d = search(tgt, Q, k=10)
    t = _stored_index(tgt).recall_table
    want = min(p for p, r in zip(t.nprobe, t.raw) if r >= t.raw[-1] - 0.001)
    assert d.engine == "code-index" and d.nprobe == want and d.shortlist == 10
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
    # target_recall picks from the stored table against exact search (raw recall@10)
    r = search(tgt, Q, k=5, target_recall=t.raw[0])
    assert r.nprobe == t.nprobe[0]
    r = search(tgt, Q, k=5, target_recall=max(t.raw))
    assert r.nprobe == t.nprobe[t.raw.index(max(t.raw))]
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'nprobe' parameter of search must be an int in the range [1, {index.nlist}]. "
            f"Got 0 instead.")):
        search(tgt, Q, k=5, nprobe=0)
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'nprobe' parameter of search must be an int in the range [1, {index.nlist}]. "
            f"Got {index.nlist + 1} instead.")):
        search(tgt, Q, k=5, nprobe=index.nlist + 1)
    best = max(t.raw)
    at = t.nprobe[t.raw.index(best)]
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


def _copy(tgt: str, dest) -> str:
    """A copy of a Lance (lancedb://) or Parquet target under ``dest``: tests that change it."""
    import shutil

    from connectors import parse_uri

    p = parse_uri(tgt)
    if p.kind == "lance":
        shutil.copytree(p.path, dest / "db" / (p.table + ".lance"))
        return f"lancedb://{dest / 'db'}/{p.table}"
    shutil.copytree(p.path, dest / "t")
    return f"parquet://{dest / 't'}"


def test_a_row_added_is_found_by_indexed_search(indexed, tmp_path):
    _, tgt, X = indexed
    tgt = _copy(tgt, tmp_path)
    new = X[N:N + 5]
    with tldr_index.open(tgt) as c:
        nlist = c._searcher().index.nlist
        c.search(new, k=10)  # loads the codes and index of this version
        assert c.add(np.arange(50_000, 50_005), new) == 5
        s = c._searcher()
        assert s.index is not None and s.index.n == N + 5
        ix = c.search(new, k=10, nprobe=nlist)
        ex = c.search(new, k=10, exhaustive=True)
        assert ix.engine == "code-index"
        if s.index.scan == "codes":
            np.testing.assert_allclose(ix.distances, ex.distances, atol=1e-5)
        else:
            assert _overlap(ix.ids, ex.ids) >= 0.6
        # each added row is among the 10 nearest of its own vector by the indexed search
        assert all(50_000 + i in ix.ids[i] for i in range(5))
        d = c.search(new, k=10)  # the default nprobe finds them too
        assert all(50_000 + i in d.ids[i] for i in range(5))
    # the target stores the index again, over the new rows (load checks the codes' hash)
    assert _stored_index(tgt).n == N + 5
    r = search(tgt, new, k=10, nprobe=nlist)
    assert r.engine == "code-index" and all(50_000 + i in r.ids[i] for i in range(5))
    if _stored_index(tgt).scan == "fastscan":  # the stored lists are the grown ones
        _same_as_own_exhaustive(tgt, new, r)


def test_reindex_publishes_no_stale_index(tmp_path):
    import pyarrow.parquet as pq
    from _pipeline_helpers import table_of

    X = make_structured(N + 100, 32, seed=5)
    src = parquet_source(str(tmp_path), X[:N])
    tgt = f"parquet://{tmp_path}/target"
    shrink(src, tgt, work_dir=tmp_path / "w", index_min_rows=500, **FAST)
    assert _stored_index(tgt) is not None
    # the source grows: the delta publishes new rows, and the index over the old ones goes
    extra = table_of(X[N:N + 100], ids=np.arange(100, dtype=np.int64) + 10 * N)
    pq.write_table(extra, f"{tmp_path}/pq/part-9.parquet")
    rep = reindex(tgt, src, refit="never", work_dir=tmp_path / "r")
    assert rep.status == "updated"
    t = open_target(tgt)
    assert t.count() == N + 100
    idx = _stored_index(tgt)  # rebuilt over the new rows (load checks the codes' hash)
    assert idx.n == N + 100
    nlist = idx.nlist
    ix = search(tgt, X[N:N + 20], k=10, nprobe=nlist)
    ex = search(tgt, X[N:N + 20], k=10, exhaustive=True)
    assert ix.engine == "code-index" and idx.scan == "fastscan"  # reindex builds the default
    _same_as_own_exhaustive(tgt, X[N:N + 20], ix)
    assert _overlap(ix.ids, ex.ids) >= 0.6
    # the rows the delta added are found by indexed search of their own vectors
    assert np.mean([10 * N + i in ix.ids[i] for i in range(20)]) == 1.0


def test_an_index_that_does_not_match_the_codes(indexed, tmp_path):
    import hashlib
    import json
    import os

    _, tgt, X = indexed
    if not tgt.startswith("parquet://"):
        pytest.skip("the record of a Parquet target is a plain file: easy to tamper with")
    tgt = _copy(tgt, tmp_path)
    root = tgt[len("parquet://"):]
    t = open_target(tgt)
    _, codes = read_codes(t, t.layout.id_column, t.layout.codes_column)
    other = codes.copy()
    other[0] ^= 1
    index = CodeIndex.exhaustive(other, CompactModel.of_target(t).codec, metric=t.layout.distance)
    data = index.to_bytes()
    entry = t.record["artifacts"][ARTIFACT_NAME]
    with open(os.path.join(root, entry["file"]), "wb") as f:
        f.write(data)
    rec = dict(t.record)
    rec["artifacts"] = {ARTIFACT_NAME: dict(entry, sha256=hashlib.sha256(data).hexdigest(),
                                            size=len(data))}
    with open(os.path.join(root, "_tldr_metadata.json"), "w") as f:
        json.dump(rec, f)
    Q = X[N:N + 3]
    with pytest.raises(ModelFormatError, match=re.escape(
            f"Code index of target '{tgt}' does not match the codes it is loaded with: the "
            f"SHA-256 of the code array differs from the one it indexed. Rebuild it, or pass "
            f"index_fallback=True (--index-fallback) to search every code.")):
        search(tgt, Q, k=5)
    ok = search(tgt, Q, k=5, index_fallback=True)
    assert ok.engine == "pq-codes"
    ex = search(tgt, Q, k=5, exhaustive=True)  # asked for the scan: no index needed
    np.testing.assert_array_equal(ok.ids, ex.ids)
    # a corrupt file (sha256 differs from the record): a clear error
    with open(os.path.join(root, entry["file"]), "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelFormatError, match=re.escape(
            f"The artifact '{ARTIFACT_NAME}' of target '{tgt}' is corrupt: expected {len(data)} "
            f"bytes with sha256 {hashlib.sha256(data).hexdigest()[:16]}..., got {len(data) + 1} "
            f"bytes")):
        search(tgt, Q, k=5)


def test_cli_flags(indexed, tmp_path):
    import json

    from click.testing import CliRunner

    from tldr_index.cli import main

    _, tgt, X = indexed
    np.save(tmp_path / "q.npy", X[N:N + 4])
    q = str(tmp_path / "q.npy")
    nlist = _stored_index(tgt).nlist

    def run(*args):
        return CliRunner().invoke(main, ["search", "--target", tgt, "--queries", q, "--k", "5",
                                         *args], catch_exceptions=False)

    out = json.loads(run("--nprobe", str(nlist), "--json").stdout)
    assert out["engine"] == "code-index" and out["nprobe"] == nlist
    assert out["ids"] == search(tgt, X[N:N + 4], k=5, nprobe=nlist).ids.tolist()
    out = json.loads(run("--exhaustive", "--json").stdout)
    assert out["engine"] == "pq-codes" and out["nprobe"] is None
    t = _stored_index(tgt).recall_table
    out = json.loads(run("--target-recall", str(t.raw[0]), "--json").stdout)
    assert out["nprobe"] == t.nprobe[0]
    res = run("--nprobe", "0")
    assert res.exit_code == 1 and res.stderr == (
        f"Error: The 'nprobe' parameter of search must be an int in the range [1, {nlist}]. "
        f"Got 0 instead.\n")
    best = max(t.raw)
    res = run("--target-recall", "1.0")
    assert res.exit_code == 1 and res.stderr == (
        f"Error: The 'target_recall' parameter of search must be at most the best recall@10 the "
        f"stored table reaches against exact search ({best} at nprobe "
        f"{t.nprobe[t.raw.index(best)]}). Got 1.0 instead.\n")


def test_resume_after_a_crash_in_write_keeps_the_index_of_encode(tmp_path):
    """The index is built in ``encode`` (its checkpoint): a run killed in ``write`` resumes
    without building it again and publishes the same index as an uninterrupted run."""
    from tldr_index.progress import Progress

    class Crash(BaseException):
        pass

    class CrashInWrite(Progress):
        def update(self, stage, completed, total=None):
            if stage == "write":
                raise Crash

    X = make_structured(N, 32, seed=6)
    src = parquet_source(str(tmp_path), X)
    opts = dict(index_min_rows=500, **FAST)
    shrink(src, f"parquet://{tmp_path}/ref", work_dir=tmp_path / "w0", **opts)
    tgt = f"parquet://{tmp_path}/t"
    with pytest.raises(Crash):
        shrink(src, tgt, work_dir=tmp_path / "w", progress=CrashInWrite(), **opts)
    built = (tmp_path / "w" / "encode" / "code_index.safetensors").read_bytes()
    rep = shrink(src, tgt, work_dir=tmp_path / "w", resume=True, **opts)
    assert "encode" in rep.skipped_stages
    assert open_target(tgt).artifact(ARTIFACT_NAME) == built
    assert built == open_target(f"parquet://{tmp_path}/ref").artifact(ARTIFACT_NAME)


@pytest.mark.parametrize("codec,kw,metric", [("rabitq", {"bits": 1}, "cosine"),
                                             ("opq", {"bytes": 4}, "ip"),
                                             ("rq", {"bytes": 4}, "l2")])
def test_every_codec_and_metric_equals_the_exhaustive_scan(codec, kw, metric, tmp_path,
                                                           monkeypatch):
    """Lists over the collection's codes (the fast-scan lists: tests/test_code_index.py)."""
    monkeypatch.setattr(code_index, "DEFAULT_SCAN", "codes")
    X = make_structured(N + 40, 32, seed=7, normalize=metric == "cosine")
    src = parquet_source(str(tmp_path), X[:N])
    tgt = f"parquet://{tmp_path}/t"
    shrink(src, tgt, work_dir=tmp_path / "w", index_min_rows=500, epochs=1, threads=1,
           eval_queries=0, dim=8, codec=codec, source_options={"distance": metric}, **kw)
    assert open_target(tgt).layout.distance == metric
    nlist = _stored_index(tgt).nlist
    ex = search(tgt, X[N:], k=10, exhaustive=True)
    ix = search(tgt, X[N:], k=10, nprobe=nlist)
    assert ix.engine == "code-index"
    np.testing.assert_allclose(ix.distances, ex.distances, atol=2e-4)  # float32 sums
    assert (ix.ids == ex.ids).mean() >= 0.99  # ids differ only where scores tie


def test_rescored_search_takes_nprobe_and_shortlist_from_the_table(indexed):
    _, tgt, X = indexed
    Q = X[N:N + 5]
    index = _stored_index(tgt)
    t = index.recall_table
    rpl = index.n / index.nlist
    want = t.rescored_choice(None, "search", rows_per_list=rpl, min_shortlist=200)
    r = search(tgt, Q, k=10, rescore=True)
    # the default never re-ranks fewer rows than the exhaustive scan's max(20 k, 200)
    assert r.rescored and (r.nprobe, r.shortlist) == want and r.shortlist >= 200
    # a given shortlist is kept; the nprobe is then the cheapest reaching it at that column
    r = search(tgt, Q, k=10, rescore=True, shortlist=50)
    assert r.shortlist == 50 and r.nprobe == t.rescored_choice(
        None, "search", rows_per_list=rpl, shortlist=50)[0]
    # beyond the table: one error naming the best pair (a table capped at 0.9 here; the
    # structured data reaches 1.0 at the longest shortlist)
    with tldr_index.open(tgt) as c:
        searcher = c._searcher()
        searcher.index.recall_table.rescored = [[min(v, 0.9) for v in row] for row in t.rescored]
        capped = searcher.index.recall_table.rescored
        _, p, sl = min((p * rpl + ROW_COST * sl, p, sl) for i, p in enumerate(t.nprobe)
                       for j, sl in enumerate(t.shortlist) if capped[i][j] == max(map(max, capped)))
        with pytest.raises(InvalidParameterError, match=re.escape(
                f"The 'target_recall' parameter of search must be at most the best rescored "
                f"recall@10 the stored table reaches ({max(map(max, capped))} at nprobe {p}, "
                f"shortlist {sl}). Got 0.95 instead.")):
            c.search(Q, k=10, rescore=True, target_recall=0.95)


def test_searcher_ram_counts_what_it_holds(indexed):
    """An open collection's searcher over an indexed target holds the index only: the codes are
    dropped after the index is checked against them, and read again (held from then on) only for
    an exhaustive scan; int ids are memory-mapped (or, consecutive, not held at all). Results are the same before and
    after the codes are read, and the same as those of a searcher that held them."""
    _, tgt, X = indexed
    Q = X[N:N + 20]
    t = open_target(tgt)
    ids, codes = read_codes(t, t.layout.id_column, t.layout.codes_column)
    with tldr_index.open(tgt) as c:
        s = c._searcher()
        # shrink writes the rows in its own order: int ids that are not consecutive, mapped
        assert not s.codes_loaded and s.row_ids.kind in ("range", "mapped")
        mapped = 8 * N if s.row_ids.kind == "mapped" else 0
        assert s.resident() == {"index": round(s.index.bytes_per_vector() * N), "codes": 0,
                                "ids": 0, "ids_mapped": mapped}
        assert s.ram_bytes() == round(s.index.bytes_per_vector() * N)
        assert s.bytes_per_vector() == pytest.approx(s.ram_bytes() / N)
        before = [c.search(Q, k=10), c.search(Q, k=10, rescore=True)]
        assert not s.codes_loaded
        ex = c.search(Q, k=10, exhaustive=True)
        assert s.codes_loaded and s.codes.shape == (N, 4)
        np.testing.assert_array_equal(s.codes, codes)
        assert s.ram_bytes() == round(s.index.bytes_per_vector() * N) + codes.nbytes
        after = [c.search(Q, k=10), c.search(Q, k=10, rescore=True)]
    # as before this change: a searcher holding the codes and Arrow ids beside the index
    held = CodeSearcher.open(t, CompactModel.of_target(t), keep_codes=True)
    assert held.codes_loaded
    ref = [search(tgt, Q, k=10, searcher=held), search(tgt, Q, k=10, rescore=True, searcher=held),
           search(tgt, Q, k=10, exhaustive=True, searcher=held)]
    for b, a, r in zip(before + [ex], after + [ex], ref):
        for got in (b, a):
            np.testing.assert_array_equal(got.ids, r.ids)
            np.testing.assert_array_equal(got.distances, r.distances)
    D, P = held.topk(held.model.encode(Q), 10, before[0].nprobe)
    np.testing.assert_array_equal(before[0].ids, ids.to_numpy()[P])


def test_codes_changed_under_an_open_searcher(indexed):
    """Codes read again for an exhaustive scan that no longer match the index: one clear
    error (never a search of other rows)."""
    _, tgt, X = indexed
    t = open_target(tgt)
    s = CodeSearcher.open(t, CompactModel.of_target(t))
    s.index = s.index.copy()
    s.index.add(np.zeros((1, 4), np.uint8), np.ones((1, 8), np.float32))  # hash moves on
    s._n_codes += 1
    with pytest.raises(ModelFormatError, match=re.escape(
            f"The codes of target '{t.uri}' changed while it was open (read again for an "
            f"exhaustive scan, they no longer match its code index); "
            f"tldr_index.open('{t.uri}') again.")):
        s.codes
