"""Crash a shrink in every stage, resume it, and get the same target as an uninterrupted run:
the same rows and a model file with the same sha256 (the resumed runs read the reference run's
source, so even the source path recorded in the model is the same).

A crash here is an exception raised from the progress hook (a BaseException, like
KeyboardInterrupt, so no ``except Exception`` in the pipeline can swallow it); the SIGKILL of a
child process is in ``tests/reliability/test_kill_resume.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _connector_helpers import staging_leftovers, tree_hashes
from _pipeline_helpers import (assert_same_snapshot, lancedb_source, make_nested,
                               model_file_sha256, parquet_source, qdrant_source, snapshot)

from connectors import lancedb_uri, open_target
from tldr_index.pipeline import shrink
from tldr_index.progress import Progress

# batch_rows=128: several batches in scan / encode / write; 600 training rows: 2 steps per epoch
OPTS = dict(dim=4, pq_bytes=2, epochs=3, threads=1, eval_queries=50, batch_rows=128,
            random_state=7)
N = 600


class Crash(BaseException):
    pass


class CrashAt(Progress):
    """Raise :class:`Crash` at the ``nth`` update of ``stage`` (counting from 1)."""

    def __init__(self, stage: str, nth: int = 1):
        self.stage, self.nth, self.seen = stage, nth, 0

    def update(self, stage, completed, total=None):
        if stage == self.stage:
            self.seen += 1
            if self.seen == self.nth:
                raise Crash(f"{stage} #{self.nth}")


@pytest.fixture(scope="module")
def data():
    return make_nested(N, 16, between=6, within=4, seed=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run (same seed) every resumed run must equal: ``(source URI, target
    snapshot, sha256 of its model file)``. The tests read this same source (read-only) and
    write their own targets."""
    root = tmp_path_factory.mktemp("ref")
    src = lancedb_source(str(root), data)
    shrink(src, src + "_ref", work_dir=root / "work", **OPTS)
    return src, snapshot(src + "_ref"), model_file_sha256(src + "_ref")


# update counts: scan/encode/write report after each of the 5 batches; knn after each block of
# the graph; train after each step (6); verify once (after sink.verify); publish twice (0 before
# the atomic switch, 1 after it: crashing there tests "published but not marked done")
CRASHES = [("scan", 3), ("knn", 1), ("train", 5), ("encode", 2), ("write", 4), ("verify", 1),
           ("publish", 1), ("publish", 2)]


@pytest.mark.parametrize("stage,nth", CRASHES, ids=[f"{s}-{n}" for s, n in CRASHES])
def test_resume_after_crash_in_each_stage(stage, nth, tmp_path, reference):
    src, ref_snap, ref_sha = reference
    tgt = lancedb_uri(str(tmp_path / "db"), "docs_out")
    source_dir = src.removeprefix("lancedb://") + ".lance"
    before = tree_hashes(source_dir)
    work = tmp_path / "work"
    with pytest.raises(Crash):
        shrink(src, tgt, work_dir=work, progress=CrashAt(stage, nth), **OPTS)
    published = (stage, nth) == ("publish", 2)
    assert os.path.exists(tmp_path / "db" / "docs_out.lance") == published
    rep = shrink(src, tgt, work_dir=work, resume=True, **OPTS)
    assert rep.resumed
    done_before = {"scan": [], "knn": ["scan"], "train": ["scan", "knn"],
                   "encode": ["scan", "knn", "train"]}.get(
        stage, ["scan", "knn", "train", "encode"])
    assert rep.skipped_stages[:len(done_before)] == done_before
    if published:
        assert rep.skipped_stages[-3:] == ["write", "verify", "publish"]
    assert_same_snapshot(snapshot(tgt), ref_snap)
    assert model_file_sha256(tgt) == ref_sha  # the model file, byte for byte
    assert tree_hashes(source_dir) == before
    assert staging_leftovers(str(tmp_path / "db")) == []
    assert not work.exists()


def test_train_resumes_from_its_last_epoch(tmp_path, reference):
    src, ref_snap, ref_sha = reference
    tgt = lancedb_uri(str(tmp_path / "db"), "docs_out")
    work = tmp_path / "work"
    with pytest.raises(Crash):  # in epoch 3: epochs 1-2 are checkpointed
        shrink(src, tgt, work_dir=work, progress=CrashAt("train", 5), **OPTS)
    assert (work / "train" / "ckpt").is_dir()

    steps = []

    class Record(Progress):
        def update(self, stage, completed, total=None):
            if stage == "train":
                steps.append(completed)

    shrink(src, tgt, work_dir=work, resume=True, progress=Record(), **OPTS)
    assert steps == [5, 6]  # only epoch 3 ran again
    assert_same_snapshot(snapshot(tgt), ref_snap)
    assert model_file_sha256(tgt) == ref_sha


# A real SIGKILL of `python -m tldr_index shrink` in every stage, resumed from the command line:
# tests/reliability/test_kill_resume.py.


@pytest.mark.parametrize("kind", ["parquet", "qdrant"])
@pytest.mark.parametrize("stage,nth", [("write", 3), ("publish", 1), ("publish", 2)])
def test_resume_write_and_publish_other_stores(kind, stage, nth, tmp_path, data):
    if kind == "parquet":
        src = parquet_source(str(tmp_path), data)
        tgt = f"parquet://{tmp_path}/out/"
    else:
        src = qdrant_source(data)
        tgt = src + "_out"
    ref_tgt = tgt.replace("out", "ref")
    shrink(src, ref_tgt, work_dir=tmp_path / "ref-work", **OPTS)
    with pytest.raises(Crash):
        shrink(src, tgt, work_dir=tmp_path / "work", progress=CrashAt(stage, nth), **OPTS)
    shrink(src, tgt, work_dir=tmp_path / "work", resume=True, **OPTS)
    assert_same_snapshot(snapshot(tgt), snapshot(ref_tgt))
    assert model_file_sha256(tgt) == model_file_sha256(ref_tgt)
    if kind == "parquet":
        assert staging_leftovers(str(tmp_path)) == []
    else:  # the abandoned staging collection was removed, the published one kept
        client = open_target(tgt).client
        names = sorted(c.name for c in client.get_collections().collections)
        assert names == ["docs", "docs_out__v1", "docs_ref__v1"]


def test_model_bytes_hold_no_timings_and_do_not_depend_on_the_save(tmp_path, data):
    """Two saves of one fit, and a second fit with the same seed, give the same file bytes: the
    safetensors header is written in one order and the fit's wall-clock timings stay on
    ``fit_info_`` (in memory), out of the file."""
    import hashlib

    import torch

    from tldr_index import TLDR, load_model

    X = data[:300]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: one thread is 30x faster on a shared 2-core machine
    try:
        fits = [TLDR(4, epochs=2, random_state=3).fit(X) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert set(fits[0].fit_info_["seconds"]) == {"moments", "knn", "train", "total"}
    fits[0].save(tmp_path / "a.safetensors")
    fits[0].save(tmp_path / "b.safetensors")
    blobs = [(tmp_path / n).read_bytes() for n in ("a.safetensors", "b.safetensors")]
    blobs.append(fits[1].to_bytes())
    assert len({hashlib.sha256(b).hexdigest() for b in blobs}) == 1
    loaded = load_model(tmp_path / "a.safetensors")
    assert "seconds" not in loaded.fit_info_ and "seconds" not in loaded.fit_info_["graph"]
    assert loaded.fit_info_["best_epoch"] == fits[0].fit_info_["best_epoch"]
    np.testing.assert_array_equal(loaded.transform(X[:5]), fits[0].transform(X[:5]))
