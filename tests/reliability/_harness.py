"""Subprocess crash harness: run a ``tldr-index`` command in a child with
``TLDR_INDEX_FAULT=<point>`` (the child SIGKILLs itself there, see :mod:`tldr_index.faults`),
resume it with ``--resume``, and watch the target from another thread the whole time.

``shrink``: :func:`kill_then_resume` (``test_kill_resume.py``). ``reindex`` (no ``--resume``: a
plain rerun, readers may also see the version being replaced): :func:`kill_then_rerun`
(``test_reindex_kill.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _forkrun import run_python
from _pipeline_helpers import assert_same_snapshot, snapshot

from tldr_index.faults import ENV

REPO = Path(__file__).resolve().parents[2]


def child_env(fault: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return env


def run_cli(argv: list[str], fault: str | None = None, timeout: float = 240
            ) -> subprocess.CompletedProcess:
    """``python -m tldr_index <argv>`` in a child process, in its own process group: once it has
    exited, whatever it started and left behind (a local Ray's agents outlive a SIGKILLed
    driver) is killed with the group. The child is forked from a pre-imported interpreter
    (``tests/_forkrun.py``: its own pid, session, environment and exit status, SIGINT raising
    KeyboardInterrupt as in a fresh interpreter, without ~5 CPU s of imports each time); its
    output goes through files, not pipes, which such orphans could hold open."""
    return run_python("module", "tldr_index", [sys.executable, *argv], cwd=REPO,
                      env=child_env(fault), timeout=timeout, new_session=True)


def _same(a: dict, b: dict) -> bool:
    try:
        assert_same_snapshot(a, b)
    except AssertionError:
        return False
    return True


class TargetWatcher:
    """Polls ``target_uri`` in a thread: every time it can be opened it must equal ``expected``
    in full (ids, vectors, codes, payload, model), or ``before`` when given (the live version a
    ``reindex`` replaces). ``seen`` counts views of ``expected``, ``seen_before`` of ``before``,
    ``errors`` holds what any partial view looked like."""

    def __init__(self, target_uri: str, expected: dict, interval: float = 0.02,
                 before: dict | None = None):
        self.uri, self.expected, self.interval, self.before = target_uri, expected, interval, before
        self.seen, self.seen_before, self.absent, self.errors = 0, 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tldr_index.errors import SourceNotFoundError

        while not self._stop.is_set():
            try:
                snap = snapshot(self.uri)
            except SourceNotFoundError:
                self.absent += 1
            except Exception as exc:  # a half-written target would land here
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                try:
                    assert_same_snapshot(snap, self.expected)
                    self.seen += 1
                except AssertionError as exc:
                    if self.before is not None and _same(snap, self.before):
                        self.seen_before += 1
                    else:
                        self.errors.append(f"partial or different target: {exc}")
            time.sleep(self.interval)

    def __enter__(self) -> TargetWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_cli_here(argv: list[str]):
    """The same command in this process (click's ``CliRunner``: no interpreter start-up)."""
    from click.testing import CliRunner

    from tldr_index.cli import main

    return CliRunner().invoke(main, argv, catch_exceptions=False)


def kill_then_resume(argv: list[str], fault: str, target_uri: str, expected: dict) -> dict:
    """Kill ``argv`` at ``fault`` in a child, resume it in this process (``argv + ['--resume']``)
    and return ``{"killed": proc, "resumed": click result, "watcher": TargetWatcher}``. Asserts the
    child really died of SIGKILL, the resumed run exited 0, no reader saw a partial target and the
    target equals ``expected``."""
    return kill_then_rerun(argv, fault, target_uri, expected, rerun=argv + ["--resume"])


def kill_then_rerun(argv: list[str], fault: str, target_uri: str, expected: dict, *,
                    rerun: list[str], before: dict | None = None,
                    exit_codes: tuple[int, ...] = (0,)) -> dict:
    """:func:`kill_then_resume` with any second command line ``rerun`` (e.g. a plain rerun of
    ``reindex``), readers allowed to see ``before`` (the version being replaced) as well, and the
    rerun's accepted ``exit_codes``."""
    with TargetWatcher(target_uri, expected, before=before) as watcher:
        killed = run_cli(argv, fault)
        assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode,
                                                      killed.stderr[-3000:])
        resumed = run_cli_here(rerun)
        assert resumed.exit_code in exit_codes, resumed.output[-3000:]
    assert watcher.errors == [], watcher.errors[:3]
    assert_same_snapshot(snapshot(target_uri), expected)
    return {"killed": killed, "resumed": resumed, "watcher": watcher}
