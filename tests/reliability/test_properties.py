"""Property-based tests (hypothesis): every connector's round trip (source -> sink -> published
target) keeps ids, vectors and payloads exactly for generated rows, and the encoder handles any
float dtype, memory order, one-row input and memmaps the same way.

Reference for the round trip: the generated table itself (exact equality; the stand-in encoder
keeps the first ``d`` dimensions, see ``_connector_helpers.reduce_batch``). Reference for the
encoder: ``transform`` of the same values as a C-ordered float32 array (exact for float16 /
float32 input, 1e-5 relative for float64, which is narrowed first).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _connector_helpers import write_target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import open_source, open_target, parse_uri
from connectors.arrow_utils import numpy_to_fsl, vectors_to_numpy
from connectors.qdrant_store import client_for

from .conftest import source_state

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
FLOAT = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw, string_ids: bool | None = None):
    """A table: unique ids (ints >= 0 or strings), a dim-d float32 vector, text and int payload."""
    n = draw(st.integers(1, 24))
    dim = draw(st.integers(4, 8))
    if string_ids is None:
        string_ids = draw(st.booleans())
    if string_ids:
        ids = draw(st.lists(TEXT.filter(bool), min_size=n, max_size=n, unique=True))
    else:
        ids = draw(st.lists(st.integers(0, 2**53), min_size=n, max_size=n, unique=True))
    X = draw(hnp.arrays(np.float32, (n, dim), elements=FLOAT))
    text = draw(st.lists(TEXT, min_size=n, max_size=n))
    num = draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=n, max_size=n))
    return pa.table({"id": pa.array(ids, pa.string() if string_ids else pa.int64()),
                     "vector": numpy_to_fsl(X), "text": pa.array(text, pa.string()),
                     "num": pa.array(num, pa.int32())})


def _rows(table: pa.Table, d: int) -> dict:
    """id -> (first d vector values, text, num), from a table with id/vector/text/num columns."""
    X = vectors_to_numpy(table.column("vector").combine_chunks())[:, :d]
    return {i: (X[j].tobytes(), t, n) for j, (i, t, n) in enumerate(zip(
        table.column("id").to_pylist(), table.column("text").to_pylist(),
        table.column("num").to_pylist()))}


def _target_rows(uri: str, d: int) -> dict:
    tab = open_target(uri).to_table()
    if "payload" in tab.column_names:   # Qdrant: payload as JSON text
        pl = [json.loads(p) for p in tab.column("payload").to_pylist()]
        tab = tab.append_column("text", pa.array([p["text"] for p in pl], pa.string()))
        tab = tab.append_column("num", pa.array([p["num"] for p in pl], pa.int64()))
    return _rows(tab, d)


def _round_trip(kind: str, table: pa.Table, root: Path) -> None:
    d = 3
    if kind == "lance":
        import lance
        lance.write_dataset(table, str(root / "src.lance"))
        src_uri, tgt_uri = f"lance://{root}/src.lance", f"lance://{root}/out.lance"
    elif kind == "parquet":
        (root / "pq").mkdir()
        pq.write_table(table, root / "pq" / "part-0.parquet")
        src_uri, tgt_uri = f"parquet://{root}/pq/", f"parquet://{root}/out/"
    else:
        from qdrant_client import models as m
        src_uri = f"qdrant+memory://{uuid.uuid4().hex[:10]}/docs"
        tgt_uri = src_uri + "_out"
        client = client_for(parse_uri(src_uri))
        client.create_collection("docs", vectors_config=m.VectorParams(
            size=table.column("vector").type.list_size, distance=m.Distance.EUCLID))
        X = vectors_to_numpy(table.column("vector").combine_chunks())
        client.upsert("docs", points=m.Batch(
            ids=table.column("id").to_pylist(), vectors=X.tolist(),
            payloads=[{"text": t, "num": n} for t, n in zip(table.column("text").to_pylist(),
                                                             table.column("num").to_pylist())]))
    before = source_state(src_uri)
    src = open_source(src_uri)
    assert src.count() == table.num_rows
    expected = _rows(table, d)
    write_target(src, tgt_uri, d=d, batch_rows=7)
    assert _target_rows(tgt_uri, d) == expected
    assert source_state(src_uri) == before       # the source_guard check, inline (hypothesis)


@pytest.mark.parametrize("kind", ["lance", "parquet"])
@SETTINGS
@given(table=tables())
def test_file_stores_round_trip(kind, table):
    root = Path(tempfile.mkdtemp(prefix="tldr-prop-"))
    try:
        _round_trip(kind, table, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@SETTINGS
@given(table=tables(string_ids=False))
def test_qdrant_local_round_trip(table):
    _round_trip("qdrant", table, Path("."))


# ------------------------------------------------------------------------------------ encoder

@pytest.fixture(scope="module")
def models():
    from _pipeline_helpers import make_nested

    from tldr_index import PCA, TLDR
    from tldr_index.compact import CompactModel

    X = make_nested(400, 16, between=6, within=4)
    tldr = TLDR(4, epochs=1, batch_size=64, random_state=0).fit(X)
    return {"tldr": tldr, "pca": PCA(4).fit(X),
            "compact": CompactModel.from_reducer(tldr, "l2", None)}


def _encode(model, X):
    return model.encode(X) if hasattr(model, "encode") else model.transform(X)


@SETTINGS
@given(X=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]),
                    st.tuples(st.integers(1, 40), st.just(16)),
                    elements=st.floats(-50, 50, width=16)),
       order=st.sampled_from("CF"), memmap=st.booleans(),
       name=st.sampled_from(["tldr", "pca", "compact"]))
def test_encoder_shapes_and_dtypes(models, X, order, memmap, name):
    model = models[name]
    ref = _encode(model, np.ascontiguousarray(X, dtype=np.float32))
    X = np.asarray(X, order=order)
    if memmap:
        d = tempfile.mkdtemp(prefix="tldr-prop-")
        np.save(f"{d}/x.npy", X)
        X = np.load(f"{d}/x.npy", mmap_mode="r")
    before = np.array(X, copy=True)
    Y = _encode(model, X)
    assert Y.shape == (len(X), 4) and Y.dtype == np.float32
    if X.dtype == np.float64:
        np.testing.assert_allclose(Y, ref, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(Y, ref)
    np.testing.assert_array_equal(np.asarray(X), before)   # input untouched
    one = _encode(model, X[:1])
    assert one.shape == (1, 4)
    np.testing.assert_allclose(one, Y[:1], rtol=1e-6, atol=1e-6)
    if memmap:
        del X
        shutil.rmtree(d, ignore_errors=True)
