"""Parquet sources (file, glob, directory; list and fixed-size-list vectors) and part-file targets."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _connector_helpers import MODEL, make_table, staging_leftovers, tree_hashes, write_target

from connectors import open_sink, open_source, open_target
from connectors.arrow_utils import vectors_to_numpy
from connectors.parquet_store import RECORD_FILE
from tldr_index.errors import (DuplicateIdError, InvalidInputError, MissingColumnError,
                               ModelFormatError, SourceNotFoundError, TargetExistsError)


def _as_list(t: pa.Table, col: str = "vector") -> pa.Table:
    """The same table with a variable-length ``list<float>`` vector column."""
    i = t.schema.get_field_index(col)
    return t.set_column(i, col, t.column(col).cast(pa.list_(t.column(col).type.value_type)))


@pytest.fixture()
def data(tmp_path):
    """Three part files of one table: fixed-size, list<float> (float64), fixed-size."""
    t = make_table(250, 12, seed=5)
    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(t.slice(0, 100), d / "a.parquet", row_group_size=40)
    b = t.slice(100, 80)
    b = b.set_column(1, "vector", b.column("vector").cast(pa.list_(pa.float64(), 12)))
    pq.write_table(_as_list(b), d / "b.parquet")
    pq.write_table(t.slice(180), d / "c.parquet")
    (d / "_ignored.parquet").write_bytes(b"not parquet")
    return t, str(d)


@pytest.mark.parametrize("form", ["dir", "glob", "bare"])
def test_round_trip(tmp_path, data, form):
    t, d = data
    uri = {"dir": f"parquet://{d}", "glob": f"parquet://{d}/[abc].parquet",
           "bare": os.path.join(d, "a.parquet")}[form]
    n = 100 if form == "bare" else 250
    before = tree_hashes(d)
    src = open_source(uri)
    assert (src.id_column, src.vector_column, src.dim, src.count()) == ("id", "vector", 12, n)
    sizes = [b.num_rows for b in src.iter_batches(32)]
    assert max(sizes) <= 32 and sum(sizes) == n
    out = tmp_path / "out"
    write_target(src, f"parquet://{out}/", d=5, rows_per_file=70)
    tgt = open_target(f"parquet://{out}")
    assert tgt.model_bytes == MODEL and tgt.metadata["dims"] == [12, 5]
    assert len(tgt.files) == -(-n // 70)
    got = pq.read_table(str(out))  # plain Arrow reader: sidecars are skipped
    want = t.slice(0, n)
    for c in ("id", "text", "year"):
        assert got.column(c).to_pylist() == want.column(c).to_pylist()
    np.testing.assert_array_equal(vectors_to_numpy(got.column("vector")),
                                  vectors_to_numpy(want.column("vector"))[:, :5])
    assert tree_hashes(d) == before
    assert staging_leftovers(str(tmp_path)) == []
    q = vectors_to_numpy(want.column("vector"))[9, :5]
    assert tgt.search(q, k=2).column("id").to_pylist()[0] == want.column("id")[9].as_py()


def test_fingerprint(data):  # take across files: tests/test_store_contract.py
    _, d = data
    src = open_source(f"parquet://{d}")
    fp = src.fingerprint()
    assert [os.path.basename(f["path"]) for f in fp["files"]] == ["a.parquet", "b.parquet",
                                                                   "c.parquet"]
    assert all(f["size"] > 0 and f["mtime_ns"] > 0 for f in fp["files"])


def test_old_readers_finish_after_overwrite(tmp_path, data):
    # staged target invisible, existing refused, overwrite, abort: tests/test_store_contract.py
    _, d = data
    src = open_source(f"parquet://{d}")
    uri = f"parquet://{tmp_path / 'out'}"
    write_target(src, uri, d=4)
    old = open_target(uri)
    old_files = [open(f, "rb") for f in old.files]  # a reader holding the old files
    write_target(src, uri, d=6, overwrite=True)
    assert open_target(uri).metadata["dims"] == [12, 6]
    assert all(len(f.read()) > 0 for f in old_files)  # old readers finish undisturbed
    for f in old_files:
        f.close()
    assert staging_leftovers(str(tmp_path)) == []


def test_never_replaces_foreign_directory(tmp_path, data):
    _, d = data
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TargetExistsError, match=r"is not a tldr-index target \(no "
                       r"_tldr_metadata\.json"):
        write_target(open_source(f"parquet://{d}"), f"parquet://{foreign}", overwrite=True)
    assert os.listdir(foreign) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceNotFoundError) as e:  # an empty directory is no target (yet)
        open_target(f"parquet://{empty}")
    assert str(e.value) == (f"Parquet target 'parquet://{empty}' not found: directory "
                            f"'{empty}' is empty.")
    write_target(open_source(f"parquet://{d}"), f"parquet://{empty}")  # an empty dir is fine
    assert open_target(f"parquet://{empty}").count() == 250


def test_tampered_model_is_detected(tmp_path, data):
    _, d = data
    out = tmp_path / "out"
    write_target(open_source(f"parquet://{d}"), f"parquet://{out}")
    with open(out / "_tldr_model.safetensors", "r+b") as f:
        f.write(b"X")
    with pytest.raises(ModelFormatError, match=r"The model stored in target '.*' is corrupt"):
        open_target(f"parquet://{out}")


# ----------------------------------------------------------------------------------- bad input

def _write(tmp_path, table: pa.Table, name: str = "bad.parquet") -> str:
    p = str(tmp_path / name)
    pq.write_table(table, p)
    return p


def _check_fails_cleanly(tmp_path, path, exc, match, **kw):
    before = tree_hashes(os.path.dirname(path))
    with pytest.raises(exc, match=match):
        write_target(open_source(path, **kw), f"parquet://{tmp_path}/out", d=2)
    assert tree_hashes(os.path.dirname(path)) == before
    assert not os.path.exists(tmp_path / "out")
    assert staging_leftovers(str(tmp_path)) == []


def test_missing_vector_column(tmp_path):
    p = _write(tmp_path, make_table(5, 3).rename_columns(["id", "emb", "text", "year"]))
    with pytest.raises(MissingColumnError, match=r"^Vector column 'vector' not found in source "
                       r"'.*bad\.parquet'\. Available columns: id \(int64\), emb "
                       r"\(fixed_size_list<element: float>\[3\]\), text \(string\), year "
                       r"\(int32\)\.$"):
        open_source(p, vector_column="vector")


def test_mixed_lengths_across_rows(tmp_path):
    t = _as_list(make_table(20, 4))
    rows = t.column("vector").to_pylist()
    rows[13] = rows[13][:3]
    p = _write(tmp_path, t.set_column(1, "vector", pa.array(rows, pa.list_(pa.float32()))))
    _check_fails_cleanly(tmp_path, p, InvalidInputError,
                         r"^Vector column 'vector' of source '.*' must have the same length in "
                         r"every row\. Expected 4, got 3 at id 40 \(1 row\(s\) differ\)\.$")


def test_mixed_lengths_across_files(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(make_table(10, 4), d / "a.parquet")
    pq.write_table(make_table(10, 5, seed=1), d / "b.parquet")
    _check_fails_cleanly(tmp_path, str(d / "a.parquet").replace("a.parquet", "*.parquet"),
                         InvalidInputError, r"must have the same length in every row\. "
                         r"Expected 4, got 5 at id 1\.")


def test_nulls_in_ids_vectors_elements(tmp_path):
    t = _as_list(make_table(20, 4))
    ids = t.column("id").to_pylist()
    ids[6] = None
    p = _write(tmp_path, t.set_column(0, "id", pa.array(ids, pa.int64())))
    _check_fails_cleanly(tmp_path, p, InvalidInputError,
                         r"Id column 'id' of source '.*' must not contain nulls\. Got 1 null "
                         r"id\(s\), first at row 6\.")
    rows = t.column("vector").to_pylist()
    rows[2] = None
    p = _write(tmp_path, t.set_column(1, "vector", pa.array(rows, pa.list_(pa.float32()))))
    _check_fails_cleanly(tmp_path, p, InvalidInputError,
                         r"must not contain null vectors\. Got 1 null vector\(s\), first at id 7\.")
    rows[2] = [1.0, None, 2.0, 3.0]
    p = _write(tmp_path, t.set_column(1, "vector", pa.array(rows, pa.list_(pa.float32()))))
    _check_fails_cleanly(tmp_path, p, InvalidInputError,
                         r"must not contain null elements\. Got 1 vector\(s\) with nulls, first "
                         r"at id 7\.")


def test_nan_inf_and_duplicates(tmp_path):
    t = make_table(30, 4)
    X = vectors_to_numpy(t.column("vector")).copy()
    X[[4, 20], [0, 3]] = [np.inf, np.nan]
    from connectors.arrow_utils import numpy_to_fsl
    p = _write(tmp_path, t.set_column(1, "vector", numpy_to_fsl(X)))
    _check_fails_cleanly(tmp_path, p, InvalidInputError,
                         r"must contain only finite values\. Got 2 row\(s\) with NaN or inf in "
                         r"rows 0\.\.29, first at id 13\.")
    s = make_table(30, 4, id_kind="str")
    ids = s.column("id").to_pylist()
    ids[25] = ids[2]
    p = _write(tmp_path, s.set_column(0, "id", pa.array(ids)))
    _check_fails_cleanly(tmp_path, p, DuplicateIdError,
                         r"^Id column 'id' of source '.*' must hold unique ids\. Got duplicate id "
                         r"'doc-00002' at row 25\.$")


def test_non_float_and_empty_and_missing(tmp_path):
    t = make_table(5, 3)
    p = _write(tmp_path, t.set_column(1, "vector", pa.array([[1, 2, 3]] * 5,
                                                            pa.list_(pa.int64()))))
    with pytest.raises(InvalidInputError, match=r"Got list<int64> instead\."):
        open_source(p, vector_column="vector")
    with pytest.raises(MissingColumnError, match=r"No vector column in source"):
        open_source(p)
    p = _write(tmp_path, make_table(0, 3), "empty.parquet")
    with pytest.raises(InvalidInputError, match=r"^Source '.*empty\.parquet' is empty: it has 0 "
                       r"rows\.$"):
        open_source(p)
    with pytest.raises(SourceNotFoundError, match=r"matches no \.parquet file"):
        open_source(f"parquet://{tmp_path}/nothing-*.parquet")
    with pytest.raises(InvalidInputError, match=r"must be a directory"):
        open_sink(f"parquet://{tmp_path}/out.parquet")


def test_record_file_is_small_json(tmp_path, data):
    _, d = data
    out = tmp_path / "out"
    write_target(open_source(f"parquet://{d}"), f"parquet://{out}")
    assert os.path.getsize(out / RECORD_FILE) < 4096


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_sidecars_get_the_mode_of_the_data_files(tmp_path, data, umask):
    """The model and record sidecars were written 0600 (``mkstemp``) next to 0644 data files:
    every file of a target now gets ``0o666`` minus the umask, like a plain ``open()``."""
    import lance

    t, d = data
    old = os.umask(umask)
    try:
        for uri, root in ((f"parquet://{tmp_path}/out/", tmp_path / "out"),
                          (str(tmp_path / "t.lance"), tmp_path / "t.lance")):
            write_target(open_source(f"parquet://{d}"), uri, d=4)
            modes = {os.path.relpath(os.path.join(p, f), root):
                     os.stat(os.path.join(p, f)).st_mode & 0o777
                     for p, _, files in os.walk(root) for f in files}
            sidecars = [f for f in modes if "tldr" in f]
            assert len(sidecars) >= 1 and len(modes) > len(sidecars)
            assert set(modes.values()) == {0o666 & ~umask}, modes
        lance.dataset(str(tmp_path / "t.lance"))  # still a readable dataset
    finally:
        os.umask(old)
