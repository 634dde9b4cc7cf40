"""tldr_index.row_ids.RowIds: row position -> id without the ids in the heap (consecutive int ids:
none held; other int64 ids: a memory-mapped temporary file; strings: Arrow). Each kind returns
the same ids as a plain gather of the id column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tldr_index.row_ids import RowIds


@pytest.mark.parametrize("ids, kind", [
    (pa.array(np.arange(7, 1007, dtype=np.int64)), "range"),
    (pa.array(np.arange(0, 1000, dtype=np.int32)), "range"),
    (pa.array(np.random.default_rng(0).permutation(5000)[:1000].astype(np.int64)), "mapped"),
    (pa.array(np.arange(1000, dtype=np.int64) * 3), "mapped"),
    (pa.array([f"doc-{i}" for i in range(1000)]), "arrow"),
    (pa.array(np.empty(0, np.int64)), "range"),
])
def test_each_kind_gives_the_ids_of_a_plain_gather(ids, kind, tmp_path):
    r = RowIds.of(ids, spill_dir=tmp_path)
    assert r.kind == kind and len(r) == len(ids)
    want = ids.to_numpy(zero_copy_only=False)
    if len(ids):
        P = np.random.default_rng(1).integers(0, len(ids), size=(4, 10))
        got = r.at(P)
        assert got.shape == P.shape
        np.testing.assert_array_equal(got, want[P].astype(got.dtype))
    assert r.arrow().to_pylist() == [int(v) if kind != "arrow" else v for v in want]
    assert r.heap_bytes == (0 if kind != "arrow" else sum(
        b.size for b in ids.buffers() if b is not None))
    assert r.mapped_bytes == (8 * len(ids) if kind == "mapped" else 0)
    assert list(tmp_path.iterdir()) == []  # the mapped file is unlinked at once
