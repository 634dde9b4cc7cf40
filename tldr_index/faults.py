"""Test-only fault injection at named points of a run. Inert unless ``TLDR_INDEX_FAULT`` is set.

``TLDR_INDEX_FAULT=<point>[@<n>][=<action>]`` makes the ``n``-th arrival (default 1) at ``point``
in this process do ``action``:

==========  ====================================================================================
kill        ``os.kill(os.getpid(), SIGKILL)`` (the default): a real crash, nothing runs after it
enospc      raise ``OSError(ENOSPC)`` (disk full)
eacces      raise ``PermissionError(EACCES)`` (permission denied)
sigint      ``os.kill(os.getpid(), SIGINT)``: a Ctrl-C (the main thread raises KeyboardInterrupt)
sigint-wait a Ctrl-C, then this thread sleeps ``SIGINT_WAIT_SECONDS`` (60): stands in for a long
            native call that goes on in a worker thread (``worker:<name>`` points)
==========  ====================================================================================

Points (``tests/reliability/`` kills a run at each of them):

* ``<stage>:update`` -- every progress update of a stage (``shrink`` wraps its progress with
  :func:`wrap_progress` when the variable is set): scan/encode/write after each batch, knn after
  each graph block, train after each step, verify once, publish before (1st) and after (2nd) the
  atomic switch.
* ``worker:<name>`` -- the start of a worker thread of :func:`tldr_index.threads.run_in_worker`
  (``publish``: the sink's publish with its index build; ``opq-train``, ``pq-train``: k-means).
* ``<stage>:done`` -- a stage's outputs are complete, its ``done.json`` is not yet written
  (:meth:`tldr_index.shrink.workdir.WorkDir.mark_done`).
* ``reindex:<point>`` (:mod:`tldr_index.reindex`, ``Target.apply_delta`` in :mod:`connectors`):
  ``encode`` after each encoded batch of new/changed rows, ``scanned`` once the delta is known
  (nothing written), ``state-saved`` after the new generation's hashes are saved (target not
  switched),
  ``rows-written`` (Lance: rows committed, record not; Parquet/Qdrant: new version staged and
  verified, not switched), ``published`` after the switch (history not written), ``refitted``
  after a refit's new version is live. A refit runs ``shrink``, so its points work there too.

Cost when unset: one environment lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal

from .progress import Progress

ENV = "TLDR_INDEX_FAULT"
ACTIONS = ("kill", "enospc", "eacces", "sigint", "sigint-wait")
SIGINT_WAIT_SECONDS = 60
_hits: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, int, str]:
    spec, _, action = spec.partition("=")
    point, _, nth = spec.partition("@")
    return point, int(nth or 1), action or "kill"


def fault_point(name: str) -> None:
    """Arrive at point ``name``; act when ``$TLDR_INDEX_FAULT`` names it and its count."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, nth, action = _parse(spec)
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != nth:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "eacces":
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    if action in ("sigint", "sigint-wait"):
        os.kill(os.getpid(), signal.SIGINT)
        if action == "sigint-wait":
            import time
            time.sleep(SIGINT_WAIT_SECONDS)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Forget the arrival counts (in-process tests run several faults in one process)."""
    _hits.clear()


class _FaultProgress(Progress):
    """Forwards every event to ``inner``; ``update`` first passes ``<stage>:update``."""

    def __init__(self, inner: Progress):
        self.inner = inner

    def begin(self, stage, total=None, unit="rows"):
        self.inner.begin(stage, total, unit)

    def update(self, stage, completed, total=None):
        fault_point(f"{stage}:update")
        self.inner.update(stage, completed, total)

    def phase(self, stage, name, total=None, unit=""):
        self.inner.phase(stage, name, total, unit)

    def end(self, stage, seconds, note=""):
        self.inner.end(stage, seconds, note)

    def close(self):
        self.inner.close()


def wrap_progress(progress: Progress) -> Progress:
    """``progress`` itself, or a forwarding wrapper with ``<stage>:update`` points when
    ``$TLDR_INDEX_FAULT`` is set."""
    return _FaultProgress(progress) if os.environ.get(ENV) else progress
