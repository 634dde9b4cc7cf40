"""Run a Python command line (``python -m tldr_index ...``, ``tldr-index ...``, ``python
script.py ...``) as a *forked* child of one pre-imported server process instead of a fresh
interpreter: the same process boundary (its own pid, cwd, environment, stdout/stderr files, exit
status, a SIGKILL kills only it, its own session when asked), without paying the interpreter
start-up and the ~4-5 CPU s of imports (torch, FAISS, pyarrow, scikit-learn, SciPy, pandas,
qdrant-client, matplotlib, the CLI) once per command.

The server is started once per test process (``python -c SERVER``, environment of the test
process plus ``PYTHONPATH`` = the repository) and never computes anything itself: it imports,
then loops ``read request -> fork -> wait -> reply``. Modules that start threads at import
(``lancedb``: an asyncio loop thread) or read the environment at import (``lance``: ``LANCE_LOG``;
``ray``; the benchmarks' ``_corpus``: ``TLDR_SHARED``) are *not* pre-imported: each child imports
them itself, with its own environment. The pre-imported ones saw the test process's environment
at import (numpy/torch read thread-count variables such as ``OMP_NUM_THREADS`` then): a command
whose environment sets those would not get them, and none run through here does.

The child behaves like a fresh interpreter as far as the command can tell: ``os.environ`` is the
request's environment, ``sys.argv``/``sys.path[0]`` are what ``python -m``, a console script or
``python script.py`` set, SIGINT raises ``KeyboardInterrupt`` (an uncaught one ends the process
by SIGINT, as CPython does), and at the end non-daemon threads are joined and ``atexit`` handlers
run before the exit status (``SystemExit`` as CPython maps it; an uncaught exception prints its
traceback and exits 1) is set with ``os._exit``.

Cost: the server's start (~5 CPU s) once per test process; per command, one ``fork`` (a few ms).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PREIMPORT = ["numpy", "torch", "faiss", "pyarrow", "pyarrow.parquet", "pyarrow.dataset",
             "pyarrow.compute", "sklearn", "scipy.stats", "pandas", "qdrant_client",
             "matplotlib", "click", "tldr_index", "tldr_index.cli", "tldr_index.pipeline"]

SERVER = r"""
import importlib, json, os, sys
os.environ.setdefault("MPLBACKEND", "Agg")
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
for mod in ("lancedb", "lance", "ray"):
    assert mod not in sys.modules, f"{mod} was imported by the pre-imports"
_out = os.fdopen(os.dup(1), "w")
_in = os.fdopen(os.dup(0), "r")
_out.write("ready\n"); _out.flush()


def _child(req):
    import atexit, runpy, signal, threading, traceback
    if req["new_session"]:
        os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
    for n, path in ((1, req["stdout"]), (2, req["stderr"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(fd, n); os.close(fd)
    _in.close(); _out.close()
    sys.argv = list(req["argv"])
    sys.path[0] = req["path0"]
    code = 0
    try:
        try:
            if req["kind"] == "module":
                runpy.run_module(req["target"], run_name="__main__", alter_sys=True)
            elif req["kind"] == "path":
                runpy.run_path(req["target"], run_name="__main__")
            else:  # a console script: "module:function"
                mod, func = req["target"].split(":")
                sys.exit(getattr(importlib.import_module(mod), func)())
        except SystemExit as exc:
            c = exc.code
            if c is None:
                code = 0
            elif isinstance(c, int):
                code = c & 0xFF
            else:
                print(c, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


for line in _in:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(req)
    _out.write(json.dumps({"pid": pid}) + "\n"); _out.flush()
    _, status, ru = os.wait4(pid, 0)
    _out.write(json.dumps({"status": os.waitstatus_to_exitcode(status),
                           "cpu": ru.ru_utime + ru.ru_stime}) + "\n"); _out.flush()
"""

_LOCK = threading.Lock()
_SERVER: list[subprocess.Popen] = []
CHILD_CPU = [0.0]  # CPU seconds of every child run so far (they are the server's, not ours)


def _stop() -> None:
    """End the server (at exit of the test process): its stdin closed, it exits its loop."""
    for proc in _SERVER:
        if proc.stdin.closed:
            continue
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(_stop)


def _server() -> subprocess.Popen:
    if _SERVER and _SERVER[0].poll() is None:
        return _SERVER[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("TLDR_INDEX_FAULT", None)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(PREIMPORT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tempfile.gettempdir(), start_new_session=True)
    assert proc.stdout.readline().strip() == "ready", "fork server did not start"
    _SERVER[:] = [proc]
    return proc


def _readline(proc: subprocess.Popen, timeout: float | None) -> str | None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else None


def run_python(kind: str, target: str, argv: list[str], *, cwd, env: dict,
               timeout: float | None = None, new_session: bool = False,
               path0: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` (``sys.argv`` of the command, ``argv[0]`` the program) in a forked child:
    ``kind`` ``"module"`` (``python -m target``), ``"path"`` (``python target``) or ``"entry"``
    (a console script, ``target`` = ``"module:function"``). ``env`` is the child's whole
    environment. Returns a CompletedProcess (``returncode`` negative for a signal, as
    :mod:`subprocess`); on ``timeout`` the child is SIGKILLed and ``TimeoutExpired`` raised. After
    it has exited, its process group is SIGKILLed when ``new_session`` (what it left behind)."""
    cwd = os.path.abspath(cwd)
    if path0 is None:
        path0 = {"module": cwd, "path": str(Path(target).resolve().parent)}.get(
            kind, str(Path(argv[0]).parent))
    with _LOCK, tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = _server()
        proc.stdin.write(json.dumps({"kind": kind, "target": target, "argv": argv, "cwd": cwd,
                                     "env": env, "stdout": out, "stderr": err,
                                     "new_session": new_session, "path0": path0}) + "\n")
        proc.stdin.flush()
        pid = json.loads(proc.stdout.readline())["pid"]
        line = _readline(proc, timeout)
        timed_out = line is None
        if timed_out:
            os.kill(pid, signal.SIGKILL)
            line = proc.stdout.readline()
        reply = json.loads(line)
        code = reply["status"]
        CHILD_CPU[0] += reply["cpu"]
        if new_session:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        res = subprocess.CompletedProcess(argv, code, Path(out).read_text(errors="replace"),
                                          Path(err).read_text(errors="replace"))
    if timed_out:
        raise subprocess.TimeoutExpired(argv, timeout, res.stdout, res.stderr)
    return res
