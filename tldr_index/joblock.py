"""A lock file that keeps two jobs (``shrink`` of one target, ``reindex``, ``rollback``) apart.

The lock is a small JSON file (pid, hostname, start time, command) created with ``O_EXCL``, so of
two jobs racing for it exactly one wins. A second job finds it and

* refuses with :class:`LockedError` when the holder is alive (same host and its pid exists), or
  when the holder runs on another host (liveness cannot be checked from here);
* takes the lock over with a warning when the holder is dead (same host, pid gone): a stale lock
  left by a killed job.

Cost: a few small file operations. Local filesystems only (``O_EXCL`` on NFS is not atomic on old
servers).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from pathlib import Path

from .errors import TLDRError

log = logging.getLogger(__name__)


class LockedError(TLDRError, RuntimeError):
    """Another live job holds the lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class JobLock:
    """``with JobLock(path, what="reindex of 'x'"):`` holds ``path`` for the block.

    Raises :class:`LockedError` naming the holder when a live job has it.
    """

    def __init__(self, path: str | os.PathLike, what: str = "job"):
        self.path = Path(path)
        self.what = what
        self.held = False
        self.took_over: dict | None = None

    def _info(self) -> dict:
        return {"pid": os.getpid(), "hostname": socket.gethostname(), "what": self.what,
                "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # half-written by a job killed mid-write: treated as stale

    def acquire(self) -> "JobLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released between our two calls: try again
                self._check_holder(holder)
                log.warning("Taking over a stale lock %s left by a dead job (pid %s on %s, "
                            "started %s).", self.path, holder.get("pid"), holder.get("hostname"),
                            holder.get("started_utc"))
                self.took_over = holder
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f)
            self.held = True
            return self
        raise LockedError(f"Could not take the lock {self.path}: it keeps changing hands.")

    def _check_holder(self, holder: dict) -> None:
        pid, host = holder.get("pid"), holder.get("hostname")
        if not isinstance(pid, int) or not host:
            return  # unreadable lock: stale
        if host != socket.gethostname():
            raise LockedError(
                f"Another job holds the lock {self.path} ({holder.get('what', 'job')}, pid {pid} "
                f"on host {host}, started {holder.get('started_utc')}); its liveness cannot be "
                f"checked from this host. Remove the file if that job is gone.")
        if _pid_alive(pid):
            raise LockedError(
                f"Another job is running on this target: {holder.get('what', 'job')} (pid {pid} "
                f"on {host}, started {holder.get('started_utc')}) holds the lock {self.path}. "
                f"Try again when it has finished.")

    def release(self) -> None:
        if not self.held:
            return
        try:
            holder = self._read()
            if holder and holder.get("pid") == os.getpid():
                os.remove(self.path)
        finally:
            self.held = False

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
