"""The IVF index over the codes (tldr_index.code_index): indexed search with every list probed
equals the exhaustive code scan, ``add`` keeps it consistent, save/load round-trips, the recall
table picks nprobe, and every bad input gets one clear error. The tests of the lists scored with
the collection's codes build with ``scan="codes"``; the fast-scan lists (the default) are tested
against the exact inner products of their own decoded codes (tests at the end)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_structured

import functools

from tldr_index.code_index import CodeIndex, codes_digest, default_nlist
from tldr_index.codecs import get_codec
from tldr_index.errors import InvalidInputError, InvalidParameterError, ModelFormatError

D = 16
#: scores of the indexed search and of the codec's own exhaustive search are the same sums,
#: accumulated in another order (FAISS lookup tables vs. a decode and a dot)
SCORE_TOL = 1e-5
CODECS = [("pq", {"bytes": 8}), ("opq", {"bytes": 8}), ("rq", {"bytes": 4}),
          ("rabitq", {"bits": 1}), ("sq4", {})]


def _data(n=1500, seed=0):
    X = make_structured(n, D, latent=6, clusters=10, seed=seed)
    Q = make_structured(40, D, latent=6, clusters=10, seed=seed)  # same blobs: same map, seed
    return X, Q


@pytest.fixture(scope="module")
def data():
    return _data()


#: the index over the collection's codes (the tests below compare it with the codec's own scan)
build_codes = functools.partial(CodeIndex.build, scan="codes")

_FITTED: dict = {}
FAST = {"pq": {"n_iter": 5}, "opq": {"n_iter": 5, "opq_iter": 2}}  # keep the tests quick


def _fitted(name, kw, X):
    """A codec fitted on ``X`` and the codes of ``X`` (cached per codec and data)."""
    key = (name, tuple(sorted(kw.items())), len(X), X[0, 0].item())
    if key not in _FITTED:
        c = get_codec(name, D, **kw, **FAST.get(name, {})).fit(X, seed=0)
        _FITTED[key] = (c, c.encode(X))
    return _FITTED[key]


def _same_result(D1, I1, D2, I2):
    """Equal ids wherever the scores are not tied within SCORE_TOL, and equal scores."""
    np.testing.assert_allclose(D1, D2, rtol=0, atol=SCORE_TOL)
    differ = I1 != I2
    # a different id is allowed only between (near-)tied scores
    left = np.abs(np.diff(D1, axis=1, prepend=np.inf)) <= SCORE_TOL
    right = np.abs(np.diff(D1, axis=1, append=-np.inf)) <= SCORE_TOL
    assert np.all((left | right)[differ])
    return differ.mean()


@pytest.mark.parametrize("name,kw", CODECS, ids=[c[0] for c in CODECS])
@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_all_lists_equal_the_exhaustive_code_scan(data, name, kw, metric):
    X, Q = data
    codec, codes = _fitted(name, kw, X)
    index = build_codes(X, codes, codec, metric=metric, recall_queries=50)
    assert index.nlist == default_nlist(len(X)) == 38  # 2 sqrt(1500) = 77 > 1500 // 39 = 38
    D1, I1 = index.search(Q, 10, nprobe=index.nlist)
    Qs = Q / np.linalg.norm(Q, axis=1, keepdims=True) if metric == "cosine" else Q
    D2, I2 = codec.search(Qs, codes, 10)
    assert _same_result(D1, I1, D2, I2) <= 0.01
    # the stored table: recall grows with nprobe and is 1 at every list
    t = index.recall_table
    assert t.nprobe[-1] == index.nlist and t.vs_exhaustive[-1] == 1.0
    assert t.vs_exhaustive == sorted(t.vs_exhaustive) and t.vs_exhaustive[0] < 1.0


@pytest.mark.parametrize("name,kw", [CODECS[0], CODECS[2]], ids=["pq", "rq"])
def test_l2_equals_exact_adc_distances(data, name, kw):
    """l2 scores are -||q - decode(code)||^2, on the FAISS path and on the decode path."""
    X, Q = data
    codec, codes = _fitted(name, kw, X)
    index = build_codes(X, codes, codec, metric="l2", recall_queries=0)
    D1, I1 = index.search(Q, 10, nprobe=index.nlist)
    R = codec.decode(codes)
    ref = -((Q[:, None, :] - R[None]) ** 2).sum(-1)
    I2 = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    _same_result(D1, I1, np.take_along_axis(ref, I2, axis=1), I2)


def test_fewer_candidates_than_k_pad_with_minus_one(data):
    X, Q = data
    codec, codes = _fitted("sq4", {}, X[:100])
    index = build_codes(X[:100], codes, codec, nlist=2, recall_queries=0)
    D1, I1 = index.search(Q[:3], 150, nprobe=2)
    assert (I1[:, 100:] == -1).all() and np.isinf(D1[:, 100:]).all()
    assert sorted(I1[0, :100]) == list(range(100))


@pytest.mark.parametrize("name,kw", [CODECS[0], CODECS[3]], ids=["pq", "rabitq"])
def test_add_keeps_the_index_consistent(data, name, kw):
    X, Q = data
    codec, codes = _fitted(name, kw, X)
    index = build_codes(X[:1000], codes[:1000], codec, recall_queries=0)
    rows = index.add(codes[1000:], X[1000:])
    assert rows.tolist() == list(range(1000, 1500)) and index.n == 1500
    # each added row sits in the list nearest its vector: probing that one list finds it
    _, I = index.search(X[1000:1100], 1500, nprobe=1)
    assert all(r in row for r, row in zip(range(1000, 1100), I))
    # and the grown index equals the exhaustive scan of all the codes
    D1, I1 = index.search(Q, 10, nprobe=index.nlist)
    D2, I2 = codec.search(Q, codes, 10)
    _same_result(D1, I1, D2, I2)
    assert codes_digest(index.codes_in_row_order()) == codes_digest(codes)


@pytest.mark.parametrize("scan", ["codes", "fastscan"])
@pytest.mark.parametrize("name,kw", [CODECS[0], CODECS[3]], ids=["pq", "rabitq"])
def test_a_vector_store_is_indexed_block_by_block_with_the_same_result(data, name, kw, scan,
                                                                      tmp_path, monkeypatch):
    """shrink passes the reduced VectorStore (read in blocks, so RSS stays flat in N): the index
    is byte-for-byte the one built from the same rows in memory."""
    import tldr_index.code_index as ci
    from tldr_index.vectors import VectorStore

    X, Q = data
    codec, codes = _fitted(name, kw, X)
    w = VectorStore.create(tmp_path / "reduced", D, np.float32)
    w.append(X)
    store = w.finalize()
    rows = np.arange(0, 1500, 7)
    truth = np.stack([(np.arange(10) + r + 1) % 1500 for r in rows])
    ref = CodeIndex.build(X, codes, codec, scan=scan, eval_rows=rows, eval_truth=truth)
    monkeypatch.setattr(ci, "ADD_BLOCK_ROWS", 256)  # several blocks, one of them partial
    got = CodeIndex.build(store, codes, codec, scan=scan, eval_rows=rows, eval_truth=truth)
    assert got.to_bytes() == ref.to_bytes() and got.recall_table == ref.recall_table
    for p in (1, 4, got.nlist):
        np.testing.assert_array_equal(got.search(Q, 10, nprobe=p)[1],
                                      ref.search(Q, 10, nprobe=p)[1])
    # without eval rows: held-out rows as queries, with (a full read) or without exact truth
    for exact in (True, False):
        ref = CodeIndex.build(X, codes, codec, scan=scan, recall_queries=30, exact_recall=exact)
        got = CodeIndex.build(store, codes, codec, scan=scan, recall_queries=30, exact_recall=exact)
        assert got.to_bytes() == ref.to_bytes() and got.recall_table == ref.recall_table
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'vectors' input of CodeIndex.build must have 8 columns (the codec's "
            "dimension). Got 16 instead.")):
        build_codes(store, codes[:, :4], get_codec("pq", 8, bytes=4).fit(X[:, :8], seed=0))


@pytest.mark.parametrize("name,kw", [CODECS[1], CODECS[2]], ids=["opq", "rq"])
def test_save_load_round_trip(data, name, kw, tmp_path):
    X, Q = data
    codec, codes = _fitted(name, kw, X)
    index = build_codes(X, codes, codec, recall_queries=50)
    index.save(tmp_path / "index.safetensors")
    back = CodeIndex.load(tmp_path / "index.safetensors", codes, codec)
    assert (back.nlist, back.n, back.metric) == (index.nlist, index.n, index.metric)
    assert back.recall_table == index.recall_table
    for p in (1, 3, index.nlist):
        D1, I1 = index.search(Q, 10, nprobe=p)
        D2, I2 = back.search(Q, 10, nprobe=p)
        np.testing.assert_array_equal(I1, I2)
        np.testing.assert_array_equal(D1, D2)
    assert back.to_bytes() == index.to_bytes()


def test_load_refuses_other_codes_unless_asked(data, tmp_path, caplog):
    X, Q = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    build_codes(X, codes, codec, recall_queries=0).save(tmp_path / "i.st")
    p = re.escape(str(tmp_path / "i.st"))
    with pytest.raises(ModelFormatError, match=rf"^Code index '{p}' does not match the codes it "
                       rf"is loaded with: it indexes 1500 rows, the code array has 1499\. Rebuild "
                       rf"it, or pass fallback_exhaustive=True to search every code\.$"):
        CodeIndex.load(tmp_path / "i.st", codes[:-1], codec)
    other = codes.copy()
    other[7, 0] ^= 1
    with pytest.raises(ModelFormatError, match=r"the SHA-256 of the code array differs from the "
                                               r"one it indexed\."):
        CodeIndex.load(tmp_path / "i.st", other, codec)
    fall = CodeIndex.load(tmp_path / "i.st", other, codec, fallback_exhaustive=True)
    assert fall.nlist == 1 and fall.exhaustive_only and "exhaustive scan" in caplog.text
    D1, I1 = fall.search(Q, 10, nprobe=1)
    D2, I2 = codec.search(Q / np.linalg.norm(Q, axis=1, keepdims=True), other, 10)
    _same_result(D1, I1, D2, I2)
    with pytest.raises(ModelFormatError, match=r"^Code index file '.*nope' does not exist\.$"):
        CodeIndex.load(tmp_path / "nope", codes, codec)
    (tmp_path / "bad").write_bytes(b"\x08" + b"\x00" * 7 + b"not json")
    with pytest.raises(ModelFormatError, match=r"^'.*bad' is not a tldr-index code index: "):
        CodeIndex.load(tmp_path / "bad", codes, codec)


def test_nprobe_for_and_its_errors(data):
    X, Q = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    index = build_codes(X, codes, codec, recall_queries=50)
    t = index.recall_table
    p = index.nprobe_for(0.9)
    i = t.nprobe.index(p)
    assert t.vs_exhaustive[i] >= 0.9 and all(r < 0.9 for r in t.vs_exhaustive[:i])
    assert index.nprobe_for(1.0) == t.nprobe[t.vs_exhaustive.index(1.0)]
    assert index.default_nprobe() == min(p for p, r in zip(t.nprobe, t.raw)
                                         if r >= t.raw[-1] - 0.001)
    best = int(np.argmax(t.raw))
    if t.raw[best] < 1.0:
        with pytest.raises(InvalidParameterError, match=re.escape(
                f"The 'target_recall' parameter of CodeIndex.nprobe_for must be at most the best "
                f"recall@10 the stored table reaches against exact search ({t.raw[best]} at "
                f"nprobe {t.nprobe[best]}). Got 1.0 instead.")):
            index.nprobe_for(1.0, against="exact")
    with pytest.raises(InvalidParameterError, match=r"^The 'target_recall' parameter of "
                       r"CodeIndex\.nprobe_for must be a float in the range \[0\.0, 1\.0\]"):
        index.nprobe_for(1.5)
    bare = build_codes(X, codes, codec, recall_queries=0)
    with pytest.raises(InvalidParameterError, match=r"needs a stored recall table against "
                                                    r"exhaustive search; this index has none"):
        bare.nprobe_for(0.9)


def test_bad_input(data):
    X, Q = data
    codec, codes = _fitted("sq4", {}, X)
    index = build_codes(X[:400], codes[:400], codec, nlist=8, recall_queries=0)
    with pytest.raises(InvalidParameterError, match=r"^The 'nprobe' parameter of CodeIndex\."
                       r"search must be an int in the range \[1, 8\]\. Got 0 instead\.$"):
        index.search(Q, 10, nprobe=0)
    with pytest.raises(InvalidParameterError, match=r"\[1, 8\]\. Got 9 instead\.$"):
        index.search(Q, 10, nprobe=9)
    with pytest.raises(InvalidParameterError, match=r"^The 'k' parameter of CodeIndex\.search "
                                                    r"must be an int in the range \[1, inf\)\. "
                                                    r"Got 0 instead\.$"):
        index.search(Q, 0)
    with pytest.raises(InvalidInputError, match=r"^The 'queries' input of CodeIndex\.search must "
                                                r"have 16 columns"):
        index.search(Q[:, :8], 10)
    with pytest.raises(InvalidInputError, match=r"^The 'codes' input of CodeIndex\.add must have "
                                                r"one row per vector \(3\)\. Got 2 rows "
                                                r"instead\.$"):
        index.add(codes[:2], X[:3])
    with pytest.raises(InvalidInputError, match=r"^The 'codes' input of CodeIndex\.build must be "
                                                r"a uint8 array of shape \(n, 8\)"):
        build_codes(X, codes[:, :4], codec)
    with pytest.raises(InvalidParameterError, match=r"^The 'nlist' parameter of CodeIndex\.build "
                                                    r"must be an int in the range \[1, 1500\]\. "
                                                    r"Got 0 instead\.$"):
        build_codes(X, codes, codec, nlist=0)
    with pytest.raises(InvalidParameterError, match=r"^The 'metric' parameter of CodeIndex\.build "
                                                    r"must be one of"):
        build_codes(X, codes, codec, metric="dot")
    with pytest.raises(Exception, match=r"is not fitted yet.*CodeIndex\.build"):
        build_codes(X, codes, get_codec("sq4", D))


def test_search_is_safe_from_many_threads(data):
    """Concurrent searches (FAISS path and decode path) give the sequential answers."""
    import concurrent.futures as cf

    X, Q = data
    for name, kw in (CODECS[0], CODECS[2]):
        codec, codes = _fitted(name, kw, X)
        index = build_codes(X, codes, codec, recall_queries=0)
        want = [index.search(Q[i:i + 1], 10, nprobe=1 + i % index.nlist) for i in range(len(Q))]
        with cf.ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda i: index.search(Q[i:i + 1], 10, nprobe=1 + i % index.nlist),
                              range(len(Q))))
        for (D1, I1), (D2, I2) in zip(want, got):
            np.testing.assert_array_equal(I1, I2)
            np.testing.assert_array_equal(D1, D2)


# ----------------------------------------------------------------------------- fast-scan lists
def _decoded(index):
    import faiss

    """Each row's fast-scan code decoded (rotated space: what the lists score), ``(n, dim_pad)``:
    the brute-force reference of the fast-scan lists."""
    ivf = index.fastscan_lists.ivf
    out = np.zeros((index.n, index.fastscan_lists.dim_pad), np.float32)
    for li in range(index.nlist):
        for off, row in enumerate(index.fastscan_lists.list_rows(li)):
            ivf.reconstruct_from_offset(li, off, faiss.swig_ptr(out[row]))
    return out


def _lut_tolerance(index, Q):
    """Bound of the fast-scan score error: FAISS quantizes each query's lookup tables to 8 bits
    (per table a step of its range / 255, half a step per sub-quantizer, M of them; l2 tables
    hold squared distances: their range is taken from the decoded rows' spread)."""
    fs = index.fastscan_lists
    pq = faiss_pq_tables(fs, Q)
    span = (pq.max(axis=(1, 2)) - pq.min(axis=(1, 2))).max()
    if index.metric == "l2":
        span = 4 * span + (fs.tensors()["fs_pq_centroids"] ** 2).sum(-1).max() * 2
    return fs.M * span / 255


def faiss_pq_tables(fs, Q):
    C = fs.tensors()["fs_pq_centroids"]                      # (M, 16, dsub)
    Qr = fs.rotate(Q).reshape(len(Q), fs.M, -1)
    return np.einsum("qmd,mkd->qmk", Qr, C)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_fastscan_all_lists_equal_a_brute_force_scan_of_its_codes(data, metric):
    """The fast-scan index at nprobe = nlist is its exhaustive scan (search_exhaustive), and it
    ranks the rows as the exact inner product of the decoded codes does, up to the 8-bit
    quantization of the lookup tables; with fewer lists, only the probed lists' rows come back."""
    X, Q = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    index = CodeIndex.build(X, codes, codec, metric=metric, recall_queries=50)
    fs = index.fastscan_lists
    assert index.scan == "fastscan" and fs.code_bytes == 8 and fs.M == 16  # 8 B codes: 8 B
    Qs = Q / np.linalg.norm(Q, axis=1, keepdims=True) if metric == "cosine" else Q
    R = _decoded(index)
    Qr = fs.rotate(Qs)
    ref = Qr @ R.T                                         # exact scores of the decoded codes
    if metric == "l2":                                     # -||q - x||^2
        ref = 2 * ref - (R * R).sum(1)[None, :] - (Qr * Qr).sum(1)[:, None]
    tol = _lut_tolerance(index, Qs) * (2 if metric == "l2" else 1)
    for p in (1, 5, index.nlist):
        D1, I1 = index.search(Q, 10, nprobe=p)
        _, probe = fs.ivf.quantizer.search(fs.rotate(Qs), p)
        allowed = (index.assignments()[None, :, None] == probe[:, None, :]).any(axis=2)
        assert allowed[np.arange(len(Q))[:, None], I1].all()
        got = np.take_along_axis(ref, I1, axis=1)          # exact score of each returned row
        np.testing.assert_allclose(D1, got, rtol=0, atol=tol)
        masked = np.where(allowed, ref, -np.inf)
        best = np.sort(masked, axis=1)[:, ::-1][:, :10]
        # every returned row is within 2 tol of the exact 10 best of the probed rows
        assert (got >= best[:, -1:] - 2 * tol).all()
    np.testing.assert_array_equal(index.search_exhaustive(Q, 10)[1],
                                  index.search(Q, 10, nprobe=index.nlist)[1])
    t = index.recall_table
    assert t.nprobe[-1] == index.nlist and t.vs_exhaustive[-1] == 1.0


def test_fastscan_add_copy_save_load(data, tmp_path):
    """A row added is found in its list; a copy takes adds without changing the original;
    save / load round-trips the lists bit for bit (before and after adds)."""
    X, Q = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    index = CodeIndex.build(X[:1000], codes[:1000], codec, recall_queries=0)
    before = index.search(Q, 10, nprobe=3)
    grown = index.copy()
    assert grown.add(codes[1000:], X[1000:]).tolist() == list(range(1000, 1500))
    assert index.n == 1000 and grown.n == 1500
    for (Da, Ia), (Db, Ib) in zip([before], [index.search(Q, 10, nprobe=3)]):
        np.testing.assert_array_equal(Ia, Ib)
    _, I = grown.search(X[1000:1100], 1500, nprobe=1)
    assert all(r in row for r, row in zip(range(1000, 1100), I))
    # the grown index loads against the grown code array (its hash follows the adds)
    grown.save(tmp_path / "g.st")
    back = CodeIndex.load(tmp_path / "g.st", codes, codec)
    assert back.scan == "fastscan" and back.n == 1500
    for p in (1, 4, back.nlist):
        np.testing.assert_array_equal(back.search(Q, 10, nprobe=p)[1],
                                      grown.search(Q, 10, nprobe=p)[1])
        np.testing.assert_array_equal(back.search(Q, 10, nprobe=p)[0],
                                      grown.search(Q, 10, nprobe=p)[0])
    assert back.to_bytes() == grown.to_bytes()
    np.testing.assert_array_equal(back.assignments(), grown.assignments())
    with pytest.raises(ModelFormatError, match="the SHA-256 of the code array differs"):
        CodeIndex.load(tmp_path / "g.st", np.concatenate([codes[:1000], codes[:500]]), codec)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "codes_in_row_order needs an index with scan='codes'; this one has scan='fastscan'")):
        back.codes_in_row_order()


def test_fastscan_bytes_per_vector(data):
    """Code bytes (8 here: 8-byte codes keep their size) + 8 (FAISS ids), plus the padding of
    each list's last 32-row block and the fixed arrays spread over the rows; 16-byte codes get
    12-byte fast-scan codes."""
    X, _ = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    index = CodeIndex.build(X, codes, codec, recall_queries=0)
    fs = index.fastscan_lists
    sizes = np.bincount(index.assignments(), minlength=index.nlist)
    packed = (-(-sizes // 32) * 32 * fs.code_bytes).sum()
    fixed = index.centroids.nbytes + fs.R.nbytes + fs.M * 16 * (fs.dim_pad // fs.M) * 4
    assert index.bytes_per_vector() == pytest.approx((packed + 8 * 1500 + fixed) / 1500)
    assert codes.shape[1] == 8 and fs.code_bytes == 8
    small = CodeIndex.build(X, codes, codec, recall_queries=0, scan_bytes=2)
    assert small.fastscan_lists.M == 4 and small.fastscan_lists.dim_pad == 16
    c16, codes16 = _fitted("pq", {"bytes": 16}, X)
    big = CodeIndex.build(X, codes16, c16, recall_queries=0)
    assert big.fastscan_lists.code_bytes == 12 and big.fastscan_lists.dim_pad == 24


def test_older_formats_still_load_and_newer_ones_are_refused(data, tmp_path):
    """A format-2 file (hash of the shape and codes, no scan key) loads as lists over the codes;
    an unknown version is one clear error."""
    import json

    from safetensors.numpy import load, save

    X, Q = data
    codec, codes = _fitted("pq", {"bytes": 8}, X)
    index = build_codes(X, codes, codec, recall_queries=20)
    raw = index.to_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    info = json.loads(meta["info"])
    del info["codes_raw_sha256"], info["scan"]
    info["codes_sha256"] = codes_digest(codes)
    old = save(load(raw), metadata={**meta, "format_version": "2", "info": json.dumps(info)})
    back = CodeIndex.from_bytes(old, codes, codec)
    assert back.scan == "codes"
    np.testing.assert_array_equal(back.search(Q, 10, nprobe=3)[1], index.search(Q, 10, nprobe=3)[1])
    new = save(load(raw), metadata={**meta, "format_version": "9"})
    with pytest.raises(ModelFormatError, match=re.escape(
            "<bytes> is a code index of format version '9'; this tldr-index reads versions 1, "
            "2, 3. Upgrade tldr-index or rebuild the index.")):
        CodeIndex.from_bytes(new, codes, codec)
    fs = CodeIndex.build(X, codes, codec, recall_queries=0)
    t = load(fs.to_bytes())
    t["fs_packed"] = t["fs_packed"][:-1]
    m2 = json.loads(fs.to_bytes()[8:8 + int.from_bytes(fs.to_bytes()[:8], "little")])
    bad = save(t, metadata=m2["__metadata__"])
    with pytest.raises(ModelFormatError, match=r"^<bytes> is a corrupt code index: its fast-scan "
                                               r"lists do not load \(\d+ bytes of packed codes "
                                               r"for lists needing \d+\)\.$"):
        CodeIndex.from_bytes(bad, codes, codec)
    with pytest.raises(InvalidInputError, match=re.escape(
            "The 'vectors' input of CodeIndex.build must hold at least 16 rows with "
            "scan='fastscan' (its 16-centroid sub-quantizers are trained on them). Got 15 rows "
            "instead; pass scan='codes'.")):
        CodeIndex.build(X[:15], codes[:15], codec, recall_queries=0)
    with pytest.raises(InvalidParameterError, match=r"^The 'scan' parameter of CodeIndex\.build "
                                                    r"must be one of"):
        CodeIndex.build(X, codes, codec, scan="simd")
    with pytest.raises(InvalidParameterError, match=r"^The 'scan_bytes' parameter of "
                                                    r"CodeIndex\.build must be an int in the "
                                                    r"range \[1, 256\]\. Got 0 instead\.$"):
        CodeIndex.build(X, codes, codec, scan_bytes=0)


def test_fastscan_search_is_safe_from_many_threads(data):
    import concurrent.futures as cf

    X, Q = data
    codec, codes = _fitted("rq", {"bytes": 4}, X)
    index = CodeIndex.build(X, codes, codec, recall_queries=0, scan_bytes=4)
    want = [index.search(Q[i:i + 1], 10, nprobe=1 + i % index.nlist) for i in range(len(Q))]
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: index.search(Q[i:i + 1], 10, nprobe=1 + i % index.nlist),
                          range(len(Q))))
    for (D1, I1), (D2, I2) in zip(want, got):
        np.testing.assert_array_equal(I1, I2)
        np.testing.assert_array_equal(D1, D2)
