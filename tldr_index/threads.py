"""CPU threads for torch and FAISS during one call, restored afterwards.

On a machine whose cores are shared with other jobs, OpenMP threads that outnumber the idle cores
spin-wait for each other: measured on this project's 2-core machine under a load of ~4, TLDR
training ran 15x faster with 1 thread than with 2, and FAISS k-means 2.7x faster. ``threads=None``
therefore picks the cores that look idle (``cpu_count - 1-minute load average``, at least 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .validation import check_int

log = logging.getLogger(__name__)


def auto_threads() -> int:
    """Idle-looking cores: ``round(cpu_count - loadavg_1min)``, in ``[1, cpu_count]``."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        return cpus
    return max(1, min(cpus, round(cpus - load)))


_ACTIVE = [0]  # thread_limit bodies running (the torch/FAISS settings are process-wide)


@contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` FAISS OpenMP threads (``None``: leave as is), then restore."""
    if n is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextmanager
def thread_limit(threads: int | None, owner: str = "shrink"):
    """Run the body with ``threads`` torch and FAISS threads (None: :func:`auto_threads`, or,
    inside another ``thread_limit`` body, the enclosing limit unchanged: a ``TLDR(n_jobs=None)``
    fitted by ``shrink --threads 1`` keeps 1)."""
    import torch

    if threads is None and _ACTIVE[0]:
        yield torch.get_num_threads()
        return
    n = auto_threads() if threads is None else check_int(threads, "threads", low=1, owner=owner)
    old_torch = torch.get_num_threads()
    if n != old_torch:
        log.info("Using %d CPU thread(s) for torch and FAISS%s.", n,
                 " (cores that look idle)" if threads is None else "")
    torch.set_num_threads(n)
    _ACTIVE[0] += 1
    try:
        with faiss_threads(n):
            yield n
    finally:
        _ACTIVE[0] -= 1
        torch.set_num_threads(old_torch)


POLL_SECONDS = 0.1


def run_in_worker(fn, *args, name: str = "worker", **kwargs):
    """``fn(*args, **kwargs)`` in a daemon thread while this (the main) thread waits for it in
    ``POLL_SECONDS`` slices, so Ctrl-C is handled within ~0.1 s even while ``fn`` sits in a long
    native call (a Lance index build, FAISS k-means: both release the GIL) that Python could not
    interrupt in the main thread. Returns ``fn``'s result or raises its exception.

    On Ctrl-C raises :class:`tldr_index.errors.Interrupted` with ``worker_running=True`` while the
    call goes on: the caller must not touch what ``fn`` uses (a staging area) and should let the
    process exit, which stops the thread. The worker gets the caller's FAISS thread count (an
    OpenMP setting of each thread), so results equal a call in the caller's thread. Called from
    any other thread than the main one (no signals there), it simply calls ``fn``.

    The test-only fault point ``worker:<name>`` is passed at the start of the worker
    (:mod:`tldr_index.faults`). Cost: one thread start.
    """
    import threading

    from .faults import fault_point
    from .errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    import faiss

    n_faiss = faiss.omp_get_max_threads()
    box: dict = {}

    def body() -> None:
        try:
            faiss.omp_set_num_threads(n_faiss)
            fault_point(f"worker:{name}")
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"tldr-index-{name}", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(POLL_SECONDS)
    except KeyboardInterrupt:
        raise Interrupted(worker_running=t.is_alive()) from None
    if "error" in box:
        raise box["error"]
    return box.get("result")
