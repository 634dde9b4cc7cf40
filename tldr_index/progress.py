"""Progress of long stages: a tiny event interface, a silent default, rich bars for a terminal and
one plain line per stage for logs (cron, CI).

:func:`tldr_index.shrink.shrink` reports each stage as ``begin(stage, total, unit)``, any number of
``update(stage, completed)`` (absolute counts), optional named sub-steps ``phase(stage, name,
total, unit)`` (PQ training, the recall estimate, the index build...; ``total=None`` when the step
has no measurable fraction: a spinner with the elapsed time) and ``end(stage, seconds)``. Subclass
:class:`Progress` to hook into a run (the crash-resume tests raise from ``update``).

:func:`make_progress` picks :class:`RichProgress` when the console is a terminal and
:class:`PlainProgress` otherwise. Cost: one small update per batch of rows; rich redraws at most
10 times a second.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (BarColumn, Progress as _RichProgress, ProgressColumn, SpinnerColumn,
                           TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class Progress:
    """Receives stage events; the base class ignores them."""

    def begin(self, stage: str, total: int | None = None, unit: str = "rows") -> None:
        """A stage starts; ``total`` units of work (None: unknown)."""

    def update(self, stage: str, completed: int, total: int | None = None) -> None:
        """``completed`` units of ``stage`` (or of its current phase) are done (absolute count)."""

    def phase(self, stage: str, name: str, total: int | None = None, unit: str = "") -> None:
        """``stage`` moves on to the sub-step ``name`` (e.g. "PQ training"): counting restarts at
        0 of ``total`` ``unit`` (None: no measurable fraction; shown as a spinner with the
        elapsed time). A measurable phase with the same total and unit as the current one only
        renames it (its count, rate and ETA go on: e.g. "fitting pca d=32", 3 of 8 fits)."""

    def end(self, stage: str, seconds: float, note: str = "") -> None:
        """A stage finished (or was skipped, with ``note`` saying why)."""

    def close(self) -> None:
        """No more events."""


NullProgress = Progress


@dataclass
class _Stage:
    """What a progress display knows about one stage: its own count (``begin``'s total and unit,
    the last update outside a phase) and the current phase."""

    total: int | None
    unit: str
    completed: int = 0
    phase: str | None = None


class _Tracking(Progress):
    """Keeps a :class:`_Stage` per stage (shared by the rich and the plain display)."""

    def __init__(self) -> None:
        self.stages: dict[str, _Stage] = {}

    def begin(self, stage: str, total: int | None = None, unit: str = "rows") -> None:
        self.stages[stage] = _Stage(total, unit)

    def update(self, stage: str, completed: int, total: int | None = None) -> None:
        st = self.stages.get(stage)
        if st is not None and st.phase is None:
            st.completed = completed
            if total is not None:
                st.total = total

    def phase(self, stage: str, name: str, total: int | None = None, unit: str = "") -> None:
        st = self.stages.setdefault(stage, _Stage(None, unit or "rows"))
        st.phase = name

    def done_count(self, stage: str) -> tuple[int | None, str]:
        """(units the stage did, unit): ``begin``'s total when known, else the last count."""
        st = self.stages.get(stage)
        if st is None:
            return None, ""
        if st.total is not None:
            return st.total, st.unit
        return (st.completed or None), st.unit


def format_rate(count: float, seconds: float, unit: str) -> str:
    """``12,345 rows/s`` (one decimal below 100/s); empty when ``seconds`` is 0."""
    if seconds <= 0:
        return ""
    speed = count / seconds
    return (f"{speed:,.0f}" if speed >= 100 else f"{speed:,.1f}") + f" {unit}/s"


class _RateColumn(ProgressColumn):
    """``12,345 rows/s`` from the task's speed and its ``unit`` field (empty for a spinner)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        if speed is None or task.total is None or not unit:
            return Text("", style="progress.data.speed")
        fmt = f"{speed:,.0f}" if speed >= 100 else f"{speed:,.1f}"
        return Text(f"{fmt} {unit}/s", style="progress.data.speed")


class _CountColumn(ProgressColumn):
    """``1,024/10,000 rows``; nothing for a step without a measurable fraction."""

    def render(self, task) -> Text:
        if task.total is None:
            return Text(task.fields.get("shown", ""))
        unit = task.fields.get("unit", "")
        return Text(f"{task.completed:,.0f}/{task.total:,.0f} {unit}".rstrip())


class _EtaColumn(TimeRemainingColumn):
    """``ETA 0:01:02`` while a measurable step runs; nothing for a spinner or a finished stage."""

    def render(self, task) -> Text:
        if task.total is None or task.finished:
            return Text("")
        return Text("ETA ") + super().render(task)


class RichProgress(_Tracking):
    """One rich line per stage on ``console``: a spinner, the stage (and its current sub-step),
    a bar, percent, count, rate, elapsed time and ETA. A sub-step without a measurable fraction
    shows a pulsing bar and its elapsed time."""

    def __init__(self, console: Console | None = None):
        super().__init__()
        self.console = console or Console(stderr=True)
        self._bars = _RichProgress(
            SpinnerColumn(), TextColumn("[bold]{task.description:<8}"), BarColumn(),
            TaskProgressColumn(), _CountColumn(), _RateColumn(), TimeElapsedColumn(),
            _EtaColumn(), console=self.console, transient=False)
        self._tasks: dict[str, int] = {}
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._bars.start()
            self._started = True

    def begin(self, stage: str, total: int | None = None, unit: str = "rows") -> None:
        super().begin(stage, total, unit)
        self._start()
        self._tasks[stage] = self._bars.add_task(stage, total=total, unit=unit, shown="")

    def update(self, stage: str, completed: int, total: int | None = None) -> None:
        super().update(stage, completed, total)
        tid = self._tasks.get(stage)
        if tid is None:
            return
        if total is not None:
            self._bars.update(tid, total=total)
        self._bars.update(tid, completed=completed)

    def phase(self, stage: str, name: str, total: int | None = None, unit: str = "") -> None:
        super().phase(stage, name, total, unit)
        tid = self._tasks.get(stage)
        if tid is None:
            self._start()
            tid = self._tasks[stage] = self._bars.add_task(stage, total=None, unit="", shown="")
        task = next(t for t in self._bars.tasks if t.id == tid)
        if total is not None and task.total == total and task.fields.get("unit") == (
                unit or self.stages[stage].unit):
            self._bars.update(tid, description=f"{stage} · {name}")
            return
        # reset: the rate, elapsed time and ETA are the sub-step's own
        self._bars.reset(tid, total=total, completed=0, description=f"{stage} · {name}",
                         unit=unit or self.stages[stage].unit, shown="")
        if total is None:  # rich's reset keeps the old total for None: a spinner has none
            for task in self._bars.tasks:
                if task.id == tid:
                    task.total = None

    def end(self, stage: str, seconds: float, note: str = "") -> None:
        tid = self._tasks.get(stage)
        if tid is None:
            self._start()
            tid = self._tasks[stage] = self._bars.add_task(
                f"{stage} ({note})" if note else stage, total=None, unit="", shown=note or "-")
            self._bars.update(tid, total=1, completed=1)
            return
        count, unit = self.done_count(stage)
        if count is not None:
            self._bars.update(tid, description=stage, total=max(count, 1), completed=count,
                              unit=unit)
        else:
            self._bars.update(tid, description=stage, total=1, completed=1, unit="")

    def close(self) -> None:
        if self._started:
            self._bars.stop()
            self._started = False


class PlainProgress(_Tracking):
    """One plain line per finished stage, for output that is not a terminal (cron, CI logs):
    ``progress: knn      12.3 s  100,000 rows  8,130 rows/s`` (or ``... skipped (checkpoint)``),
    printed on ``console`` (or with ``write``) in order with the log lines."""

    def __init__(self, console: Console | None = None,
                 write: Callable[[str], None] | None = None):
        super().__init__()
        self.console = console or Console(stderr=True)
        self._write = write

    def line(self, stage: str, seconds: float, note: str = "") -> str:
        """The line :meth:`end` prints for ``stage``."""
        if note and stage not in self.stages:
            return f"progress: {stage:<8} skipped ({note})"
        count, unit = self.done_count(stage)
        text = f"progress: {stage:<8} {seconds:7.1f} s"
        if count is not None and unit:
            text += f"  {count:,} {unit}"
            rate = format_rate(count, seconds, unit)
            if rate:
                text += f"  {rate}"
        return text + (f"  ({note})" if note else "")

    def end(self, stage: str, seconds: float, note: str = "") -> None:
        text = self.line(stage, seconds, note)
        if self._write is not None:
            self._write(text)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def make_progress(console: Console | None = None) -> Progress:
    """Rich bars when ``console`` (default: stderr) is a terminal, else one plain line per stage."""
    console = console or Console(stderr=True, file=sys.stderr)
    return RichProgress(console) if console.is_terminal else PlainProgress(console)


def as_progress(progress: Progress | bool | None) -> Progress:
    """``None``/``False`` -> silent, ``True`` -> :func:`make_progress` on stderr (rich bars on a
    terminal, plain lines otherwise), a :class:`Progress` as is."""
    if progress is None or progress is False:
        return NullProgress()
    if progress is True:
        return make_progress()
    if isinstance(progress, Progress):
        return progress
    from .errors import InvalidParameterError
    raise InvalidParameterError(
        f"The 'progress' parameter must be a bool, None or a tldr_index.progress.Progress. Got "
        f"{type(progress).__name__} instead.")


class StageTimer:
    """``with StageTimer(progress, "opq", 1000, "queries") as t: ...`` calls ``begin`` on entry
    and ``end`` with the elapsed seconds on a normal exit (for callers that time their own
    stages, e.g. :func:`tldr_index.evaluate.evaluate`)."""

    def __init__(self, progress: Progress, stage: str, total: int | None = None,
                 unit: str = "rows", clock: Callable[[], float] = time.perf_counter):
        self.progress, self.stage, self.total, self.unit, self.clock = (
            progress, stage, total, unit, clock)

    def __enter__(self) -> StageTimer:
        self.t0 = self.clock()
        self.progress.begin(self.stage, self.total, self.unit)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.progress.end(self.stage, self.clock() - self.t0)


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
