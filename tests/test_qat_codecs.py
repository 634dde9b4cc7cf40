"""Quantization-aware training through OPQ codes (``qat="opq"``: the codec's rotation, then
learned PQ codebooks) and RaBitQ codes (``qat="rabitq"``: straight-through the product's codec):
the straight-through maths against the product codecs, the zero-learning-rate fine-tune against
the plain "map, then codec", the export (codes reproduced byte for byte), the model file, and
every error message."""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np
import pytest
import torch

import tldr_index.qat as qat_module
from tldr_index import TLDR
from tldr_index.codecs import OPQCodec, RaBitQCodec, codec_from_state, get_codec
from tldr_index.compact import CompactModel, prepare_rows
from tldr_index.errors import InvalidParameterError
from tldr_index.qat import (codec_for, codec_straight_through, opq_straight_through,
                            procrustes_rotation, random_rotation, trained_codec)

from test_qat import FIT, data  # noqa: F401  (the PQ QAT tests' fit settings and rows)

SIZES = {"opq": 2, "rabitq": 5}     # d=8: OPQ 2 sub-quantizers; RaBitQ 1 bit: 1 + 4 B
#: the fitted models below: OPQ d=8, 2 B; RaBitQ d=16, 2 bits (4 + 4 B; 1 bit at d=8 is 8 bits of
#: code, too few for the map to learn anything measurable)
FITTED = {"opq": (8, 2), "rabitq": (16, 8)}


@pytest.fixture(scope="module", params=["opq", "rabitq"])
def fitted(request, data):
    name = request.param
    d, size = FITTED[name]
    return name, TLDR(d, **FIT, qat=name, qat_bytes=size, qat_epochs=3).fit(data[0])


def test_opq_straight_through_forward_is_the_opq_codec_and_the_gradient_passes(data):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((60, 8)).astype(np.float32)
    C = rng.standard_normal((2, 256, 4)).astype(np.float32)
    A = random_rotation(8, 5)
    codec = codec_from_state({"centroids": C, "rotation": A}, OPQCodec(8, 2).config())
    ut = torch.from_numpy(u).requires_grad_()
    Ct = torch.nn.Parameter(torch.from_numpy(C))
    z = opq_straight_through(ut, Ct, torch.from_numpy(A))
    np.testing.assert_allclose(z.detach().numpy(), codec.decode(codec.encode(u)), atol=1e-5)
    g = torch.from_numpy(rng.standard_normal((60, 8)).astype(np.float32))
    (z * g).sum().backward()
    np.testing.assert_allclose(ut.grad.numpy(), g.numpy(), atol=1e-6)   # straight through
    # the codebook: each chosen centroid gets the rotated gradient of its sub-vector
    codes = codec.encode(u)
    gr = g.numpy() @ A.T
    expect = np.zeros(C.shape, dtype=np.float32)
    for i in range(60):
        for m in range(2):
            expect[m, codes[i, m]] += gr[i, 4 * m:4 * m + 4]
    np.testing.assert_allclose(Ct.grad.numpy(), expect, atol=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_rabitq_straight_through_forward_gives_the_estimator_scores(bits):
    rng = np.random.default_rng(bits)
    X = rng.standard_normal((80, 16)).astype(np.float32)
    codec = RaBitQCodec(16, bits=bits).fit(X, seed=3)
    u = torch.from_numpy(X[:40]).requires_grad_()
    z = codec_straight_through(u, codec)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    # inner products with any float query are the codec's estimator
    np.testing.assert_allclose(q @ z.detach().numpy().T, codec.scores(q, codec.encode(X[:40])),
                               rtol=1e-4, atol=1e-4)
    g = torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32))
    (z * g).sum().backward()
    np.testing.assert_allclose(u.grad.numpy(), g.numpy(), atol=1e-6)


def test_procrustes_rotation_is_orthogonal_and_never_raises_the_distortion():
    rng = np.random.default_rng(2)
    Z = (rng.standard_normal((600, 8)) * np.linspace(3, 0.2, 8)).astype(np.float32)
    opq = get_codec("opq", 8, bytes=2).fit(Z, 0)
    t = opq.state()[0]
    A = procrustes_rotation(Z, t["centroids"], random_rotation(8, 1))
    np.testing.assert_allclose(A @ A.T, np.eye(8), atol=1e-5)

    def distortion(R):
        c = codec_from_state({"centroids": t["centroids"], "rotation": R}, opq.config())
        return float(((Z - c.decode(c.encode(Z))) ** 2).sum())

    # the reference: the rotation it replaces, with the codes it would assign
    R0 = random_rotation(8, 1)
    assert distortion(A) <= distortion(R0) + 1e-3


@pytest.mark.parametrize("name", ["opq", "rabitq"])
def test_a_zero_learning_rate_fine_tune_is_the_plain_map_then_the_codec(name, data, monkeypatch):
    """No learning: the map is the plain fit's and the codec's codes are those of the product's
    codec fitted on the prepared reduced training rows (every row, in order: 1,400 < 65,536)."""
    train, held = data
    monkeypatch.setattr("tldr_index.reducer.qat_fine_tune", functools.partial(
        qat_module.fine_tune, map_learning_rate=0.0, codebook_learning_rate=0.0))
    plain = TLDR(8, **FIT).fit(train)
    m = TLDR(8, **FIT, qat=name, qat_bytes=SIZES[name], qat_epochs=1).fit(train)
    np.testing.assert_array_equal(m.components_, plain.components_)
    np.testing.assert_array_equal(m.bias_, plain.bias_)
    ref = get_codec(name, 8, bytes=SIZES[name]).fit(
        prepare_rows(plain.transform(train), "cosine"), plain.seed_ % (2**31 - 1))
    for X in (train, held):
        Z = prepare_rows(m.transform(X), "cosine")
        np.testing.assert_array_equal(codec_for(m).encode(Z), ref.encode(Z))


def test_qat_is_never_worse_than_its_start_and_learns_on_structured_rows(fitted):
    name, m = fitted
    info = m.fit_info_["qat"]
    assert info["codec"] == name and info["start"] == "identity"
    scores = [h["val_recall"] for h in info["history"][1:]]
    assert info["val_recall_best"] == max([info["val_recall_start"], *scores])
    # the ranking loss through the codes falls over the epochs and the quantized recall rises
    losses = [h["loss"] for h in info["history"][1:]]
    assert losses[-1] < losses[0]
    assert info["val_recall_best"] > info["val_recall_start"]


def test_exported_codec_reproduces_the_fine_tunes_codes_byte_for_byte(fitted, data, tmp_path):
    name, m = fitted
    train, held = data
    d, size = FITTED[name]
    codec = codec_for(m)
    assert codec.name == name and codec.code_size == size
    if name == "opq":
        assert m.qat_codebook_.shape == (2, 256, 4)
        np.testing.assert_array_equal(codec.state()[0]["rotation"], m.qat_rotation_)
    else:
        assert m.qat_codebook_.shape == (16,) and codec.bits == 2
        np.testing.assert_array_equal(codec.state()[0]["center"], m.qat_codebook_)
    np.testing.assert_allclose(m.qat_rotation_ @ m.qat_rotation_.T, np.eye(d), atol=1e-5)
    codes = codec.encode(prepare_rows(m.transform(train), "cosine"))
    assert hashlib.sha256(codes.tobytes()).hexdigest() == m.fit_info_["qat"]["val_codes_sha256"]
    compact = CompactModel.from_reducer(m, "cosine", codec)
    np.testing.assert_array_equal(compact.encode_codes(compact.encode(train)), codes)
    m.save(tmp_path / "m.safetensors")
    back = TLDR.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(
        codec_for(back).encode(prepare_rows(back.transform(held), "cosine")),
        codec.encode(prepare_rows(m.transform(held), "cosine")))
    assert trained_codec(m, name, d, size) is not None
    assert trained_codec(m, name, d, size + 1) is None
    assert trained_codec(m, "pq" if name == "opq" else "rq", d, size) is None


def test_the_refitted_rotation_variant_keeps_the_codes_exact(data, monkeypatch):
    monkeypatch.setattr(qat_module, "OPQ_REFIT_ROTATION", True)
    m = TLDR(8, **FIT, qat="opq", qat_bytes=2, qat_epochs=2).fit(data[0])
    info = m.fit_info_["qat"]
    assert info["refit_rotation"] is True
    codes = codec_for(m).encode(prepare_rows(m.transform(data[0]), "cosine"))
    assert hashlib.sha256(codes.tobytes()).hexdigest() == info["val_codes_sha256"]


@pytest.mark.parametrize("kw, msg", [
    (dict(qat="opq", qat_bytes=3), "The 'qat_bytes' parameter of TLDR must divide "
                                   "n_components=8 (one sub-vector per byte). Got 3 instead."),
    (dict(qat="rabitq", qat_bytes=16), "The 'qat_bytes' parameter of TLDR must be a RaBitQ code "
                                       "size at n_components=8 (n_components x bits / 8 + 4 with "
                                       "bits in 1, 2, 4: 5, 6, 8) for qat='rabitq'. Got 16 "
                                       "instead."),
])
def test_bad_qat_opq_rabitq_parameters_raise_one_clear_error(data, kw, msg):
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(msg)}$"):
        TLDR(8, n_neighbors=3, batch_size=16, random_state=0, **kw).fit(data[0][:600])


def test_rabitq_bytes_without_whole_bytes_are_refused(data):
    msg = ("The 'qat_bytes' parameter of TLDR must be a RaBitQ code size at n_components=6 "
           "(n_components x bits / 8 + 4 with bits in 1, 2, 4: 7) for qat='rabitq'. Got 5 "
           "instead.")
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(msg)}$"):
        TLDR(6, n_neighbors=3, batch_size=16, random_state=0, qat="rabitq",
             qat_bytes=5).fit(data[0][:600])


def test_the_opq_and_rabitq_benchmarks_run_and_write_their_tables(tmp_path):
    from test_benchmarks import _run

    for codec, extra, row in (("opq", ["--bytes", "2", "--opq-refit", "8:2"],
                               "TLDR d=8 + QAT OPQ2 (1 epochs, variant: rotation refitted"),
                              ("rabitq", ["--bits", "1"], "TLDR d=8 + QAT RaBitQ 1-bit (1 epochs)")):
        out = tmp_path / f"qat_{codec}.md"
        r = _run("qat", ["--codec", codec, "--queries", "100", "--rows", "1500", "--dims", "8",
                         "--qat-epochs", "1", "--epochs", "1", "--codec-seeds", "0", *extra,
                         "--out", str(out)], tmp_path)
        assert r.returncode == 0, r.stderr
        text = out.read_text()
        assert row in text and "(= the QAT start)" in text


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from _pipeline_helpers import lancedb_source
    from conftest import make_structured

    X = make_structured(900, 32, latent=6, clusters=8, seed=4)
    return X, lancedb_source(str(tmp_path_factory.mktemp("qat_codecs")), X)


@pytest.mark.parametrize("codec, size", [("opq", 4), ("rabitq", 6)])
def test_shrink_with_qat_on_stores_exactly_the_codes_of_the_codec_qat_trained(
        source, tmp_path, codec, size):
    """``--qat on`` with OPQ (d=16, 4 B) and RaBitQ (d=16, 1 bit: 2 + 4 B): the target's codec is
    the one the fine-tune trained (its arrays) and its stored codes are that codec's encoding of
    the rows, byte for byte."""
    from connectors import open_target
    from tldr_index.base import BaseReducer
    from tldr_index.pipeline import shrink
    from tldr_index.search import read_codes

    X, src = source
    name = f"_{codec}"
    r = shrink(src, src + name, dim=16, codec=codec, bytes=size, work_dir=tmp_path / name,
               source_options={"distance": "cosine"}, epochs=1, eval_queries=50, threads=1,
               keep_work=True, fit_options={"qat": "on"})
    assert r.qat is not None and (r.qat["codec"], r.qat["code_bytes"]) == (codec, size)
    m = BaseReducer.load(tmp_path / name / "train" / "model.safetensors")
    assert m.qat == codec
    model = CompactModel.of_target(open_target(src + name))
    for k, v in codec_for(m).state()[0].items():
        np.testing.assert_array_equal(model.codec.state()[0][k], v)
    ids, codes = read_codes(open_target(src + name), "id", "pq_codes")
    order = np.argsort(ids.to_numpy())       # ids 3 + 7 i: row order
    np.testing.assert_array_equal(
        codes[order], codec_for(m).encode(prepare_rows(m.transform(X), "cosine")))
