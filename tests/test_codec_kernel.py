"""The one search kernel (tldr_index.codecs.codec_topk) for every codec x metric against brute
force over ``decode()``, its bounded memory, and the compact model holding a codec: save/load
round trip, and old model files (tensor ``pq_centroids``) giving the codes and search results of
the PQ-only code they were written by.

Data: make_structured 600 x 32 (seeded), rows rescaled by factors in [0.5, 2] so that l2, ip and
cosine rank differently; 30 queries. Tolerance: a returned id set must equal the brute-force top
10 unless the 10th and 11th brute-force distances are within 1e-4 (a float32 near-tie), and the
returned distances must equal the brute-force ones at atol 1e-3 (values are O(1)-O(10)).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_structured
from tldr_index.artifact import model_to_bytes
from tldr_index.codecs import codec_topk, decoded_sq_norms, get_codec, kernel
from tldr_index.compact import CompactModel, prepare_rows
from tldr_index.quantizer import ProductQuantizer
from tldr_index.search import to_lower_better

D, K, GAP, ATOL = 32, 10, 1e-4, 1e-3
CODECS = {"pq": dict(bytes=8, n_iter=5), "opq": dict(bytes=8, n_iter=5, opq_iter=2),
          "rq": dict(bytes=8, n_iter=5), "rabitq1": dict(bits=1), "rabitq2": dict(bits=2),
          "rabitq4": dict(bits=4), "sq8": {}}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = make_structured(600, D, latent=6, clusters=8, seed=0)
    X = (X * rng.uniform(0.5, 2.0, (len(X), 1))).astype(np.float32)
    Q = make_structured(30, D, latent=6, clusters=8, seed=5, noise=0.2)
    return X, (Q * rng.uniform(0.5, 2.0, (len(Q), 1))).astype(np.float32)


def fitted(key: str, metric: str, X: np.ndarray):
    codec = get_codec("rabitq" if key.startswith("rabitq") else key, D, **CODECS[key])
    Xp = prepare_rows(X, metric)
    return codec.fit(Xp, seed=0), codec.encode(Xp)


def brute_force(codec, codes, Qp, metric) -> np.ndarray:
    Xh = codec.decode(codes).astype(np.float64)
    Q = Qp.astype(np.float64)
    if metric == "l2":
        return ((Q[:, None, :] - Xh[None, :, :]) ** 2).sum(axis=2)
    s = Q @ Xh.T
    return 1.0 - s if metric == "cosine" else -s


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("key", list(CODECS))
def test_kernel_matches_brute_force_over_decode(data, key, metric):
    X, Q = data
    codec, codes = fitted(key, metric, X)
    Qp = prepare_rows(Q, metric)
    dist, ids = codec_topk(codec, metric, codes, Qp, K)
    assert dist.shape == ids.shape == (len(Q), K) and dist.dtype == np.float32
    ref = brute_force(codec, codes, Qp, metric)
    order = np.argsort(ref, axis=1, kind="stable")
    for i in range(len(Q)):
        r = ref[i, order[i]]
        if r[K] - r[K - 1] > GAP:
            assert set(ids[i]) == set(order[i, :K]), (key, metric, i)
        np.testing.assert_allclose(dist[i], ref[i, ids[i]], atol=ATOL)
        np.testing.assert_allclose(dist[i], r[:K], atol=ATOL)  # best first, nothing better missed


@pytest.mark.parametrize("key", ["rabitq2", "rq"])
def test_small_score_blocks_give_the_same_results(data, key, monkeypatch):
    """The decoding search bounds memory by scoring few queries at a time: results must not
    depend on the block (here 3 queries: SCORE_FLOATS = 3 x 600)."""
    X, Q = data
    codec, codes = fitted(key, "l2", X)
    want = codec_topk(codec, "l2", codes, Q, K)
    monkeypatch.setattr(kernel, "SCORE_FLOATS", 3 * len(codes))
    assert kernel.query_block(len(codes)) == 3
    got = codec_topk(codec, "l2", codes, Q, K)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)


def test_query_block_is_bounded_at_a_million_rows():
    assert kernel.query_block(1_000_000) == 33  # 33 x 1M float32 <= 2^25 floats (128 MiB)
    assert kernel.query_block(10_000) == 256 and kernel.query_block(10**9) == 1


def test_norms_are_decoded_once_per_code_array(data, monkeypatch):
    X, _ = data
    codec, codes = fitted("rabitq1", "l2", X)
    calls = []
    real = type(codec).decode
    monkeypatch.setattr(type(codec), "decode", lambda self, c: calls.append(1) or real(self, c))
    first = decoded_sq_norms(codec, codes)
    assert decoded_sq_norms(codec, codes) is first and len(calls) == 1
    other = codes.copy()
    np.testing.assert_array_equal(decoded_sq_norms(codec, other), first)
    assert len(calls) == 2
    Xh = real(codec, codes).astype(np.float64)
    np.testing.assert_allclose(first, (Xh ** 2).sum(axis=1), rtol=1e-6)


def _model(codec, metric: str) -> CompactModel:
    rng = np.random.default_rng(1)
    W = rng.standard_normal((D, 48)).astype(np.float32) / 7
    info = {"method": "pca", "class": "PCA", "foldable": True, "input_dim": 48,
            "output_dim": D, "metric": metric, "params": {}, "fit_info": {}}
    return CompactModel(W, np.zeros(D, np.float32), metric, codec, dict(info))


@pytest.mark.parametrize("key", ["pq", "opq", "rq", "rabitq2"])
def test_compact_model_round_trip_with_every_codec(data, key):
    X, Q = data
    codec, _ = fitted(key, "cosine", X)
    m = _model(codec, "cosine")
    m.info["compact"] = {"metric": "cosine"}
    back = CompactModel.from_bytes(m.to_bytes())
    assert back.codec_name == back.info["compact"]["codec"]["codec"] == codec.name
    assert back.code_bytes == back.pq_bytes == back.info["compact"]["code_bytes"] \
        == codec.code_size
    Xin = np.random.default_rng(2).standard_normal((50, 48)).astype(np.float32)
    Y = m.encode(Xin)
    codes = m.encode_codes(Y)
    np.testing.assert_array_equal(back.encode_codes(Y), codes)
    for a, b in zip(back.topk(codes, Y[:5], 7), m.topk(codes, Y[:5], 7)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_old_pq_model_files_load_with_the_same_codes_and_results(metric):
    """A file in the format before the codec library (``pq_centroids``, ``pq_bytes``), built
    here as that code wrote it, loads as a PQ codec: same codes, same search results as the old
    ``ProductQuantizer(metric)`` + ``IndexPQ`` path."""
    rng = np.random.default_rng(4)
    Z = make_structured(800, D, latent=6, clusters=8, seed=2) * rng.uniform(0.5, 2, (800, 1))
    Z = Z.astype(np.float32)
    old_pq = ProductQuantizer(8, metric=metric, random_state=0).fit(Z)
    m = _model(None, metric)
    info = dict(m.info, compact={"metric": metric, "pq_bytes": 8})
    data = model_to_bytes({"weight": m.weight, "bias": m.bias,
                           "pq_centroids": old_pq.centroids_}, info)
    model = CompactModel.from_bytes(data)
    assert model.codec_name == "pq" and model.code_bytes == model.pq_bytes == 8
    Y = Z[:300]
    old_codes = old_pq.encode(Y)
    np.testing.assert_array_equal(model.encode_codes(Y), old_codes)
    Yq = Z[300:340]
    d_old, i_old = old_pq.index(old_codes).search(old_pq._prep(Yq), 10)
    d_new, i_new = model.topk(old_codes, Yq, 10)
    np.testing.assert_array_equal(i_new, i_old)
    np.testing.assert_allclose(d_new, to_lower_better(d_old, metric), atol=1e-6)
    # written again, it is stored in the current format and loads the same
    again = CompactModel.from_bytes(model.to_bytes())
    assert "codec.centroids" in again.tensors() and "pq_centroids" not in again.tensors()
    np.testing.assert_array_equal(again.encode_codes(Y), old_codes)
