"""The parts of the distributed scan (``tldr_index.ray_scan``) that need no Ray: sources cut into
pieces, piece-wise validation with positions, mergeable id digests, the bucketed duplicate check
and the sample's positions past skipped rows, each against the single-stream reference.
``tests/test_ray_engine.py`` runs the whole scan on a local Ray."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_helpers import lance_fragments, make_nested, table_of

from connectors import IdDigest, open_source
from connectors.ids import DuplicateIdTracker, first_duplicate, hash_ids
from tldr_index.errors import InvalidInputError, InvalidParameterError
from tldr_index.shrink.ray_scan import bucket_duplicate, read_sample, sample_positions, scan_piece
from tldr_index.shrink.sampling import sample_rows as _sample_rows


def _lance_source(tmp_path, n=500, delete=True) -> str:
    """A Lance dataset of 5 fragments (120 rows each but the last) with rows deleted."""
    return lance_fragments(str(tmp_path), make_nested(n, 24, seed=1), 120,
                           delete="id % 9 = 4" if delete else None)


def _parquet_source(tmp_path, n=500) -> str:
    X = make_nested(n, 24, seed=2)
    d = tmp_path / "pq"
    d.mkdir()
    t = table_of(X)
    pq.write_table(t.slice(0, 230), d / "a.parquet", row_group_size=50)
    pq.write_table(t.slice(230), d / "b.parquet", row_group_size=70)
    return f"parquet://{d}/*.parquet"


@pytest.mark.parametrize("kind", ["lance", "parquet"])
@pytest.mark.parametrize("rows_per_piece", [1, 64, 100_000])
def test_pieces_cover_the_stream_in_order(tmp_path, kind, rows_per_piece):
    uri = _lance_source(tmp_path) if kind == "lance" else _parquet_source(tmp_path)
    src = open_source(uri)
    ref = [b for b in src.iter_batches(37)]
    ids = pa.concat_arrays([b.column(0) for b in ref]).to_pylist()
    vec = np.concatenate([np.stack(b.column(1).to_numpy(zero_copy_only=False)) for b in ref])
    pieces = src.pieces(rows_per_piece)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    assert pieces[0].start == 0 and sum(p.rows for p in pieces) == src.count() == len(ids)
    assert all(a.start + a.rows == b.start for a, b in zip(pieces, pieces[1:]))
    got_ids, got_pos, got_vec = [], [], []
    for p in pieces:
        for batch, pos in src.iter_piece(p, 37):
            assert batch.schema.equals(src.schema) and len(pos) == batch.num_rows <= 37
            got_ids += batch.column(0).to_pylist()
            got_pos.append(pos)
            got_vec.append(np.stack(batch.column(1).to_numpy(zero_copy_only=False)))
    assert got_ids == ids
    np.testing.assert_array_equal(np.concatenate(got_pos), np.arange(len(ids)))
    np.testing.assert_array_equal(np.concatenate(got_vec), vec)
    if kind == "parquet" and rows_per_piece == 64:  # whole row groups, never across files
        assert [(p.start, p.rows) for p in pieces] == [
            (0, 100), (100, 100), (200, 30), (230, 70), (300, 70), (370, 70), (440, 60)]
    pick = np.array([0, 3, 117, 240, len(ids) - 1])
    np.testing.assert_array_equal(read_sample(src, pick), vec[pick])
    assert src.read_rows(pick, [src.id_column]).column(0).to_pylist() == [ids[i] for i in pick]


def test_pieces_need_a_store_with_ranges(tmp_path):
    from _pipeline_helpers import qdrant_source

    src = open_source(qdrant_source(make_nested(20, 24)))
    with pytest.raises(InvalidParameterError, match=(
            r"^Source 'qdrant\+memory://.*/docs' \(QdrantSource\) cannot be read in pieces: a "
            r"distributed scan needs a Lance/LanceDB or Parquet source\.$")):
        src.pieces(10)
    with pytest.raises(InvalidParameterError, match=(
            r"^Source 'qdrant\+memory://.*/docs' \(QdrantSource\) cannot read rows by "
            r"position\.$")):
        src.read_rows(np.array([0]), ["id"])
    for uri, owner in ((_parquet_source(tmp_path), "ParquetSource"),
                       (_lance_source(tmp_path), "LanceSource")):
        with pytest.raises(InvalidParameterError) as err:
            open_source(uri).pieces(0)
        assert str(err.value) == (f"The 'rows_per_piece' parameter of {owner} must be an int in "
                                  f"the range [1, inf). Got 0 instead.")


def test_iter_piece_reports_the_positions_of_the_rows_it_keeps(tmp_path):
    X = make_nested(300, 24, seed=4)
    bad = [5, 6, 130, 299]
    X[bad[:3]] = np.nan
    X[bad[3], 0] = np.inf
    src = open_source(lance_fragments(str(tmp_path), X, 100, name="nan"))
    kept, skipped = [], 0
    for p in src.pieces(64):
        kept += [pos for _, pos in src.iter_piece(p, 25, skip_invalid=True)]
        skipped += src.skipped["rows"]
    np.testing.assert_array_equal(np.concatenate(kept), np.setdiff1d(np.arange(300), bad))
    assert skipped == 4
    p = src.pieces(64)[0]  # without skip_invalid: the local engine's message, global row
    with pytest.raises(InvalidInputError) as err:
        list(src.iter_piece(p, 25))
    with pytest.raises(InvalidInputError) as ref:
        list(src.iter_batches(25))
    assert str(err.value) == str(ref.value)
    assert str(err.value).endswith("Got 2 row(s) with NaN or inf in rows 0..24, first at id 38.")
    with pytest.raises(InvalidInputError) as err:  # a later piece: rows counted from the start
        list(src.iter_piece(src.pieces(64)[2], 25))
    assert str(err.value).endswith("Got 1 row(s) with NaN or inf in rows 125..149, first at id "
                                   f"{130 * 7 + 3}.")


def test_id_digest_merges_parts():
    ids = pa.array(np.random.default_rng(0).permutation(10_000))
    whole = IdDigest()
    whole.update(ids)
    parts = [IdDigest() for _ in range(3)]
    for i, d in enumerate(parts):
        d.update_keys(hash_ids(ids[i * 4000:(i + 1) * 4000]))
    merged = IdDigest()
    for d in reversed(parts):
        merged.merge(d.state())
    assert merged.hexdigest() == whole.hexdigest()
    other = IdDigest()
    other.update(pa.array(np.arange(1, 10_001)))
    assert other.hexdigest() != whole.hexdigest()


@pytest.mark.parametrize("seed", range(5))
def test_first_duplicate_matches_the_streaming_tracker(seed):
    """Per bucket then the smallest answer = where DuplicateIdTracker, streaming, stops."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(50_000, 3000, replace=False)
    for _ in range(seed):  # 0..4 repeats planted at random places
        i, j = sorted(rng.choice(3000, 2, replace=False))
        ids[j] = ids[i]
    keys, pos = hash_ids(pa.array(ids)), np.arange(3000)
    tracker, expect = DuplicateIdTracker(), None
    for s in range(0, 3000, 250):
        at = tracker.add(pa.array(ids[s:s + 250]))
        if at is not None:
            expect = s + at
            break
    got = first_duplicate(keys, pos)
    assert (got and got[0]) == expect
    for buckets in (1, 3, 16):
        b = keys % np.uint64(buckets)
        found = [bucket_duplicate(np.stack([keys[b == i], pos[b == i].astype(np.uint64)]))
                 for i in range(buckets)]
        hits = [f for f in found if f is not None]
        assert (min(hits)[0] if hits else None) == expect
        if hits:
            assert ids[min(hits)[0]] in ids[:min(hits)[0]]
    assert first_duplicate(keys[:1], pos[:1]) is None and bucket_duplicate() is None


def test_sample_positions_skip_dropped_rows():
    rng = np.random.default_rng(7)
    for n, dropped in ((1000, rng.choice(1000, 37, replace=False)), (50, np.arange(40)),
                       (300, np.array([0, 1, 2, 299])), (100, np.array([], np.int64))):
        valid = np.setdiff1d(np.arange(n), dropped)
        for sample in (5, len(valid), 10 * n):
            want = valid[_sample_rows(len(valid), min(len(valid), sample), 3)]
            np.testing.assert_array_equal(
                sample_positions(len(valid), sample, 3, rng.permutation(dropped)), want)


def test_scan_piece_buckets_and_sample(tmp_path):
    src = open_source(_parquet_source(tmp_path))
    p = src.pieces(64)[3]  # rows 230-299: the first row group of b.parquet
    want = np.array([230, 231, 280, 299])
    summary, sample, *parts = scan_piece(src, p, want, 32, False, 4)
    assert summary["rows"] == 70 and summary["error"] is None and summary["skipped"] == 0
    np.testing.assert_array_equal(sample, read_sample(src, want))
    keys = np.concatenate([q[0] for q in parts])
    assert sorted(np.concatenate([q[1] for q in parts]).tolist()) == list(range(230, 300))
    assert all(((q[0] % np.uint64(4)) == i).all() for i, q in enumerate(parts))
    ids = src.read_rows(np.arange(230, 300), [src.id_column]).column(0)
    assert sorted(keys.tolist()) == sorted(hash_ids(ids).tolist())
    ref = IdDigest()
    ref.update(ids)
    d = IdDigest()
    d.merge(summary["digest"])
    assert d.hexdigest() == ref.hexdigest()


@pytest.mark.parametrize("kind", ["lance", "parquet"])
def test_verify_reads_the_staged_files_through_map_pieces(tmp_path, kind):
    """A distributed engine digests the staged files in its workers (``map_pieces``); the merged
    digest equals the source's, a wrong one fails with the usual message."""
    from _connector_helpers import MODEL, make_table, reduce_batch

    from connectors import open_sink
    from tldr_index.errors import VerificationError

    lance.write_dataset(make_table(300, 16), str(tmp_path / "src.lance"))
    src = open_source(f"lance://{tmp_path}/src.lance")
    digest = IdDigest()
    digest.update(pa.array(np.arange(300, dtype=np.int64) * 3 + 1))
    for expected in (digest.hexdigest(), "300-" + "0" * 32):
        name = f"t{expected[-1]}"
        uri, opts = ((f"lance://{tmp_path}/{name}.lance", {"max_rows_per_file": 100,
                                                          "flush_rows": 100})
                     if kind == "lance" else (f"parquet://{tmp_path}/{name}/",
                                              {"rows_per_file": 100}))
        sink = open_sink(uri, **opts)
        batches = [reduce_batch(b, src, 4) for b in src.iter_batches(100)]
        sink.create(batches[0].schema, id_column="id", vector_column="vector", distance="l2",
                    codes_column="pq_codes")
        for b in batches:
            sink.append(b)
        sink.store_model(MODEL, {"source": src.uri})
        calls = []

        def record(fn, items):
            calls.append(list(items))
            return [fn(i) for i in reversed(items)]  # any order: the digests add up

        try:
            if expected == digest.hexdigest():
                sink.verify(300, expected, map_pieces=record)
            else:
                with pytest.raises(VerificationError) as err:
                    sink.verify(300, expected, map_pieces=record)
                assert str(err.value) == (
                    f"Staged target '{uri}' must hold the ids of the source (digest {expected}). "
                    f"Got digest {digest.hexdigest()} instead.")
        finally:
            sink.abort()
        assert len(calls) == 1 and len(calls[0]) == 3 and sink.verified_pieces == 3
        assert {loc[0] for loc in calls[0]} == {kind}
