"""``sweep`` / ``method="auto"`` / ``target_recall``: one kNN graph for every candidate, the
choice rule, the decision recorded in the target, and the bad-input messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, make_nested
from click.testing import CliRunner

import tldr_index.knn
from connectors import open_target
from tldr_index import pipeline
from tldr_index.shrink import train as train_stage
from tldr_index.cli import main
from tldr_index.errors import InvalidParameterError
from tldr_index.sweep import EXIT_NOT_REACHED, SweepConfig, choose, sweep, unreached_advice

N, D = 900, 32
FAST = dict(epochs=1, sample=600, threads=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return root, lancedb_source(str(root), make_nested(N, D))


def test_sweep_builds_the_knn_graph_once(source, tmp_path, monkeypatch):
    root, uri = source
    calls = []
    real = tldr_index.knn.knn_graph

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tldr_index.knn, "knn_graph", counting)
    res = sweep(uri, dims=[4, 8], pq_bytes=[2, 4], eval_queries=80, work_dir=tmp_path / "w",
                **FAST)
    assert len(calls) == 1 and res.knn_runs == 1
    assert [(c.method, c.dim, c.pq_bytes) for c in res.configs] == [
        ("tldr", 4, 2), ("tldr", 8, 2), ("tldr", 4, 4), ("tldr", 8, 4)]
    assert res.queries == 80 and res.query_kind == "held-out rows"
    for c in res.configs:
        assert 0 < c.recall_pq <= 1 and 0 < c.recall_float <= 1 and c.recall_rescored >= c.recall_pq
    # a second sweep of the same source reuses the checkpointed graph
    again = sweep(uri, dims=[8], pq_bytes=[4], eval_queries=80, work_dir=tmp_path / "w", **FAST)
    assert len(calls) == 1 and again.knn_runs == 0
    json.dumps(again.to_dict())


def _cfg(method, dim, pq, r):
    return SweepConfig(method, dim, pq, r, r, r, 0.0)


def test_target_recall_picks_the_smallest_config_reaching_it():
    configs = [_cfg("tldr", 16, 8, 0.50), _cfg("tldr", 32, 8, 0.70), _cfg("tldr", 32, 16, 0.85),
               _cfg("tldr", 128, 16, 0.93), _cfg("tldr", 64, 16, 0.91),
               _cfg("tldr", 64, 32, 0.95)]
    plan = {"methods": ["tldr"], "criterion": "pq", "target_recall": 0.9}
    chosen, reason = choose(configs, plan, 100)
    assert (chosen.dim, chosen.pq_bytes) == (64, 16)  # 16 bytes beat 32; d=64 beats d=128
    assert reason == ("smallest candidate with recall@10 of the code search >= 0.9: tldr "
                      "d=64 PQ 16 B (0.910); measured on 100 held-out rows")
    chosen, reason = choose(configs, {**plan, "target_recall": 0.99}, 100)
    assert chosen is None
    assert reason == ("no candidate reaches recall@10 of the code search >= 0.99 on 100 "
                      "held-out rows (best: tldr d=64 PQ 32 B, 0.950)")


def test_auto_rule_keeps_tldr_only_when_strictly_better():
    plan = {"methods": ["tldr", "pca"], "criterion": "pq", "target_recall": None}
    worse = [_cfg("tldr", 8, 4, 0.30), _cfg("pca", 8, 4, 0.40)]
    better = [_cfg("tldr", 8, 4, 0.45), _cfg("pca", 8, 4, 0.40)]
    tie = [_cfg("tldr", 8, 4, 0.40), _cfg("pca", 8, 4, 0.40)]
    assert choose(worse, plan, 50)[0].method == "pca"
    assert choose(better, plan, 50)[0].method == "tldr"
    assert choose(tie, plan, 50)[0].method == "pca"
    assert "d=8 PQ 4 B: tldr 0.450 vs pca 0.400" in choose(better, plan, 50)[1]


def _sabotage(monkeypatch, bad: str) -> None:
    """Make ``bad``'s fitted map rank 1 (so the other method measures better)."""
    real = train_stage.fit_reducer

    def fit(c, method, dim, ckpt_dir=None, **kw):
        model = real(c, method, dim, ckpt_dir, **kw)
        if method == bad:
            # rank 1: every output coordinate is the same projection
            model.components_ = np.repeat(model.components_[:1], dim, axis=0)
            if hasattr(model, "encoder_"):
                model.encoder_ = None  # encode with components_
        return model

    monkeypatch.setattr(train_stage, "fit_reducer", fit)


@pytest.mark.parametrize("bad,expect", [("tldr", "pca"), ("pca", "tldr")])
def test_shrink_method_auto_keeps_the_better(source, tmp_path, monkeypatch, bad, expect):
    root, uri = source
    _sabotage(monkeypatch, bad)
    target = f"lance://{tmp_path}/auto.lance"
    rep = pipeline.shrink(uri, target, dim=8, pq_bytes=4, method="auto", eval_queries=100,
                          work_dir=tmp_path / "w", **FAST)
    cands = rep.selection["candidates"]
    reduced = {c["method"]: c["recall_pq"] for c in cands if c["dim"] == 8}
    assert set(reduced) == {"tldr", "pca"} and reduced[expect] > reduced[bad]
    # the identity map with every codec that meets 4 B on the 32-d originals is measured too
    assert sorted(c["codec"] for c in cands if c["method"] == "none") == ["opq", "pq", "rq"]
    best = max(cands, key=lambda c: c["recall_pq"])
    assert rep.pq_bytes == 4 and (rep.method, rep.dim) == (best["method"], best["dim"])
    assert rep.method != bad
    meta = open_target(target).metadata
    assert meta["method"] == rep.method
    assert meta["selection"]["chosen"] == {"method": best["method"], "dim": best["dim"],
                                           "codec": best["codec"], "code_bytes": 4,
                                           "pq_bytes": 4}
    assert "auto (TLDR kept only when strictly better)" in meta["selection"]["reason"]
    assert f"d=8 RQ 4 B: {expect} " in meta["selection"]["reason"]


def test_advice_when_no_candidate_reaches_the_target():
    """The measured figures per candidate, and flag values that follow from them: at 16 B the
    PQ recall falls as d grows, so the advice is more bytes at the d whose float vectors reach
    the target, --rescore, or no codes; not "larger dims"."""
    configs = [SweepConfig("tldr", 16, 16, 0.72, 0.55, 0.97, 0.0),
               SweepConfig("tldr", 64, 16, 0.93, 0.52, 0.995, 0.0)]
    plan = {"methods": ["tldr"], "criterion": "pq", "target_recall": 0.9}
    chosen, reason = choose(configs, plan, 100)
    assert chosen is None and reason == (
        "no candidate reaches recall@10 of the code search >= 0.9 on 100 held-out rows "
        "(best: tldr d=16 PQ 16 B, 0.550)")
    measured = ("Measured recall@10 (PQ / rescored / float): tldr d=16 PQ 16 B 0.550 / 0.970 / "
                "0.720; tldr d=64 PQ 16 B 0.520 / 0.995 / 0.930. What would help: search "
                "--rescore reaches it: tldr d=16 PQ 16 B gives 0.970 rescored (shrink --dim 16 "
                "--pq-bytes 16, then search --rescore; sweep --criterion rescored selects on it); "
                "the float vectors of d=64 reach 0.930 but 16-byte codes lose it: more PQ bytes "
                "at that d (")
    assert unreached_advice(configs, plan, 384, owner="shrink") == measured + (
        "--dim 64 --pq-bytes 32; bytes must divide d); or store no codes and search the float "
        "vectors (--dim 64 --pq-bytes 0, recall@10 0.930); or lower --target-recall to 0.550 or "
        "less. shrink's --pq-bytes takes one size; compare several first with tldr-index sweep "
        "--pq-bytes B,B,...")
    assert unreached_advice(configs, plan, 384, owner="sweep") == measured + (
        "--dims 64 --pq-bytes 32,64; bytes must divide d); or store no codes and search the "
        "float vectors (--dims 64 --pq-bytes 0, recall@10 0.930); or lower --target-recall to "
        "0.550 or less.")
    # nothing reaches it even as float vectors, not even rescored: larger dims
    low = [SweepConfig("pca", 8, 8, 0.40, 0.38, 0.80, 0.0)]
    assert unreached_advice(low, plan, 32, owner="shrink") == (
        "Measured recall@10 (PQ / rescored / float): pca d=8 PQ 8 B 0.380 / 0.800 / 0.400. "
        "What would help: no measured d reaches it even as float vectors (best 0.400 at d=8): "
        "try larger dims (--dims 16); or lower --target-recall to 0.380 or less. shrink's "
        "--pq-bytes takes one size; compare several first with tldr-index sweep --pq-bytes "
        "B,B,...")
    assert unreached_advice(low, plan, 9, owner="sweep").endswith(
        "What would help: no d below the source's 9 reaches it even as float vectors (best "
        "0.400 at d=8); or lower --target-recall to 0.380 or less.")


def test_sweep_cli_exit_code_when_the_target_is_not_reached(source, tmp_path):
    root, uri = source
    args = ["sweep", "--source", uri, "--dims", "4", "--pq-bytes", "4", "--method", "pca",
            "--target-recall", "0.999", "--sample", "600", "--queries", "50", "--threads", "1",
            "--work-dir", str(tmp_path / "w")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == EXIT_NOT_REACHED == 6, out.output
    assert "no candidate reaches recall@10 of the code search >= 0.999 on 50 held-out " \
        "rows (best: pca d=4 RQ 4 B, " in out.stdout
    assert "Measured recall@10 (PQ / rescored / float): pca d=4 RQ 4 B " in out.stdout
    assert out.stderr.splitlines()[-1] == ("Error: --target-recall 0.999 is not reached (exit "
                                           "code 6); see above.")
    out = CliRunner().invoke(main, args + ["--quiet"])
    assert out.exit_code == 6 and out.stdout == ""
    assert out.stderr.startswith("Error: --target-recall 0.999 is not reached (exit code 6): no "
                                 "candidate reaches recall@10 of the code search >= 0.999")
    assert "What would help: " in out.stderr and out.stderr.count("\n") == 1
    out = CliRunner().invoke(main, args + ["--json", "-"])
    assert out.exit_code == 6 and json.loads(out.stdout)["chosen"] is None


def test_shrink_target_recall_cli(source, tmp_path):
    root, uri = source
    res = sweep(uri, dims=[4, 8], eval_queries=200, work_dir=tmp_path / "s", **FAST)
    by_dim = {c.dim: c.recall_pq for c in res.configs}
    # a target only d=8 reaches, unless d=4 already does
    target = round(by_dim[8] - 0.001, 3)
    want = 4 if by_dim[4] >= target else 8
    out = CliRunner().invoke(main, [
        "shrink", "--source", uri, "--target", f"lance://{tmp_path}/t.lance", "--target-recall",
        str(target), "--dims", "4,8", "--epochs", "1", "--sample", "600", "--threads", "1",
        "--work-dir", str(tmp_path / "w"), "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.output)
    assert rep["dim"] == want and rep["pq_bytes"] == want  # default PQ bytes: d itself here
    assert rep["selection"]["reason"].startswith(
        f"smallest candidate with recall@10 of the code search >= {target}: tldr d={want}")


def test_sweep_cli_table_and_plot(source, tmp_path):
    root, uri = source
    png = tmp_path / "s.png"
    out = CliRunner().invoke(main, [
        "sweep", "--source", uri, "--dims", "4,8", "--pq-bytes", "4", "--method", "pca",
        "--target-recall", "0.2", "--sample", "600", "--queries", "50", "--threads", "1",
        "--work-dir", str(tmp_path / "w"), "--plot", str(png), "--quiet"])
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = CliRunner().invoke(main, [
        "sweep", "--source", uri, "--dims", "4,8", "--pq-bytes", "4", "--method", "pca",
        "--target-recall", "0.2", "--sample", "600", "--queries", "50", "--threads", "1",
        "--work-dir", str(tmp_path / "w")])
    assert out.exit_code == 0, out.output
    assert "recall@10 codes" in out.output and "smallest candidate with" in out.output


def test_bad_sweep_input(source, tmp_path):
    root, uri = source
    with pytest.raises(InvalidParameterError) as e:
        sweep(uri, dims=[8, D], work_dir=tmp_path / "w")
    assert str(e.value) == (
        f"The 'dims' parameter of sweep must hold ints in the range [1, {D - 1}] (smaller than "
        f"the dimension {D} of source '{uri}'). Got {D} instead.")
    with pytest.raises(InvalidParameterError) as e:
        pipeline.shrink(uri, target_recall=1.5, work_dir=tmp_path / "w")
    assert str(e.value) == ("The 'target_recall' parameter of shrink must be a float in the "
                            "range (0.0, 1.0]. Got 1.5 instead.")
    with pytest.raises(InvalidParameterError) as e:
        pipeline.shrink(uri, f"lance://{tmp_path}/x.lance", target_recall=0.999, dims=[4],
                        pq_bytes=4, work_dir=tmp_path / "w2", **FAST)
    assert str(e.value).startswith(
        "The 'target_recall' parameter of shrink cannot be reached: no candidate reaches "
        "recall@10 of the code search >= 0.999 on 200 held-out rows (best: tldr d=4 RQ 4 B, ")
    assert "). Measured recall@10 (PQ / rescored / float): tldr d=4 RQ 4 B " in str(e.value)
    assert "What would help: " in str(e.value) and "add larger dims" not in str(e.value)
    assert str(e.value).endswith("shrink's --pq-bytes takes one size; compare several first "
                                 "with tldr-index sweep --pq-bytes B,B,...")
    assert not (tmp_path / "x.lance").exists()


def test_selection_is_checkpointed_and_resumed(source, tmp_path, monkeypatch):
    root, uri = source
    target = f"lance://{tmp_path}/r.lance"
    kw = dict(target_recall=0.05, dims=[4, 8], pq_bytes=4, work_dir=tmp_path / "w",
              keep_work=True, **FAST)
    real = train_stage.stage_train

    def crash(c):
        raise KeyboardInterrupt("crash after select")

    monkeypatch.setattr(train_stage, "stage_train", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.shrink(uri, target, **kw)
    monkeypatch.setattr(train_stage, "stage_train", real)
    rep = pipeline.shrink(uri, target, resume=True, **kw)
    assert "select" in rep.skipped_stages and "knn" in rep.skipped_stages
    assert (rep.method, rep.dim, rep.pq_bytes) == ("tldr", 4, 4)  # the smallest reaches 0.05
    assert open_target(target).metadata["selection"]["chosen"] == {
        "method": "tldr", "dim": 4, "codec": "rq", "code_bytes": 4, "pq_bytes": 4}
