"""The rescore cache (tldr_index.rescore_cache): rescoring by row position from a local copy of
the originals returns the same result as rescoring by id from the source; a cache that does not
match the target's rows is a clear error unless the fallback is asked; the CLI writes and uses
it. Small seeded structured data (1,000 rows)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _pipeline_helpers import lancedb_source
from click.testing import CliRunner
from conftest import make_structured

import tldr_index
from tldr_index.errors import InvalidParameterError, ModelFormatError
from tldr_index.pipeline import shrink
from tldr_index.rescore_cache import sidecar
from tldr_index.rescore_cache_write import write_rescore_cache
from tldr_index.search import search

N = 1000


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("rc")
    X = make_structured(N + 20, 32, seed=5)
    src = lancedb_source(str(root), X[:N])
    tgt = src + "_c"
    shrink(src, tgt, work_dir=root / "w", index_min_rows=500, epochs=1, threads=1,
           eval_queries=50, dim=8, pq_bytes=4)
    return root, src, tgt, X


def test_rescoring_by_position_equals_rescoring_by_id(target):
    root, _, tgt, X = target
    Q = X[N:]
    path = write_rescore_cache(tgt, root / "c32.npy", dtype="float32")
    by_id = search(tgt, Q, k=10, rescore=True)
    by_pos = search(tgt, Q, k=10, rescore=True, rescore_cache=path)
    assert by_pos.shortlist == by_id.shortlist and by_pos.nprobe == by_id.nprobe
    np.testing.assert_array_equal(by_pos.ids, by_id.ids)
    np.testing.assert_allclose(by_pos.distances, by_id.distances, rtol=0, atol=1e-6)
    # float16: the same ids except between near ties, distances within float16 rounding
    p16 = write_rescore_cache(tgt, root / "c16.npy")
    r16 = search(tgt, Q, k=10, rescore=True, rescore_cache=p16)
    assert (r16.ids == by_id.ids).mean() >= 0.97
    assert np.abs(np.sort(r16.distances, 1) - np.sort(by_id.distances, 1)).max() < 2e-3
    # and through tldr_index.open: the cache is opened once per searcher
    with tldr_index.open(tgt) as c:
        r = c.search(Q, k=10, rescore=True, rescore_cache=path)
        np.testing.assert_array_equal(r.ids, by_id.ids)
        assert len(c._searcher()._caches) == 1
    assert json.loads(sidecar(path).read_text())["rows"] == N


def test_a_cache_of_other_rows(target, tmp_path, caplog):
    root, src, tgt, X = target
    path = write_rescore_cache(tgt, tmp_path / "c.npy")
    info = json.loads(sidecar(path).read_text())
    info["ids_sha256"] = "0" * 64
    sidecar(path).write_text(json.dumps(info))
    msg = (f"Rescore cache '{path}' does not match target '{tgt}': the SHA-256 of the target's "
           f"ids differs from the one it was written for. Rewrite it (tldr-index "
           f"rescore-cache), or pass rescore_cache_fallback=True (--rescore-cache-fallback) to "
           f"fetch the originals from the source.")
    with pytest.raises(ModelFormatError, match=re.escape(msg)):
        search(tgt, X[N:], k=10, rescore=True, rescore_cache=path)
    r = search(tgt, X[N:], k=10, rescore=True, rescore_cache=path, rescore_cache_fallback=True)
    np.testing.assert_array_equal(r.ids, search(tgt, X[N:], k=10, rescore=True).ids)
    assert "Fetching from the source instead." in caplog.text
    short = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.float16,
                                      shape=(N - 1, 32))
    del short
    sidecar(tmp_path / "s.npy").write_text(json.dumps({**info, "rows": N - 1}))
    with pytest.raises(ModelFormatError, match=re.escape(
            f"Rescore cache '{tmp_path / 's.npy'}' does not match target '{tgt}': it holds "
            f"{N - 1} rows, the target has {N}.")):
        search(tgt, X[N:], k=10, rescore=True, rescore_cache=tmp_path / "s.npy")
    with pytest.raises(ModelFormatError, match=re.escape(
            f"Rescore cache '{tmp_path / 'nope.npy'}' does not exist")):
        search(tgt, X[N:], k=10, rescore=True, rescore_cache=tmp_path / "nope.npy")
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'dtype' parameter of write_rescore_cache must be one of 'float16', "
            "'float32'. Got 'int8' instead.")):
        write_rescore_cache(tgt, tmp_path / "x.npy", dtype="int8")


def test_cli_writes_and_uses_the_cache(target, tmp_path):
    from tldr_index.cli import main

    _, _, tgt, X = target
    np.save(tmp_path / "q.npy", X[N:])
    path = str(tmp_path / "cli.npy")
    res = CliRunner().invoke(main, ["rescore-cache", "--target", tgt, "--path", path,
                                    "--dtype", "float32"], catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.startswith(
        f"Wrote the rescore cache of {tgt} to {path} (")
    out = CliRunner().invoke(main, ["search", "--target", tgt, "--queries",
                                    str(tmp_path / "q.npy"), "--rescore", "--rescore-cache",
                                    path, "--json"], catch_exceptions=False)
    got = json.loads(out.stdout)
    assert got["ids"] == search(tgt, X[N:], k=10, rescore=True).ids.tolist()


def test_float16_conversion_is_exact():
    """to_float32 (torch's vectorised conversion) gives NumPy's values for every float16 bit
    pattern: normals, subnormals, zeros, infinities (NaNs stay NaN)."""
    from tldr_index.rescore_cache import to_float32

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got, want = to_float32(every), every.astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (256, 256)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    assert to_float32(np.ones((2, 3), np.float64)).dtype == np.float32


def test_take_returns_rows_in_the_order_asked(tmp_path):
    """RescoreCache.take: sorted, unsorted and repeated positions give the rows asked, in order."""
    from tldr_index.rescore_cache import RescoreCache

    A = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float16)
    c = RescoreCache(tmp_path / "x.npy", A, {})
    for pos in ([3, 7, 7, 40], [40, 3, 7, 3], [5], []):
        got = c.take(np.array(pos, dtype=np.int64))
        assert got.dtype == np.float32 and got.shape == (len(pos), 6)
        np.testing.assert_array_equal(got, A[pos].astype(np.float32))
