"""Every codec through the product: shrink -> search -> tldr_index.open().add -> search, and the
identity map (``method="none"``).

Data: make_structured 650 x 32 (seeded, low rank, unit rows): 600 source rows, 50 added later.
Checks: the target stores ``code_bytes`` per row and records the codec; ``search`` returns
exactly what the codec kernel gives on the stored codes; ``open().encode`` equals the stored
model's codes; each added row finds itself among its 10 nearest (the codes of a row are the
closest to it: at least 80% of them, a loose floor for 8-byte codes of 16-d vectors); the
recall estimate is measured for every codec.
"""

from __future__ import annotations

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source

import tldr_index
from connectors import open_target
from tests.conftest import make_structured
from tldr_index.compact import CompactModel
from tldr_index.pipeline import search, shrink
from tldr_index.search import read_codes

N, D = 600, 32
FAST = dict(epochs=1, sample=600, eval_queries=50, threads=1)
CASES = {  # id: (shrink arguments, metric, code bytes)
    "pq": (dict(dim=16, codec="pq", bytes=8), "l2", 8),
    "opq": (dict(dim=16, codec="opq", bytes=8), "cosine", 8),
    "rq": (dict(dim=16, codec="rq", bytes=8), "l2", 8),
    "rabitq": (dict(dim=16, codec="rabitq", bits=2), "cosine", 8),
    "none-rabitq": (dict(method="none", codec="rabitq", bits=1), "ip", 8),
}


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return make_structured(N + 50, D, latent=6, clusters=8, seed=4)


@pytest.mark.parametrize("case", list(CASES))
def test_shrink_search_add_search(data, tmp_path, case):
    kw, metric, size = CASES[case]
    X = data
    src = lancedb_source(str(tmp_path), X[:N])
    tgt = src + "_c"
    rep = shrink(src, tgt, work_dir=tmp_path / "w", source_options={"distance": metric},
                 **kw, **FAST)
    assert (rep.codec, rep.code_bytes, rep.pq_bytes) == (kw["codec"], size, size)
    assert rep.dim == kw.get("dim", D) and rep.method == kw.get("method", "tldr")
    assert 0 < rep.recall_at_10 <= rep.recall_at_10_rescored <= 1
    t = open_target(tgt)
    model = CompactModel.of_target(t)
    assert (model.codec_name, model.code_bytes, model.metric) == (kw["codec"], size, metric)
    assert t.metadata["codes"] == {"codec": kw["codec"], "bytes": size, "column": "pq_codes"}
    ids, codes = read_codes(t, "id", "pq_codes")
    assert codes.shape == (N, size)
    Q = X[N - 20:N] + 0.01 * np.random.default_rng(0).standard_normal((20, D)).astype(np.float32)
    res = search(tgt, Q, k=10)
    _, pos = model.topk(codes, model.encode(Q), 10)
    np.testing.assert_array_equal(res.ids, ids.to_numpy()[pos])
    c = tldr_index.open(tgt)
    new = X[N:]
    _, own = c.encode(new)
    np.testing.assert_array_equal(own, model.encode_codes(model.encode(new)))
    new_ids = np.arange(50, dtype=np.int64) + 10_000
    assert c.add(new_ids, new) == 50
    hits = search(tgt, new, k=10).ids
    assert np.mean([i in h for i, h in zip(new_ids, hits)]) >= 0.8
    assert len(tldr_index.open(tgt).search(Q, k=10).ids) == 20


def test_reindex_encodes_new_rows_with_the_stored_codec(data, tmp_path):
    """reindex adds the source's new rows with the target's own codec (here RQ, cosine): their
    stored codes are the stored model's codes of their vectors."""
    import lancedb
    from _pipeline_helpers import table_of

    from tldr_index.reindex import reindex

    src = lancedb_source(str(tmp_path), data[:N])
    tgt = src + "_c"
    shrink(src, tgt, dim=16, codec="rq", bytes=6, work_dir=tmp_path / "w",
           source_options={"distance": "cosine"}, **FAST)
    new_ids = np.arange(50, dtype=np.int64) + 20_000
    lancedb.connect(str(tmp_path / "db")).open_table("docs").add(table_of(data[N:], ids=new_ids))
    rep = reindex(tgt, work_dir=tmp_path / "rw")
    assert (rep.status, rep.added) == ("updated", 50)
    t = open_target(tgt)
    model = CompactModel.of_target(t)
    assert (model.codec_name, model.code_bytes) == ("rq", 6)
    ids, codes = read_codes(t, "id", "pq_codes")
    pos = {int(i): r for r, i in enumerate(ids.to_numpy())}
    got = codes[[pos[int(i)] for i in new_ids]]
    np.testing.assert_array_equal(got, model.encode_codes(model.encode(data[N:])))


def test_cli_codec_flags_and_bad_budget(data, tmp_path):
    """--codec/--bits/--bytes reach shrink; --pq-bytes is the same option; a budget the codec
    cannot meet is one line naming --bytes, the rule, the value and the nearest budgets, and
    nothing is written."""
    import json

    from click.testing import CliRunner

    from tldr_index.cli import main

    src = lancedb_source(str(tmp_path), data[:N])
    base = ["shrink", "--source", src, "--work-dir", str(tmp_path / "w"), "--threads", "1",
            "--epochs", "1", "--sample", "600"]
    out = CliRunner().invoke(main, base + ["--dim", "12", "--bytes", "5", "--codec", "pq",
                                           "--quiet"])
    assert out.exit_code == 1
    assert out.stderr.strip() == (
        "Error: The 'bytes' parameter of shrink (--bytes) must be a divisor of d (one "
        "sub-quantizer of 256 centroids per byte) for codec='pq' at d=12. Got 5 instead; the "
        "nearest feasible budgets are 4 and 6.")
    out = CliRunner().invoke(main, base + ["--dim", "12", "--bytes", "13", "--quiet"])
    assert out.exit_code == 1  # the default codec, RQ: at most d bytes
    assert out.stderr.strip() == (
        "Error: The 'bytes' parameter of shrink (--bytes) must be in the range [1, d] (one "
        "residual codebook of 256 centroids per byte) for codec='rq' at d=12. Got 13 instead; "
        "the nearest feasible budgets are 12.")
    out = CliRunner().invoke(main, base + ["--dim", "12", "--codec", "rabitq", "--bits", "3"])
    assert out.exit_code == 1 and out.stderr.strip().splitlines()[-1] == (
        "Error: The 'bits' parameter of shrink must be one of 1, 2, 4. Got 3 instead.")
    assert not (tmp_path / "w").exists() and not (tmp_path / "db" / "docs_tldr12.lance").exists()
    out = CliRunner().invoke(main, base + ["--dim", "16", "--codec", "rabitq", "--bits", "2",
                                           "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.stdout)
    assert (rep["codec"], rep["code_bytes"], rep["pq_bytes"]) == ("rabitq", 8, 8)
