"""search.rerank: the one-query path (no np.unique, one gather, partition of the top k) and the
block path against an exact float64 reference (stable order: ties in candidate order), every
metric, with -1 pads, ``exclude`` and ``fallback``. Seeded structured data; distances within
1e-5 (float32 against float64), keys equal."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_structured

from tldr_index.search import rerank

TOL = 1e-5


def _reference(Q, cand, X, k, metric, exclude=None, fallback=None):
    """Exact float64 distances, stable sort (the rerank of before this change, in float64)."""
    Q64, X64 = Q.astype(np.float64), X.astype(np.float64)
    outD, outI = [], []
    for i, row in enumerate(cand):
        d = np.full(len(row), np.inf)
        for j, key in enumerate(row):
            if key < 0 or (exclude is not None and key == exclude[i]):
                continue
            if fallback is not None and not np.isnan(fallback[i, j]):
                d[j] = fallback[i, j]
                continue
            x, q = X64[key], Q64[i]
            if metric == "l2":
                d[j] = ((x - q) ** 2).sum()
            elif metric == "cosine":
                d[j] = 1 - x @ q / np.linalg.norm(x) / np.linalg.norm(q)
            else:
                d[j] = -(x @ q)
        order = np.argsort(d.astype(np.float32), kind="stable")[:k]
        outD.append(d[order])
        outI.append(row[order])
    return np.array(outD), np.array(outI)


@pytest.fixture(scope="module")
def data():
    X = make_structured(600, 24, seed=5, normalize=False)
    Q = make_structured(40, 24, seed=6, normalize=False)
    rng = np.random.default_rng(7)
    cand = np.stack([rng.choice(len(X), 120, replace=False) for _ in range(len(Q))])
    cand[3, 50:] = -1          # a short shortlist
    cand[5, ::7] = -1          # pads between keys
    return X, Q, cand


def _fetch(X, seen):
    def fetch(keys):
        seen.append(np.asarray(keys).copy())
        return X[keys]
    return fetch


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_one_query_and_blocks_equal_the_exact_reference(data, metric):
    X, Q, cand = data
    for i in (0, 3, 5):  # one query at a time: the fast path, keys fetched sorted and distinct
        seen = []
        D, I = rerank(Q[i:i + 1], cand[i:i + 1], _fetch(X, seen), 10, metric)
        rD, rI = _reference(Q[i:i + 1], cand[i:i + 1], X, 10, metric)
        np.testing.assert_array_equal(I, rI)
        np.testing.assert_allclose(D, rD, atol=TOL)
        keys = seen[0]
        assert len(seen) == 1 and (np.diff(keys) > 0).all() and (keys >= 0).all()
        assert set(keys) == set(cand[i][cand[i] >= 0])
    D, I = rerank(Q, cand, _fetch(X, []), 10, metric, block=16)  # blocks over several queries
    rD, rI = _reference(Q, cand, X, 10, metric)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_allclose(D, rD, atol=TOL)


def test_ties_exclude_fallback_and_repeated_keys(data):
    X, Q, cand = data
    Xt = X.copy()
    Xt[cand[0, 1]] = Xt[cand[0, 0]]  # two keys with the same vector: tied, kept in that order
    Xt[cand[0, 9]] = Xt[cand[0, 0]]
    row = cand[:1]
    q = Xt[cand[0, 0]][None] * 2.0   # the tied rows are the nearest three
    D, I = rerank(q, row, _fetch(Xt, []), 10, "cosine")
    assert I[0, :3].tolist() == [cand[0, 0], cand[0, 1], cand[0, 9]]
    np.testing.assert_array_equal(I, _reference(q, row, Xt, 10, "cosine")[1])
    fb = np.full(row.shape, np.nan, np.float32)
    fb[0, 20] = -5.0                  # a candidate without an original: its code distance
    ex = np.array([cand[0, 0]])
    D, I = rerank(q, row, _fetch(Xt, []), 10, "cosine", exclude=ex, fallback=fb)
    rD, rI = _reference(q, row, Xt, 10, "cosine", exclude=ex, fallback=fb)
    np.testing.assert_array_equal(I, rI)
    np.testing.assert_allclose(D, rD, atol=TOL)
    assert I[0, 0] == cand[0, 20] and cand[0, 0] not in I[0]
    rep = np.concatenate([cand[:1, :30], cand[:1, :30]], axis=1)  # repeated keys: block path
    seen = []
    D, I = rerank(Q[:1], rep, _fetch(X, seen), 10, "l2")
    assert len(seen[0]) == 30
    np.testing.assert_array_equal(I, _reference(Q[:1], rep, X, 10, "l2")[1])
    few = np.array([[cand[0, 0], -1, -1]])  # fewer keys than k: -1 pads at infinity
    D, I = rerank(Q[:1], few, _fetch(X, []), 10, "ip")
    assert I.tolist() == [[cand[0, 0], -1, -1]] and np.isinf(D[0, 1:]).all()
