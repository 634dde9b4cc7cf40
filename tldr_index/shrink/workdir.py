"""The work directory of one ``shrink`` run: its identity and one checkpoint per stage.

Layout::

    <work>/tldr-work.json        run identity: source URI + fingerprint, target, parameters, run id
    <work>/<stage>/...           the stage's outputs
    <work>/<stage>/done.json     written last (atomically): outputs with size + sha256, stage info

A stage counts as done when its ``done.json`` exists and every listed output still has its recorded
size and sha256 (checked on resume: a damaged checkpoint is redone, never trusted). Running a stage
first removes the outputs of every later stage, so checkpoints always describe one consistent run.

Only paths this module created are ever deleted: a directory that holds files but no
``tldr-work.json`` is refused, never cleaned.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..faults import fault_point
from ..artifact import atomic_write_bytes
from ..errors import CheckpointError
from ..joblock import JobLock

log = logging.getLogger(__name__)

STATE_FILE = "tldr-work.json"
DONE_FILE = "done.json"
FORMAT = "tldr-index/work/1"


def sha256_file(path: Path, block: int = 8 << 20) -> str:
    """sha256 of a file, read in ``block``-byte pieces (memory: one block)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1).encode()


class WorkDir:
    """Checkpoints of one run, in ``root`` (created on demand)."""

    def __init__(self, root: str | os.PathLike, stages: tuple[str, ...]):
        self.root = Path(root)
        self.stages = stages
        self.state: dict = {}
        #: held from :meth:`open` to :meth:`release`: two runs never share one work directory
        self.lock = JobLock(self.root.parent / f".{self.root.name}.lock",
                            what=f"shrink with work directory '{self.root}'")

    def release(self) -> None:
        """Give up the lock :meth:`open` took (idempotent)."""
        self.lock.release()

    # -- identity ----------------------------------------------------------------------------
    def open(self, identity: dict, *, resume: bool, overwrite: bool,
             rerun: bool = False) -> bool:
        """Start or continue a run with ``identity`` (``source``, ``fingerprint``, ``target``,
        ``params``). Returns True when earlier checkpoints are kept (a resumed run).

        Raises :class:`CheckpointError` when the directory holds another run that ``resume`` may
        not continue (different source data or parameters) or an unfinished run while
        ``resume`` is off, unless ``overwrite`` (then it is cleared).

        ``rerun=True`` (a plain rerun of shrink, neither ``resume`` nor ``overwrite``): an
        unfinished run is never an error. The same run (same source data and parameters) is
        resumed by itself, any other is discarded and the run starts over; one INFO line says
        which.

        Takes the work directory's lock first (a file beside it): a second run on the same
        work directory while this one lives raises :class:`~tldr_index.joblock.LockedError`
        naming it; a lock left by a killed run is taken over with a warning. The caller
        :meth:`release`\ s it; an error here releases it.
        """
        self.lock.acquire()
        try:
            return self._open(identity, resume=resume, overwrite=overwrite, rerun=rerun)
        except BaseException:
            self.release()
            raise

    def _open(self, identity: dict, *, resume: bool, overwrite: bool, rerun: bool) -> bool:
        state_path = self.root / STATE_FILE
        if self.root.exists() and not state_path.exists() and any(self.root.iterdir()):
            raise CheckpointError(
                f"Work directory '{self.root}' exists and is not a tldr-index work directory (no "
                f"{STATE_FILE}); choose another work_dir (--work-dir).")
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text())
            except ValueError:
                old = {}
            problem = self._mismatch(old, identity)
            if resume and problem is None:
                self.state = old
                log.info("Resuming run %s from %s.", old["run_id"], self.root)
                return True
            if rerun and not resume and not overwrite:
                if problem is None:
                    self.state = old
                    log.info("Resuming the unfinished run %s in %s by itself (same source and "
                             "parameters; checkpoints are re-checked). Pass --overwrite to start "
                             "over instead.", old.get("run_id"), self.root)
                    return True
                log.info("Starting over in %s: the unfinished run there cannot be resumed (%s).",
                         self.root, problem)
                self.clear_all()
            elif not overwrite:
                if problem is None:
                    raise CheckpointError(
                        f"Work directory '{self.root}' holds an unfinished run of this shrink; pass "
                        f"resume=True (--resume) to continue it or overwrite=True (--overwrite) to "
                        f"start over.")
                raise CheckpointError(
                    f"Work directory '{self.root}' holds a run that cannot be resumed: {problem}; "
                    f"pass overwrite=True (--overwrite) to start over.")
            else:
                log.info("Discarding the earlier run in %s (%s).", self.root,
                         problem or "overwrite requested")
                self.clear_all()
        elif resume:
            log.info("Nothing to resume in %s: starting a new run.", self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = {"format": FORMAT, "run_id": uuid.uuid4().hex[:16],
                      "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                          timespec="seconds"), **identity}
        atomic_write_bytes(state_path, _dump(self.state))
        return False

    @staticmethod
    def _mismatch(old: dict, new: dict) -> str | None:
        if old.get("format") != FORMAT:
            return "its state file is unreadable or from another version"
        if old.get("source") != new["source"]:
            return f"it read source '{old.get('source')}', not '{new['source']}'"
        if old.get("fingerprint") != new["fingerprint"]:
            return (f"source '{new['source']}' changed since that run (fingerprint "
                    f"{json.dumps(old.get('fingerprint'), sort_keys=True)} is now "
                    f"{json.dumps(new['fingerprint'], sort_keys=True)})")
        if old.get("target") != new["target"]:
            return f"it wrote target '{old.get('target')}', not '{new['target']}'"
        if old.get("params") != new["params"]:
            diff = [f"{k}={old.get('params', {}).get(k)!r} (now {v!r})"
                    for k, v in new["params"].items() if old.get("params", {}).get(k) != v]
            return "it used other parameters: " + ", ".join(diff)
        return None

    # -- stages ------------------------------------------------------------------------------
    def stage_dir(self, stage: str, *, clear: bool = False, keep: tuple[str, ...] = ()) -> Path:
        """``<root>/<stage>``, created; with ``clear`` emptied first except the names in ``keep``."""
        d = self.root / stage
        if clear and d.exists():
            for p in d.iterdir():
                if p.name not in keep:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, stage: str) -> dict | None:
        """The stage's ``done.json`` if it exists and its outputs are intact, else None."""
        path = self.root / stage / DONE_FILE
        try:
            rec = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        for rel, want in rec.get("files", {}).items():
            p = self.root / rel
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                log.warning("Checkpoint of stage '%s' is missing %s: redoing the stage.", stage, rel)
                return None
            if size != want["size"] or sha256_file(p) != want["sha256"]:
                log.warning("Checkpoint of stage '%s' has a damaged %s: redoing the stage.", stage,
                            rel)
                return None
        return rec

    def mark_done(self, stage: str, files: list[Path], info: dict) -> dict:
        """Record the stage's outputs (size + sha256) and ``info`` in ``done.json``, atomically."""
        fault_point(f"{stage}:done")  # test-only crash point, see tldr_index.faults
        rec = {"stage": stage, "info": info, "files": {
            str(Path(f).relative_to(self.root)): {"size": Path(f).stat().st_size,
                                                  "sha256": sha256_file(Path(f))}
            for f in files}}
        atomic_write_bytes(self.root / stage / DONE_FILE, _dump(rec))
        return rec

    def undo(self, stage: str) -> None:
        """Forget that ``stage`` finished (its outputs stay until the stage runs again)."""
        (self.root / stage / DONE_FILE).unlink(missing_ok=True)

    def clear_after(self, stage: str) -> None:
        """Remove the directories of every stage after ``stage``."""
        for later in self.stages[self.stages.index(stage) + 1:]:
            shutil.rmtree(self.root / later, ignore_errors=True)

    def clear_all(self) -> None:
        """Remove everything this module writes; the root too when it is then empty."""
        for stage in self.stages:
            shutil.rmtree(self.root / stage, ignore_errors=True)
        (self.root / STATE_FILE).unlink(missing_ok=True)
        try:
            self.root.rmdir()
        except OSError:
            pass
