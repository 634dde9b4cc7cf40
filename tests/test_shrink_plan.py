"""The checked plan of shrink/sweep (``tldr_index.shrink.plan``) and the typed stage results
(``tldr_index.shrink.results``): checks without running a stage, and checkpoint JSON that
round-trips with exactly the keys the stages always wrote."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
from _pipeline_helpers import lancedb_source, make_nested

from tldr_index.errors import InvalidInputError, InvalidParameterError
from tldr_index.shrink.plan import (check_engine_options, default_target, plan_shrink,
                                    plan_sweep)
from tldr_index.shrink.results import (EncodeResult, KnnResult, ScanResult, StageResults,
                                       TrainResult)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return lancedb_source(str(root), make_nested(300, 24, seed=1))


def test_plan_fills_the_defaults_and_is_frozen(source, caplog):
    with caplog.at_level(logging.WARNING, logger="tldr_index.shrink.plan"):
        plan = plan_shrink(source, dim=12, codec="pq")
    assert plan.target_uri == default_target(source, 12) == source + "_tldr12"
    assert plan.pq_bytes == 12 and plan.n_rows == 300 and plan.select is None
    assert "the default 16 does not divide dim=12" in caplog.text
    assert plan.params["pq_bytes"] == 12 and plan.params["engine"] == "local"
    rq = plan_shrink(source, dim=12)  # the default codec, RQ: any M <= d, so min(16, d)
    assert (rq.codec, rq.pq_bytes, rq.params["codec"]) == ("rq", 12, "rq")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.dim = 4  # type: ignore[misc]
    sel = plan_shrink(source, target_recall=0.5, dims=[4, 8], pq_bytes=4)
    assert sel.select["candidates"] == [["tldr", 4, "rq", 4], ["tldr", 8, "rq", 4]]
    assert sel.dim is None and sel.codec == "rq" and sel.params["codec"] == "rq"
    assert sel.target_uri == source + "_tldr" and not sel.ray_scan


def test_plan_refuses_before_anything_runs(source):
    with pytest.raises(InvalidParameterError, match=r"^The 'bytes' parameter of shrink "
                       r"\(--bytes\) must be a divisor of d \(one sub-quantizer of 256 centroids "
                       r"per byte\) for codec='pq' at d=8\. Got 3 instead; the nearest feasible "
                       r"budgets are 2 and 4\.$"):
        plan_shrink(source, dim=8, pq_bytes=3, codec="pq")
    with pytest.raises(InvalidParameterError, match=r"^The 'neighbors' parameter of shrink must "
                       r"be an int in the range \[1, 299\] \(fewer than the 300 training rows\)\. "
                       r"Got 300 instead\.$"):
        plan_shrink(source, dim=8, neighbors=300)
    with pytest.raises(InvalidParameterError, match=r"^PQ codes need at least 256 training rows "
                       r".*gives 200\. Pass bytes=\[0\] \(--bytes 0\) to measure no codes\.$"):
        plan_sweep(source, dims=[4], sample=200)
    with pytest.raises(InvalidParameterError, match=r"^The target must differ from the source\. "):
        plan_shrink(source, source, dim=8)


def test_engine_options_rule():
    assert check_engine_options("ray", {"workers": 2}) == {"workers": 2}
    with pytest.raises(InvalidParameterError, match=r"^The 'engine_options' parameter of shrink "
                       r"applies to engine='ray' only\. Got \{'workers': 2\} with "
                       r"engine='local'\.$"):
        check_engine_options("local", {"workers": 2})
    with pytest.raises(InvalidParameterError, match=r"^The 'engine_options' parameter of shrink "
                       r"takes the keys workers, shard_rows, num_cpus\. Got unknown key\(s\) "
                       r"'cpus'\.$"):
        check_engine_options("ray", {"cpus": 2})


def test_one_row_source_is_refused(tmp_path):
    uri = lancedb_source(str(tmp_path), make_nested(300, 24, seed=2)[:1])
    with pytest.raises(InvalidInputError, match=r"^Source '.*' has 1 row; sweep needs at least 2"):
        plan_sweep(uri, dims=[4], pq_bytes=[0])


def test_stage_results_round_trip_with_the_checkpoint_keys():
    local = {"rows": 10, "ids_digest": "10-ab", "dtype": "float32", "skipped_invalid": 0,
             "first_invalid_id": None, "seconds": 1.5}
    assert ScanResult.from_json(local).to_json() == local
    ray = {"rows": 10, "ids_digest": "10-ab", "skipped_invalid": 1, "first_invalid_id": 7,
           "sample_rows": 5, "pieces": 2, "engine": "ray", "seconds": 2.0}
    assert ScanResult.from_json(ray).to_json() == ray and ScanResult.from_json(ray).rows_read == 11
    pca = {"n_train": 8, "seconds": 0.1}  # no graph: no graph keys
    assert KnnResult.from_json(pca).to_json() == pca
    skipped = {"vector_dtype": "float16", "engine": "ray", "seconds": 0.2}
    assert EncodeResult.from_json(skipped).to_json() == skipped
    train = {"method": "pca", "best_epoch": None, "val_recall_initial": None,
             "val_recall_best": None, "seconds": 0.3}
    assert TrainResult.from_json(train).to_json() == train
    results = StageResults()
    assert results.load("knn", pca) == KnnResult(n_train=8, seconds=0.1) == results.knn
    with pytest.raises(TypeError, match="stage 'scan' takes a ScanResult"):
        results.set("scan", results.knn)


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim=8, codec="rabitq", bits=3),
     "The 'bits' parameter of shrink must be one of 1, 2, 4. Got 3 instead."),
    (dict(dim=8, codec="pq", bits=2),
     "The 'bits' parameter of shrink only applies to codec='rabitq' (codec 'pq' has 8-bit "
     "codes). Got 2 instead."),
    (dict(dim=8, codec="lsh"),
     "The 'codec' parameter of shrink must be one of 'pq', 'opq', 'rq', 'rabitq'. Got 'lsh' "
     "instead."),
    (dict(dim=12, bytes=5, codec="pq"),
     "The 'bytes' parameter of shrink (--bytes) must be a divisor of d (one sub-quantizer of 256 "
     "centroids per byte) for codec='pq' at d=12. Got 5 instead; the nearest feasible budgets "
     "are 4 and 6."),
    (dict(dim=12, codec="opq", pq_bytes=5),
     "The 'bytes' parameter of shrink (--bytes) must be a divisor of d (one sub-quantizer of 256 "
     "centroids per byte) for codec='opq' at d=12. Got 5 instead; the nearest feasible budgets "
     "are 4 and 6."),
    (dict(dim=8, codec="rq", bytes=9),
     "The 'bytes' parameter of shrink (--bytes) must be in the range [1, d] (one residual "
     "codebook of 256 centroids per byte) for codec='rq' at d=8. Got 9 instead; the nearest "
     "feasible budgets are 8."),
    (dict(dim=12, codec="rabitq", bytes=8),
     "The 'bytes' parameter of shrink (--bytes) must be d x bits / 8 + 4 with bits in 1, 2, 4 "
     "(d x bits a multiple of 8) for codec='rabitq' at d=12. Got 8 instead; the nearest "
     "feasible budgets are 7 and 10."),
    (dict(dim=12, codec="rabitq", bits=1),
     "The 'bits' parameter of shrink must give whole bytes per code with codec='rabitq' (d x "
     "bits a multiple of 8). Got 1 instead (d=12: 12 x 1 = 12 bits)."),
    (dict(dim=16, codec="rabitq", bits=2, bytes=16),
     "The 'bytes' parameter of shrink (--bytes) must be 8 with codec='rabitq' and bits=2 at "
     "d=16 (d x bits / 8 + 4 bytes of per-vector factor). Got 16 instead."),
    (dict(dim=8, bytes=8, pq_bytes=4),
     "The 'bytes' parameter of shrink and its alias 'pq_bytes' must agree when both are given. "
     "Got bytes=8 and pq_bytes=4 instead."),
    (dict(dim=8, method="none"),
     "The 'dim' parameter of shrink must be None or 24 (the dimension of source '{src}') with "
     "method='none' (the identity map). Got 8 instead."),
])
def test_codec_and_budget_refusals(source, tmp_path, kwargs, message):
    """Each bad codec / bits / bytes combination: one line naming the parameter, the rule and
    the value, before anything runs (no work directory, no target)."""
    from tldr_index.shrink import shrink

    with pytest.raises(InvalidParameterError) as e:
        plan_shrink(source, **kwargs)
    assert str(e.value) == message.format(src=source)
    with pytest.raises(InvalidParameterError, match=re.escape(message.format(src=source))):
        shrink(source, f"lance://{tmp_path}/t.lance", work_dir=tmp_path / "w", **kwargs)
    assert not (tmp_path / "w").exists() and not (tmp_path / "t.lance").exists()


def test_codec_budgets_that_fit(source):
    """The sizes the plan derives: rabitq from bits (d x bits / 8 + 4), rq's default, the
    identity map's d = D, and the sweep's identity candidates at the budget."""
    assert plan_shrink(source, dim=16, codec="rabitq", bits=2).code_bytes == 8
    assert plan_shrink(source, dim=16, codec="rabitq").code_bytes == 6  # 1 bit by default
    assert plan_shrink(source, dim=16, codec="rabitq", bytes=12).code_bytes == 12
    assert plan_shrink(source, dim=12, codec="rq").code_bytes == 12
    p = plan_shrink(source, method="none", codec="opq", bytes=8)
    assert (p.dim, p.code_bytes, p.codec) == (24, 8, "opq")
    sw = plan_sweep(source, dims=[8], bytes=[8], method="auto")
    assert sw.select["candidates"] == [
        ["tldr", 8, "rq", 8], ["pca", 8, "rq", 8], ["none", 24, "pq", 8], ["none", 24, "opq", 8],
        ["none", 24, "rq", 8]]
    sw = plan_sweep(source, dims=[8], bytes=[6], method="auto", codecs=["rabitq"])
    assert sw.select["candidates"] == [  # 2-bit rabitq at d=8; 6 B is no rabitq size at D=24
        ["tldr", 8, "rabitq", 6], ["pca", 8, "rabitq", 6], ["none", 24, "pq", 6],
        ["none", 24, "opq", 6], ["none", 24, "rq", 6]]
    sw = plan_sweep(source, dims=[8], bytes=[7], method="auto")
    assert sw.select["candidates"] == [  # RQ (the default) meets 7 B at d=8; PQ would not
        ["tldr", 8, "rq", 7], ["pca", 8, "rq", 7], ["none", 24, "rq", 7], ["none", 24, "rabitq", 7]]
