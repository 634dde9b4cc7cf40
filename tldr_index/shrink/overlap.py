"""Read, compute and write overlapped across three threads.

:func:`pipelined` runs an iterator of blocks in a reader thread, ``compute`` in the calling
thread and ``write`` in a writer thread, with at most ``depth`` blocks queued between each.
The native calls of the encode stage (file reads, the float64 matmul of
:meth:`tldr_index.compact.CompactModel.encode`, FAISS PQ encoding, file writes) release the GIL,
so the three overlap: the stage takes about as long as its slowest part instead of their sum.

Order is kept (one reader, one writer, FIFO queues). An error in any thread stops the others
and is raised in the caller; so is Ctrl-C (the caller stays the main thread). Memory: up to
``2 * depth + 3`` blocks in flight.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

_DONE = object()
POLL_SECONDS = 0.1


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event | None = None) -> Any:
    """The next item of ``q`` (``_DONE`` when ``stop`` is set first); waits in short slices so
    the main thread sees Ctrl-C."""
    while stop is None or not stop.is_set():
        try:
            return q.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
    return _DONE


def pipelined(blocks: Iterable[Any], compute: Callable[[Any], Any],
              write: Callable[[Any], None], *, depth: int = 2, name: str = "pipeline") -> int:
    """``write(compute(b))`` for every ``b`` of ``blocks``, in order, with reading (iterating
    ``blocks``), computing (this thread) and writing overlapped; returns the blocks written.
    See the module docstring."""
    stop = threading.Event()
    inq: queue.Queue = queue.Queue(maxsize=depth)
    outq: queue.Queue = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for b in blocks:
                if not _put(inq, b, stop):
                    return
        except BaseException as exc:  # re-raised in the caller
            _put(inq, _Failed(exc), stop)
            return
        _put(inq, _DONE, stop)

    def writer() -> None:
        try:
            while True:
                item = _get(outq, stop)
                if item is _DONE:
                    return
                write(item)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, name=f"{name}-read", daemon=True),
               threading.Thread(target=writer, name=f"{name}-write", daemon=True)]
    for t in threads:
        t.start()
    n = 0
    try:
        while True:
            item = _get(inq, stop)
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                raise item.exc
            out = compute(item)
            if not _put(outq, out, stop):
                break
            n += 1
        _put(outq, _DONE, stop)
        while threads[1].is_alive():  # the writer finishes what is queued
            threads[1].join(POLL_SECONDS)
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()
        for t in threads:
            t.join(5.0)
    if errors:
        raise errors[0]
    return n
