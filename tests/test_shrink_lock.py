"""Two shrinks never share one work directory: the second refuses while the first lives, a
lock left by a dead run is taken over, and a finished or failed run leaves no lock behind."""

from __future__ import annotations

import json
import socket

import pytest
from _pipeline_helpers import lancedb_source, make_nested

from tldr_index.joblock import JobLock, LockedError
from tldr_index.pipeline import shrink
from tldr_index.progress import Progress

OPTS = dict(dim=4, pq_bytes=2, epochs=1, threads=1, eval_queries=20, batch_rows=256,
            random_state=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    return lancedb_source(str(root), make_nested(300, 8, between=3, within=3, seed=1)), root


def lock_path(work):
    return work.parent / f".{work.name}.lock"


def test_second_run_refuses_while_first_holds_the_lock(source, tmp_path):
    src, _ = source
    work = tmp_path / "work"
    holder = JobLock(lock_path(work), what="shrink with work directory 'x'").acquire()
    try:
        with pytest.raises(LockedError, match=r"^Another job is running on this target: shrink "
                           r"with work directory 'x' \(pid \d+ on .+, started .+\) holds the lock "
                           r".+\.work\.lock\. Try again when it has finished\.$"):
            shrink(src, src + "_a", work_dir=work, **OPTS)
        assert not work.exists()  # refused before anything was written
    finally:
        holder.release()
    rep = shrink(src, src + "_a", work_dir=work, **OPTS)  # once free, it runs
    assert rep.rows == 300 and not lock_path(work).exists()


def test_stale_lock_of_a_dead_run_is_taken_over(source, tmp_path, caplog):
    src, _ = source
    work = tmp_path / "work"
    lock_path(work).parent.mkdir(parents=True, exist_ok=True)
    dead = 2 ** 22 + 12345  # above the default pid_max of 4,194,304: no such process
    lock_path(work).write_text(json.dumps({"pid": dead, "hostname": socket.gethostname(),
                                           "what": "shrink", "started_utc": "then"}))
    with caplog.at_level("WARNING"):
        shrink(src, src + "_b", work_dir=work, **OPTS)
    assert f"Taking over a stale lock {lock_path(work)} left by a dead job (pid {dead}" \
        in caplog.text
    assert not lock_path(work).exists()


class Boom(Progress):
    def update(self, stage, completed, total=None):
        if stage == "train":
            raise RuntimeError("boom in train")


def test_failed_run_releases_the_lock(source, tmp_path):
    src, _ = source
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="^boom in train$"):
        shrink(src, src + "_c", work_dir=work, progress=Boom(), **OPTS)
    assert (work / "state.json").exists() or any(work.iterdir())  # the run had started
    assert not lock_path(work).exists()
    shrink(src, src + "_c", work_dir=work, **OPTS)  # and a plain rerun resumes it
