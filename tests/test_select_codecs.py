"""Selection that never loses (``sweep`` / ``shrink --method auto``): the identity map with every
codec meeting the budget is a candidate, measured on the same held-out rows as the learned maps,
so the choice is never worse there than the best on-original codec.

Data (seeded): isotropic Gaussian rows (900 x 32: no d < D keeps the neighbours, so the identity
map must win) and low-rank structured rows (make_structured 900 x 64, 6 latent dims: a learned
map to d=8 must beat the codecs on the 64-d originals at the same 8 bytes).
"""

from __future__ import annotations

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source, recall

from tests.conftest import make_structured
from tldr_index.pipeline import shrink
from tldr_index.sweep import sweep

FAST = dict(epochs=1, sample=600, threads=1, eval_queries=100)


def _never_loses(res) -> None:
    best_original = max(c.score("pq") for c in res.configs if c.method == "none")
    assert res.chosen.score("pq") >= best_original
    assert res.chosen.score("pq") == max(c.score("pq") for c in res.configs)


def test_identity_map_wins_where_reduction_hurts(tmp_path):
    X = np.random.default_rng(0).standard_normal((900, 32)).astype(np.float32)
    uri = lancedb_source(str(tmp_path), X)
    res = sweep(uri, dims=[8, 16], bytes=[8], method="auto", work_dir=tmp_path / "w", **FAST)
    names = {(c.method, c.dim, c.codec) for c in res.configs}
    assert {("none", 32, "pq"), ("none", 32, "opq"), ("none", 32, "rq"),
            ("none", 32, "rabitq")} <= names and ("tldr", 8, "rq") in names  # the default codec
    assert res.chosen.method == "none" and res.chosen.dim == 32, res.reason
    _never_loses(res)


def test_learned_map_wins_on_low_rank_data(tmp_path):
    X = make_structured(900, 64, latent=6, clusters=8, seed=1)
    uri = lancedb_source(str(tmp_path), X)
    res = sweep(uri, dims=[8], bytes=[8], method="auto", work_dir=tmp_path / "w", **FAST)
    assert any(c.method == "none" for c in res.configs)
    assert res.chosen.method in ("tldr", "pca") and res.chosen.dim == 8, res.reason
    _never_loses(res)
    # shrink --method auto makes the same choice (same candidates, same held-out rows)
    rep = shrink(uri, f"lance://{tmp_path}/t.lance", dims=[8], bytes=8, method="auto",
                 work_dir=tmp_path / "w2", **FAST)
    assert (rep.method, rep.dim, rep.codec) == (res.chosen.method, 8, res.chosen.codec)


# ----------------------------------------------------------------------------------------------
# quantization-aware training inside the selection (qat fit option, sweep --qat)
#
# Data: make_structured 900 x 32 (6 latent dims), cosine. Candidates d=8 and d=16 with RQ 2 B:
# the qat rule (auto: RQ with d >= 8 x bytes) turns QAT on at d=16 only.

QDATA = dict(dims=[8, 16], bytes=[2], source_options={"distance": "cosine"}, **FAST)


@pytest.fixture(scope="module")
def qsource(tmp_path_factory):
    X = make_structured(900, 32, latent=6, clusters=8, seed=4)
    return X, lancedb_source(str(tmp_path_factory.mktemp("qsel")), X)


def test_a_qat_candidate_appears_where_the_rule_says_beside_its_plain_map(qsource, tmp_path):
    """qat='auto': d=16 RQ 2 B is measured twice (plain and +QAT), d=8 once; the plain one is
    exactly the qat='off' sweep's fit (the ranking fit QAT started from). (qat='on', no plain
    version: test_shrink_writes_the_selected_qat_map_as_measured.)"""
    X, uri = qsource
    res = sweep(uri, work_dir=tmp_path / "w", **QDATA)
    labels = sorted(c.label for c in res.configs)
    assert labels == ["tldr d=16 RQ 2 B", "tldr d=16 RQ 2 B +QAT", "tldr d=8 RQ 2 B"]
    assert [c.qat for c in res.configs if c.label.endswith("+QAT")] == ["rq"]
    out = res.to_dict()
    assert sorted(c["label"] for c in out["configs"]) == labels
    assert {c["label"]: c["qat"] for c in out["configs"]}["tldr d=16 RQ 2 B +QAT"] == "rq"
    assert out["chosen"]["label"] == res.chosen.label
    from rich.console import Console

    from tldr_index.cli.tables import sweep_table
    console = Console(record=True, width=200)
    console.print(sweep_table(res))
    rows = [line.split("│")[1:4] for line in console.export_text().splitlines()
            if line.count("│") > 3]
    assert sorted([c.strip() for c in r] for r in rows) == [
        ["tldr", "16", "rq"], ["tldr", "8", "rq"], ["tldr +QAT", "16", "rq"]]
    off = sweep(uri, work_dir=tmp_path / "w", fit_options={"qat": "off"}, **QDATA)
    assert sorted(c.label for c in off.configs) == ["tldr d=16 RQ 2 B", "tldr d=8 RQ 2 B"]
    figures = {c.label: (c.recall_float, c.recall_pq, c.recall_rescored)
               for c in res.configs}
    for c in off.configs:   # the plain candidates: the same fits, the same figures (exactly)
        assert figures[c.label] == (c.recall_float, c.recall_pq, c.recall_rescored)


def _recall_of_the_target(X: np.ndarray, target: str, queries: np.ndarray) -> float:
    """recall@10 of the target's stored codes for ``queries`` (row positions, self excluded)
    against brute-force cosine search of ``X``: recomputed from the target alone."""
    from connectors import open_target
    from tldr_index.compact import CompactModel
    from tldr_index.search import read_codes

    t = open_target(target)
    model = CompactModel.of_target(t)
    ids, codes = read_codes(t, "id", "pq_codes")
    codes = codes[np.argsort(ids.to_numpy())]            # ids 3 + 7 i: row order
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U[queries] @ U.T
    S[np.arange(len(queries)), queries] = -np.inf
    truth = np.argsort(-S, axis=1)[:, :10]
    _, found = model.topk(codes, model.encode(X[queries]), 11)
    return recall(np.array([f[f != q][:10] for q, f in zip(queries, found)]), truth)


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_shrink_writes_the_selected_qat_map_as_measured(qsource, tmp_path, monkeypatch, mode):
    """shrink --target-recall with d=16 RQ 2 B: the select stage fits each candidate once, the
    train stage refits nothing, the target holds the chosen map and (QAT) its codebooks, and
    the recall the selection reported is the recall of the target's codes on the same rows."""
    from tldr_index.base import BaseReducer
    from tldr_index.shrink import train as train_stage
    from tldr_index.shrink.sampling import held_out, sample_rows

    X, uri = qsource
    fits = []
    real = train_stage.fit_reducer

    def counting(run, method, dim, *a, **kw):
        fits.append((method, dim, kw.get("qat")))
        return real(run, method, dim, *a, **kw)

    monkeypatch.setattr(train_stage, "fit_reducer", counting)
    target = f"lance://{tmp_path}/t.lance"
    rep = shrink(uri, target, dims=[16], bytes=2, target_recall=0.05, keep_work=True,
                 work_dir=tmp_path / "w", fit_options={"qat": mode},
                 **{k: v for k, v in QDATA.items() if k not in ("dims", "bytes")})
    assert fits == [("tldr", 16, "rq")]      # one fit (the plain map is its ranking fit)
    cands = {c["label"]: c for c in rep.selection["candidates"]}
    assert sorted(cands) == (["tldr d=16 RQ 2 B +QAT"] if mode == "on" else
                             ["tldr d=16 RQ 2 B", "tldr d=16 RQ 2 B +QAT"])
    best = max(cands.values(), key=lambda c: (c["recall_pq"], c["qat"] is None))
    chosen = rep.selection["chosen"]
    assert chosen.get("qat") == best["qat"] and (rep.method, rep.dim) == ("tldr", 16)
    assert (rep.qat is not None) == (best["qat"] is not None)
    m = BaseReducer.load(tmp_path / "w" / "train" / "model.safetensors")
    assert (tmp_path / "w" / "train" / "model.safetensors").read_bytes() == \
        (tmp_path / "w" / "select" / "model.safetensors").read_bytes()
    if best["qat"]:
        assert rep.selection["reason"].startswith(
            "smallest candidate with recall@10 of the code search >= 0.05: tldr d=16 RQ 2 B "
            "+QAT (")
        assert m.qat == "rq" and m.qat_codebook_.shape == (2, 256, 16)
    n = len(X)
    queries, _ = held_out(n, sample_rows(n, min(n, FAST["sample"]), 0), FAST["eval_queries"], 0)
    assert _recall_of_the_target(X, target, queries) == pytest.approx(best["recall_pq"],
                                                                      abs=1e-12)


def test_qat_on_is_refused_where_a_candidate_cannot_run_it(qsource, tmp_path):
    from tldr_index.errors import InvalidParameterError
    from tldr_index.shrink.plan import plan_shrink

    X, uri = qsource
    kw = dict(source_options={"distance": "cosine"}, sample=600)
    with pytest.raises(InvalidParameterError) as e:
        sweep(uri, dims=[16], bytes=[2], method="pca", fit_options={"qat": "on"},
              work_dir=tmp_path / "w", **kw)
    assert str(e.value) == ("The 'fit_options.qat' parameter of sweep (--qat) can be 'on' only "
                            "with method='tldr' (got method='pca'). Got qat='on' instead; pass "
                            "'auto' or 'off'.")
    with pytest.raises(InvalidParameterError) as e:
        shrink(uri, f"lance://{tmp_path}/x.lance", dims=[16], bytes=0, method="auto",
               fit_options={"qat": "on"}, work_dir=tmp_path / "w2", **kw)
    assert str(e.value) == ("The 'fit_options.qat' parameter of shrink (--qat) can be 'on' "
                            "only with codes (got bytes=0). Got qat='on' instead; pass 'auto' "
                            "or 'off'.")
    assert not (tmp_path / "w").exists() and not (tmp_path / "w2").exists()
    # method='auto' with --qat on: every TLDR candidate through its codes, PCA and the identity
    # map measured as they are
    p = plan_shrink(uri, f"lance://{tmp_path}/y.lance", dims=[8, 16], bytes=2, method="auto",
                    fit_options={"qat": "on"}, **kw)
    assert p.select["qat"] == {"mode": "on", "fits": [[8, "rq", 2, "rq"], [16, "rq", 2, "rq"]],
                               "plain": False}
    assert "tldr d=16 RQ 2 B +QAT, pca d=16 RQ 2 B" in p.text()


def test_ties_go_to_the_plain_map_and_the_reason_names_both():
    from tldr_index.sweep import SweepConfig, choose

    plan = {"methods": ["tldr"], "criterion": "pq", "target_recall": None}
    plain = SweepConfig("tldr", 16, 2, 0.7, 0.50, 0.9, 0.0, "rq")
    tuned = SweepConfig("tldr", 16, 2, 0.7, 0.50, 0.9, 0.0, "rq", "rq")
    assert choose([tuned, plain], plan, 10)[0] is plain
    better = SweepConfig("tldr", 16, 2, 0.7, 0.55, 0.9, 0.0, "rq", "rq")
    chosen, reason = choose([plain, better], plan, 10)
    assert chosen is better and reason == (
        "best recall@10 of the code search: tldr d=16 RQ 2 B +QAT (0.550); qat auto (+QAT only "
        "when strictly better than the plain map): d=16 RQ 2 B: tldr +QAT 0.550 vs tldr 0.500; "
        "measured on 10 held-out rows")


def test_sweep_cli_qat_option(qsource, tmp_path):
    from click.testing import CliRunner

    from tldr_index.cli import main

    X, uri = qsource
    out = CliRunner().invoke(main, ["sweep", "--help"])
    assert out.exit_code == 0 and "--qat [auto|on|off]" in out.output
    assert "Each QAT candidate costs its fine-tune" in " ".join(out.output.split())
    out = CliRunner().invoke(main, ["sweep", "--source", uri, "--qat", "yes"])
    assert out.exit_code == 2 and "Invalid value for '--qat': 'yes' is not one of 'auto', " \
        "'on', 'off'." in out.output
    out = CliRunner().invoke(main, ["sweep", "--source", uri, "--dims", "16", "--bytes", "2",
                                    "--method", "pca", "--qat", "on", "--distance", "cosine",
                                    "--sample", "600", "--work-dir", str(tmp_path / "w")])
    assert out.exit_code == 1 and "can be 'on' only with method='tldr' (got method='pca')" \
        in out.output
