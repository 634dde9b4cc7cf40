"""Selection that never loses (``sweep`` / ``shrink --method auto``): the identity map with every
codec meeting the budget is a candidate, measured on the same held-out rows as the learned maps,
so the choice is never worse there than the best on-original codec.

Data (seeded): isotropic Gaussian rows (900 x 32: no d < D keeps the neighbours, so the identity
map must win) and low-rank structured rows (make_structured 900 x 64, 6 latent dims: a learned
map to d=8 must beat the codecs on the 64-d originals at the same 8 bytes).
"""

from __future__ import annotations

import numpy as np
from _pipeline_helpers import lancedb_source

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
