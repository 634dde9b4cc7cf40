"""Calibrating the recall table on the user's own queries (tldr_index.calibrate,
``CompactCollection.calibrate``, ``tldr-index calibrate``) and ``open(uri, rescore_cache=)``.

Seeded structured data (3,000 rows, 76 lists); the queries are held-out points of the same blobs
moved by noise (sigma 0.6 before normalising), harder than the collection's own rows that the
build table is measured on. Calibrated on half of the 400 queries, ``target_recall=R`` on the
other half must reach ``R - tol`` with ``tol = 2 sqrt(R (1 - R) / 200)`` (two standard errors of
a mean of 200 per-query recalls in [0, 1]); the build table's pick must not (the gap the
calibration closes)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, parquet_source
from click.testing import CliRunner
from conftest import make_structured

import tldr_index
from connectors import open_target
from tldr_index.calibrate import MIN_QUERIES, standard_error
from tldr_index.cli import main
from tldr_index.errors import InvalidInputError, InvalidParameterError, ModelFormatError
from tldr_index.pipeline import shrink
from tldr_index.rescore_cache_write import write_rescore_cache

N, NQ, SIGMA, IDS = 3000, 400, 0.6, (7, 3)  # table_of's ids: 7 i + 3
FAST = dict(epochs=1, threads=1, eval_queries=0, dim=8, pq_bytes=4)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    X = make_structured(N + NQ, 32, seed=7)
    rng = np.random.default_rng(0)
    Q = X[N:] + SIGMA * rng.standard_normal((NQ, 32)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    src = lancedb_source(str(root), X[:N])
    tgt = src + "_c"
    shrink(src, tgt, work_dir=root / "w", index_min_rows=500, **FAST)
    truth = np.argsort(-(Q @ X[:N].T), axis=1, kind="stable")[:, :10] * IDS[0] + IDS[1]
    return root, src, tgt, X, Q, truth


def _copy(tgt: str, dest) -> str:
    import shutil

    path = open_target(tgt).path
    shutil.copytree(path, dest / "t.lance")
    return f"lance://{dest}/t.lance"


def _recall(ids, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def test_calibrated_target_recall_keeps_its_promise(made, tmp_path):
    _, _, tgt, _, Q, truth = made
    uri = _copy(tgt, tmp_path)
    A, B = slice(0, NQ // 2), slice(NQ // 2, NQ)
    R = 0.9
    tol = 2 * standard_error(R, NQ // 2)
    with tldr_index.open(uri) as c:
        before = c.recall_table
        assert not before.calibrated and before.query_kind == "rows"
        r0 = c.search(Q[B], k=10, rescore=True, target_recall=R)
        table = c.calibrate(Q[A], k=10)
        assert table.calibrated and table.queries == NQ // 2 and table.truth == "original"
        assert c.recall_table.describe() == f"{NQ // 2} user queries (calibrate)"
        r1 = c.search(Q[B], k=10, rescore=True, target_recall=R)
    got0, got1 = _recall(r0.ids, truth[B]), _recall(r1.ids, truth[B])
    assert got1 >= R - tol, (got1, R, tol, r1.nprobe, r1.shortlist)
    assert got0 < R - tol, (got0, r0.nprobe, r0.shortlist)  # the build table's promise fails
    # the table is in the target: another reader gets it (same picks)
    with tldr_index.open(uri) as c2:
        assert c2.recall_table.to_json() == table.to_json()
        r2 = c2.search(Q[B], k=10, rescore=True, target_recall=R)
        assert (r2.nprobe, r2.shortlist) == (r1.nprobe, r1.shortlist)
        np.testing.assert_array_equal(r2.ids, r1.ids)


def test_truth_from_the_rescore_cache_equals_the_source(made, tmp_path):
    """float32 cache: the same exact neighbours as the source scan, hence the same table; a
    cache given to open() is the default of calibrate and of every rescored search."""
    root, _, tgt, _, Q, _ = made
    uri = _copy(tgt, tmp_path)
    path = write_rescore_cache(uri, tmp_path / "c32.npy", dtype="float32")
    with tldr_index.open(uri) as c:
        by_source = c.calibrate(Q[:100]).to_json()
    with tldr_index.open(uri, rescore_cache=path) as c:
        assert c.calibrate(Q[:100]).to_json() == by_source
        r = c.search(Q[:5], k=10, rescore=True)
        assert len(c._searcher()._caches) == 1  # the open's cache, opened once
        by_id = c.search(Q[:5], k=10, rescore=True, rescore_cache=None)  # from the source
        np.testing.assert_array_equal(r.ids, by_id.ids)
        assert len(c._searcher()._caches) == 2  # + the source


def test_open_with_a_missing_rescore_cache(made, tmp_path):
    _, _, tgt, _, _, _ = made
    with pytest.raises(ModelFormatError, match=re.escape(
            f"Rescore cache '{tmp_path / 'no.npy'}' does not exist ({tmp_path / 'no.npy'} is "
            f"missing); write it with write_rescore_cache (tldr-index rescore-cache).")):
        tldr_index.open(tgt, rescore_cache=tmp_path / "no.npy")
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'rescore_cache_fallback' parameter of open must be a bool")):
        tldr_index.open(tgt, rescore_cache_fallback="yes")


def test_bad_queries(made):
    _, _, tgt, _, Q, _ = made
    with tldr_index.open(tgt) as c:
        with pytest.raises(InvalidInputError, match=re.escape(
                f"The 'queries' parameter must have shape (n, 32) (the dimension of the source "
                f"vectors of target '{tgt}'). Got (100, 16) instead.")):
            c.calibrate(Q[:100, :16])
        bad = Q[:100].copy()
        bad[3, 5] = np.nan
        with pytest.raises(InvalidInputError, match=re.escape(
                "The 'queries' parameter must contain only finite values. Got NaN or inf in "
                "row 3.")):
            c.calibrate(bad)
        with pytest.raises(InvalidInputError, match=re.escape(
                f"The 'queries' parameter of calibrate must hold at least {MIN_QUERIES} queries "
                f"(the recall of fewer is too noisy to pick an nprobe from). Got 10 instead.")):
            c.calibrate(Q[:10])
        with pytest.raises(InvalidParameterError, match=re.escape(
                "The 'k' parameter of calibrate must be")):
            c.calibrate(Q[:100], k=0)
        assert not c.recall_table.calibrated  # nothing stored


def test_a_target_without_index(tmp_path):
    X = make_structured(300, 32, seed=4)
    src = parquet_source(str(tmp_path), X)
    tgt = f"parquet://{tmp_path}/t"
    shrink(src, tgt, work_dir=tmp_path / "w", **FAST)
    with tldr_index.open(tgt) as c, pytest.raises(InvalidParameterError, match=re.escape(
            f"calibrate needs a target with a code index; target '{tgt}' has none (fewer than "
            f"index_min_rows rows when it was written, a store without codes, or its rows "
            f"changed since): every code is scanned, there is no nprobe to pick.")):
        c.calibrate(X[:60])


def test_cli(made, tmp_path):
    _, _, tgt, _, Q, _ = made
    uri = _copy(tgt, tmp_path)
    np.save(tmp_path / "q.npy", Q[:100])
    res = CliRunner().invoke(main, ["calibrate", "--target", uri, "--queries",
                                    str(tmp_path / "q.npy"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["recall_table"]["query_kind"] == "queries"
    assert out["recall_table"]["queries"] == 100
    with tldr_index.open(uri) as c:
        assert c.recall_table.to_json() == out["recall_table"]
    res = CliRunner().invoke(main, ["calibrate", "--target", uri, "--queries",
                                    str(tmp_path / "q.npy")])
    assert res.exit_code == 0 and (
        f"Stored the recall table of {uri} measured on 100 user queries (calibrate) against "
        f"exact search of the originals (source, ") in res.output, res.output
    np.save(tmp_path / "few.npy", Q[:5])
    res = CliRunner().invoke(main, ["calibrate", "--target", uri, "--queries",
                                    str(tmp_path / "few.npy")])
    assert res.exit_code == 1 and "must hold at least 50 queries" in res.output
