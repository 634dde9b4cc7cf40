"""SIGKILL ``python -m tldr_index reindex`` at its fault points (and inside a refit's ``shrink``),
then run the same command again: the target equals the target of an uninterrupted reindex of the
same change (ids, reduced vectors, PQ codes, payload, model), a reader polling the target only
ever sees the version before or the one after, the lock left by the killed job does not block the
rerun (it is taken over and reported), a third run has nothing to do, ``rollback`` still returns
to the target before the reindex, and the source is untouched.

The source change is the one of ``tests/test_reindex.py``: 100 rows added, 30 deleted, 30 changed
(20 vectors and payloads, 10 payloads only). Fault points: :mod:`tldr_index.faults`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _connector_helpers import staging_leftovers
from _pipeline_helpers import assert_same_snapshot, make_nested, snapshot
from test_reindex import DIM, Store, _changes

from connectors import open_target, parse_uri
from reliability._harness import kill_then_rerun, run_cli_here
from tldr_index.artifact import model_from_bytes
from tldr_index.pipeline import shrink

N = 400
SHRINK = dict(dim=8, pq_bytes=4, epochs=2, threads=1, eval_queries=0)

# (store, fault point, --refit, exit code of the rerun: 0 updated, 3 nothing, 4 refitted)
REINDEX_KILLS = [
    ("lancedb", "reindex:encode@1", "never", 0),        # new/changed rows being encoded
    ("lancedb", "reindex:state-saved", "never", 0),     # delta known, new hashes saved, target
                                                        # not switched (`reindex:scanned` is
                                                        # the same without the hashes)
    ("lancedb", "reindex:rows-written", "never", 0),    # rows committed, record not yet
    ("lancedb", "reindex:published", "never", 3),       # switched, history not written
    ("lancedb", "train:update@2", "always", 4),         # inside the refit's shrink
    ("lancedb", "reindex:refitted", "always", 3),       # refitted version live, state not saved
    ("parquet", "reindex:rows-written", "never", 0),    # new directory staged, not exchanged
]


@pytest.fixture(scope="module")
def data():
    X = make_nested(N + 100, DIM, seed=11)
    return X[:N], X[N:]


def _prepare(kind: str, root, data) -> Store:
    """A source, its target from ``shrink``, then the source changed (the same every time)."""
    X, X_new = data
    s = Store(kind, str(root / "s"), X)
    shrink(s.uri, s.target, work_dir=root / "w0", **SHRINK)
    s.mutate(*_changes(X_new, s, np.random.default_rng(1)))
    return s


def _model_info(target: str, root) -> str:
    """The model's recorded info, without its fit timings and source fingerprint and with
    ``root`` (the test's directory) as ``<root>``: what two equal fits of two copies of a source
    differ in. The tensors are compared by ``snapshot``."""
    info = model_from_bytes(open_target(target).model_bytes)[1]
    info.get("fit_info", {}).pop("seconds", None)
    info.get("compact", {}).pop("source_fingerprint", None)  # Parquet: file mtimes
    return json.dumps(info, sort_keys=True).replace(str(root), "<root>")


def _argv(s: Store, work, refit: str) -> list[str]:
    return ["reindex", "--target", s.target, "--work-dir", str(work), "--refit", refit,
            "--threads", "1", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """``(store, refit) -> (snapshot, model info)`` of an uninterrupted reindex, built once."""
    made = {}

    def get(kind: str, refit: str):
        if (kind, refit) not in made:
            root = tmp_path_factory.mktemp(f"ref_{kind}_{refit}")
            s = _prepare(kind, root, data)
            res = run_cli_here(_argv(s, root / "rw", refit))
            assert res.exit_code == (4 if refit == "always" else 0), res.output
            made[kind, refit] = (snapshot(s.target), _model_info(s.target, root))
        return made[kind, refit]

    return get


@pytest.mark.parametrize("kind,fault,refit,code", REINDEX_KILLS,
                         ids=[f"{k[0]}-{k[1]}" for k in REINDEX_KILLS])
def test_reindex_killed_then_rerun_equals_an_uninterrupted_one(kind, fault, refit, code,
                                                               tmp_path, data, reference,
                                                               source_guard):
    expected, info = reference(kind, refit)
    s = _prepare(kind, tmp_path, data)
    source_guard(s.uri)
    before, model_before = snapshot(s.target), open_target(s.target).model_bytes
    work = tmp_path / "rw"
    argv = _argv(s, work, refit)
    run = kill_then_rerun(argv, fault, s.target, expected, rerun=argv, before=before,
                          exit_codes=(code,))
    assert (work / "lock").exists() is False
    report = json.loads(run["resumed"].stdout.strip().splitlines()[-1])
    # the killed job's lock (its pid is gone) was taken over, not waited for
    assert report["stale_lock"]["what"] == f"reindex of '{s.target}'", report
    assert _model_info(s.target, tmp_path) == info
    if refit == "never":  # without a refit the model bytes are never rewritten
        assert open_target(s.target).model_bytes == model_before
    again = run_cli_here(argv)
    assert again.exit_code == 3, again.output  # the rerun left a consistent state
    parent = parse_uri(s.target).path.rstrip("/").rsplit("/", 1)[0]
    assert staging_leftovers(parent) == []
    # the rollback record survived the kill: rollback returns to the target before the reindex
    back = run_cli_here(["rollback", "--target", s.target, "--work-dir", str(work)])
    assert back.exit_code == 0, back.output
    assert_same_snapshot(snapshot(s.target), before)
