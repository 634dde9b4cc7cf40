"""``shrink(engine="ray")``: the Ray Data encode+write produces the same target as the
single-process engine (Lance and Parquet), and its bad-input cases fail with one-line errors.

One local Ray (``ray.init(num_cpus=2)``) serves the whole module: starting Ray costs seconds. The
tests that need Ray skip cleanly when it is not installed (``pip install 'tldr-index[ray]'``);
the missing-Ray error is tested by hiding the module.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from _pipeline_helpers import (assert_same_snapshot, lancedb_source, make_nested, parquet_source,
                               qdrant_source, snapshot)
from click.testing import CliRunner

from connectors import open_target
from tldr_index.artifact import model_from_bytes
from tldr_index.cli import main
from tldr_index.errors import InvalidInputError, InvalidParameterError
from tldr_index.pipeline import shrink

FAST = {"dim": 8, "pq_bytes": 4, "epochs": 2, "sample": 1000, "eval_queries": 50}
MISSING = ("The 'engine' parameter of shrink is 'ray', which needs Ray Data, but it cannot be "
           "imported (import of ray halted; None in sys.modules). Install it with: pip install "
           "'tldr-index[ray]'")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="optional extra: pip install 'tldr-index[ray]'")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _target(root: str, kind: str, name: str) -> str:
    return f"lance://{root}/{name}.lance" if kind == "lance" else f"parquet://{root}/{name}/"


def _info_without_timings(model_bytes: bytes) -> dict:
    """The model's JSON info minus the training wall-clock times (the two runs train separately:
    everything else, tensors included, must be byte-identical)."""
    info = model_from_bytes(model_bytes)[1]
    info["fit_info"].pop("seconds", None)
    return info


@pytest.mark.parametrize("kind", ["lance", "parquet"])
def test_ray_engine_matches_local(ray_local, tmp_path, kind):
    X = make_nested(2000, 32, seed=3)
    root = str(tmp_path)
    src = lancedb_source(root, X) if kind == "lance" else parquet_source(root, X, parts=3)
    local, distributed = _target(root, kind, "local"), _target(root, kind, "ray")
    r_local = shrink(src, local, work_dir=tmp_path / "w_local", **FAST)
    # 600-row shards: 4 tasks (the last one short) over the 2 CPUs, written out of order
    r_ray = shrink(src, distributed, work_dir=tmp_path / "w_ray", engine="ray",
                   engine_options={"shard_rows": 600, "workers": 2}, **FAST)
    assert r_ray.rows == r_local.rows == 2000
    assert r_ray.recall_at_10 is None and r_local.recall_at_10 is not None
    # ids, payload, reduced vectors (float16) and PQ codes: exactly equal, row by row
    assert_same_snapshot(snapshot(distributed), snapshot(local))
    t_local, t_ray = open_target(local), open_target(distributed)
    a, b = t_local.to_table(), t_ray.to_table()
    assert b.schema.equals(a.schema, check_metadata=False)
    assert b.column(0).to_pylist() == a.column(0).to_pylist()  # source order kept
    assert len(b.column("pq_codes")[0]) == 4
    np.testing.assert_array_equal(
        np.asarray(model_from_bytes(t_ray.model_bytes)[0]["weight"]),
        np.asarray(model_from_bytes(t_local.model_bytes)[0]["weight"]))
    assert _info_without_timings(t_ray.model_bytes) == _info_without_timings(t_local.model_bytes)
    assert t_ray.metadata["params"]["engine"] == "ray"
    if kind == "parquet":
        assert sorted(os.listdir(tmp_path / "ray")) == [
            "_tldr_metadata.json", "_tldr_model.safetensors"] + [
            f"part-{i:05d}.parquet" for i in range(4)]


def test_ray_engine_float16_overflow_publishes_nothing(ray_local, tmp_path):
    """Reduced values beyond float16: the local engine switches to float32, a Ray job cannot
    change its schema half-way, so it stops with a one-line error and leaves no target."""
    X = make_nested(1200, 32, seed=5) * 1e6
    src = parquet_source(str(tmp_path), X)
    tgt = _target(str(tmp_path), "parquet", "out")
    with pytest.raises(InvalidInputError, match=r"^Reduced vectors of source '.*' must fit "
                       r"float16 \(\|value\| <= 65000\) to be stored as float16\. Got .*; pass "
                       r"reduced_dtype='float32'\.$"):
        shrink(src, tgt, dim=4, pq_bytes=2, epochs=1, sample=600, eval_queries=0,
               work_dir=tmp_path / "w", engine="ray", engine_options={"shard_rows": 500})
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("w")) == ["pq"]


def test_ray_engine_refuses_qdrant(ray_local, tmp_path):
    src = qdrant_source(make_nested(300, 32))
    with pytest.raises(InvalidParameterError, match=(
            r"^The 'engine' parameter of shrink is 'ray', which needs a Lance/LanceDB or Parquet "
            r"source\. Got qdrant source 'qdrant\+memory://.*/docs'; use engine='local'\.$")):
        shrink(src, f"parquet://{tmp_path}/out/", work_dir=tmp_path / "w", engine="ray", **FAST)


def test_engine_must_be_known(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"^The 'engine' parameter of shrink must be "):
        shrink("parquet://nowhere/*.parquet", dim=4, engine="spark")


def test_missing_ray_is_one_line_with_install_command(tmp_path, monkeypatch):
    X = make_nested(400, 32)
    src = parquet_source(str(tmp_path), X)
    before = sorted(os.listdir(tmp_path / "pq"))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(InvalidParameterError) as err:
        shrink(src, f"parquet://{tmp_path}/out/", dim=4, work_dir=tmp_path / "w", engine="ray")
    assert str(err.value) == MISSING
    res = CliRunner().invoke(main, ["shrink", "--source", src, "--target",
                                    f"parquet://{tmp_path}/out/", "--dim", "4", "--engine", "ray",
                                    "--work-dir", str(tmp_path / "w"), "--quiet"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"Error: {MISSING}"]
    assert sorted(os.listdir(tmp_path)) == ["pq"]  # no target, no work dir
    assert sorted(os.listdir(tmp_path / "pq")) == before
