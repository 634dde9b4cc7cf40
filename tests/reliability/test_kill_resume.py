"""SIGKILL ``python -m tldr_index shrink`` inside every stage, resume with ``--resume``: the
published target equals an uninterrupted run with the same seed (ids, reduced vectors, PQ codes,
payload, model tensors, and a model file with the same sha256: the killed runs read the
reference run's source), no reader polling the target ever sees a partial one, the source is
untouched and no staging area or work directory is left behind.

Fault points: see :mod:`tldr_index.faults`. To add a command (``reindex``), add rows to a list
like ``SHRINK_KILLS`` and call :func:`reliability._harness.kill_then_resume` with its argv.
"""

from __future__ import annotations

import json

import pytest
from _connector_helpers import staging_leftovers
from reliability._harness import kill_then_resume, run_cli_here
from _pipeline_helpers import lancedb_source, make_nested, model_file_sha256, snapshot

from connectors import lancedb_uri

N = 600
# 600 rows, 540 anchors after TLDR's validation rows: 2 training steps per epoch, 3 epochs
ARGS = ["--dim", "4", "--pq-bytes", "2", "--epochs", "3", "--threads", "1", "--seed", "7",
        "--quiet"]

# (fault point, stages resumed from their checkpoint, target already published when killed);
# one kill per stage (two in publish: before and after the atomic switch) keeps this file near a
# minute; the `<stage>:done` points (outputs written, done.json not yet) are used by
# test_disk_faults.py
SHRINK_KILLS = [
    ("scan:update@1", [], False),                      # rows spilled, vector store unfinished
    ("knn:update@1", ["scan"], False),                 # inside the kNN graph
    ("train:update@5", ["scan", "knn"], False),        # epoch 3 (epochs 1-2 checkpointed)
    ("encode:update@1", ["scan", "knn", "train"], False),
    ("write:update@1", ["scan", "knn", "train", "encode"], False),  # staging half written
    ("verify:update@1", ["scan", "knn", "train", "encode"], False),  # verified, not published
    ("publish:update@1", ["scan", "knn", "train", "encode"], False),  # just before the switch
    ("publish:update@2", ["scan", "knn", "train", "encode", "write", "verify", "publish"], True),
]


@pytest.fixture(scope="module")
def data():
    return make_nested(N, 16, between=6, within=4, seed=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run every resumed run must equal: ``(source URI, snapshot, sha256 of
    the model file)``. The killed runs read this source too (each guards it) and write their
    own targets, so the source path recorded in the model is the same."""
    root = tmp_path_factory.mktemp("ref")
    src = lancedb_source(str(root), data)
    res = run_cli_here(["shrink", "--source", src, "--target", "docs_ref",
                        "--work-dir", str(root / "work"), *ARGS])
    assert res.exit_code == 0, res.output
    return src, snapshot(src + "_ref"), model_file_sha256(src + "_ref")


@pytest.mark.parametrize("fault,skipped,published", SHRINK_KILLS,
                         ids=[k[0] for k in SHRINK_KILLS])
def test_shrink_killed_in_each_stage_resumes_to_the_same_target(
        fault, skipped, published, tmp_path, reference, source_guard):
    src, expected, model_sha = reference
    source_guard(src)
    tgt = lancedb_uri(str(tmp_path / "db"), "docs_out")
    work = tmp_path / "work"
    argv = ["shrink", "--source", src, "--target", tgt, "--work-dir", str(work), *ARGS,
            "--json"]
    argv.remove("--quiet")
    run = kill_then_resume(argv, fault, tgt, expected)
    assert model_file_sha256(tgt) == model_sha  # the model file, byte for byte
    report = json.loads(run["resumed"].stdout)
    assert report["resumed"]
    assert report["skipped_stages"] == skipped
    # readers saw no target before the switch, then only the complete one
    assert (run["watcher"].seen > 0) or not published
    assert staging_leftovers(str(tmp_path / "db")) == []
    assert not work.exists()


# engine=ray: killed after the first of three 200-row scan pieces, and after the first written
# shard; the resumed run equals the local engine's uninterrupted run (same sample, same model).
# Each killed child starts its own local Ray; the resumed runs (in this process) share one
# (``ray_local``), as on a running cluster.
RAY_KILLS = [("scan:update@1", []),
             ("write:update@1", ["scan", "knn", "train", "encode"])]


@pytest.mark.parametrize("fault,skipped", RAY_KILLS, ids=[k[0] for k in RAY_KILLS])
def test_shrink_on_ray_killed_resumes_to_the_same_target(fault, skipped, tmp_path, reference,
                                                         source_guard, ray_local):
    src, expected, model_sha = reference
    source_guard(src)
    tgt = lancedb_uri(str(tmp_path / "db"), "docs_out")
    work = tmp_path / "work"
    argv = ["shrink", "--source", src, "--target", tgt, "--work-dir", str(work), *ARGS,
            "--json", "--engine", "ray", "--shard-rows", "200", "--workers", "2"]
    argv.remove("--quiet")
    run = kill_then_resume(argv, fault, tgt, expected)
    assert model_file_sha256(tgt) == model_sha
    report = json.loads(run["resumed"].stdout)
    assert report["resumed"] and report["skipped_stages"] == skipped
    assert staging_leftovers(str(tmp_path / "db")) == []
    assert not work.exists()
