"""``shrink(engine="ray")``: the Ray Data encode+write produces the same target as the
single-process engine (Lance and Parquet), and its bad-input cases fail with one-line errors.

One local Ray (``ray.init(num_cpus=2)``, the ``ray_local`` fixture of ``conftest.py``) serves the
whole module: starting Ray costs seconds. The
tests that need Ray skip cleanly when it is not installed (``pip install 'tldr-index[ray]'``);
the missing-Ray error is tested by hiding the module.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from _pipeline_helpers import (assert_same_snapshot, lance_fragments, lancedb_source, make_nested,
                               parquet_source, qdrant_source, snapshot)
from click.testing import CliRunner

from connectors import open_target
from tldr_index.artifact import model_from_bytes
from tldr_index.cli import main
from tldr_index.errors import DuplicateIdError, InvalidInputError, InvalidParameterError
from tldr_index.pipeline import shrink
from tldr_index.vectors import VectorStore

FAST = {"dim": 8, "pq_bytes": 4, "epochs": 2, "sample": 1000, "eval_queries": 50}
MISSING = ("The 'engine' parameter of shrink is 'ray', which needs Ray Data, but it cannot be "
           "imported (import of ray halted; None in sys.modules). Install it with: pip install "
           "'tldr-index[ray]'")


def _target(root: str, kind: str, name: str) -> str:
    return f"lance://{root}/{name}.lance" if kind == "lance" else f"parquet://{root}/{name}/"


def _info_without_timings(model_bytes: bytes) -> dict:
    """The model's JSON info minus the training wall-clock times (the two runs train separately:
    everything else, tensors included, must be byte-identical)."""
    info = model_from_bytes(model_bytes)[1]
    info["fit_info"].pop("seconds", None)
    return info


@pytest.mark.parametrize("kind,codec", [("lance", "pq"), ("parquet", "pq"), ("parquet", "rq")])
def test_ray_engine_matches_local(ray_local, tmp_path, kind, codec):
    """Also with another codec than PQ (RQ: the workers encode with the stored codebooks)."""
    X = make_nested(2000, 32, seed=3)
    root = str(tmp_path)
    src = lancedb_source(root, X) if kind == "lance" else parquet_source(root, X, parts=3)
    local, distributed = _target(root, kind, "local"), _target(root, kind, "ray")
    r_local = shrink(src, local, work_dir=tmp_path / "w_local", codec=codec, **FAST)
    # 600-row shards: 4 tasks (the last one short) over the 2 CPUs, written out of order
    r_ray = shrink(src, distributed, work_dir=tmp_path / "w_ray", engine="ray", codec=codec,
                   engine_options={"shard_rows": 600, "workers": 2}, keep_work=True, **FAST)
    assert r_ray.codec == r_local.codec == codec
    # the scan ran on Ray too: this node kept the 1000-row training sample, no copy of the rows
    scan = tmp_path / "w_ray" / "scan"
    assert sorted(os.listdir(scan)) == ["done.json", "sample"]
    assert VectorStore.open(scan / "sample").n_rows == 1000
    assert not (tmp_path / "w_ray" / "knn" / "train").exists()
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


@pytest.mark.parametrize("kind", ["lance", "parquet"])
def test_ray_scan_skip_invalid_matches_local(ray_local, tmp_path, kind):
    """Invalid rows in several pieces, skipped: the sample's positions move past them (the Ray
    scan reads the sample again by position) and both engines still train the same model."""
    X = make_nested(2000, 32, seed=8)
    bad = [3, 650, 651, 1999, 1400]
    X[bad[:4]] = np.nan
    X[bad[4], 7] = np.inf
    root = str(tmp_path)
    src = lance_fragments(root, X, 700) if kind == "lance" else parquet_source(root, X, parts=3)
    local, distributed = _target(root, kind, "local"), _target(root, kind, "ray")
    opts = dict(FAST, skip_invalid=True)
    r_local = shrink(src, local, work_dir=tmp_path / "w_local", **opts)
    r_ray = shrink(src, distributed, work_dir=tmp_path / "w_ray", engine="ray",
                   engine_options={"shard_rows": 300}, **opts)
    assert r_ray.rows == r_local.rows == 1995
    assert r_ray.skipped_invalid == r_local.skipped_invalid == 5
    assert r_ray.first_invalid_id == r_local.first_invalid_id == 3 * 7 + 3
    assert_same_snapshot(snapshot(distributed), snapshot(local))
    t_local, t_ray = open_target(local), open_target(distributed)
    assert _info_without_timings(t_ray.model_bytes) == _info_without_timings(t_local.model_bytes)


def test_ray_engine_matches_local_on_lance_with_deletions(ray_local, tmp_path):
    """Fragments with deleted rows (pieces and the sample count live rows only), float16 vectors
    and string ids: the same target and model as the local engine."""
    X = make_nested(1500, 32, seed=11).astype(np.float16)
    ids = np.array([f"k{i:05d}" for i in range(1500)], dtype=object)
    src = lance_fragments(str(tmp_path), X, 400, delete="text LIKE '%7'", ids=ids)
    opts = dict(FAST, sample=700)
    for engine in ("local", "ray"):
        shrink(src, _target(str(tmp_path), "parquet", engine), work_dir=tmp_path / f"w_{engine}",
               engine=engine, engine_options={"shard_rows": 250} if engine == "ray" else None,
               **opts)
    local, distributed = (_target(str(tmp_path), "parquet", e) for e in ("local", "ray"))
    assert open_target(distributed).count() == 1350
    assert_same_snapshot(snapshot(distributed), snapshot(local))
    assert _info_without_timings(open_target(distributed).model_bytes) == \
        _info_without_timings(open_target(local).model_bytes)


def _bad_source(root: str, kind: str, case: str) -> tuple[str, dict]:
    X = make_nested(1500, 32, seed=9)
    ids = np.arange(1500, dtype=np.int64) * 7 + 3
    opts: dict = {}
    if case == "nan":
        X[[1100, 1300]] = np.nan  # in the 4th and 5th 300-row piece
    elif case == "zero-cosine":
        X[900] = 0
        opts = {"distance": "cosine"}
    elif case == "duplicate-int":
        ids[1234] = ids[77]  # other pieces, both
        ids[1499] = ids[5]
    elif case == "duplicate-str":
        ids = np.array([f"doc-{i}" for i in range(1500)], dtype=object)
        ids[901] = ids[300]
    src = (lance_fragments(root, X, 700, ids=ids) if kind == "lance"
           else parquet_source(root, X, parts=3, ids=ids))
    return src, opts


@pytest.mark.parametrize("kind", ["lance", "parquet"])
@pytest.mark.parametrize("case", ["nan", "zero-cosine", "duplicate-int", "duplicate-str"])
def test_ray_scan_bad_input_same_error_as_local(ray_local, tmp_path, kind, case):
    """The first bad row found by the pieces (or the first repeated id, by the buckets) gives the
    local engine's exact one-line message; nothing is published, the source is untouched."""
    root = str(tmp_path)
    src, source_options = _bad_source(root, kind, case)
    files = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
             for d, _, fs in os.walk(root) for f in fs}
    errors = {}
    for engine in ("local", "ray"):
        with pytest.raises((InvalidInputError, DuplicateIdError)) as err:
            shrink(src, _target(root, kind, engine), work_dir=tmp_path / f"w_{engine}",
                   engine=engine, engine_options={"shard_rows": 300} if engine == "ray" else None,
                   source_options=source_options, **FAST)
        errors[engine] = (type(err.value), str(err.value))
        assert not os.path.exists(os.path.join(root, f"{engine}.lance"))
        assert not os.path.exists(os.path.join(root, engine))
    if case in ("nan", "zero-cosine"):  # "Got n row(s) ... in rows a..b" counts the batch read:
        # the pieces cut batches elsewhere; the rest, and the first bad id, are the same
        cut = re.compile(r"Got \d+ (.*) in rows \d+\.\.\d+, ")
        errors = {k: (t, cut.sub(r"Got n \1 in rows a..b, ", m))
                  for k, (t, m) in errors.items()}
    assert errors["ray"] == errors["local"]
    expect = {"nan": f"first at id {1100 * 7 + 3}.", "zero-cosine": f"first at id {900 * 7 + 3}.",
              "duplicate-int": f"Got duplicate id {77 * 7 + 3} at row 1234.",
              "duplicate-str": "Got duplicate id 'doc-300' at row 901."}[case]
    assert expect in errors["ray"][1], errors["ray"][1]
    assert {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs
            if not os.path.join(d, f).startswith(str(tmp_path / "w_"))} == files


def test_ray_engine_method_auto_scans_on_this_node(ray_local, tmp_path):
    """method="auto" measures recall against every row, so its scan stays local; the write
    still runs on Ray and the target equals the local engine's."""
    X = make_nested(1500, 32, seed=6)
    src = parquet_source(str(tmp_path), X, parts=2)
    opts = dict(FAST, method="auto", eval_queries=100)
    reps = {}
    for engine in ("local", "ray"):
        reps[engine] = shrink(src, _target(str(tmp_path), "parquet", engine), engine=engine,
                              work_dir=tmp_path / f"w_{engine}", keep_work=True, **opts)
    assert (tmp_path / "w_ray" / "scan" / "vectors").is_dir()
    assert not (tmp_path / "w_ray" / "scan" / "sample").exists()
    assert reps["ray"].method == reps["local"].method
    def untimed(sel: dict) -> dict:
        return {**{k: v for k, v in sel.items() if k != "seconds"},
                "candidates": [{k: v for k, v in c.items() if k != "fit_seconds"}
                               for c in sel["candidates"]]}

    assert untimed(reps["ray"].selection) == untimed(reps["local"].selection)
    assert_same_snapshot(snapshot(_target(str(tmp_path), "parquet", "ray")),
                         snapshot(_target(str(tmp_path), "parquet", "local")))


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


@pytest.mark.parametrize("engine,options,message", [
    ("ray", {"shards": 4}, "The 'engine_options' parameter of shrink takes the keys workers, "
                           "shard_rows, num_cpus. Got unknown key(s) 'shards'."),
    ("local", {"workers": 2}, "The 'engine_options' parameter of shrink applies to engine='ray' "
                              "only. Got {'workers': 2} with engine='local'."),
    ("ray", {"shard_rows": 0}, "The 'shard_rows' parameter of shrink must be an int in the range "
                               "[1, inf) or None. Got 0 instead."),
])
def test_engine_options_are_checked_first(tmp_path, engine, options, message):
    src = parquet_source(str(tmp_path), make_nested(300, 32))
    with pytest.raises(InvalidParameterError) as err:
        shrink(src, f"parquet://{tmp_path}/out/", dim=4, work_dir=tmp_path / "w", engine=engine,
               engine_options=options)
    assert str(err.value) == message
    assert sorted(os.listdir(tmp_path)) == ["pq"]


def test_cli_ray_flags_need_engine_ray(tmp_path):
    src = parquet_source(str(tmp_path), make_nested(300, 32))
    res = CliRunner().invoke(main, ["shrink", "--source", src, "--target",
                                    f"parquet://{tmp_path}/out/", "--dim", "4", "--workers", "2",
                                    "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == 2
    assert "--workers and --shard-rows apply to --engine ray only." in res.output
    assert sorted(os.listdir(tmp_path)) == ["pq"]


def test_encode_batch_in_a_ray_data_pipeline(ray_local, tmp_path):
    """README "Keep it fresh": ``ds.map_batches(compact.encode_batch, batch_format="pyarrow")``
    runs on Ray workers (the encoder pickles to its model bytes) and gives exactly
    ``compact.encode``; the numpy batch format too."""
    import pickle

    import pyarrow as pa
    import ray.data

    import tldr_index
    from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy

    X = make_nested(400, 16, between=6, within=4, seed=5)
    src = lancedb_source(str(tmp_path), X[:300])
    shrink(src, src + "_c", dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0,
           work_dir=tmp_path / "w")
    compact = tldr_index.open(src + "_c")
    z, codes = compact.encode(X[300:])
    enc = pickle.loads(pickle.dumps(compact.encode_batch))
    assert enc.model_bytes == open_target(src + "_c").model_bytes and enc._model is None
    ds = ray.data.from_arrow(pa.table({"id": np.arange(100), "vector": numpy_to_fsl(X[300:])}))
    out = ds.repartition(3).map_batches(compact.encode_batch, batch_format="pyarrow",
                                        batch_size=16)
    t = pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("id")
    assert t.schema.names == ["id", "vector", "vector_reduced", "pq_codes"]
    assert t.column("id").to_pylist() == list(range(100))
    np.testing.assert_array_equal(vectors_to_numpy(t.column("vector_reduced")), z)
    np.testing.assert_array_equal(
        np.stack(t.column("pq_codes").to_numpy(zero_copy_only=False)), codes)
    rows = ds.map_batches(compact.encode_batch, batch_format="numpy", batch_size=25).take_all()
    rows.sort(key=lambda r: r["id"])
    np.testing.assert_array_equal(np.stack([r["vector_reduced"] for r in rows]), z)
    np.testing.assert_array_equal(np.stack([r["pq_codes"] for r in rows]), codes)
