"""The checked plan of shrink/sweep (``tldr_index.shrink.plan``) and the typed stage results
(``tldr_index.shrink.results``): checks without running a stage, and checkpoint JSON that
round-trips with exactly the keys the stages always wrote."""

from __future__ import annotations

import dataclasses
import logging

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
        plan = plan_shrink(source, dim=12)
    assert plan.target_uri == default_target(source, 12) == source + "_tldr12"
    assert plan.pq_bytes == 12 and plan.n_rows == 300 and plan.select is None
    assert "the default 16 does not divide dim=12" in caplog.text
    assert plan.params["pq_bytes"] == 12 and plan.params["engine"] == "local"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.dim = 4  # type: ignore[misc]
    sel = plan_shrink(source, target_recall=0.5, dims=[4, 8], pq_bytes=4)
    assert sel.select["candidates"] == [[4, 4], [8, 4]] and sel.dim is None
    assert sel.target_uri == source + "_tldr" and not sel.ray_scan


def test_plan_refuses_before_anything_runs(source):
    with pytest.raises(InvalidParameterError, match=r"^The 'pq_bytes' parameter of shrink must "
                       r"divide dim=8 \(one sub-vector per byte\) or be 0\. Got 3 instead\.$"):
        plan_shrink(source, dim=8, pq_bytes=3)
    with pytest.raises(InvalidParameterError, match=r"^The 'neighbors' parameter of shrink must "
                       r"be an int in the range \[1, 299\] \(fewer than the 300 training rows\)\. "
                       r"Got 300 instead\.$"):
        plan_shrink(source, dim=8, neighbors=300)
    with pytest.raises(InvalidParameterError, match=r"^PQ codes need at least 256 training rows "
                       r".*gives 200\. Pass pq_bytes=\[0\] \(--pq-bytes 0\) to measure no codes\.$"):
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
