"""tests/_forkrun.py, the forked-child runner of the README, benchmark and reliability tests: a
child sees what a fresh ``python <script>`` would (argv, cwd, environment, ``sys.path[0]``,
``__name__``) and its exit status is the one a fresh interpreter would give."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from _forkrun import run_python

SCRIPT = """
import json, os, signal, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("FORKRUN_T"),
                  "path0": sys.path[0], "name": __name__, "lancedb": "lancedb" in sys.modules}))
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "exit3":
    sys.exit(3)
if mode == "exit-text":
    sys.exit("bad thing")
if mode == "raise":
    raise ValueError("boom")
if mode == "sigkill":
    os.kill(os.getpid(), 9)
if mode == "ctrl-c":
    os.kill(os.getpid(), signal.SIGINT)
if mode == "sleep":
    import time; time.sleep(60)
"""


def _both(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The script run by a fresh interpreter and by ``run_python``, same argv, cwd and env."""
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    (tmp_path / "cwd").mkdir(exist_ok=True)
    env = {**os.environ, "FORKRUN_T": "x y"}
    fresh = subprocess.run([sys.executable, str(script), mode], cwd=tmp_path / "cwd", env=env,
                           text=True, capture_output=True, timeout=60,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    forked = run_python("path", str(script), [str(script), mode], cwd=tmp_path / "cwd", env=env,
                        timeout=60)
    return fresh, forked


@pytest.mark.parametrize("mode,code", [("ok", 0), ("exit3", 3), ("exit-text", 1), ("raise", 1),
                                       ("sigkill", -signal.SIGKILL),
                                       ("ctrl-c", -signal.SIGINT)])
def test_forked_child_is_like_a_fresh_interpreter(tmp_path, mode, code):
    fresh, forked = _both(tmp_path, mode)
    assert fresh.returncode == code, fresh.stderr
    assert forked.returncode == code, forked.stderr
    assert forked.stdout == fresh.stdout  # argv, cwd, env, sys.path[0], __name__, no lancedb
    assert forked.stderr.splitlines()[0] == "to stderr"
    if mode in ("raise", "exit-text", "ctrl-c"):
        assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


def test_timeout_kills_the_child(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("path", str(script), [str(script), "sleep"], cwd=tmp_path, env=dict(os.environ),
                   timeout=1)
    # the server is still usable afterwards
    ok = run_python("path", str(script), [str(script), "ok"], cwd=tmp_path, env=dict(os.environ))
    assert ok.returncode == 0
