"""Ctrl-C (a real SIGINT) of ``python -m tldr_index shrink``: exit code 130, the stage it stopped
and the exact command that resumes on stderr; ``--resume`` then publishes the same target as an
uninterrupted run. During the publish the signal arrives while the publish (the Lance index
build, a long native call) is still running in its worker thread: the command must still exit at
once and leave the previous target as it was.

The signal is sent by the fault hook (:mod:`tldr_index.faults`, actions ``sigint`` and
``sigint-wait``), so where it lands does not depend on timing.
"""

from __future__ import annotations

import shlex

import pytest
from _connector_helpers import staging_leftovers
from _pipeline_helpers import assert_same_snapshot, lancedb_source, make_nested, snapshot
from reliability._harness import run_cli, run_cli_here

from tldr_index.faults import SIGINT_WAIT_SECONDS
from tldr_index.cli import EXIT_INTERRUPTED, interrupted_message
from tldr_index.errors import Interrupted

N = 600
ARGS = ["--dim", "4", "--pq-bytes", "2", "--epochs", "3", "--threads", "1", "--seed", "7",
        "--quiet"]


@pytest.fixture(scope="module")
def data():
    return make_nested(N, 16, between=6, within=4, seed=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("ref")
    src = lancedb_source(str(root), data)
    res = run_cli_here(["shrink", "--source", src, "--target", "docs_ref",
                        "--work-dir", str(root / "work"), *ARGS])
    assert res.exit_code == 0, res.output
    return snapshot(src + "_ref")


def test_ctrl_c_in_knn_exits_130_names_the_stage_and_resumes(tmp_path, data, reference,
                                                             source_guard):
    src = source_guard(lancedb_source(str(tmp_path), data))
    work = tmp_path / "work"
    argv = ["shrink", "--source", src, "--target", "docs_out", "--work-dir", str(work), *ARGS]
    run = run_cli(argv, "knn:update@1=sigint")
    assert run.returncode == EXIT_INTERRUPTED, run.stderr[-3000:]
    assert "Aborted!" not in run.stderr
    assert "Interrupted during stage 'knn' of shrink (Ctrl-C)." in run.stderr
    assert f"Finished stages are checkpointed in {work}; resume with:" in run.stderr
    resume = argv + ["--resume"]
    assert f"  python -m tldr_index {shlex.join(resume)}\n" in run.stderr
    res = run_cli_here(resume)
    assert res.exit_code == 0, res.output[-3000:]
    assert_same_snapshot(snapshot(src + "_out"), reference)
    assert not work.exists()


def test_ctrl_c_during_the_publish_worker_exits_at_once_and_keeps_the_old_target(
        tmp_path, data, reference, source_guard):
    src = source_guard(lancedb_source(str(tmp_path), data))
    work = tmp_path / "work"
    base = ["shrink", "--source", src, "--target", "docs_out", "--work-dir", str(work)]
    old = run_cli_here([*base, *ARGS, "--seed", "1"])  # the target that is being replaced
    assert old.exit_code == 0, old.output
    before = snapshot(src + "_out")
    argv = [*base, *ARGS, "--overwrite"]
    # the worker sends Ctrl-C and then sleeps SIGINT_WAIT_SECONDS (a publish that goes on):
    # waiting for it would outlast the timeout
    run = run_cli(argv, "worker:publish=sigint-wait", timeout=SIGINT_WAIT_SECONDS - 15)
    assert run.returncode == EXIT_INTERRUPTED, run.stderr[-3000:]
    assert "Interrupted during stage 'publish' of shrink (Ctrl-C)." in run.stderr
    assert_same_snapshot(snapshot(src + "_out"), before)
    res = run_cli_here(argv + ["--resume"])
    assert res.exit_code == 0, res.output[-3000:]
    assert_same_snapshot(snapshot(src + "_out"), reference)
    assert staging_leftovers(str(tmp_path / "db")) == []


def test_interrupted_messages_of_other_commands():
    exc = Interrupted("publish", "/w")
    assert interrupted_message("shrink", ["shrink", "--collection", "my docs", "--resume"],
                               exc) == [
        "Interrupted during stage 'publish' of shrink (Ctrl-C).",
        "Finished stages are checkpointed in /w; resume with:",
        "  tldr-index shrink --collection 'my docs' --resume"]
    assert interrupted_message("reindex", ["reindex", "--target", "t"], KeyboardInterrupt()) == [
        "Interrupted during reindex (Ctrl-C).",
        "Run the same command again to continue from its saved state:",
        "  tldr-index reindex --target t"]
    assert interrupted_message("eval", ["eval", "--target", "t"], KeyboardInterrupt())[1] == \
        "Nothing to resume: run the command again to start over."
