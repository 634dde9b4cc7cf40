"""``eval --store-quantizers``: Qdrant's own quantizers on the original vectors, measured on the
real engine (Qdrant Edge shards built from the source rows), beside the compact collection in the
same run; and its bad input (a source that is not Qdrant, an unknown quantizer)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import qdrant_edge as qe
from click.testing import CliRunner
from conftest import make_structured

from connectors.qdrant_edge_quantizers import code_bytes, measure_quantizers
from connectors.qdrant_edge_store import close_shards
from tldr_index.cli import main
from tldr_index.errors import InvalidParameterError
from tldr_index.evaluate import evaluate
from tldr_index.pipeline import shrink

N, DIM = 400, 16
ALL = ("bq1", "bq1.5", "bq2", "sq8", "tq1", "tq2", "tq4", "pq")


@pytest.fixture(autouse=True)
def _close():
    yield
    close_shards()


def edge_source(path: str, X: np.ndarray) -> str:
    sh = qe.EdgeShard.create(path, qe.EdgeConfig(vectors={"": qe.EdgeVectorParams(
        size=X.shape[1], distance=qe.Distance.Euclid)}))
    sh.update(qe.UpdateOperation.upsert_points(
        [qe.Point(10 + 2 * i, x.tolist(), {"n": i}) for i, x in enumerate(X)]))
    sh.flush()
    sh.close()
    return "qdrant+edge://" + path


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    root = tmp_path_factory.mktemp("sq")
    X = make_structured(N, DIM, seed=11, normalize=False)
    src = edge_source(str(root / "docs"), X)
    tgt = "qdrant+edge://" + str(root / "docs_c")
    shrink(src, tgt, dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0,
           work_dir=str(root / "work"))
    close_shards()
    return X, src, tgt


def test_measure_quantizers_against_exact_search(tmp_path):
    X = make_structured(300, DIM, seed=12, normalize=False)
    Q = X[:20] + 0.01
    exact = np.argsort(((X[None, :, :] - Q[:, None, :]) ** 2).sum(-1), axis=1)[:, :10]
    chunks = ((s, X[s:s + 128]) for s in range(0, len(X), 128))
    res = measure_quantizers(chunks, len(X), DIM, "l2", Q, 10, kinds=["sq8", "bq1", "pqx8"],
                             work_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []  # the temporary shards are gone
    got = {(r["quantizer"], r["rescore"]): r for r in res}
    assert sorted(got) == [(k, s) for k in ("bq1", "pqx8", "sq8") for s in (False, True)]
    rec = {key: np.mean([len(set(p) & set(e)) / 10 for p, e in zip(r["positions"], exact)])
           for key, r in got.items()}
    assert rec[("sq8", True)] >= 0.95  # int8 codes + rescoring with the originals: near exact
    assert rec[("bq1", False)] < rec[("bq1", True)]  # 1-bit codes alone lose neighbours
    assert [got[(k, False)]["bytes_per_vector"] for k in ("bq1", "sq8", "pqx8")] == [2, 16, 8]
    assert got[("sq8", True)]["oversampling"] == 2.0 and got[("sq8", False)]["oversampling"] \
        is None
    assert all(r["latency_ms"]["p50"] > 0 and r["build_s"] > 0 for r in res)


def test_eval_puts_qdrants_quantizers_beside_the_target(shrunk):
    X, src, tgt = shrunk
    rep = evaluate(tgt, queries=25, k=[10], baselines=(), latency_queries=0,
                   store_quantizers="all")
    rows = [r for r in rep.results if r.method.startswith("qdrant-")]
    assert len(rows) == 2 * len(ALL)
    raw = {r.representation: r for r in rows if "rescore" not in r.representation}
    assert sorted(raw) == sorted(f"Qdrant {lab}" for lab in (
        "binary 1-bit", "binary 1.5-bit", "binary 2-bit", "scalar int8", "TurboQuant 1-bit",
        "TurboQuant 2-bit", "TurboQuant 4-bit", "PQ x16"))
    assert [raw[f"Qdrant {lab}"].bytes_per_vector for lab in (
        "binary 1-bit", "binary 1.5-bit", "scalar int8", "TurboQuant 4-bit", "PQ x16")] == \
        [2, 3, 16, 8, 4]  # PQ at the target's 4 code bytes: x16 of 16-d float32
    assert code_bytes("pq", DIM, 4) == 4
    sq = rep.row("qdrant-sq8", "Qdrant scalar int8 + rescore x2 (originals)")
    assert sq.recall["10"] >= 0.95 and "p50" in sq.note
    bq = rep.row("qdrant-bq", "Qdrant binary 1-bit")
    assert bq.recall["10"] < sq.recall["10"]
    assert rep.seconds["store_quantizers"] > 0
    assert rep.row("tldr (target)", "reduced float16") is not None  # the target is still there


def test_cli_store_quantizers(shrunk, tmp_path):
    _, src, tgt = shrunk
    out = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["eval", "--target", tgt, "--queries", "10", "--k", "10",
                                  "--baselines", "none", "--latency-queries", "0",
                                  "--store-quantizers", "bq2,pq", "--json", str(out), "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = [(x["method"], x["representation"]) for x in json.loads(out.read_text())["results"]
           if x["method"].startswith("qdrant-")]
    assert got == [("qdrant-bq", "Qdrant binary 2-bit"),
                   ("qdrant-bq", "Qdrant binary 2-bit + rescore x2 (originals)"),
                   ("qdrant-pq", "Qdrant PQ x16"),
                   ("qdrant-pq", "Qdrant PQ x16 + rescore x2 (originals)")]


def test_unknown_quantizer(shrunk):
    _, _, tgt = shrunk
    with pytest.raises(InvalidParameterError, match=r"^The 'store_quantizers' parameter of store "
                       r"quantizers must be one of 'bq1', 'bq1\.5', .*'pqx64'\. Got 'bq3' "
                       r"instead\.$"):
        evaluate(tgt, queries=5, k=[10], baselines=(), store_quantizers="bq1,bq3")


def test_source_that_is_not_qdrant(tmp_path):
    from _connector_helpers import make_table
    import pyarrow.parquet as pq

    pq.write_table(make_table(300, DIM, seed=1), tmp_path / "docs.parquet")
    src = "parquet://" + str(tmp_path / "docs.parquet")
    tgt = "parquet://" + str(tmp_path / "docs_c")
    shrink(src, tgt, dim=8, pq_bytes=4, epochs=1, threads=1, eval_queries=0,
           work_dir=str(tmp_path / "work"))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InvalidParameterError, match=r"^The 'store_quantizers' parameter of eval "
                       r"needs a Qdrant source \(qdrant://, qdrant\+path://, qdrant\+edge://\): "
                       r"Qdrant's own quantizers are what it measures\. Got source "
                       r"'parquet://.*/docs\.parquet' \(parquet\)\.$"):
        evaluate(tgt, queries=5, k=[10], baselines=(), store_quantizers="all")
    assert sorted(os.listdir(tmp_path)) == before
