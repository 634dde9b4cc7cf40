"""shrink / search / info through the Python API on every store: quality against the PCA baseline,
exact round trip of ids and payload, bad input, existing targets and the work directory."""

from __future__ import annotations

import os
import re

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _connector_helpers import staging_leftovers, tree_hashes
from _pipeline_helpers import (lancedb_source, make_nested, parquet_source, qdrant_source,
                               recall, table_of)

from connectors import open_source, open_target
from connectors.arrow_utils import vectors_to_numpy
from tldr_index.compact import CompactModel
from tldr_index.errors import (CheckpointError, InvalidParameterError, SourceNotFoundError,
                               StoreUnavailableError, TargetExistsError, UnsupportedURIError)
from tldr_index.knn import exact_search
from tldr_index.progress import Progress
from tldr_index.pipeline import default_pq_bytes, info, search, shrink

FAST = dict(epochs=3, threads=1, eval_queries=100)


@pytest.fixture(scope="module")
def nested():
    X = make_nested(2200)
    return X[:2000], X[2000:]


def _source(kind: str, root: str, X: np.ndarray) -> tuple[str, str]:
    """(source URI, target URI prefix) of a fresh store of ``kind`` holding ``X``."""
    if kind == "lancedb":
        src = lancedb_source(root, X)
        return src, src.rsplit("/", 1)[0] + "/"
    if kind == "lance":
        import lance
        path = os.path.join(root, "raw.lance")
        lance.write_dataset(table_of(X), path)
        return f"lance://{path}", f"lance://{root}/"
    if kind == "parquet":
        return parquet_source(root, X), f"parquet://{root}/"
    src = qdrant_source(X)
    return src, src.rsplit("/", 1)[0] + "/"


def _target(kind: str, prefix: str, name: str) -> str:
    return prefix + name + (".lance" if kind == "lance" else "")


def _hashes(kind: str, root: str) -> dict:
    """sha256 of every file of the source (not of the targets written beside it)."""
    sub = {"lancedb": "db/docs.lance", "lance": "raw.lance", "parquet": "pq"}.get(kind)
    return tree_hashes(os.path.join(root, sub)) if sub else {}


@pytest.mark.parametrize("kind", ["lancedb", "lance", "parquet", "qdrant"])
def test_shrink_each_store_beats_pca(kind, tmp_path, nested):
    X, Q = nested
    src, prefix = _source(kind, str(tmp_path / "src"), X)
    before = _hashes(kind, str(tmp_path / "src"))
    _, truth = exact_search(X, Q, 10, metric="l2")
    truth_ids = truth * 7 + 3  # ids of the rows
    got = {}
    for method in ("tldr", "pca"):
        tgt = _target(kind, prefix, f"out_{method}")
        rep = shrink(src, tgt, dim=8, method=method, pq_bytes=4,
                     work_dir=tmp_path / f"work_{method}", **FAST)
        assert (rep.rows, rep.source_dim, rep.dim, rep.pq_bytes) == (2000, 32, 8, 4)
        assert rep.metric == "l2" and rep.method == method
        assert rep.search_compression == 32.0
        assert not os.path.exists(tmp_path / f"work_{method}")  # removed after publish
        plain = search(tgt, Q, k=10)
        resc = search(tgt, Q, k=10, rescore=True)
        assert plain.ids.shape == (200, 10) and plain.ids.dtype == np.int64
        assert plain.engine == ("store" if kind == "qdrant" else "pq-codes")
        got[method] = (recall(plain.ids, truth_ids), recall(resc.ids, truth_ids))
        # rescored distances are exact squared L2 in the original space, ascending
        np.testing.assert_allclose(resc.distances[:, 0],
                                   ((Q - X[(resc.ids[:, 0] - 3) // 7]) ** 2).sum(1), rtol=1e-4)
        assert (np.diff(resc.distances, axis=1) >= 0).all()
    assert got["tldr"][0] > got["pca"][0] + 0.03, got
    assert got["tldr"][1] >= got["pca"][1] - 0.01 and got["tldr"][1] > 0.9, got
    assert _hashes(kind, str(tmp_path / "src")) == before  # the source was never written
    if kind != "qdrant":
        assert staging_leftovers(str(tmp_path / "src")) == []


@pytest.mark.parametrize("kind", ["lancedb", "parquet", "qdrant"])
def test_target_carries_ids_payload_and_encoded_vectors(kind, tmp_path):
    X = make_nested(600, 16, between=6, within=4, seed=3)
    src, prefix = _source(kind, str(tmp_path), X)
    tgt = _target(kind, prefix, "small")
    shrink(src, tgt, dim=4, pq_bytes=2, work_dir=tmp_path / "w", **FAST)
    t = open_target(tgt)
    tab = t.to_table()
    ids = np.asarray(tab.column("id").to_pylist())
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], np.arange(600) * 7 + 3)
    rows = (ids[order] - 3) // 7
    if kind == "qdrant":  # schemaless payload travels as JSON
        import json
        pl = [json.loads(s) for s in np.asarray(tab.column("payload").to_pylist())[order]]
        assert pl == [{"text": f"doc {i}", "year": 1990 + i % 30} for i in rows]
    else:
        assert np.asarray(tab.column("text").to_pylist())[order].tolist() == \
            [f"doc {i}" for i in rows]
        assert np.asarray(tab.column("year").to_pylist())[order].tolist() == \
            [1990 + i % 30 for i in rows]
        assert tab.schema.field("vector").type == pa.list_(pa.float16(), 4)
    model = CompactModel.from_bytes(t.model_bytes)
    assert model.metric == "l2" and model.pq_bytes == 2 and model.input_dim == 16
    Y = vectors_to_numpy(tab.column("vector")).astype(np.float32)[order]
    np.testing.assert_allclose(Y, model.encode(X[rows]), atol=2e-3, rtol=2e-3)
    meta = t.metadata
    assert meta["dims"] == [16, 4] and meta["method"] == "tldr" and meta["pq"]["bytes"] == 2
    assert meta["source_columns"] == {"id": "id", "vector": "vector"}
    if kind != "qdrant":
        codes = tab.column("pq_codes").combine_chunks()
        C = codes.values.to_numpy().reshape(-1, 2)[order]
        assert (C == model.encode_codes(model.encode(X[rows]))).mean() > 0.99


def test_info_describes_the_target(tmp_path):
    X = make_nested(600, 16, between=6, within=4)
    src = lancedb_source(str(tmp_path), X)
    rep = shrink(src, dim=4, pq_bytes=2, work_dir=tmp_path / "w", **FAST)
    assert rep.target == src + "_tldr4"  # default name: <collection>_tldr<dim>
    out = info(rep.target)
    assert out["rows"] == 600 and (out["source_dim"], out["dim"], out["pq_bytes"]) == (16, 4, 2)
    assert out["method"] == "tldr" and out["metric"] == "l2" and out["vector_dtype"] == "float16"
    assert out["source"] == "lancedb://" + str(tmp_path / "db" / "docs")
    assert out["disk_bytes"] == rep.target_disk_bytes > 0
    assert out["recall"]["eval_queries"] == 100
    assert 0 < out["recall"]["recall_at_10"] <= out["recall"]["recall_at_10_rescored"] <= 1


def test_search_from_another_directory_and_string_ids(tmp_path, monkeypatch):
    X = make_nested(600, 16, between=6, within=4)
    ids = np.array([f"doc-{i:04d}" for i in range(600)])
    os.makedirs(tmp_path / "data")
    pq.write_table(table_of(X, ids=ids), tmp_path / "data" / "x.parquet")
    monkeypatch.chdir(tmp_path)
    shrink("parquet://data/x.parquet", "parquet://out/", dim=4, pq_bytes=2, **FAST)
    monkeypatch.chdir(tmp_path / "data")  # the recorded source URI is absolute
    res = search(f"parquet://{tmp_path}/out", X[:5], k=3, rescore=True)
    assert res.ids.dtype.kind == "U" and res.ids[:, 0].tolist() == ids[:5].tolist()
    np.testing.assert_allclose(res.distances[:, 0], 0, atol=1e-5)


def test_cosine_source_and_no_codes(tmp_path):
    X = make_nested(400, 16, between=6, within=4)
    src = qdrant_source(X, distance="cosine")
    rep = shrink(src, src + "_c", dim=4, pq_bytes=0, work_dir=tmp_path / "w", **FAST)
    assert rep.metric == "cosine" and rep.pq_bytes == 0 and rep.search_compression is None
    res = search(src + "_c", X[:5], k=3, rescore=True)
    assert res.ids[:, 0].tolist() == [3, 10, 17, 24, 31]
    np.testing.assert_allclose(res.distances[:, 0], 0, atol=1e-5)


def test_default_pq_bytes():
    assert [default_pq_bytes(d) for d in (64, 48, 32, 24, 8, 7)] == [16, 16, 16, 12, 8, 7]


# ------------------------------------------------------------------------------- bad input

# The table of bad sources (exact messages, nothing written): tests/reliability/test_bad_input.py.


def test_other_refusals(tmp_path):
    X = make_nested(300, 8, between=3, within=3)
    src = lancedb_source(str(tmp_path), X)
    with pytest.raises(InvalidParameterError, match=r"^The 'dim' parameter of shrink must be an "
                       r"int in the range \[1, 7\] \(smaller than the dimension 8 of source "
                       r"'lancedb://.*/docs'\). Got 8 instead.$"):
        shrink(src, dim=8)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'bytes' parameter of shrink (--bytes) must be a divisor of d (one sub-quantizer "
            "of 256 centroids per byte) for codec='pq' at d=4. Got 3 instead; the nearest "
            "feasible budgets are 2 and 4.")):
        shrink(src, dim=4, pq_bytes=3, codec="pq")
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'bytes' parameter of shrink (--bytes) must be in the range [1, d] (one residual "
            "codebook of 256 centroids per byte) for codec='rq' at d=4. Got 5 instead; the "
            "nearest feasible budgets are 4.")):
        shrink(src, dim=4, pq_bytes=5)  # the default codec, RQ
    with pytest.raises(UnsupportedURIError, match="must use a supported scheme"):
        shrink("foo://x/docs", dim=4)
    with pytest.raises(SourceNotFoundError, match="LanceDB table 'nope' not found"):
        shrink(src.replace("docs", "nope"), dim=4)
    with pytest.raises(SourceNotFoundError, match="^Qdrant collection 'nope' not found in "
                       "in-memory Qdrant 'x1'. Existing collections: none.$"):
        shrink("qdrant+memory://x1/nope", dim=4)
    with pytest.raises(StoreUnavailableError, match="^Qdrant at http://127.0.0.1:9 is "
                       "unreachable while trying to list aliases"):
        shrink("qdrant://127.0.0.1:9/docs", dim=4)
    with pytest.raises(InvalidParameterError, match="The target must differ from the source"):
        shrink(src, src, dim=4)
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]


def test_cuda_asked_without_gpu_is_refused_before_any_work(tmp_path, monkeypatch):
    """--device cuda on a machine without a GPU is an error, not a silent CPU run."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X = make_nested(300, 8, between=3, within=3)
    src = lancedb_source(str(tmp_path), X)
    with pytest.raises(InvalidParameterError, match=r"^The 'device' parameter of shrink is 'cuda' "
                       r"but torch sees no CUDA GPU \(torch .*\); use device='auto' or 'cpu'.$"):
        shrink(src, dim=4, device="cuda", work_dir=tmp_path / "work")
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]
    assert not os.path.exists(tmp_path / "work")


def test_existing_target_is_refused_then_overwritten(tmp_path, nested):
    X = make_nested(600, 16, between=6, within=4)
    src = lancedb_source(str(tmp_path), X)
    rep = shrink(src, dim=4, pq_bytes=2, work_dir=tmp_path / "w", **FAST)
    first = open_target(rep.target).version
    with pytest.raises(TargetExistsError, match=r"^Target '.*docs_tldr4' already exists. Pass "
                       r"overwrite=True \(--overwrite\) to replace it.$"):
        shrink(src, dim=4, pq_bytes=2, work_dir=tmp_path / "w", **FAST)
    assert not os.path.exists(tmp_path / "w")  # refused before anything was written
    lancedb.connect(str(tmp_path / "db")).create_table("other", data=table_of(X[:10]))
    with pytest.raises(TargetExistsError, match="exists and is not a tldr-index target; refusing "
                       "to replace it, even with overwrite=True"):
        shrink(src, src.rsplit("/", 1)[0] + "/other", dim=4, pq_bytes=2, overwrite=True, **FAST)
    rep2 = shrink(src, dim=4, pq_bytes=2, method="pca", overwrite=True,
                  work_dir=tmp_path / "w", **FAST)
    t = open_target(rep2.target)
    assert t.version > first and t.metadata["method"] == "pca" and t.count() == 600


class Stop(BaseException):
    pass


class StopAtTrain(Progress):
    """Stops a shrink when the train stage begins (after scan and knn are checkpointed)."""

    def begin(self, stage, total=None, unit="rows"):
        if stage == "train":
            raise Stop


def test_work_dir_rules(tmp_path):
    X = make_nested(400, 16, between=6, within=4)
    src = lancedb_source(str(tmp_path), X)
    work = tmp_path / "w"

    with pytest.raises(Stop):
        shrink(src, src + "_t", dim=4, pq_bytes=2, work_dir=work, progress=StopAtTrain(), **FAST)
    with pytest.raises(CheckpointError, match=r"cannot be resumed: it used other parameters: "
                       r"dim=4 \(now 8\)"):
        shrink(src, src + "_t", dim=8, pq_bytes=2, work_dir=work, resume=True, **FAST)
    lancedb.connect(str(tmp_path / "db")).open_table("docs").add(table_of(X[:1], ids=[10**6]))
    with pytest.raises(CheckpointError, match="changed since that run"):
        shrink(src, src + "_t", dim=4, pq_bytes=2, work_dir=work, resume=True, **FAST)
    rep = shrink(src, src + "_t", dim=4, pq_bytes=2, work_dir=work, resume=True, overwrite=True, **FAST)
    assert rep.rows == 401 and not rep.resumed
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a tldr-index work directory"):
        shrink(src, src + "_x", dim=4, pq_bytes=2, work_dir=tmp_path / "mine", **FAST)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_plain_rerun_after_a_failure_resumes_or_starts_over(tmp_path, caplog):
    """A run that failed before publishing never blocks the next plain run: the same run is
    resumed by itself, another one (other parameters) is discarded; one INFO line says which."""
    X = make_nested(400, 16, between=6, within=4)
    src = lancedb_source(str(tmp_path), X)
    work = tmp_path / "w"

    with pytest.raises(Stop):
        shrink(src, src + "_t", dim=4, pq_bytes=2, work_dir=work, progress=StopAtTrain(), **FAST)
    run_id = __import__("json").loads((work / "tldr-work.json").read_text())["run_id"]
    caplog.set_level("INFO", logger="tldr_index")
    rep = shrink(src, src + "_t", dim=4, pq_bytes=2, work_dir=work, keep_work=True, **FAST)
    assert rep.resumed and rep.skipped_stages[:2] == ["scan", "knn"]
    assert (f"Resuming the unfinished run {run_id} in {work} by itself (same source and "
            f"parameters; checkpoints are re-checked). Pass --overwrite to start over "
            f"instead.") in caplog.messages
    assert open_target(src + "_t").count() == 400

    with pytest.raises(Stop):  # another target's run, then a plain rerun with other parameters
        shrink(src, src + "_u", dim=4, pq_bytes=2, work_dir=tmp_path / "w2",
               progress=StopAtTrain(), **FAST)
    caplog.clear()
    rep = shrink(src, src + "_u", dim=8, pq_bytes=2, work_dir=tmp_path / "w2", **FAST)
    assert not rep.resumed and rep.skipped_stages == [] and rep.dim == 8
    assert [m for m in caplog.messages if m.startswith("Starting over")] == [
        f"Starting over in {tmp_path / 'w2'}: the unfinished run there cannot be resumed (it "
        f"used other parameters: dim=4 (now 8))."]
    assert not (tmp_path / "w2").exists()


def test_shrink_into_an_existing_empty_parquet_directory(tmp_path):
    """A target directory created first (empty) is accepted, not refused as foreign."""
    src = parquet_source(str(tmp_path), make_nested(300, 8, between=3, within=3))
    out = tmp_path / "out"
    out.mkdir()
    rep = shrink(src, f"parquet://{out}/", dim=4, pq_bytes=2, method="pca",
                 work_dir=tmp_path / "w", **FAST)
    assert rep.rows == 300 and open_target(f"parquet://{out}/").count() == 300
    assert "_tldr_metadata.json" in os.listdir(out)


def test_default_pq_bytes_that_do_not_divide_dim_are_announced(tmp_path, caplog):
    """PQ at d=60 takes 15 bytes by default, announced; RQ (the default codec: any M <= d) keeps
    16, silently."""
    src = lancedb_source(str(tmp_path), make_nested(300, 64, between=6, within=4))
    caplog.set_level("INFO", logger="tldr_index")
    rep = shrink(src, dim=60, method="pca", work_dir=tmp_path / "w", codec="pq", **FAST)
    assert rep.pq_bytes == 15
    assert ("pq_bytes (--pq-bytes) not given and the default 16 does not divide dim=60 (PQ "
            "bytes must divide d: one sub-vector per byte): the codes take 15 bytes, the largest "
            "divisor of 60 up to 16. Pass pq_bytes (--pq-bytes) to choose another size."
            ) in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    shrink(src, src + "_b", dim=60, pq_bytes=12, method="pca", work_dir=tmp_path / "w",
           codec="pq", **FAST)
    assert not [r for r in caplog.records if "pq_bytes (--pq-bytes) not given" in r.getMessage()]
    rep = shrink(src, src + "_c", dim=60, method="pca", work_dir=tmp_path / "w", **FAST)
    assert (rep.codec, rep.pq_bytes) == ("rq", 16)
    assert not [r for r in caplog.records if "not given" in r.getMessage()]


def test_embedded_qdrant_reports_its_bytes_on_disk(tmp_path):
    from qdrant_client import models as m

    from connectors import parse_uri
    from connectors.qdrant_store import client_for
    from tldr_index.pipeline import disk_bytes

    X = make_nested(300, 8, between=3, within=3)
    src = f"qdrant+path://{tmp_path}/store/docs"
    client = client_for(parse_uri(src))
    client.create_collection("docs", vectors_config=m.VectorParams(size=8,
                                                                   distance=m.Distance.EUCLID))
    client.upsert("docs", points=[m.PointStruct(id=i, vector=X[i].tolist(), payload={"t": i})
                                  for i in range(300)])
    rep = shrink(src, dim=4, pq_bytes=2, method="pca", work_dir=tmp_path / "w", **FAST)

    def du(folder):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder)
                   for f in fs)

    real = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}["docs_tldr4"]
    assert rep.source_disk_bytes == du(tmp_path / "store" / "collection" / "docs") > 0
    assert rep.target_disk_bytes == du(tmp_path / "store" / "collection" / real) > 0
    assert info(rep.target)["disk_bytes"] == rep.target_disk_bytes
    assert disk_bytes("qdrant+memory://nowhere/docs") is None  # no disk to measure


def test_source_options_reach_the_connector(tmp_path):
    X = make_nested(300, 8, between=3, within=3)
    src = lancedb_source(str(tmp_path), X)
    assert open_source(src).distance == "l2"
    rep = shrink(src, dim=4, pq_bytes=2, source_options={"distance": "cosine"},
                 work_dir=tmp_path / "w", **FAST)
    assert rep.metric == "cosine"
    assert CompactModel.from_bytes(open_target(rep.target).model_bytes).metric == "cosine"
