"""Quantization-aware training through residual-quantization codes (``qat="rq"``): the
straight-through RQ maths, the never-worse-than-its-start rule, the export into the product's
codec (the codes reproduced exactly) and every error message."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch

from tldr_index import TLDR
from tldr_index.codecs import RQCodec, codec_from_state
from tldr_index.compact import CompactModel, prepare_rows
from tldr_index.errors import InvalidParameterError
from tldr_index.qat import (codec_for, quantizer_for, rq_assign, rq_straight_through,
                            trained_codec)

from test_qat import FIT, data  # noqa: F401  (the PQ QAT tests' fit settings and rows)
from conftest import make_structured


@pytest.fixture(scope="module")
def model(data):
    return TLDR(8, **FIT, qat="rq", qat_bytes=3, qat_epochs=3).fit(data[0])


def greedy_rq(u: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference greedy residual quantization, row by row in float64: (codes, reconstruction)."""
    M = C.shape[0]
    codes = np.zeros((len(u), M), dtype=np.int64)
    rec = np.zeros(u.shape, dtype=np.float64)
    for i in range(len(u)):
        r = u[i].astype(np.float64)
        for m in range(M):
            k = int(np.argmin(((C[m].astype(np.float64) - r) ** 2).sum(1)))
            codes[i, m] = k
            rec[i] += C[m, k]
            r = r - C[m, k]
    return codes, rec


def test_rq_straight_through_forward_is_the_greedy_reconstruction():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((50, 6)).astype(np.float32)
    C = (rng.standard_normal((3, 256, 6)) * np.array([1.0, 0.5, 0.25])[:, None, None]
         ).astype(np.float32)
    codes, rec = greedy_rq(u, C)
    ut, Ct = torch.from_numpy(u), torch.from_numpy(C)
    np.testing.assert_array_equal(rq_assign(ut, Ct, beam=1).numpy(), codes)
    np.testing.assert_allclose(rq_straight_through(ut, Ct, beam=1).numpy(), rec, atol=1e-5)
    # the training beam (the product's, 5): the product codec's codes and reconstruction, and
    # never a larger residual than the greedy one
    wide = rq_assign(ut, Ct).numpy()
    codec = codec_from_state({"codebooks": C}, RQCodec(6, 3).config())
    np.testing.assert_array_equal(wide, codec.encode(u))
    got = rq_straight_through(ut, Ct).numpy()
    np.testing.assert_allclose(got, codec.decode(codec.encode(u)), atol=1e-5)
    assert (((u - got) ** 2).sum(1) <= ((u - rec) ** 2).sum(1) + 1e-5).all()


def test_rq_gradients_reach_the_map_and_only_the_chosen_entries(monkeypatch):
    monkeypatch.setattr("tldr_index.qat.RQ_TRAIN_BEAM", 1)   # the greedy reference below
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32))
    lin = torch.nn.Linear(16, 6)
    C = torch.nn.Parameter(torch.from_numpy(
        rng.standard_normal((2, 256, 6)).astype(np.float32) * 0.5))
    u = lin(x)
    u.retain_grad()
    g = torch.from_numpy(rng.standard_normal((40, 6)).astype(np.float32))
    (rq_straight_through(u, C) * g).sum().backward()
    np.testing.assert_allclose(u.grad.numpy(), g.numpy(), atol=1e-6)   # straight through
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    codes, _ = greedy_rq(u.detach().numpy(), C.detach().numpy())
    expect = np.zeros(C.shape, dtype=np.float32)
    for i in range(40):
        for m in range(2):   # every codebook's chosen entry gets the row's whole gradient
            expect[m, codes[i, m]] += g[i].numpy()
    np.testing.assert_allclose(C.grad.numpy(), expect, atol=1e-5)
    chosen = np.zeros((2, 256), dtype=bool)
    for m in range(2):
        chosen[m, codes[:, m]] = True
    assert (C.grad.numpy()[~chosen] == 0).all() and chosen.sum() < 2 * 256


def test_qat_rq_is_never_worse_than_its_start_on_the_validation_rows(model):
    info = model.fit_info_["qat"]
    start = info["history"][0]
    assert info["codec"] == "rq" and info["start"] == "identity"
    assert info["val_recall_start"] == start["val_recall_identity"]
    assert info["val_recall_best"] >= info["val_recall_start"]
    scores = [h["val_recall"] for h in info["history"][1:]]
    assert len(scores) == 3
    # the epoch kept is the best one (0 = the start)
    assert info["val_recall_best"] == max([info["val_recall_start"], *scores])
    assert info["best_epoch"] == ([info["val_recall_start"], *scores].index(
        info["val_recall_best"]))
    assert info["train_beam"] == 5 and info["encode_beam"] == 5


def test_exported_codebooks_reproduce_the_validation_codes_exactly(model, data, tmp_path):
    train, held = data
    cb = model.qat_codebook_
    assert cb.shape == (3, 256, 8) and cb.dtype == np.float32
    np.testing.assert_array_equal(model.qat_rotation_, np.eye(8, dtype=np.float32))
    codec = codec_for(model)
    assert isinstance(codec, RQCodec) and codec.beam == 5 and codec.code_size == 3
    np.testing.assert_array_equal(codec.state()[0]["codebooks"], cb)
    # 1,400 training rows < 20,000: the validation database is every training row, in order;
    # the codes the validator scored at the epoch kept are the product's codes of those rows
    codes = codec.encode(prepare_rows(model.transform(train), "cosine"))
    assert hashlib.sha256(codes.tobytes()).hexdigest() == model.fit_info_["qat"][
        "val_codes_sha256"]
    # through the product's compact model, and after a save/load round trip of both
    compact = CompactModel.from_reducer(model, "cosine", codec)
    np.testing.assert_array_equal(compact.encode_codes(compact.encode(train)), codes)
    back = CompactModel.from_bytes(compact.to_bytes())
    np.testing.assert_array_equal(back.encode_codes(back.encode(held)),
                                  compact.encode_codes(compact.encode(held)))
    model.save(tmp_path / "m.safetensors")
    again = codec_for(TLDR.load(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(again.encode(prepare_rows(model.transform(train), "cosine")),
                                  codes)
    tensors, cfg = codec.state()
    np.testing.assert_array_equal(codec_from_state(tensors, cfg).encode(
        prepare_rows(model.transform(held), "cosine")),
        codec.encode(prepare_rows(model.transform(held), "cosine")))


def test_qat_rq_without_early_stopping_keeps_the_last_epoch(data):
    m = TLDR(8, **FIT, early_stopping=False, qat="rq", qat_bytes=2, qat_epochs=1).fit(data[0])
    info = m.fit_info_["qat"]
    assert info["best_epoch"] == 1 and info["val_codes_sha256"] is None
    assert m.qat_codebook_.shape == (2, 256, 8)


@pytest.mark.parametrize("kw, msg", [
    (dict(qat="sq8"), "The 'qat' parameter of TLDR must be one of None, 'pq', 'opq', 'rq', "
                      "'rabitq'. Got 'sq8' instead."),
    (dict(qat="rq", qat_bytes=9), "The 'qat_bytes' parameter of TLDR must be at most "
                                  "n_components=8 for qat='rq' (one residual codebook per "
                                  "byte). Got 9 instead."),
    (dict(qat="rq", qat_bytes=0), "The 'qat_bytes' parameter of TLDR must be an int in the range "
                                  "[1, inf). Got 0 instead."),
])
def test_bad_qat_rq_parameters_raise_one_clear_error(data, kw, msg):
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(msg)}$"):
        TLDR(8, n_neighbors=3, batch_size=16, random_state=0, **kw).fit(data[0][:600])


def test_codec_for_and_quantizer_for_refuse_the_wrong_model(model, data):
    plain = TLDR(8, **FIT).fit(data[0][:600])
    msg = ("The 'model' passed to codec_for must be fitted with qat='pq', 'opq', 'rq' or "
           "'rabitq'. Got a model with qat=None instead.")
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(msg)}$"):
        codec_for(plain)
    msg = ("The 'model' passed to quantizer_for must be fitted with qat='pq'. Got a model with "
           "qat='rq' instead.")
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(msg)}$"):
        quantizer_for(model)


def test_trained_codec_matches_only_the_codec_and_size_the_map_was_trained_for(model, data):
    codec = trained_codec(model, "rq", 8, 3)
    np.testing.assert_array_equal(codec.state()[0]["codebooks"], model.qat_codebook_)
    assert trained_codec(model, "pq", 8, 3) is None
    assert trained_codec(model, "rq", 8, 4) is None
    assert trained_codec(TLDR(8, **FIT).fit(data[0][:600]), "rq", 8, 3) is None


def test_the_rq_benchmark_runs_and_writes_its_table(tmp_path):
    from test_benchmarks import _run

    r = _run("qat", ["--codec", "rq", "--queries", "100", "--rows", "1500", "--dims", "8", "--bytes", "4",
                     "--qat-epochs", "1", "--epochs", "1", "--rq-seeds", "0",
                     "--rq-variants", "8:4:1:1e-4", "--out", str(tmp_path / "qat_rq.md")],
             tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "qat_rq.md").read_text()
    for row in ("RQ4 on the 384-d originals (codec seed 0)", "TLDR d=8, then RQ4 (= the QAT start)",
                "TLDR d=8 + QAT RQ4 (1 epochs)", "variant: train beam 1, lr 0.0001"):
        assert row in text
