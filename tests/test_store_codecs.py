"""The on-original codec baselines of ``eval`` (tldr_index.store_codecs): each codec's top-k
against a brute-force top-k of the same fitted codec, the exact rescoring of a shortlist, the own
rows of held-out queries left out, the l2 path, the plan's skip rules, and the names
``--baselines`` takes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_structured

from tldr_index.errors import InvalidParameterError
from tldr_index.evaluate import AUTO_BASELINES, baseline_names
from tldr_index.quantizer import normalize_rows
from tldr_index.store_codecs import CodecSpec, exact_scores, plan, rerank, run_baseline

N, D, K = 600, 32, 10
FAST = {"pq": {"n_iter": 4}, "rq": {"n_iter": 3, "beam": 2}}


@pytest.fixture(scope="module")
def data():
    X = make_structured(N, D, seed=11, normalize=False)  # not unit: cosine must normalise
    Q = make_structured(25, D, seed=12, normalize=False)
    return X, Q


def spec_of(name: str, **kw) -> CodecSpec:
    """The plan's spec for ``name`` with fewer k-means iterations (a fast test)."""
    spec = next(s for s in plan([name], D, 8, "cosine") if s.name == name)
    return CodecSpec(spec.name, spec.codec, {**spec.kwargs, **FAST.get(spec.codec, {}), **kw},
                     spec.fixed)


def brute_force_scores(spec: CodecSpec, X, Q, metric: str, seed: int = 0) -> np.ndarray:
    """Every (query, row) score of the same codec fitted the same way, in float64: the inner
    product with the decoded rows (exact ADC of pq/rq/sq), the RaBitQ estimator through its
    decode, sign bits symmetrically; l2: ``-||q - decode(x)||^2``."""
    prep = normalize_rows if metric == "cosine" else (lambda a: a)
    c = spec.make(D).fit(prep(X), seed=seed)
    Xh = c.decode(c.encode(prep(X))).astype(np.float64)
    Qp = prep(Q).astype(np.float64)
    if spec.codec == "sign":
        Qp = np.where(Qp > 0, 1.0, -1.0)
    if metric == "l2":
        return -((Qp[:, None, :] - Xh[None]) ** 2).sum(-1)
    return Qp @ Xh.T


@pytest.mark.parametrize("name,metric", [("pq", "cosine"), ("rq", "ip"), ("sq8", "cosine"),
                                         ("sq4", "ip"), ("rabitq1", "cosine"),
                                         ("rabitq2", "ip"), ("sign", "cosine"), ("pq", "l2"),
                                         ("sq8", "l2")])
def test_top_k_is_the_brute_force_top_k_of_the_same_codec(data, name, metric):
    X, Q = data
    spec = spec_of(name)
    run = run_baseline(spec, X, X, Q, K, metric=metric, shortlists=[40], chunk_rows=97)
    S = brute_force_scores(spec, X, Q, metric)
    got = np.take_along_axis(S, run.raw, axis=1)
    want = -np.sort(-S, axis=1)[:, :K]
    # tie-robust: the scores of the returned rows are the k best scores (float32 ADC vs float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(S).max())
    assert run.code_size == spec.make(D).code_size and run.rows == N
    assert (run.raw >= 0).all() and all(len(set(r)) == K for r in run.raw.tolist())


def test_rescored_is_the_exact_top_k_of_the_shortlist(data):
    X, Q = data
    spec = spec_of("sq8")
    run = run_baseline(spec, X, X, Q, K, metric="cosine", shortlists=[30, N], chunk_rows=128)
    S = brute_force_scores(spec, X, Q, "cosine")
    exact = normalize_rows(Q).astype(np.float64) @ normalize_rows(X).astype(np.float64).T
    short = np.argsort(-S, axis=1, kind="stable")[:, :30]
    ref = np.take_along_axis(short, np.argsort(-np.take_along_axis(exact, short, 1), 1), 1)
    agree = np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(run.rescored[30], ref)])
    assert agree >= 0.99  # only float32 ties at the shortlist's edge may differ
    # a shortlist of every row is exact search
    truth = np.argsort(-exact, axis=1)[:, :K]
    np.testing.assert_array_equal(np.sort(run.rescored[N], 1), np.sort(truth, 1))


def test_held_out_rows_do_not_find_themselves(data):
    X, _ = data
    pos = np.array([3, 50, 77, 599])
    run = run_baseline(spec_of("sign"), X, X, X[pos], K, metric="ip", shortlists=[N],
                       exclude=pos)
    for own, raw, resc in zip(pos, run.raw, run.rescored[N]):
        assert own not in raw and own not in resc
    exact = X[pos] @ X.T
    exact[np.arange(len(pos)), pos] = -np.inf
    np.testing.assert_array_equal(np.sort(run.rescored[N], 1),
                                  np.sort(np.argsort(-exact, 1)[:, :K], 1))


def test_exact_scores_and_rerank_by_hand():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    Q = np.array([[1.0, 1.0]], dtype=np.float32)
    cand = np.array([[2, -1, 0, 1]])
    np.testing.assert_allclose(exact_scores(X, Q, cand, "ip", chunk_rows=2),
                               [[7.0, -np.inf, 1.0, 2.0]])
    np.testing.assert_allclose(exact_scores(X, Q, cand, "l2", chunk_rows=1),
                               [[-13.0, -np.inf, -1.0, -2.0]])
    cos = exact_scores(X, Q, cand, "cosine", chunk_rows=3)
    np.testing.assert_allclose(cos, [[7 / 5 / np.sqrt(2), -np.inf, 1 / np.sqrt(2),
                                      1 / np.sqrt(2)]], rtol=1e-6)
    assert rerank(cand, cos, 4, 3).tolist() == [[2, 0, 1]]
    assert rerank(cand, cos, 2, 3).tolist() == [[2, -1, -1]]  # -1 pads, never a row


def test_plan_sizes_and_skips(caplog):
    specs = plan(["pq", "opq", "rq", "rabitq1", "rabitq4", "sign", "sq8", "sq4"], 384, 16,
                 "cosine")
    sizes = {s.name: (s.make(384).code_size, s.fixed) for s in specs}
    assert sizes == {"pq": (16, False), "opq": (16, False), "rq": (16, False),
                     "rabitq1": (52, True), "rabitq4": (196, True), "sign": (48, True),
                     "sq8": (384, True), "sq4": (192, True)}
    with caplog.at_level("INFO", logger="tldr_index.store_codecs"):
        assert [s.name for s in plan(["pq", "rq", "rabitq1", "sign"], 384, 10, "l2")] == ["rq"]
        assert [s.name for s in plan(["pq", "rq", "sign"], 12, 0, "ip")] == []
    text = caplog.text
    assert "pq of the original vectors skipped: 10 bytes do not divide D=384." in text
    assert "rabitq1 of the original vectors skipped: it estimates inner products" in text
    assert "rq of the original vectors skipped: the target stores no codes." in text
    assert "sign skipped: D=12 cannot be packed (a multiple of 8 needed)." in text


def test_baseline_names():
    assert baseline_names("auto") == AUTO_BASELINES
    assert baseline_names(" none ") == () == baseline_names("") == baseline_names(None)
    assert baseline_names("rq, rabitq,rabitq1") == ("rq", "rabitq1", "rabitq2", "rabitq4")
    assert baseline_names(["sign", "sign"]) == ("sign",)
    assert "rabitq" not in baseline_names("all") and len(baseline_names("all")) == 11
    with pytest.raises(InvalidParameterError, match=r"^The 'baselines' parameter of eval must be "
                                                    r"one of 'pca', .*'sq4'\. Got 'rabitq3' "
                                                    r"instead\.$"):
        baseline_names("rq,rabitq3")
    with pytest.raises(InvalidParameterError, match=r"^The 'baselines' parameter of eval must be "
                                                    r"one of .* Got 'RQ' instead\.$"):
        baseline_names("RQ")
    with pytest.raises(InvalidParameterError, match=r"^The 'baselines' parameter of eval must be "
                                                    r"'auto', 'all', 'none', a comma-separated "
                                                    r"string or a sequence of names\. Got 3\.5 "
                                                    r"instead\.$"):
        baseline_names(3.5)
