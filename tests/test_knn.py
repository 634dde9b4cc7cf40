"""Tests of tldr_index.knn against a brute-force numpy reference.

Data: seeded points from a few clusters in an 8-d latent space, mapped linearly to 32-48 dims plus
small noise ("not completely random but still challenging to index"). Tolerances are stated where
used: float32 GEMM scores are compared with float64 numpy scores at 1e-4 relative.
"""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldr_index import faiss_utils as fu
from tldr_index.errors import InvalidInputError, InvalidParameterError
from tldr_index.knn import KnnGraph, exact_search, graph_recall, knn_graph
from tldr_index.knn import drop_own as _drop_own
from tldr_index.vectors import VectorStore


def structured(n: int, dim: int = 48, *, latent: int = 8, clusters: int = 6, noise: float = 0.05,
               seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, latent)) * 3
    z = centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, latent))
    mix = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    return (z @ mix + noise * rng.normal(size=(n, dim))).astype(np.float32)


def reference_scores(X: np.ndarray, Q: np.ndarray, metric: str) -> np.ndarray:
    """float64 scores, query rows x database rows; "l2" is squared euclidean."""
    X, Q = X.astype(np.float64), Q.astype(np.float64)
    if metric == "cosine":
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
        Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-300)
    if metric == "l2":  # |q|^2 + |x|^2 - 2 q.x in float64: ~1e-12 relative error here
        return (Q * Q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2 * Q @ X.T
    return Q @ X.T


def reference_graph(X: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    S = reference_scores(X, X, metric)
    np.fill_diagonal(S, np.inf if metric == "l2" else -np.inf)
    order = np.argsort(S if metric == "l2" else -S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


def assert_same_neighbours(ids, ref_ids, scores, ref_scores, rtol=1e-4):
    """ids equal the reference except at (near-)ties: the scores must match in any case."""
    np.testing.assert_allclose(scores, ref_scores, rtol=rtol, atol=rtol)
    assert (ids == ref_ids).mean() >= 0.995


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS k-means on tiny inputs spends its time in OpenMP barriers; on a busy 2-core machine
    one thread trains the test indexes 2-4x faster. Restored after the module."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return structured(1200)


# ----------------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_graph_matches_numpy(X, metric):
    k = 7
    g = knn_graph(X, k, method="exact", metric=metric)
    ref_ids, ref_s = reference_graph(X, k, metric)
    S = reference_scores(X, X, metric)
    got_s = np.take_along_axis(S, g.neighbors, axis=1)
    assert isinstance(g, KnnGraph) and g.method == "exact" and g.metric == metric
    assert g.neighbors.shape == (len(X), k) and g.neighbors.dtype == np.int64
    assert g.n_incomplete == 0
    assert_same_neighbours(g.neighbors, ref_ids, got_s, ref_s)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunk_rows_do_not_change_the_graph(X, metric):
    a = knn_graph(X, 5, method="exact", metric=metric).neighbors
    for chunk in (97, 500, 5000):
        b = knn_graph(X, 5, method="exact", metric=metric, chunk_rows=chunk).neighbors
        assert (a == b).mean() >= 0.999, chunk


def test_auto_picks_exact_for_small_inputs(X):
    assert knn_graph(X, 3).method == "exact"


def test_auto_picks_opq_above_exact_max_rows(X, monkeypatch):
    import tldr_index.knn as knn
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", len(X) - 1)
    g = knn_graph(X, 3, device="cpu", random_state=0)
    assert g.method == "opq" and g.params["train_rows"] == len(X)  # min(N, 16_384)


def test_exact_search_matches_numpy_and_chunking(X):
    Q = structured(50, seed=3)
    D, I = exact_search(X, Q, 6, metric="l2")
    S = reference_scores(X, Q, "l2")
    ref = np.argsort(S, axis=1)[:, :6]
    assert_same_neighbours(I, ref, D, np.take_along_axis(S, ref, axis=1))
    D2, I2 = exact_search(X, Q, 6, metric="l2", chunk_rows=101)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, rtol=1e-5, atol=1e-5)
    assert D.dtype == np.float32 and I.dtype == np.int64


def test_exact_search_ip_descending(X):
    D, _ = exact_search(X, X[:20], 5, metric="ip")
    assert np.all(np.diff(D, axis=1) <= 0)


def test_exact_search_exclude_by_id_keeps_duplicates():
    X = structured(300, 32)
    X[10] = X[20]  # row 20 has a duplicate at row 10
    rows = np.array([20, 5, 7])
    excl = np.array([20, -1, 7])  # -1: no exclusion for the second query
    D, I = exact_search(X, X[rows], 4, exclude=excl)
    assert 20 not in I[0] and I[0, 0] == 10 and D[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert I[1, 0] == 5  # not excluded: a row is its own nearest neighbour
    assert 7 not in I[2]
    S = reference_scores(X, X[rows], "l2")
    S[0, 20] = S[2, 7] = np.inf
    np.testing.assert_array_equal(I, np.argsort(S, axis=1)[:, :4])


def test_exact_search_pads_when_too_few_rows_are_eligible(X):
    D, I = exact_search(X[:4], X[:2], 4, exclude=np.array([0, -1]), metric="ip")
    assert I[0, -1] == -1 and D[0, -1] == -np.inf and 0 not in I[0]
    assert sorted(I[1]) == [0, 1, 2, 3] and np.isfinite(D[1]).all()


def test_threads_option_is_restored(X):
    before = faiss.omp_get_max_threads()
    knn_graph(X, 3, threads=2)
    assert faiss.omp_get_max_threads() == before
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'threads' parameter of knn_graph must be an int in the range [1, inf) or None. "
            "Got 0 instead.")):
        knn_graph(X, 3, threads=0)


def test_self_graph_agrees_with_exact_search_exclude(X):
    g = knn_graph(X, 4, method="exact", chunk_rows=300)  # symmetric block kernel
    _, I = exact_search(X, X, 4, exclude=np.arange(len(X)), chunk_rows=300)  # query x database
    assert (g.neighbors == I).mean() >= 0.999


def test_self_removal_with_duplicates_exact():
    X = structured(400, 32, seed=5)
    X[1] = X[0]
    X[100:115] = X[99]  # 16 identical rows: more than k + 1
    g = knn_graph(X, 5, method="exact")
    nb = g.neighbors
    assert not (nb == np.arange(len(X))[:, None]).any()
    assert nb[0, 0] == 1 and nb[1, 0] == 0
    for r in range(99, 115):
        assert set(nb[r]) <= set(range(99, 115)) - {r}


def test_cosine_zero_vectors_stay_finite():
    X = structured(200, 32)
    X[3] = 0.0
    g = knn_graph(X, 5, metric="cosine")
    assert (g.neighbors >= 0).all()
    D, _ = exact_search(X, X[[3, 4]], 5, metric="cosine")
    assert np.isfinite(D).all()
    np.testing.assert_allclose(D[0], 0.0, atol=1e-6)  # zero vector: similarity 0 to everyone


def test_file_backed_inputs_match_in_memory(tmp_path, X):
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    w = VectorStore.create(tmp_path / "store", X.shape[1])
    w.append(X[:700])
    w.append(X[700:])
    w.finalize()
    ref = knn_graph(X, 4, method="exact").neighbors
    np.testing.assert_array_equal(knn_graph(mm, 4, method="exact").neighbors, ref)
    np.testing.assert_array_equal(knn_graph(str(tmp_path / "store"), 4).neighbors, ref)


def test_out_writes_npy(tmp_path, X):
    out = tmp_path / "graph.npy"
    g = knn_graph(X, 4, out=out)
    assert isinstance(g.neighbors, np.memmap)
    np.testing.assert_array_equal(np.load(out), knn_graph(X, 4).neighbors)
    assert not (tmp_path / "graph.npy.tmp").exists()


def test_progress_reports_rows(X):
    # blocks of 500, 500, 200 rows; each pair multiplied once: block i costs its rows times the
    # rows of blocks i.. (600k, 350k, 40k of 990k); a call after every tile (here: every block
    # pair), in rows' worth of it
    calls = []
    knn_graph(X, 3, chunk_rows=500, progress=lambda d, t: calls.append((d, t)))
    done = [250_000, 500_000, 600_000, 850_000, 950_000, 990_000]
    assert calls == [(1200 * w // 990_000, 1200) for w in done]


def test_exact_search_progress_within_a_block_of_queries(X):
    calls = []
    exact_search(X, X[:10], 3, chunk_rows=500, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # after database rows 500, 1000, 1200


def test_float16_and_float64_inputs(X):
    ref = knn_graph(X, 3).neighbors
    assert (knn_graph(X.astype(np.float64), 3).neighbors == ref).mean() >= 0.999
    assert knn_graph(X.astype(np.float16), 3).neighbors.shape == ref.shape


# ------------------------------------------------------------------------------------------- opq


@pytest.fixture(scope="module")
def opq_data() -> tuple[np.ndarray, KnnGraph]:
    X = structured(3000, 32, noise=0.02, seed=7)
    X[11] = X[10]          # a duplicate pair
    X[200:210] = X[199]    # 11 identical rows
    g = knn_graph(X, 10, method="opq", m=8, nlist=32, random_state=0)
    return X, g


def test_opq_recall_on_structured_data(opq_data):
    X, g = opq_data
    assert g.method == "opq" and g.params["factory"] == "OPQ8_32,IVF32,PQ8np"
    assert g.params["refine"] == 40 and g.params["nprobe"] == 16
    ref_ids, _ = reference_graph(X, 10, "l2")
    direct = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.neighbors, ref_ids)])
    # stated threshold: with re-ranking of 40 candidates, >= 0.95 of true neighbours
    assert direct >= 0.95
    # graph_recall on every row equals the direct overlap (the 11 identical rows aside: there
    # graph_recall counts any tied copy as found, the overlap depends on which copies)
    est = graph_recall(X, g, n_queries=len(X), random_state=0)
    assert est == pytest.approx(direct, abs=0.005)
    assert graph_recall(X, g, n_queries=300, random_state=1) == pytest.approx(direct, abs=0.05)


def test_opq_self_removal_by_id(opq_data):
    X, g = opq_data
    nb = g.neighbors
    assert not (nb == np.arange(len(X))[:, None]).any()
    assert nb[10, 0] == 11 and nb[11, 0] == 10
    for r in range(199, 210):
        assert set(nb[r]) == set(range(199, 210)) - {r}


def test_opq_without_refine_and_incomplete_rows():
    X = structured(600, 32, seed=9)
    g = knn_graph(X, 60, method="opq", m=4, opq_dim=16, nlist=16, nprobe=1, refine=0,
                  random_state=0)
    nb = g.neighbors
    pad = nb < 0
    assert g.n_incomplete == int(pad.any(axis=1).sum()) > 0
    # -1 only pads the tail of a row
    assert not (pad[:, :-1] & ~pad[:, 1:]).any()
    assert not (nb == np.arange(len(X))[:, None]).any()


def test_opq_out_and_file_input(tmp_path):
    X = structured(700, 32, seed=11)
    path = tmp_path / "x.npy"
    np.save(path, X)
    kw = dict(method="opq", m=4, nlist=8, random_state=3)
    g = knn_graph(np.load(path, mmap_mode="r"), 5, out=tmp_path / "g.npy", **kw)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), g.neighbors)
    np.testing.assert_array_equal(knn_graph(X, 5, **kw).neighbors, g.neighbors)  # seeded


# ---------------------------------------------------------------------------------- helpers


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 12), min_size=4, max_size=8), st.integers(0, 12),
       st.integers(1, 3))
def test_drop_own_removes_only_own_id(row, own, k):
    res = _drop_own(np.array([row]), np.array([own]), k)[0]
    kept = [v for v in row if v != own and v >= 0][:k]
    assert list(res) == kept + [-1] * (k - len(kept))


# ---------------------------------------------------------------------------------- errors


def msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.mark.parametrize("kwargs, text", [
    (dict(k=0), "The 'k' parameter of knn_graph must be an int in the range [1, 299]. Got 0 "
                "instead."),
    (dict(k=300), "The 'k' parameter of knn_graph must be an int in the range [1, 299]. Got 300 "
                  "instead."),
    (dict(k=2.0), "The 'k' parameter of knn_graph must be an int in the range [1, 299]. Got 2.0 "
                  "instead."),
    (dict(method="fast"), "The 'method' parameter of knn_graph must be one of 'auto', 'exact', "
                          "'opq'. Got 'fast' instead."),
    (dict(metric="euclidean"), "The 'metric' parameter of knn_graph must be one of 'l2', 'ip', "
                               "'cosine'. Got 'euclidean' instead."),
    (dict(device="tpu"), "The 'device' parameter of knn_graph must be one of 'auto', 'cpu', "
                         "'cuda'. Got 'tpu' instead."),
    (dict(chunk_rows=0), "The 'chunk_rows' parameter of knn_graph must be an int in the range "
                         "[1, inf) or None. Got 0 instead."),
    (dict(nlist=301), "The 'nlist' parameter of knn_graph must be an int in the range [1, 300]. "
                      "Got 301 instead."),
    (dict(m=5, opq_dim=32), "The 'opq_dim' parameter of knn_graph must be a multiple of m=5. "
                            "Got 32 instead."),
    (dict(m=33), "The 'm' parameter of knn_graph must be an int in the range [1, 32] or None. "
                 "Got 33 instead."),
    (dict(m=8, bytes_per_vector=16), "The 'm' and 'bytes_per_vector' parameters of knn_graph "
                                     "conflict: with 8-bit codes they are the same number. Got "
                                     "m=8 and bytes_per_vector=16; pass only one."),
    (dict(nlist=8, nprobe=9), "The 'nprobe' parameter of knn_graph must be an int in the range "
                              "[1, 8] or None. Got 9 instead."),
    (dict(nlist=290, train_rows=280), "The 'train_rows' parameter of knn_graph must be at least "
                                      "max(nlist, 256) = 290 (k-means needs a training row per "
                                      "centroid). Got 280 instead."),
    (dict(train_rows=301), "The 'train_rows' parameter of knn_graph must be an int in the range "
                           "[1, 300] or None. Got 301 instead."),
    (dict(refine=5), "The 'refine' parameter of knn_graph must be 0 (no re-ranking) or an int in "
                     "the range [6, 299]. Got 5 instead."),
    (dict(random_state=-1), "The 'random_state' parameter of knn_graph must be None, an int in "
                            "the range [0, inf) or a numpy Generator. Got -1 instead."),
    (dict(progress=3), "The 'progress' parameter of knn_graph must be a callable "
                       "progress(done_rows, total_rows) or None. Got 3 instead."),
])
def test_knn_graph_parameter_errors(kwargs, text):
    X = structured(300, 32)
    kwargs = {"k": 5, **kwargs}
    with pytest.raises(InvalidParameterError, match=msg(text)):
        knn_graph(X, **kwargs)


def test_cuda_without_gpu_is_a_parameter_error(X, monkeypatch):
    monkeypatch.setattr(fu, "gpu_available", lambda: False)
    monkeypatch.setattr(fu, "torch_cuda_available", lambda: False)
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'device' parameter of knn_graph is 'cuda' but no GPU is visible (neither to "
            "FAISS nor to torch). Use device='cpu' or 'auto'.")):
        knn_graph(X, 3, device="cuda")


@pytest.mark.parametrize("faiss_gpu,torch_gpu,device,kernel", [
    (False, False, "auto", "CpuKernel"), (False, True, "auto", "TorchCudaKernel"),
    (False, True, "cpu", "CpuKernel"), (False, True, "cuda", "TorchCudaKernel"),
])
def test_kernel_choice(monkeypatch, faiss_gpu, torch_gpu, device, kernel):
    """auto: a GPU when one is visible (FAISS GPU first, then torch CUDA); cpu pins the CPU."""
    monkeypatch.setattr(fu, "gpu_available", lambda: faiss_gpu)
    monkeypatch.setattr(fu, "torch_cuda_available", lambda: torch_gpu)
    assert type(fu.make_kernel(device)).__name__ == kernel


def test_opq_needs_enough_rows():
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'method' parameter of knn_graph can be 'opq' only with at least 256 rows (each "
            "PQ codebook has 256 centroids). Got 'opq' with N=100; use method='exact'.")):
        knn_graph(structured(100, 32), 3, method="opq")


def test_exact_search_errors(X):
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'k' parameter of exact_search must be an int in the range [1, 1200]. Got 1201 "
            "instead.")):
        exact_search(X, X[:3], 1201)
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'exclude' parameter of exact_search must be an int array of shape (3,). Got an "
            "array of shape (2,) and dtype int64 instead.")):
        exact_search(X, X[:3], 2, exclude=np.array([1, 2]))
    with pytest.raises(InvalidInputError, match=msg(
            "Input 'queries' must have the same number of columns as 'database'. Got 7 instead "
            "of 48.")):
        exact_search(X, X[:3, :7], 2)


def test_graph_recall_errors(X):
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'graph' parameter of graph_recall must be a KnnGraph or an int array of shape "
            "(1200, k) with 1 <= k < 1200. Got an array of shape (5, 3) and dtype int64 "
            "instead.")):
        graph_recall(X, np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'n_queries' parameter of graph_recall must be an int in the range [1, inf). Got "
            "0 instead.")):
        graph_recall(X, knn_graph(X, 2), n_queries=0)


def test_graph_recall_exact_graph_is_one(X):
    assert graph_recall(X, knn_graph(X, 5), n_queries=200, random_state=0) == 1.0
    bad = knn_graph(X, 5).neighbors.copy()
    bad[:, 4] = -1
    assert graph_recall(X, bad, n_queries=len(X)) == pytest.approx(0.8)


@pytest.mark.parametrize("method", ["exact", "opq"])
def test_nan_in_file_names_the_row(tmp_path, method):
    X = structured(400, 32)
    X[317, 4] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, X)
    with pytest.raises(InvalidInputError, match=msg(
            "Input 'X' must contain only finite values. Got 1 row(s) with NaN or inf in rows "
            "0..399, first at row 317.")):
        knn_graph(np.load(path, mmap_mode="r"), 3, method=method, m=4, random_state=0)


def test_nan_in_memory_names_the_row():
    X = structured(50, 32)
    X[17, 0] = np.inf
    with pytest.raises(InvalidInputError, match="first at row 17"):
        knn_graph(X, 3)
