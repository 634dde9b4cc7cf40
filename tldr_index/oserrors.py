"""Disk full / permission denied while a run writes: one clear :class:`StorageError` instead of a
traceback from whichever library hit it (numpy, pyarrow, Lance, safetensors)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import StorageError, TLDRError

STORAGE_ERRNOS = {errno.ENOSPC: "ENOSPC", errno.EDQUOT: "EDQUOT", errno.EACCES: "EACCES",
                  errno.EPERM: "EPERM", errno.EROFS: "EROFS"}
_TEXTS = {os.strerror(e): name for e, name in STORAGE_ERRNOS.items()}


def storage_error(exc: OSError, action: str, target: str, work_dir: os.PathLike | str
                  ) -> StorageError | None:
    """The :class:`StorageError` for ``exc`` if it is a full disk or a refused write, else None.
    Libraries that drop ``errno`` (Lance) are recognised by the system's message text."""
    if isinstance(exc, TLDRError):
        return None
    name = STORAGE_ERRNOS.get(exc.errno or -1)
    text = exc.strerror or str(exc)
    if name is None:
        name = next((n for t, n in _TEXTS.items() if t in str(exc)), None)
        text = next((t for t in _TEXTS if t in str(exc)), text)
    if name is None:
        return None
    where = f" at '{exc.filename}'" if exc.filename else ""
    return StorageError(
        f"{action} stopped: {text} ({name}){where}. Nothing was published: the source and any "
        f"previous target '{target}' are unchanged. Free space or fix the permissions of the "
        f"work directory '{work_dir}' or the target, then rerun with resume=True (--resume) to "
        f"continue from the last checkpoint.")


@contextmanager
def storage_errors(action: str, target: str, work_dir: os.PathLike | str) -> Iterator[None]:
    """Turn storage ``OSError``s raised inside the block into :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, action, target, work_dir)
        if err is None:
            raise
        raise err from None
