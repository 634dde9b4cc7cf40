"""Progress of long stages: a tiny event interface, a silent default and rich bars for the CLI.

:func:`tldr_index.pipeline.shrink` reports each stage as ``begin(stage, total, unit)``, any number of
``update(stage, completed)`` (absolute counts) and ``end(stage, seconds)``. Subclass
:class:`Progress` to hook into a run (the crash-resume tests raise from ``update``).
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import (BarColumn, Progress as _RichProgress, ProgressColumn, SpinnerColumn,
                           TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class Progress:
    """Receives stage events; the base class ignores them."""

    def begin(self, stage: str, total: int | None = None, unit: str = "rows") -> None:
        """A stage starts; ``total`` units of work (None: unknown)."""

    def update(self, stage: str, completed: int, total: int | None = None) -> None:
        """``completed`` units of ``stage`` are done (absolute count)."""

    def end(self, stage: str, seconds: float, note: str = "") -> None:
        """A stage finished (or was skipped, with ``note`` saying why)."""

    def close(self) -> None:
        """No more events."""


NullProgress = Progress


class _RateColumn(ProgressColumn):
    """``12,345 rows/s`` from the task's speed and its ``unit`` field."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        if speed is None:
            return Text("", style="progress.data.speed")
        fmt = f"{speed:,.0f}" if speed >= 100 else f"{speed:,.1f}"
        return Text(f"{fmt} {unit}/s", style="progress.data.speed")


class RichProgress(Progress):
    """One rich bar per stage (description, bar, percent, rate, elapsed, ETA) on ``console``."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bars = _RichProgress(
            SpinnerColumn(), TextColumn("[bold]{task.description:<8}"), BarColumn(),
            TaskProgressColumn(), TextColumn("{task.completed:,.0f}/{task.fields[shown_total]}"),
            _RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False)
        self._tasks: dict[str, int] = {}
        self._started = False

    def begin(self, stage: str, total: int | None = None, unit: str = "rows") -> None:
        if not self._started:
            self._bars.start()
            self._started = True
        shown = "?" if total is None else f"{total:,} {unit}"
        self._tasks[stage] = self._bars.add_task(stage, total=total, unit=unit, shown_total=shown)

    def update(self, stage: str, completed: int, total: int | None = None) -> None:
        tid = self._tasks.get(stage)
        if tid is None:
            return
        if total is not None:
            unit = self._bars.tasks[tid].fields.get("unit", "")
            self._bars.update(tid, total=total, shown_total=f"{total:,} {unit}")
        self._bars.update(tid, completed=completed)

    def end(self, stage: str, seconds: float, note: str = "") -> None:
        tid = self._tasks.get(stage)
        if tid is None:
            if not self._started:
                self._bars.start()
                self._started = True
            tid = self._tasks[stage] = self._bars.add_task(
                f"{stage} ({note})" if note else stage, total=1, unit="", shown_total=note or "-")
        task = self._bars.tasks[tid]
        total = task.total if task.total is not None else max(task.completed, 1)
        self._bars.update(tid, total=total, completed=total)

    def close(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False


def as_progress(progress: Progress | bool | None) -> Progress:
    """``None``/``False`` -> silent, ``True`` -> rich bars on stderr, a :class:`Progress` as is."""
    if progress is None or progress is False:
        return NullProgress()
    if progress is True:
        return RichProgress()
    if isinstance(progress, Progress):
        return progress
    from .errors import InvalidParameterError
    raise InvalidParameterError(
        f"The 'progress' parameter must be a bool, None or a tldr_index.progress.Progress. Got "
        f"{type(progress).__name__} instead.")


def setup_logging(quiet: bool = False, console: Console | None = None):
    """Send the ``tldr_index`` and ``connectors`` loggers to a rich handler on stderr (INFO, or
    WARNING when ``quiet``). Returns ``(console, restore)``; ``restore()`` puts the loggers back
    as they were (the CLI calls it when a command ends)."""
    from rich.logging import RichHandler

    console = console or Console(stderr=True, file=sys.stderr)
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False,
                          rich_tracebacks=False)
    saved = []
    for name in ("tldr_index", "connectors"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING if quiet else logging.INFO)
        lg.propagate = False

    def restore() -> None:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate

    return console, restore
