"""Quantization-aware training inside ``shrink`` (the ``qat`` fit option, ``--qat``): when the
``auto`` rule turns it on, that the encode stage writes the codes of the codebooks QAT trained
(exactly), that the report says so, and every error message."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_structured
from tldr_index.base import BaseReducer
from tldr_index.errors import InvalidParameterError
from tldr_index.shrink.options import FitOptions
from tldr_index.shrink.qat_rule import qat_codec

RULE = dict(method="tldr", n_train=1000, selection=False)


@pytest.mark.parametrize("codec, dim, size, expected", [
    ("rq", 128, 8, "rq"), ("rq", 128, 16, "rq"), ("rq", 64, 8, "rq"),   # measured gains
    ("rq", 64, 16, None), ("rq", 128, 32, None),                        # d < 8 x bytes
    ("pq", 64, 16, "pq"), ("pq", 64, 8, "pq"), ("pq", 64, 32, None),     # d >= 4 x bytes
    ("opq", 128, 8, "opq"), ("opq", 128, 16, "opq"), ("opq", 64, 8, "opq"),  # d >= 8 x bytes
    ("opq", 64, 16, None),
    ("rabitq", 128, 20, "rabitq"), ("rabitq", 256, 36, "rabitq"),     # 1 bit, d >= 128
    ("rabitq", 64, 12, None), ("rabitq", 128, 36, None), ("rabitq", 256, 68, None),  # 1 bit
    ("sq8", 128, 128, None), ("rq", 128, 0, None)])                  # d < 128; 2 bits; no QAT
def test_the_auto_rule_turns_qat_on_only_where_it_measured_a_gain(codec, dim, size, expected):
    assert qat_codec("auto", codec=codec, dim=dim, code_bytes=size, **RULE) == expected
    assert qat_codec("off", codec=codec, dim=dim, code_bytes=size, **RULE) is None


def test_on_forces_qat_and_auto_stays_off_where_it_cannot_run():
    assert qat_codec("on", codec="rq", dim=64, code_bytes=16, **RULE) == "rq"
    for kw in (dict(method="pca"), dict(selection=True), dict(n_train=100)):
        args = {**RULE, **kw}
        assert qat_codec("auto", codec="rq", dim=128, code_bytes=8, **args) is None


@pytest.mark.parametrize("kw, rule", [
    (dict(method="pca"), "method='tldr' (got method='pca')"),
    (dict(codec="sq8"), "codec 'rq', 'pq', 'opq' or 'rabitq' (got codec='sq8')"),
    (dict(code_bytes=0), "codes (got bytes=0)"),
    (dict(n_train=100), "at least 256 training rows (got 100)"),
    (dict(selection=True), "a fixed dim and codec (not method='auto' or target_recall)")])
def test_qat_on_where_it_cannot_run_is_one_clear_error(kw, rule):
    args = {**RULE, "codec": "rq", "dim": 64, "code_bytes": 8, **kw}
    with pytest.raises(InvalidParameterError, match=re.escape(
            f"The 'fit_options.qat' parameter of shrink (--qat) can be 'on' only with {rule}. "
            "Got qat='on' instead; pass 'auto' or 'off'.")):
        qat_codec("on", **args)


def test_an_unknown_qat_mode_is_refused_by_the_fit_options():
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'fit_options.qat' parameter of shrink must be one of 'auto', 'on', 'off'. "
            "Got 'yes' instead.")):
        FitOptions.coerce({"qat": "yes"})
    assert FitOptions(qat="on").kwargs() == {} and FitOptions(qat="on").changed() == {"qat": "on"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from _pipeline_helpers import lancedb_source

    X = make_structured(900, 32, latent=6, clusters=8, seed=4)
    return X, lancedb_source(str(tmp_path_factory.mktemp("qat")), X)


def run(source, tmp_path, name, **kw):
    from tldr_index.pipeline import shrink

    X, src = source
    return shrink(src, src + name, dim=16, codec="rq", bytes=2, work_dir=tmp_path / name,
                  source_options={"distance": "cosine"}, epochs=1, eval_queries=50, threads=1,
                  keep_work=True, **kw)


def test_auto_fine_tunes_through_the_codes_and_the_target_holds_exactly_their_codes(
        source, tmp_path):
    """d=16, RQ 2 B: ``auto`` is on (16 >= 8 x 2). The map QAT trained is the target's map, its
    codebooks the target's codec, and the stored codes are that codec's encoding of the rows."""
    from connectors import open_target
    from tldr_index.compact import CompactModel, prepare_rows
    from tldr_index.qat import codec_for
    from tldr_index.search import read_codes

    X, src = source
    r = run(source, tmp_path, "_auto")
    assert r.qat is not None and (r.qat["codec"], r.qat["code_bytes"]) == ("rq", 2)
    assert r.qat["val_recall_best"] >= r.qat["val_recall_start"]   # never worse than its start
    from tldr_index.cli.shrink_cmd import shrink_summary
    assert any(line.startswith("  QAT            map fine-tuned through its RQ 2 B codes: "
                               "quantized validation recall@10 ")
               for line in shrink_summary(r))
    m = BaseReducer.load(tmp_path / "_auto" / "train" / "model.safetensors")
    assert m.qat == "rq" and m.qat_codebook_.shape == (2, 256, 16)
    t = open_target(src + "_auto")
    model = CompactModel.of_target(t)
    np.testing.assert_array_equal(model.codec.state()[0]["codebooks"], m.qat_codebook_)
    ids, codes = read_codes(t, "id", "pq_codes")
    order = np.argsort(ids.to_numpy())       # ids 3 + 7 i: row order
    np.testing.assert_array_equal(
        codes[order], codec_for(m).encode(prepare_rows(m.transform(X), "cosine")))


def test_off_trains_the_codec_after_the_map_as_before(source, tmp_path):
    r = run(source, tmp_path, "_off", fit_options={"qat": "off"})
    assert r.qat is None
    m = BaseReducer.load(tmp_path / "_off" / "train" / "model.safetensors")
    assert getattr(m, "qat_codebook_", None) is None


def test_qat_on_is_refused_before_anything_is_read_or_written(source, tmp_path):
    from tldr_index.pipeline import shrink

    X, src = source
    with pytest.raises(InvalidParameterError, match=r"can be 'on' only with method='tldr'"):
        shrink(src, src + "_pca", dim=16, method="pca", codec="rq", bytes=2,
               work_dir=tmp_path / "pca", fit_options={"qat": "on"})
    assert not (tmp_path / "pca").exists()


def test_the_cli_flag_reports_qat_and_refuses_a_contradiction(source, tmp_path):
    from tldr_index.cli import main

    X, src = source
    db, table = src[len("lancedb://"):].rsplit("/", 1)
    base = ["shrink", "--db", db, "--collection", table, "--dim", "16", "--bytes", "2",
            "--epochs", "1", "--threads", "1", "--distance", "cosine"]
    res = CliRunner().invoke(main, base + ["--target", "cli_qat", "--qat", "on",
                                           "--work-dir", str(tmp_path / "cli"), "-q", "--json"])
    assert res.exit_code == 0, res.output
    import json
    assert json.loads(res.output)["qat"]["codec"] == "rq"
    res = CliRunner().invoke(main, base + ["--target", "cli_x", "--qat", "on",
                                           "--fit-option", "qat=off"])
    assert res.exit_code == 2
    assert "--qat on and --fit-option qat=off disagree; pass one of them." in res.output
