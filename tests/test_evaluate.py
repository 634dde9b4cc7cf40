"""``eval``: recall arithmetic, out-of-core ground truth, the report of a real target, the CLI
(table, JSON, PNG) and every bad-input message."""

from __future__ import annotations

import builtins
import json
import os

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, make_nested, parquet_source
from click.testing import CliRunner

from connectors import open_source
from tldr_index.cli import main
from tldr_index.errors import InvalidInputError, InvalidParameterError, ModelFormatError
from tldr_index.evaluate import evaluate, held_out_positions, recalls, source_vectors
from tldr_index.knn import exact_search
from tldr_index.pipeline import shrink
from tldr_index.shrink.sampling import sample_rows as _sample_rows

N, D, DIM, M = 1200, 32, 8, 4


def test_recalls_hand_made():
    found = np.array([[1, 2, 3], [4, 5, 6]], dtype=object)
    truth = np.array([[1, 2, 9], [7, 8, 4]], dtype=object)
    # k=1: {1} vs {1} -> 1, {4} vs {7} -> 0; k=3: 2/3 and 1/3
    assert recalls(found, truth, [1, 3]) == pytest.approx({"1": 0.5, "3": 0.5})
    padded = np.array([["a", None, None]], dtype=object)  # None pads never match
    assert recalls(padded, np.array([["a", "b", "c"]], dtype=object), [1, 2]) == \
        pytest.approx({"1": 1.0, "2": 0.5})


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_ground_truth_out_of_core_equals_in_memory(tmp_path, metric):
    X = make_nested(700, D, seed=3)
    src = open_source(parquet_source(str(tmp_path), X, parts=3), distance=metric)
    Q = make_nested(40, D, seed=4)
    vec = source_vectors(src)
    S, I = exact_search(vec, Q, 10, metric=metric, chunk_rows=97)  # blocks across files
    S0, I0 = exact_search(X, Q, 10, metric=metric)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(S, S0, rtol=1e-5, atol=1e-5)
    ids = np.arange(700) * 7 + 3  # table_of's ids, in source order
    np.testing.assert_array_equal(vec.ids, ids)
    # and against brute force in float64
    Xn = X.astype(np.float64)
    Qn = Q.astype(np.float64)
    if metric == "cosine":
        Xn /= np.linalg.norm(Xn, axis=1, keepdims=True)
        Qn /= np.linalg.norm(Qn, axis=1, keepdims=True)
    score = -((Qn[:, None, :] - Xn[None]) ** 2).sum(-1) if metric == "l2" else Qn @ Xn.T
    top1 = score.argmax(1)
    np.testing.assert_array_equal(I[:, 0], top1)


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    X = make_nested(N, D)
    uri = lancedb_source(str(root), X)
    rep = shrink(uri, dim=DIM, pq_bytes=M, sample=800, epochs=2, work_dir=root / "work",
                 threads=1, codec="pq")  # the report's PQ rows below; RQ targets: test_codec_pipeline
    return root, X, uri, rep.target


def test_eval_report(shrunk):
    root, X, uri, target = shrunk
    rep = evaluate(target, queries=60, k=[1, 10], shortlists=[50, N], baselines=("pca", "pq"),
                   latency_queries=2, threads=1)
    assert rep.queries == 60 and rep.query_kind == "held-out rows" and rep.ks == [1, 10]
    names = [(r.method, r.representation) for r in rep.results]
    assert names == [("tldr (target)", "reduced float16"), ("tldr (target)", "PQ codes"),
                     ("tldr (target)", "search --rescore (shortlist 50)"),
                     ("tldr (target)", f"search --rescore (shortlist {N})"),
                     ("pca", "float32"), ("pca", "PQ codes"), (f"pq-{D}", "PQ codes"),
                     (f"pq-{D}", "PQ codes, rescored (shortlist 50)"),
                     (f"pq-{D}", f"PQ codes, rescored (shortlist {N})")]
    # re-ranking every row is exact search: recall 1 (self excluded on both sides)
    assert rep.row("tldr (target)", f"search --rescore (shortlist {N})").recall == \
        {"1": 1.0, "10": 1.0}
    assert rep.row(f"pq-{D}", f"PQ codes, rescored (shortlist {N})").recall == \
        {"1": 1.0, "10": 1.0}
    assert rep.row(f"pq-{D}", "PQ codes").bytes_per_vector == M
    pq = rep.row("tldr (target)", "PQ codes")
    assert pq.bytes_per_vector == M and pq.compression == 4 * D / M
    for r in rep.results:
        assert 0.0 <= r.recall["10"] <= 1.0
    assert set(rep.latency_ms) == {"queries", "k", "search", "search_rescore"}
    json.dumps(rep.to_dict())


def test_held_out_queries_are_not_training_rows():
    pos, kind = held_out_positions(1000, {"sample": 700, "random_state": 5}, 200, 0)
    assert kind == "held-out rows" and len(pos) == 200
    assert not set(pos) & set(_sample_rows(1000, 700, 5))
    pos, kind = held_out_positions(100, {"sample": 500, "random_state": 0}, 10, 0)
    assert kind.startswith("training rows") and len(pos) == 10


def test_eval_cli_table_json_plot(shrunk, tmp_path):
    root, X, uri, target = shrunk
    qfile = tmp_path / "q.npy"
    np.save(qfile, make_nested(30, D, seed=9))
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    res = CliRunner().invoke(main, [
        "eval", "--db", str(root / "db"), "--collection", "docs", "--target", "docs_tldr8",
        "--queries", str(qfile), "--k", "1,5", "--baselines", "pca", "--latency-queries", "0",
        "--json", str(out_json), "--plot", str(out_png), "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert data["queries"] == 30 and data["query_kind"] == f"file {qfile}"
    assert [r["method"] for r in data["results"]].count("pca") == 2
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(main, [
        "eval", "--db", str(root / "db"), "--target", "docs_tldr8", "--queries", "20",
        "--k", "10", "--baselines", "none", "--latency-queries", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "recall@10" in res.output and "search latency on this machine" in res.output


def test_plot_without_matplotlib(shrunk, monkeypatch):
    root, X, uri, target = shrunk
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    res = CliRunner().invoke(main, ["eval", "--target", target, "--plot", "x.png"])
    assert res.exit_code == 1
    assert res.output == (
        "Error: The 'plot' parameter needs matplotlib, which is not installed. Install it with: "
        "pip install 'tldr-index[plot]' (or: pip install 'matplotlib>=3.7,<4')\n")


# ------------------------------------------------------------------------------ bad input

def test_bad_queries_dimension(shrunk, tmp_path):
    root, X, uri, target = shrunk
    with pytest.raises(InvalidInputError) as e:
        evaluate(target, queries=np.ones((3, D + 1), dtype=np.float32), baselines=())
    assert str(e.value) == (
        f"Input 'queries' of eval must be a float array of shape (n, {D}) with n >= 1 (the "
        f"dimension of source '{uri}'). Got shape (3, {D + 1}) instead.")


def test_bad_k_larger_than_collection(shrunk):
    root, X, uri, target = shrunk
    with pytest.raises(InvalidParameterError) as e:
        evaluate(target, queries=10, k=[10, N], baselines=())
    assert str(e.value) == (
        f"The 'k' parameter of eval must hold ints in the range [1, {N - 1}] (fewer than the "
        f"{N} rows of source '{uri}': held-out queries are rows of it and do not count "
        f"themselves). Got {N} instead.")
    with pytest.raises(InvalidParameterError) as e:
        evaluate(target, queries=X[:3], k=N + 1, baselines=())
    assert str(e.value) == (
        f"The 'k' parameter of eval must hold ints in the range [1, {N}] (the rows of source "
        f"'{uri}'). Got {N + 1} instead.")


def test_bad_target_not_from_tldr_index(shrunk):
    root, X, uri, target = shrunk
    with pytest.raises(ModelFormatError) as e:
        evaluate(uri, baselines=())
    assert str(e.value) == (f"target '{uri}' holds no tldr-index record: it was not written by "
                            f"tldr-index.")
    res = CliRunner().invoke(main, ["eval", "--target", uri])
    assert res.exit_code == 1 and res.output == f"Error: {e.value}\n"


def test_bad_model_dim_vs_source(shrunk, tmp_path):
    root, X, uri, target = shrunk
    other = lancedb_source(str(tmp_path), make_nested(300, D + 8), name="wide")
    with pytest.raises(InvalidInputError) as e:
        evaluate(target, source=other, baselines=())
    assert str(e.value) == (
        f"Target '{target}' holds a model for {D}-d vectors but source '{other}' has "
        f"{D + 8}-d vectors: it was not shrunk from this source. Pass the source it was shrunk "
        f"from (source=, --source).")
    assert os.path.isdir(root / "db")


def test_baselines_as_a_string(shrunk):
    """``baselines="none"`` skips them (it was iterated letter by letter); one string of
    comma-separated names works like the CLI's ``--baselines``."""
    root, X, uri, target = shrunk
    common = dict(queries=20, k=[1], shortlists=[50], latency_queries=0, threads=1)
    none = evaluate(target, baselines="none", **common)
    assert [r.method for r in none.results] == ["tldr (target)"] * 3
    assert [r.recall for r in none.results] == \
        [r.recall for r in evaluate(target, baselines=(), **common).results]
    one = evaluate(target, baselines=" pca , pq", **common)
    assert [(r.method, r.representation) for r in one.results][3:] == \
        [("pca", "float32"), ("pca", "PQ codes"), (f"pq-{D}", "PQ codes"),
         (f"pq-{D}", "PQ codes, rescored (shortlist 50)")]
    with pytest.raises(InvalidParameterError, match=r"^The 'baselines' parameter of eval must be "
                                                    r"one of 'pca', 'pca-whiten', 'pq', 'opq', "
                                                    r"'rq', 'rabitq', 'rabitq1', 'rabitq2', "
                                                    r"'rabitq4', 'sign', 'sq8', 'sq4'\. "
                                                    r"Got 'pcaa' instead\.$"):
        evaluate(target, baselines="pca,pcaa", **common)
    with pytest.raises(InvalidParameterError, match=r"^The 'baselines' parameter of eval must be "
                                                    r"'auto', 'all', 'none', a comma-separated "
                                                    r"string or a sequence of names\. Got 3 "
                                                    r"instead\.$"):
        evaluate(target, baselines=3, **common)


def test_codec_baselines_raw_and_rescored(shrunk):
    """Codecs of the original vectors: at the target's bytes (RQ) or their own (SQ4), raw and
    with the target's shortlists; sign bits (inner product only) are skipped on this l2 source."""
    root, X, uri, target = shrunk
    rep = evaluate(target, queries=30, k=[1, 10], shortlists=[50, N], baselines="rq,sq4,sign",
                   latency_queries=0, threads=1)
    names = [(r.method, r.representation, r.bytes_per_vector) for r in rep.results[4:]]
    assert names == [(f"rq-{D}", "RQ codes", M),
                     (f"rq-{D}", "RQ codes, rescored (shortlist 50)", M),
                     (f"rq-{D}", f"RQ codes, rescored (shortlist {N})", M),
                     (f"sq4-{D}", "SQ4 codes", D // 2),
                     (f"sq4-{D}", "SQ4 codes, rescored (shortlist 50)", D // 2),
                     (f"sq4-{D}", f"SQ4 codes, rescored (shortlist {N})", D // 2)]
    for m in (f"rq-{D}", f"sq4-{D}"):
        full = next(r for r in rep.results if r.method == m and f"shortlist {N}" in
                    r.representation)
        assert full.recall == {"1": 1.0, "10": 1.0}  # every row rescored: exact search
        raw = next(r for r in rep.results if r.method == m and "rescored" not in r.representation)
        assert raw.recall["10"] <= full.recall["10"]
    assert "own fixed size 16 B (target: 4 B)" in rep.results[7].note
    assert "4 B like the target" in rep.results[4].note


def test_bad_baselines_in_the_cli(shrunk):
    root, X, uri, target = shrunk
    res = CliRunner().invoke(main, ["eval", "--target", target, "--baselines", "pq,rabitq8"])
    assert res.exit_code == 1
    assert res.output == (
        "Error: The 'baselines' parameter of eval must be one of 'pca', 'pca-whiten', 'pq', "
        "'opq', 'rq', 'rabitq', 'rabitq1', 'rabitq2', 'rabitq4', 'sign', 'sq8', 'sq4'. Got "
        "'rabitq8' instead.\n")


def test_plot_has_a_rescored_panel(monkeypatch, tmp_path):
    from tldr_index import plots

    seen = {}
    monkeypatch.setattr(plots, "line_panels", lambda panels, path, **kw: seen.setdefault(
        "panels", panels) and str(path))
    rows = [{"method": "tldr (target)", "representation": "PQ codes", "bytes_per_vector": 8,
             "recall": {"10": 0.5}},
            {"method": "tldr (target)", "representation": "search --rescore (shortlist 200)",
             "bytes_per_vector": 8, "recall": {"10": 0.9}},
            {"method": "rq-32", "representation": "RQ codes", "bytes_per_vector": 8,
             "recall": {"10": 0.4}},
            {"method": "rq-32", "representation": "RQ codes, rescored (shortlist 200)",
             "bytes_per_vector": 8, "recall": {"10": 0.8}},
            {"method": "rq-32", "representation": "RQ codes, rescored (shortlist 400)",
             "bytes_per_vector": 8, "recall": {"10": 0.85}}]
    plots.recall_vs_bytes(rows, tmp_path / "p.png")
    raw, resc = seen["panels"]
    assert raw.series == {"tldr (target)": ([8], [0.5]), "rq-32": ([8], [0.4])}
    assert resc.series == {"tldr (target)": ([8], [0.9]), "rq-32": ([8], [0.8])}
