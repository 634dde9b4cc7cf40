"""Codec library (tldr_index.codecs): each codec against a brute-force numpy reference, state
round trips (also through a safetensors file), and every error message.

Data: make_structured (seeded, low intrinsic dimension, unit rows), 600 x 32 database, 40 queries.
Tolerances: float32 arithmetic, so scores/decodes agree to atol 1e-5 (values are O(1)).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import make_structured
from tldr_index.codecs import (CODECS, codec_from_state, feasible_bytes, get_codec)
from tldr_index.codecs.rabitq import pack_levels, unpack_levels
from tldr_index.errors import (InvalidInputError, InvalidParameterError, ModelFormatError,
                               NotFittedError)

D = 32
ATOL = 1e-5
FAST = {"pq": dict(bytes=4, n_iter=5), "opq": dict(bytes=4, n_iter=5, opq_iter=2),
        "rq": dict(bytes=4, n_iter=5), "rabitq1": dict(bits=1), "rabitq2": dict(bits=2),
        "rabitq4": dict(bits=4), "sign": {}, "sq8": {}, "sq4": {}}


def _name(key: str) -> str:
    return "rabitq" if key.startswith("rabitq") else key


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X = make_structured(600, D, latent=6, clusters=8, seed=0)
    Q = make_structured(40, D, latent=6, clusters=8, seed=0, noise=0.2)[:40]
    return X, Q


@pytest.fixture(scope="module")
def fitted(data) -> dict:
    X, _ = data
    out = {}
    for key, kw in FAST.items():
        c = get_codec(_name(key), D, **kw).fit(X, seed=0)
        out[key] = (c, c.encode(X))
    return out


# --- brute-force references ----------------------------------------------------------------

def _pq_decode_ref(cent: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.concatenate([cent[m][codes[:, m]] for m in range(cent.shape[0])], axis=1)


def _pq_encode_ref(cent: np.ndarray, Y: np.ndarray) -> np.ndarray:
    M, _, ds = cent.shape
    return np.stack([((Y[:, None, m * ds:(m + 1) * ds] - cent[m][None]) ** 2).sum(-1).argmin(1)
                     for m in range(M)], axis=1).astype(np.uint8)


def _rq_greedy_ref(books: np.ndarray, X: np.ndarray) -> np.ndarray:
    res, codes = X.astype(np.float64).copy(), []
    for book in books:
        j = ((res[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        codes.append(j)
        res -= book[j]
    return np.stack(codes, axis=1).astype(np.uint8)


def _rabitq_ref(c, X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Per-vector loop: nearest odd integers of the scaled rotated unit residual, best cosine over
    the same scale grid, estimate <q, c> + r <Pq, o_hat> / <o_hat, u>."""
    P, cen, B = c.rotation_.astype(np.float64), c.center_.astype(np.float64), c.bits
    L = 2 ** B - 1
    est = np.empty((len(Q), len(X)))
    for i, x in enumerate(X.astype(np.float64)):
        r = np.linalg.norm(x - cen)
        u = P @ (x - cen) / r
        if B == 1:
            o = np.where(u >= 0, 1.0, -1.0)
        else:
            best, o = -np.inf, None
            for t in np.linspace(0.3, 1.6, c.n_scales, dtype=np.float32):
                cand = np.clip(2 * np.floor(t * L * u / np.abs(u).max() / 2) + 1, -L, L)
                cos = cand @ u / np.linalg.norm(cand)
                if cos > best + 1e-12:
                    best, o = cos, cand
        oh = o / np.linalg.norm(o)
        est[:, i] = Q @ cen + r * (Q @ P.T @ oh) / (oh @ u)
    return est


def _reference_scores(key: str, c, codes: np.ndarray, X: np.ndarray, Q: np.ndarray):
    if key in ("pq", "opq", "rq", "sq8", "sq4"):
        return Q @ _reference_decode(key, c, codes).T
    if key == "sign":  # d - 2 x Hamming distance of the sign bits
        qb, xb = Q > 0, X > 0
        return D - 2.0 * (qb[:, None, :] != xb[None, :, :]).sum(-1)
    return _rabitq_ref(c, X, Q)


def _reference_decode(key: str, c, codes: np.ndarray) -> np.ndarray:
    if key == "pq":
        return _pq_decode_ref(c.pq_.centroids_, codes)
    if key == "opq":
        return _pq_decode_ref(c.pq_.centroids_, codes) @ c.rotation_
    if key == "rq":
        return sum(c.codebooks_[m][codes[:, m]] for m in range(codes.shape[1]))
    if key in ("sq8", "sq4"):
        bits = 8 if key == "sq8" else 4
        lev = codes if bits == 8 else np.stack([codes & 15, codes >> 4], axis=2).reshape(len(codes), D)
        step = (c.vmax_ - c.vmin_) / 2 ** bits
        return c.vmin_ + (lev + 0.5) * step
    if key == "sign":
        return np.where(np.unpackbits(codes, axis=1)[:, :D] > 0, 1.0, -1.0)
    raise AssertionError(key)


# --- encode / decode / ADC -----------------------------------------------------------------

@pytest.mark.parametrize("key", list(FAST))
def test_scores_and_search_match_reference(key, fitted, data):
    X, Q = data
    c, codes = fitted[key]
    assert codes.dtype == np.uint8 and codes.shape == (len(X), c.code_size)
    ref = _reference_scores(key, c, codes, X, Q)
    S = c.scores(Q, codes)
    np.testing.assert_allclose(S, ref, atol=ATOL * max(1.0, np.abs(ref).max()), rtol=1e-4)
    Dk, Ik = c.search(Q, codes, 10)
    np.testing.assert_allclose(Dk, -np.sort(-ref, axis=1)[:, :10], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(ref, Ik, 1), Dk, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", ["pq", "opq", "rq", "sq8", "sq4", "sign"])
def test_decode_matches_reference(key, fitted):
    c, codes = fitted[key]
    np.testing.assert_allclose(c.decode(codes), _reference_decode(key, c, codes), atol=ATOL)


def test_pq_and_opq_encode_is_nearest_centroid(fitted, data):
    X, _ = data
    pq, codes = fitted["pq"]
    np.testing.assert_array_equal(codes, _pq_encode_ref(pq.pq_.centroids_, X))
    opq, ocodes = fitted["opq"]
    R = opq.rotation_
    np.testing.assert_allclose(R @ R.T, np.eye(D), atol=1e-5)  # orthogonal: IP preserved
    np.testing.assert_array_equal(ocodes, _pq_encode_ref(opq.pq_.centroids_, X @ R.T))


def test_rq_beam_one_is_greedy_and_wider_beam_is_no_worse(fitted, data):
    X, _ = data
    rq, codes = fitted["rq"]
    greedy = codec_from_state(*_with(rq.state(), beam=1))
    np.testing.assert_array_equal(greedy.encode(X), _rq_greedy_ref(rq.codebooks_, X))
    err = lambda cd: float(((X - rq.decode(cd)) ** 2).sum(1).mean())  # noqa: E731
    assert err(codes) <= err(greedy.encode(X)) + 1e-7  # beam 5 vs greedy: reconstruction MSE
    assert err(codes) < 0.5 * float((X ** 2).sum(1).mean())


def _faiss_rq_codes(books: np.ndarray, X: np.ndarray, beam: int) -> np.ndarray:
    """FAISS's own encoder on the same codebooks (its look-up-table beam search, as RQCodec)."""
    import faiss
    M, K, d = books.shape
    rq = faiss.ResidualQuantizer(d, M, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(books).ravel(), rq.codebooks)
    rq.is_trained = True
    rq.max_beam_size = beam
    rq.use_beam_LUT = 1
    rq.compute_codebook_tables()
    return rq.compute_codes(np.ascontiguousarray(X))


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_beam_encode_matches_faiss(beam, fitted, data, monkeypatch):
    """tldr_index.codecs.rq.beam_encode against FAISS's encoder on the same codebooks. The two
    sum the candidate distances in different float32 orders, so they may pick different codes
    where two final reconstructions tie: every row must either get the same code or one whose
    squared reconstruction error equals FAISS's to rtol 1e-5 (a tie; at most 1% of the rows;
    here one row at beams >= 4, none at beams 1-3), and the mean error must be no worse than
    FAISS's (rtol 1e-6). 1 and 2 worker threads agree exactly (chunks of 64 rows here, so both
    workers get several)."""
    from tldr_index.codecs import rq as rq_module
    from tldr_index.codecs.rq import beam_encode
    monkeypatch.setattr(rq_module, "CANDIDATE_FLOATS", 64 * beam * 256)
    X, _ = data
    rq, _ = fitted["rq"]
    ours = beam_encode(X, rq.codebooks_, beam, threads=1)
    ref = _faiss_rq_codes(rq.codebooks_, X, beam)
    row_err = lambda cd: ((X - rq.decode(cd)) ** 2).sum(1)  # noqa: E731
    diff = _assert_same_up_to_ties(ours, ref, X, rq.decode)
    if beam == 1:
        assert len(diff) == 0
    assert row_err(ours).mean() <= row_err(ref).mean() * (1 + 1e-6)
    np.testing.assert_array_equal(beam_encode(X, rq.codebooks_, beam, threads=2), ours)


def _assert_same_up_to_ties(ours, ref, X, decode, max_share=0.01):
    """Same codes, except on rows (at most ``max_share``) whose squared reconstruction errors
    agree to rtol 1e-5: exact ties, which FAISS itself breaks differently with 1 or 2 threads."""
    row_err = lambda cd: ((X - decode(cd)) ** 2).sum(1)  # noqa: E731
    diff = np.flatnonzero((ours != ref).any(1))
    assert len(diff) <= max_share * len(X)
    np.testing.assert_allclose(row_err(ours)[diff], row_err(ref)[diff], rtol=1e-5)
    return diff


def test_rq_encode_engines_keep_stored_codes(fitted, data, monkeypatch):
    """The codec's encoder (lut_encode: FAISS's table beam search fed with float64 inner
    products) gives FAISS's own codes up to exact ties at beam 5 (and exactly FAISS's greedy
    codes at beam 1), the same codes after a state round trip and with 1 or 2 workers. Chunks
    of 64 rows, so 2 workers share several."""
    import faiss
    from tldr_index.codecs import rq as rq_module
    monkeypatch.setattr(rq_module, "CROSS_FLOATS", 64 * 4 * 256)
    X, _ = data
    rq, codes = fitted["rq"]
    assert rq.beam == 5
    _assert_same_up_to_ties(codes, _faiss_rq_codes(rq.codebooks_, X, 5), X, rq.decode)
    before = faiss.omp_get_max_threads()
    try:
        for n in (1, 2):
            faiss.omp_set_num_threads(n)
            np.testing.assert_array_equal(codec_from_state(*rq.state()).encode(X), codes)
    finally:
        faiss.omp_set_num_threads(before)
    greedy = codec_from_state(*_with(rq.state(), beam=1))
    np.testing.assert_array_equal(greedy.encode(X), _faiss_rq_codes(rq.codebooks_, X, 1))


def test_restored_rq_builds_its_tables_on_first_encode_only(data, fitted):
    """Opening an RQ target to search it must not pay for the encoder's codebook tables
    (``codebook_tables``: 0.5 s at d=64, 16 B): search and decode leave them unbuilt, the
    first encode builds them once, and the codes equal the fitted codec's."""
    import faiss

    X, _ = data
    rq, codes = fitted["rq"]
    same = codec_from_state(*rq.state())
    np.testing.assert_array_equal(same.decode(codes[:5]), rq.decode(codes[:5]))
    np.testing.assert_array_equal(same.search(X[:3], codes, 4)[1], rq.search(X[:3], codes, 4)[1])
    assert same._tables_built is False
    assert faiss.vector_to_array(same._rq.codebook_cross_products).size == 0
    np.testing.assert_array_equal(same.encode(X), codes)
    assert same._tables_built is True
    np.testing.assert_array_equal(faiss.vector_to_array(same.rq_.codebook_cross_products),
                                  faiss.vector_to_array(rq.rq_.codebook_cross_products))


def _run_in_batches(fn, X: np.ndarray, sizes: list[int]) -> np.ndarray:
    parts, s, i = [], 0, 0
    while s < len(X):
        parts.append(fn(X[s:s + sizes[i % len(sizes)]]))
        s, i = s + sizes[i % len(sizes)], i + 1
    return np.concatenate(parts)


@pytest.mark.parametrize("beam", [1, 2, 5])
def test_rq_code_of_a_row_does_not_depend_on_its_batch(beam, monkeypatch):
    """A row's RQ code is byte-identical whether it is encoded alone, in batches of 2-13 rows
    (where BLAS takes small-matrix paths) or of 100-700 rows at any offset, and on 1 or 2
    workers with chunks of 64 rows: the single-process and Ray engines batch differently.
    Rows half-way between two entries of the first codebook (exact ties there, so float32
    rounding decides): FAISS's own encoder (one float32 GEMM per batch, 1 OpenMP thread) gave
    9 / 6 / 1 rows of these 10,000 other codes under these batches at beams 1 / 2 / 5 when
    measured."""
    from tldr_index.codecs import rq as rq_module
    T = make_structured(1000, 8, latent=8, clusters=30, seed=3)
    c = get_codec("rq", 8, bytes=4, beam=beam, n_iter=5).fit(T, seed=0)
    a, b = np.random.default_rng(0).integers(0, 256, (2, 10_000))
    X = ((c.codebooks_[0][a] + c.codebooks_[0][b]) / 2).astype(np.float32)
    whole = c.encode(X)
    sizes = [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 100, 246, 333, 700]
    np.testing.assert_array_equal(_run_in_batches(c.encode, X, sizes), whole)
    monkeypatch.setattr(rq_module, "CROSS_FLOATS", 64 * 4 * 256)
    for workers in (1, 2):
        np.testing.assert_array_equal(
            rq_module.lut_encode(X[7:], c.rq_, c.codebooks_, beam, threads=workers), whole[7:])


def test_rq_tables_match_faiss(fitted):
    """codebook_tables (float64, then float32) equals FAISS's compute_codebook_tables to float32
    rounding, in FAISS's layout."""
    import faiss
    from tldr_index.codecs.rq import codebook_tables
    rq, _ = fitted["rq"]
    ref = faiss.ResidualQuantizer(D, rq.n_bytes, 8)
    faiss.copy_array_to_vector(rq.codebooks_.ravel(), ref.codebooks)
    ref.is_trained = True
    ref.compute_codebook_tables()
    norms, cross = codebook_tables(rq.codebooks_)
    np.testing.assert_allclose(norms, faiss.vector_to_array(ref.centroid_norms), rtol=1e-6)
    np.testing.assert_allclose(cross, faiss.vector_to_array(ref.codebook_cross_products),
                               rtol=1e-5, atol=1e-6)


def test_rq_beam_errors():
    with pytest.raises(InvalidParameterError, match="^" + re.escape(
            "The 'beam' parameter of RQCodec must be an int in the range [1, 256]. Got 0 "
            "instead.") + "$"):
        get_codec("rq", D, bytes=4, beam=0)
    with pytest.raises(InvalidParameterError, match="^" + re.escape(
            "The 'beam' parameter of RQCodec must be an int in the range [1, 256]. Got 2.5 "
            "instead.") + "$"):
        get_codec("rq", D, bytes=4, beam=2.5)


def _with(state, **cfg):
    tensors, config = state
    return tensors, {**config, **cfg}


def test_rabitq_estimator_error_shrinks_with_bits(fitted, data):
    """Statistical check of the estimator (not of an implementation detail): mean |error| of the
    estimated inner products falls with the bits and its mean is near zero (unbiased)."""
    X, Q = data
    exact = Q @ X.T
    errs = {}
    for b in (1, 2, 4):
        c, codes = fitted[f"rabitq{b}"]
        e = c.scores(Q, codes) - exact
        errs[b] = float(np.abs(e).mean())
        assert abs(float(e.mean())) < 0.25 * errs[b]
    assert errs[1] > errs[2] > errs[4]
    assert errs[4] < 0.02


def test_rabitq_pack_roundtrip():
    rng = np.random.default_rng(0)
    for b in (1, 2, 4):
        lev = rng.integers(0, 2 ** b, (7, 24)).astype(np.uint8)
        packed = pack_levels(lev, b)
        assert packed.shape == (7, 24 * b // 8)
        np.testing.assert_array_equal(unpack_levels(packed, b, 24), lev)


# --- state round trip ---------------------------------------------------------------------

@pytest.mark.parametrize("key", list(FAST))
def test_state_round_trip_through_safetensors(key, fitted, data, tmp_path):
    from safetensors.numpy import load_file, save_file
    X, Q = data
    c, codes = fitted[key]
    tensors, cfg = c.state()
    assert all(isinstance(v, np.ndarray) for v in tensors.values())
    path = tmp_path / "codec.safetensors"
    save_file({f"codec.{k}": v for k, v in tensors.items()} or {"codec._": np.zeros(1)},
              str(path), metadata={"codec": json.dumps(cfg)})
    loaded = {k[len("codec."):]: v for k, v in load_file(str(path)).items() if k != "codec._"}
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        cfg2 = json.loads(f.metadata()["codec"])
    same = codec_from_state(loaded, cfg2)
    assert same.code_size == c.code_size and same.config() == c.config()
    np.testing.assert_array_equal(same.encode(X), codes)
    np.testing.assert_array_equal(same.scores(Q, codes), c.scores(Q, codes))
    np.testing.assert_array_equal(same.search(Q, codes, 5)[1], c.search(Q, codes, 5)[1])


def test_from_state_missing_tensor_and_unknown_codec(fitted):
    tensors, cfg = fitted["rq"][0].state()
    with pytest.raises(ModelFormatError, match=r"^The stored 'rq' codec lacks the tensors "
                                               r"codebooks\.$"):
        codec_from_state({}, cfg)
    with pytest.raises(ModelFormatError, match=re.escape(
            "The stored codec config must name one of 'pq', 'opq', 'rq', 'rabitq', 'sign', 'sq' "
            "under 'codec'. Got 'zz' instead.")):
        codec_from_state(tensors, {**cfg, "codec": "zz"})
    with pytest.raises(ModelFormatError, match=re.escape(
            "The stored 'rq' codec tensor 'codebooks' must have shape (4, 256, 32) for its "
            "config. Got (3, 256, 32) instead.")):
        codec_from_state({"codebooks": tensors["codebooks"][:3]}, cfg)


# --- sizes and the registry --------------------------------------------------------------

def test_code_sizes_and_feasible_budgets():
    assert get_codec("rabitq", 384, bits=1).code_size == 52
    assert get_codec("rabitq", 384, bytes=100).bits == 2
    assert get_codec("rabitq", 64, bits=4).code_size == 36
    assert get_codec("sign", 384).code_size == 48
    assert get_codec("sq4", 64).code_size == 32 and get_codec("sq8", 64).code_size == 64
    assert feasible_bytes("pq", 12) == [1, 2, 3, 4, 6, 12]
    assert feasible_bytes("rabitq", 12) == [7, 10]   # 1 bit: 12 bits are not whole bytes
    assert set(CODECS) == {"pq", "opq", "rq", "rabitq", "sign", "sq8", "sq4"}


BAD = [
    (dict(name="lsh", dim=64, bytes=8),
     "The 'name' parameter of get_codec must be one of 'pq', 'opq', 'rq', 'rabitq', 'sign', "
     "'sq8', 'sq4'. Got 'lsh' instead."),
    (dict(name="rabitq", dim=64, bits=3),
     "The 'bits' parameter of get_codec must be one of 1, 2, 4. Got 3 instead."),
    (dict(name="rabitq", dim=20, bits=1),
     "The 'bits' parameter of get_codec('rabitq', dim=20) must give whole bytes per code (dim x "
     "bits a multiple of 8). Got 1 instead (20 x 1 = 20 bits)."),
    (dict(name="rabitq", dim=384, bytes=60),
     "The 'bytes' parameter of get_codec('rabitq', dim=384) must be dim x bits / 8 + 4 with bits "
     "in 1, 2, 4. Got 60 instead; the nearest feasible budgets are 52 and 100."),
    (dict(name="rabitq", dim=384, bits=2, bytes=52),
     "The 'bytes' parameter of get_codec('rabitq', dim=384) must be 100 with bits=2 (dim x bits "
     "/ 8 + 4 bytes of per-vector factor). Got 52 instead."),
    (dict(name="rabitq", dim=64),
     "The 'bits' parameter of get_codec('rabitq', dim=64) must be one of 1, 2, 4 when 'bytes' "
     "is not given. Got None instead."),
    (dict(name="pq", dim=384, bytes=10),
     "The 'bytes' parameter of get_codec('pq', dim=384) must be a divisor of the dimension (one "
     "sub-quantizer of 256 centroids per byte). Got 10 instead; the nearest feasible budgets are "
     "8 and 12."),
    (dict(name="opq", dim=64, bytes=80),
     "The 'bytes' parameter of get_codec('opq', dim=64) must be a divisor of the dimension (one "
     "sub-quantizer of 256 centroids per byte). Got 80 instead; the nearest feasible budgets are "
     "64."),
    (dict(name="rq", dim=64, bytes=100),
     "The 'bytes' parameter of get_codec('rq', dim=64) must be at most the dimension (one "
     "codebook per byte). Got 100 instead; the nearest feasible budgets are 64."),
    (dict(name="pq", dim=64),
     "The 'bytes' parameter of get_codec('pq', dim=64) must be an int (code bytes per vector). "
     "Got None instead."),
    (dict(name="pq", dim=64, bytes=0),
     "The 'bytes' parameter of get_codec must be an int in the range [1, inf) or None. Got 0 "
     "instead."),
    (dict(name="pq", dim=0, bytes=8),
     "The 'dim' parameter of get_codec must be an int in the range [1, inf). Got 0 instead."),
    (dict(name="pq", dim=64, bytes=8, bits=2),
     "The 'bits' parameter of get_codec only applies to codec 'rabitq' (codec 'pq' has a fixed "
     "code layout). Got 2 instead."),
    (dict(name="sign", dim=12),
     "The 'dim' parameter of get_codec('sign') must be a multiple of 8 (one bit per dimension). "
     "Got 12 instead."),
    (dict(name="sq4", dim=7),
     "The 'dim' parameter of get_codec('sq4') must be even (two 4-bit levels per byte). Got 7 "
     "instead."),
    (dict(name="sq8", dim=64, bytes=32),
     "The 'bytes' parameter of get_codec('sq8', dim=64) must be the codec's fixed size 64. Got "
     "32 instead; the nearest feasible budgets are 64."),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_get_codec_errors(kwargs, message):
    kw = dict(kwargs)
    name, dim = kw.pop("name"), kw.pop("dim")
    with pytest.raises(InvalidParameterError, match="^" + re.escape(message) + "$"):
        get_codec(name, dim, **kw)


def test_input_errors(fitted, data):
    X, Q = data
    c, codes = fitted["pq"]
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'X' input of PQCodec.encode must have 32 columns (the codec's dimension). "
            "Got 31 instead.")):
        c.encode(X[:, :31])
    bad = X[:5].copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'X' input of PQCodec.encode must hold finite values only. Got NaN or inf in "
            "row 3.")):
        c.encode(bad)
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'X' input of PQCodec.fit must be a 2-D array of floats. Got shape (32,) and "
            "dtype float32 instead.")):
        get_codec("pq", D, bytes=4).fit(X[0])
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'codes' input of PQCodec.scores must be a uint8 array of shape (n, 4). Got "
            "shape (600, 4) and dtype int64 instead.")):
        c.scores(Q, codes.astype(np.int64))
    with pytest.raises(NotFittedError, match=re.escape(
            "This RQCodec instance is not fitted yet. Call 'fit' before using 'encode'.")):
        get_codec("rq", D, bytes=4).encode(X)


def test_frontier_benchmark_runs_on_the_sample(tmp_path):
    """benchmarks/frontier.py end to end on the shipped sample (cheap codecs, no TLDR fit)."""
    from benchmarks.frontier import main
    out = tmp_path / "frontier"
    main(["--dims", "", "--codecs", "sign,rabitq", "--budgets", "16,64", "--queries", "50",
          "--out", str(out)])
    rows = json.loads((tmp_path / "frontier.json").read_text())["rows"]
    assert {r["label"] for r in rows} == {"sign bits (48 B)", "RaBitQ 1-bit (52 B)",
                                         "RaBitQ 2-bit (100 B)"}
    assert all(0.0 <= r["recall_raw"] <= r["recall_rescored"] + 0.05 <= 1.05 for r in rows)
    md = (tmp_path / "frontier.md").read_text()
    assert "| 16 | — |" in md and "| 64 | RaBitQ 1-bit (52 B)" in md
