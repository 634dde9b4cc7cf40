"""Lance datasets and LanceDB tables: round trip, atomic publish, bad input, untouched source."""

from __future__ import annotations

import os
import shutil

import lance
import lancedb
import numpy as np
import pyarrow as pa
import pytest
from _connector_helpers import (MODEL, make_table, reduce_batch, stage_target, staging_leftovers,
                                tree_hashes, write_target)

from connectors import lancedb_uri, open_sink, open_source, open_target
from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy
from connectors.lance_index import segmented
from connectors.lance_store import SCAN_IO_BUFFER_BYTES
from tldr_index.errors import (DuplicateIdError, InvalidInputError, MissingColumnError,
                               SinkStateError, SourceNotFoundError, TargetExistsError)


@pytest.fixture()
def db(tmp_path):
    path = str(tmp_path / "db")
    conn = lancedb.connect(path)
    conn.create_table("docs", data=make_table(300, 16, seed=1))
    return path


def test_round_trip_lancedb_table(db):
    src = open_source(lancedb_uri(db, "docs"))
    assert (src.id_column, src.vector_column, src.dim, src.distance) == ("id", "vector", 16, "l2")
    assert src.payload_columns == ["text", "year"]
    assert src.fingerprint()["version"] == 1
    before = tree_hashes(os.path.join(db, "docs.lance"))

    sizes = [b.num_rows for b in src.iter_batches(64)]
    assert max(sizes) <= 64 and sum(sizes) == 300

    write_target(src, lancedb_uri(db, "docs_compact"), d=4)
    tgt = open_target(lancedb_uri(db, "docs_compact"))
    assert tgt.model_bytes == MODEL
    assert tgt.metadata["source"] == lancedb_uri(db, "docs")
    assert tgt.metadata["dims"] == [16, 4]
    assert tgt.layout.codes_column == "pq_codes"
    got = tgt.dataset.to_table()
    want = make_table(300, 16, seed=1)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("text").to_pylist() == want.column("text").to_pylist()
    assert got.column("year").to_pylist() == want.column("year").to_pylist()
    np.testing.assert_array_equal(vectors_to_numpy(got.column("vector")),
                                  vectors_to_numpy(want.column("vector"))[:, :4])
    assert got.schema.field("vector").type == pa.list_(pa.float32(), 4)
    assert got.schema.field("pq_codes").type == pa.list_(pa.uint8(), 2)
    # LanceDB sees the table, with the record in its schema metadata
    tbl = lancedb.connect(db).open_table("docs_compact")
    assert tbl.count_rows() == 300 and b"tldr_index" in tbl.schema.metadata
    assert sorted(lancedb.connect(db).list_tables().tables) == ["docs", "docs_compact"]
    # the source was not written to, and nothing is left in staging
    assert tree_hashes(os.path.join(db, "docs.lance")) == before
    assert staging_leftovers(db) == []
    hits = tgt.search(vectors_to_numpy(want.column("vector"))[7, :4], k=3)
    assert hits.column("id")[0].as_py() == want.column("id")[7].as_py()


def test_raw_dataset_float16_and_take(tmp_path):
    path = str(tmp_path / "vecs.lance")
    t = make_table(200, 8, seed=2, dtype=np.float16, vector_name="emb")
    lance.write_dataset(t, path)
    src = open_source(path)
    assert src.vector_column == "emb" and src.schema.field("emb").type == pa.list_(pa.float16(), 8)
    X = vectors_to_numpy(t.column("emb"))
    ids = t.column("id").to_numpy()
    np.testing.assert_array_equal(src.take([ids[5], ids[0], ids[199], ids[5]]),
                                  X[[5, 0, 199, 5]].astype(np.float32))
    with pytest.raises(InvalidInputError, match=r"Got 1 unknown id\(s\), first -7\."):
        src.take([ids[1], -7])  # a negative id (float32 sources: tests/test_store_contract.py)
    write_target(src, str(tmp_path / "small.lance"), d=4)
    tgt = open_target(f"lance://{tmp_path}/small.lance")
    got = tgt.to_table()
    assert got.schema.field("emb").type == pa.list_(pa.float16(), 4)
    np.testing.assert_array_equal(vectors_to_numpy(got.column("emb")), X[:, :4])


def test_target_exists_refused_unless_overwrite(db):
    src = open_source(lancedb_uri(db, "docs"))
    uri = lancedb_uri(db, "docs_compact")
    write_target(src, uri, d=4)  # refused without overwrite: tests/test_store_contract.py
    v_before = open_target(uri).version
    write_target(src, uri, d=8, overwrite=True)
    tgt = open_target(uri)
    assert tgt.version > v_before and tgt.metadata["dims"] == [16, 8]
    assert tgt.to_table().schema.field("vector").type == pa.list_(pa.float32(), 8)
    old = open_target(uri, version=v_before)  # rollback stays possible
    assert old.metadata["dims"] == [16, 4] and old.model_bytes == MODEL
    assert staging_leftovers(db) == []
    before = tree_hashes(os.path.join(db, "docs.lance"))
    with pytest.raises(TargetExistsError, match=r"^Target '.*/docs' exists and is not a "
                       r"tldr-index target \(no 'tldr_index' schema metadata\); refusing to "
                       r"replace it even with overwrite=True\.$"):
        write_target(src, lancedb_uri(db, "docs"), overwrite=True)  # e.g. target = source
    assert tree_hashes(os.path.join(db, "docs.lance")) == before
    assert staging_leftovers(db) == []


def test_publish_is_atomic_and_abort_leaves_nothing(db):
    src = open_source(lancedb_uri(db, "docs"))
    uri = lancedb_uri(db, "docs_compact")
    sink = stage_target(src, uri, d=4)  # invisible to open_target: tests/test_store_contract.py
    assert lancedb.connect(db).list_tables().tables == ["docs"]  # and to LanceDB
    sink.publish()
    assert open_target(uri).count() == 300
    # overwrite: a reader opened before publish keeps its version; a new reader sees all of it
    sink = stage_target(src, uri, d=8, overwrite=True)
    reader = lancedb.connect(db).open_table("docs_compact")
    assert open_target(uri).metadata["dims"] == [16, 4]
    sink.publish()
    assert open_target(uri).metadata["dims"] == [16, 8]
    assert reader.schema.field("vector").type.list_size == 4  # still on its version
    assert lancedb.connect(db).open_table("docs_compact").schema.field("vector").type.list_size == 8
    # abort (staging removed, target untouched, idempotent): tests/test_store_contract.py
    sink = stage_target(src, uri, d=2, overwrite=True)
    sink.abort()
    with pytest.raises(SinkStateError, match=r"publish\(\) must be called in state 'verified'"):
        sink.publish()


def test_index_built_above_threshold(tmp_path):
    path = str(tmp_path / "big.lance")
    lance.write_dataset(make_table(1200, 16, seed=3), path)
    src = open_source(path)
    sink = write_target(src, str(tmp_path / "out.lance"), d=8, batch_rows=500,
                        index_min_rows=1000, flush_rows=400)
    assert sink.indexed
    tgt = open_target(str(tmp_path / "out.lance"))
    assert tgt.has_index() and tgt.count() == 1200
    assert len(tgt.dataset.get_fragments()) == 3  # flush_rows bounds the buffered rows
    q = vectors_to_numpy(make_table(1200, 16, seed=3).column("vector"))[11, :8]
    assert tgt.search(q, k=1).column("id")[0].as_py() == 11 * 3 + 1


def _nearest_ids(ds, q: np.ndarray, **kw) -> list[int]:
    return ds.to_table(nearest={"column": "vector", "q": q, "k": 10, **kw},
                       columns=["id"]).column("id").to_pylist()


@pytest.mark.parametrize("overwrite", [False, True])
def test_index_is_built_per_fragment_and_equals_a_flat_scan(tmp_path, overwrite):
    # 1,200 rows in 3 fragments (flush_rows), 12 partitions: one segment per fragment on shared
    # centroids, merged into one; with every partition probed an IVF_FLAT search is exact, so
    # it must find the flat scan's ids
    path = str(tmp_path / "big.lance")
    lance.write_dataset(make_table(1200, 16, seed=3), path)
    src = open_source(path)
    opts = dict(d=8, batch_rows=100, index_min_rows=1000, flush_rows=400,
                index_rows_per_partition=100)
    out = str(tmp_path / "out.lance")
    if overwrite:
        write_target(src, out, **opts)
    sink = write_target(src, out, overwrite=overwrite, **opts)
    assert sink.indexed and sink.index_build == "segmented"
    ds = lance.dataset(out)
    assert len(ds.get_fragments()) == 3
    [idx] = ds.describe_indices()
    assert len(idx.segments) == 1 and idx.num_rows_indexed == 1200
    X = vectors_to_numpy(ds.to_table(columns=["vector"]).column("vector"))
    for q in X[::97]:
        assert _nearest_ids(ds, q, nprobes=12) == _nearest_ids(ds, q, use_index=False)
    assert not staging_leftovers(str(tmp_path))
    # on disk: only the segments some version references (the per-fragment ones were merged)
    used = {str(seg.uuid) for v in ds.versions() for i in lance.dataset(out, version=v["version"])
            .describe_indices() for seg in i.segments}
    assert sorted(os.listdir(os.path.join(out, "_indices"))) == sorted(used)
    assert len(used) == (2 if overwrite else 1)


def test_a_failed_segmented_build_leaves_no_segment_files(tmp_path, monkeypatch):
    path = str(tmp_path / "big.lance")
    lance.write_dataset(make_table(1200, 16, seed=3), path)

    def merge_fails(self, segments):
        raise RuntimeError("merge failed")
    monkeypatch.setattr(lance.LanceDataset, "merge_existing_index_segments", merge_fails)
    out = str(tmp_path / "out.lance")
    sink = write_target(open_source(path), out, d=8, batch_rows=100, index_min_rows=1000,
                        flush_rows=400, index_rows_per_partition=100)
    assert not sink.indexed  # published without the index (a warning says so), as before
    ds = lance.dataset(out)
    assert ds.count_rows() == 1200 and ds.describe_indices() == []
    indices = os.path.join(out, "_indices")
    assert not os.path.isdir(indices) or os.listdir(indices) == []


@pytest.mark.parametrize("opts, fragments, want", [
    ({"index_type": "IVF_FLAT", "num_partitions": 12, "metric": "l2", "sample_rate": 64,
      "max_iters": 10}, 3, True),
    ({"index_type": "IVF_FLAT", "num_partitions": 12, "metric": "l2"}, 1, False),
    ({"index_type": "IVF_FLAT", "num_partitions": 1, "metric": "cosine"}, 3, False),
    ({"index_type": "IVF_PQ", "num_partitions": 12, "metric": "l2", "num_sub_vectors": 2}, 3,
     False),
    ({"index_type": "IVF_FLAT", "num_partitions": 12, "metric": "l2", "accelerator": "cuda"}, 3,
     False),
])
def test_which_indexes_are_built_per_fragment(opts, fragments, want):
    assert segmented(opts, fragments) is want


def test_source_scan_bounds_its_read_ahead(tmp_path, monkeypatch):
    # Lance buffers up to 2 GiB ahead of a slow consumer by default; the source passes its bound
    path = str(tmp_path / "src.lance")
    lance.write_dataset(make_table(300, 16, seed=1), path, max_rows_per_file=200)
    seen = []
    for cls in (lance.LanceDataset, lance.fragment.LanceFragment):
        real = cls.to_batches

        def spy(self, *a, _real=real, **kw):
            seen.append(kw.get("io_buffer_size"))
            return _real(self, *a, **kw)
        monkeypatch.setattr(cls, "to_batches", spy)
    src = open_source(path)
    assert sum(b.num_rows for b in src.iter_batches(64)) == 300
    assert sum(b.num_rows for p in src.pieces(100) for b, _ in src.iter_piece(p, 64)) == 300
    assert seen and set(seen) == {SCAN_IO_BUFFER_BYTES}


def test_index_metric_is_read_from_source_index(tmp_path):
    path = str(tmp_path / "cos.lance")
    ds = lance.write_dataset(make_table(600, 16, seed=4), path)
    ds.create_index("vector", index_type="IVF_PQ", metric="cosine", num_sub_vectors=4,
                    num_partitions=2)
    assert open_source(path).distance == "cosine"


# ----------------------------------------------------------------------------------- bad input

def _bad_dataset(tmp_path, table: pa.Table) -> str:
    path = str(tmp_path / "bad.lance")
    lance.write_dataset(table, path)
    return path


def _run_and_check_untouched(tmp_path, path, exc, match, **kw):
    before = tree_hashes(path)
    with pytest.raises(exc, match=match):
        write_target(open_source(path, **kw), str(tmp_path / "out.lance"), d=2)
    assert tree_hashes(path) == before
    assert not os.path.exists(tmp_path / "out.lance")
    assert staging_leftovers(str(tmp_path)) == []


def test_missing_vector_column_lists_columns(tmp_path):
    path = _bad_dataset(tmp_path, make_table(10, 4))
    with pytest.raises(MissingColumnError, match=r"^Vector column 'emb' not found in source "
                       r"'.*bad\.lance'\. Available columns: id \(int64\), vector "
                       r"\(fixed_size_list<item: float>\[4\]\), text \(string\), year \(int32\)\.$"):
        open_source(path, vector_column="emb")


def test_nulls_nan_duplicates_non_float(tmp_path):
    t = make_table(50, 4)
    X = vectors_to_numpy(t.column("vector")).copy()
    X[30, 2] = np.nan
    nan = t.set_column(1, "vector", numpy_to_fsl(X))
    path = _bad_dataset(tmp_path, nan)
    _run_and_check_untouched(tmp_path, path, InvalidInputError,
                             r"must contain only finite values\. Got 1 row\(s\) with NaN or inf "
                             r"in rows 0\.\.49, first at id 91\.")
    shutil.rmtree(path)
    ids = t.column("id").to_pylist()
    ids[40] = ids[3]
    _run_and_check_untouched(tmp_path, _bad_dataset(tmp_path, t.set_column(0, "id", pa.array(ids))),
                             DuplicateIdError, r"must hold unique ids\. Got duplicate id 10 at "
                             r"row 40\.")
    shutil.rmtree(path)
    vec = pa.array([list(r) if i != 7 else None for i, r in enumerate(X.tolist())],
                   pa.list_(pa.float32(), 4))
    _run_and_check_untouched(tmp_path, _bad_dataset(tmp_path, t.set_column(1, "vector", vec)),
                             InvalidInputError, r"must not contain null vectors\. Got 1 null "
                             r"vector\(s\), first at id 22\.")
    shutil.rmtree(path)
    ints = pa.array([[1, 2, 3, 4]] * 50, pa.list_(pa.int32(), 4))
    path = _bad_dataset(tmp_path, t.set_column(1, "vector", ints))
    with pytest.raises(InvalidInputError, match=r"Vector column 'vector' of source '.*' must be a "
                       r"list or fixed-size list of floats .* Got list<int32> instead\."):
        open_source(path, vector_column="vector")


def test_empty_and_missing_sources(tmp_path, db):
    path = _bad_dataset(tmp_path, make_table(0, 4))
    with pytest.raises(InvalidInputError, match=r"^Source '.*bad\.lance' is empty: it has 0 "
                       r"rows\.$"):
        open_source(path)
    with pytest.raises(SourceNotFoundError, match=r"LanceDB table 'nope' not found in LanceDB "
                       r"database '.*db'\. Existing tables: docs\."):
        open_source(lancedb_uri(db, "nope"))


def test_sink_rejects_drifting_batches(tmp_path, db):
    src = open_source(lancedb_uri(db, "docs"))
    b = reduce_batch(next(src.iter_batches(10)), src, 4)
    with open_sink(str(tmp_path / "o.lance")) as sink:
        sink.create(b.schema, codes_column="pq_codes")
        with pytest.raises(InvalidInputError, match=r"has a different schema\. Expected: .*"
                           r"vector \(fixed_size_list<item: float>\[4\]\).* Got: .*\[3\]\)"):
            bad = b.set_column(b.schema.get_field_index("vector"), "vector",
                               numpy_to_fsl(np.zeros((10, 3), np.float32)))
            sink.append(bad)
    assert staging_leftovers(str(tmp_path)) == [] and not os.path.exists(tmp_path / "o.lance")
    with pytest.raises(MissingColumnError, match=r"The codes column 'codes' of target"):
        open_sink(str(tmp_path / "o.lance")).create(b.schema, codes_column="codes")
