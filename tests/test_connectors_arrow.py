"""Arrow conversion, column detection, validation messages, id hashing and URI parsing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import default_target_uri, lancedb_uri, open_sink, open_source, parse_uri
from connectors.arrow_utils import (check_finite, detect_id_column, detect_vector_column,
                                    numpy_to_fsl, vectors_to_numpy)
from connectors.ids import DuplicateIdTracker, IdDigest, hash_ids
from tldr_index.errors import InvalidInputError, MissingColumnError, UnsupportedURIError


# ------------------------------------------------------------------ vector conversion (property)

@st.composite
def vector_arrays(draw):
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)
    kind = draw(st.sampled_from(["fixed", "list", "large_list"]))
    values = pa.array(X.reshape(-1))
    if kind == "fixed":
        arr = pa.FixedSizeListArray.from_arrays(values, d)
    else:
        offsets = np.arange(n + 1, dtype=np.int32 if kind == "list" else np.int64) * d
        cls = pa.ListArray if kind == "list" else pa.LargeListArray
        arr = cls.from_arrays(pa.array(offsets), values)
    lo = draw(st.integers(0, n))
    hi = draw(st.integers(lo, n))
    return X, arr, lo, hi


@settings(max_examples=150, deadline=None)
@given(vector_arrays())
def test_vectors_to_numpy_round_trip(case):
    X, arr, lo, hi = case
    sliced = arr.slice(lo, hi - lo)
    got = vectors_to_numpy(sliced, dim=X.shape[1])
    if hi > lo:  # the length is inferred from the first row when not given
        np.testing.assert_array_equal(vectors_to_numpy(sliced), got)
    assert got.shape == (hi - lo, X.shape[1])
    assert got.dtype == X.dtype
    np.testing.assert_array_equal(got, X[lo:hi])
    back = vectors_to_numpy(numpy_to_fsl(got))
    np.testing.assert_array_equal(back, X[lo:hi].astype(np.float16 if X.dtype == np.float16
                                                          else np.float32))


def test_vectors_to_numpy_is_zero_copy_for_float32_fixed_size_lists():
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    arr = numpy_to_fsl(X)
    assert np.shares_memory(vectors_to_numpy(arr.slice(2, 3)), X)
    np.testing.assert_array_equal(vectors_to_numpy(arr.slice(2, 3)), X[2:5])


def test_chunked_arrays_are_concatenated():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    ch = pa.chunked_array([numpy_to_fsl(X[:2]), numpy_to_fsl(X[2:])])
    np.testing.assert_array_equal(vectors_to_numpy(ch), X)


# ------------------------------------------------------------------------ validation messages

IDS = pa.array([10, 11, 12, 13])


def test_mixed_lengths_name_first_offending_id():
    arr = pa.array([[1.0, 2.0], [1.0, 2.0], [1.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32()))
    with pytest.raises(InvalidInputError, match=r"Vector column 'emb' of source 's' must have the "
                       r"same length in every row\. Expected 2, got 1 at id 12 \(2 row\(s\) "
                       r"differ\)\."):
        vectors_to_numpy(arr, column="emb", ids=IDS, source="s")


def test_null_vector_and_null_element():
    arr = pa.array([[1.0, 2.0], None, [1.0, 2.0], None], pa.list_(pa.float32()))
    with pytest.raises(InvalidInputError, match=r"must not contain null vectors\. Got 2 null "
                       r"vector\(s\), first at id 11\."):
        vectors_to_numpy(arr, column="emb", ids=IDS, source="s")
    arr = pa.array([[1.0, 2.0], [1.0, 2.0], [1.0, None], [1.0, 2.0]], pa.list_(pa.float32()))
    with pytest.raises(InvalidInputError, match=r"must not contain null elements\. Got 1 "
                       r"vector\(s\) with nulls, first at id 12\."):
        vectors_to_numpy(arr, column="emb", ids=IDS, source="s")


def test_non_float_elements():
    arr = pa.array([[1, 2]], pa.list_(pa.int64()))
    with pytest.raises(InvalidInputError, match=r"must be a list or fixed-size list of floats "
                       r"\(float16, float32 or float64\)\. Got list<int64> instead\."):
        vectors_to_numpy(arr, column="emb", source="s")


def test_nan_inf_count_and_first_id():
    X = np.zeros((4, 2), dtype=np.float32)
    X[1, 0], X[3, 1] = np.nan, np.inf
    with pytest.raises(InvalidInputError, match=r"must contain only finite values\. Got 2 "
                       r"row\(s\) with NaN or inf in rows 100\.\.103, first at id 11\."):
        check_finite(X, column="emb", ids=IDS, source="s", row_offset=100)


def test_detect_columns():
    sch = pa.schema([("pk", pa.string()), ("text", pa.string()),
                     ("emb", pa.list_(pa.float32(), 4))])
    assert detect_vector_column(sch, None, "s") == "emb"
    assert detect_id_column(sch, None, "s", exclude=("emb",)) == "pk"
    sch2 = pa.schema([("doc", pa.int32()), ("text", pa.string()), ("emb", pa.list_(pa.float64()))])
    assert detect_id_column(sch2, None, "s") == "doc"
    with pytest.raises(MissingColumnError, match=r"^Vector column 'vec' not found in source 's'\. "
                       r"Available columns: doc \(int32\), text \(string\), emb "):
        detect_vector_column(sch2, "vec", "s")
    with pytest.raises(MissingColumnError, match=r"No id column in source 's'"):
        detect_id_column(pa.schema([("text", pa.string())]), None, "s")
    with pytest.raises(InvalidInputError, match=r"several vector columns \(a, b\)"):
        detect_vector_column(pa.schema([("a", pa.list_(pa.float32())),
                                        ("b", pa.list_(pa.float32()))]), None, "s")


# -------------------------------------------------------------------------------------- ids

def test_hash_ids_integer_width_does_not_matter():
    a = hash_ids(pa.array([1, 2, 3], pa.int32()))
    b = hash_ids(pa.array([1, 2, 3], pa.int64()))
    np.testing.assert_array_equal(a, b)
    assert len(set(hash_ids(pa.array(["a", "b", "c"])).tolist())) == 3


def test_digest_is_order_and_batching_independent():
    d1, d2 = IdDigest(), IdDigest()
    d1.update(pa.array([1, 2, 3, 4]))
    d2.update([4, 2])
    d2.update(pa.array([3, 1]))
    assert d1.hexdigest() == d2.hexdigest()
    d3 = IdDigest()
    d3.update([1, 2, 3, 5])
    assert d3.hexdigest() != d1.hexdigest()


def test_duplicate_tracker_across_and_within_batches():
    t = DuplicateIdTracker()
    rng = np.random.default_rng(0)
    ids = rng.permutation(50_000)
    for s in range(0, 50_000, 997):
        assert t.add(pa.array(ids[s:s + 997])) is None
    assert t.add(pa.array([10**9, int(ids[123])])) == 1
    assert DuplicateIdTracker().add(pa.array(["a", "b", "a"])) == 2


# -------------------------------------------------------------------------------------- URIs

def test_uri_forms():
    p = parse_uri("lancedb://./db/docs")
    assert (p.kind, p.db, p.table, p.path) == ("lance", "./db", "docs", "./db/docs.lance")
    assert parse_uri("/x/ds.lance").kind == "lance"
    assert parse_uri("parquet://data/*.parquet").path == "data/*.parquet"
    q = parse_uri("qdrant+https://host:7000/docs")
    assert (q.mode, q.host, q.port, q.collection) == ("https", "host", 7000, "docs")
    assert parse_uri("qdrant://localhost/docs").port == 6333
    e = parse_uri("qdrant+path:///dir/docs")
    assert (e.mode, e.path, e.collection) == ("path", "/dir", "docs")
    assert lancedb_uri("./lancedb", "docs") == "lancedb://./lancedb/docs"
    assert default_target_uri("qdrant://h:1/docs") == "qdrant://h:1/docs_compact"
    assert default_target_uri("lancedb://./db/docs") == "lancedb://./db/docs_compact"


def test_unknown_scheme_lists_supported_ones():
    with pytest.raises(UnsupportedURIError, match=r"^The 'uri' parameter must use a supported "
                       r"scheme \(supported schemes: lancedb://, lance://, parquet://, qdrant://"):
        open_source("mongodb://host/db")
    with pytest.raises(UnsupportedURIError, match=r"must start with a supported scheme"):
        open_sink("some/dir")


def test_credentials_in_uri_are_refused_and_redacted():
    with pytest.raises(UnsupportedURIError) as info:
        open_source("qdrant://admin:s3cr3t@host/docs")
    assert "s3cr3t" not in str(info.value)
    assert "set QDRANT_API_KEY instead" in str(info.value)
