"""The history of a target's reindexes (``<reindex dir>/history.json``: the handle of the version
live before each switch, for :func:`tldr_index.reindex.rollback`) and the record of a delta's
staging area in flight (``<reindex dir>/staging.json``). Both are small JSON files written
atomically; a run killed at any point leaves them in a state the next run settles."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path

from ..artifact import atomic_write_bytes

STAGING_FILE = "staging.json"  # in the reindex directory: the staging area of a delta in flight
HISTORY_FILE = "history.json"
KEEP_ENTRIES = 50


def generation(meta: dict) -> str | None:
    """The generation of a target (its metadata's ``generation``, set by every reindex publish,
    or the ``run_id`` of the shrink that wrote it)."""
    return meta.get("generation") or meta.get("run_id")


def read_history(root: Path) -> list:
    """The history entries (oldest first); ``[]`` when there is none or it is unreadable."""
    try:
        return json.loads((root / HISTORY_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []


def write_history(root: Path, hist: list) -> None:
    """Write the newest :data:`KEEP_ENTRIES` entries atomically."""
    atomic_write_bytes(root / HISTORY_FILE, json.dumps(hist[-KEEP_ENTRIES:], indent=1).encode())


def add_history(root: Path, entry: dict) -> None:
    """Append ``entry`` with the current UTC time."""
    hist = read_history(root)
    hist.append({"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 **entry})
    write_history(root, hist)


def settle_history(root: Path, live_generation: str | None) -> dict | None:
    """Settle the last history entry when it is still ``pending`` (written just before a switch;
    a killed run leaves it so): kept, with the live generation, when the switch happened (the
    live generation is no longer the ``from`` one it replaced), dropped otherwise. Returns a
    dropped entry's ``previous`` handle: a killed Lance update may have committed its rows, so
    the next update of this run must still roll back to the version before them."""
    hist = read_history(root)
    if not hist or not hist[-1].get("pending"):
        return None
    last = hist.pop()
    del last["pending"]
    published = live_generation != last.get("from")
    if published:
        hist.append({**last, "generation": live_generation})
    write_history(root, hist)
    return None if published else last.get("previous")


def discard_abandoned(root: Path, target_uri: str) -> None:
    """Remove the staging area (Parquet directory, Qdrant collection) of a reindex that was
    killed before its switch, recorded in ``<root>/staging.json``; never the live target."""
    from connectors import discard_staging

    path = root / STAGING_FILE
    try:
        ref = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:  # half-written by a killed job: it had not staged anything yet
        ref = {}
    discard_staging(target_uri, ref)
    path.unlink(missing_ok=True)


def staging_recorder(root: Path) -> Callable[[dict], None]:
    """The ``staged=`` callback of :meth:`connectors.Target.apply_delta`: records the staging
    area in ``<root>/staging.json`` before anything is staged."""
    return lambda ref: atomic_write_bytes(root / STAGING_FILE, json.dumps(ref).encode())


def clear_staging(root: Path) -> None:
    """Forget the staging record once the delta is published."""
    (root / STAGING_FILE).unlink(missing_ok=True)
