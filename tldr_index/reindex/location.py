"""Where the reindex state of a target lives (lock, hash states, history, refit checkpoints):
:func:`reindex_dir`, a function of the target alone (never of the current directory), so
``reindex`` and ``rollback`` find the same state from anywhere. Cost: a few ``stat`` calls."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

STATE_SUFFIX = ".tldr-reindex"  # <dir holding the target>/.<name>.tldr-reindex


def user_state_dir() -> Path:
    """``$XDG_STATE_HOME/tldr-index`` (an absolute ``XDG_STATE_HOME`` only, as the XDG spec
    says), else ``~/.local/state/tldr-index``: where state of targets without a local directory
    (a Qdrant server) lives."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "tldr-index"


def _local_home(target_uri: str) -> tuple[Path, str] | None:
    """``(directory that holds the target, target name)`` for a target on the local
    filesystem, None otherwise (a Qdrant server or in-memory store, a remote object store)."""
    from connectors import parse_uri

    p = parse_uri(target_uri)
    if p.kind == "qdrant":
        return (Path(os.path.abspath(p.path)), p.collection) if p.mode == "path" else None
    if p.kind == "lance" and p.table:
        where, name = p.db, p.table
    else:
        path = p.path.rstrip("/")
        where, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if "://" in p.path or not name or any(ch in p.path for ch in "*?["):  # object store, glob
        return None
    return Path(os.path.abspath(where)), name


def default_reindex_dir(target_uri: str) -> Path:
    """The reindex directory of ``target_uri`` when no ``work_dir`` is given: a function of the
    target alone, never of the current directory, so ``reindex`` and ``rollback`` find the same
    state from anywhere.

    * a local target (LanceDB table, Lance dataset, Parquet directory, embedded Qdrant
      collection): ``.<name>.tldr-reindex`` in the directory that holds it (the LanceDB
      directory, the Parquet directory's parent, the Qdrant storage directory), so the state
      moves, is backed up and is deleted with the data it describes;
    * a target without a local directory (a Qdrant server, an in-memory Qdrant):
      ``<user_state_dir()>/reindex/<name>-<8 hex of the absolute target URI>``.
    """
    from connectors import absolute_uri, parse_uri

    home = _local_home(target_uri)
    if home is not None:
        return home[0] / f".{home[1]}{STATE_SUFFIX}"
    p = parse_uri(target_uri)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.collection or p.table or
                  os.path.basename(p.path.rstrip("/")) or "target")
    tag = hashlib.sha256(absolute_uri(target_uri).encode()).hexdigest()[:8]
    return user_state_dir() / "reindex" / f"{name}-{tag}"


def legacy_reindex_dir(target_uri: str) -> Path:
    """Where earlier builds kept the reindex state: ``$TLDR_INDEX_WORK`` or ``./tldr-work``
    (relative to the current directory), then ``<name>-<hash>.reindex``."""
    from ..shrink.plan import default_work_dir

    d = default_work_dir(target_uri)
    return d.with_name(d.name + ".reindex")


def has_state(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a reindex history or a hash state."""
    root = Path(root)
    return (root / "history.json").is_file() or any((root / "hashes").glob("*.arrow"))


def reindex_dir(target_uri: str, work_dir: str | os.PathLike | None = None) -> Path:
    """The lock, hash states, history, refit checkpoints and the record of a delta's staging area
    (removed by the next run when a killed run left it) of ``target_uri``: ``work_dir`` when
    given, else :func:`default_reindex_dir`. When that holds no state but
    :func:`legacy_reindex_dir` (seen from the current directory) does, the legacy directory is
    used, with a warning that says how to move it."""
    if work_dir is not None:
        return Path(work_dir)
    root = default_reindex_dir(target_uri)
    if not has_state(root):
        old = legacy_reindex_dir(target_uri).absolute()
        if has_state(old):
            log.warning("Using the reindex state of '%s' found in '%s', where earlier versions "
                        "kept it (under the current directory or $TLDR_INDEX_WORK). Its place is "
                        "now '%s' (found from any directory): move it there (mv '%s' '%s'), or "
                        "keep passing --work-dir '%s'.", target_uri, old, root, old, root, old)
            return old
    return root


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_if_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (the ones a run created, deepest first) while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return
