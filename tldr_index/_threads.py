"""CPU threads for torch and FAISS during one call, restored afterwards.

On a machine whose cores are shared with other jobs, OpenMP threads that outnumber the idle cores
spin-wait for each other: measured on this project's 2-core machine under a load of ~4, TLDR
training ran 15x faster with 1 thread than with 2, and FAISS k-means 2.7x faster. ``threads=None``
therefore picks the cores that look idle (``cpu_count - 1-minute load average``, at least 1).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from ._validation import check_int

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
def thread_limit(threads: int | None, owner: str = "shrink"):
    """Run the body with ``threads`` torch and FAISS threads (None: :func:`auto_threads`, or,
    inside another ``thread_limit`` body, the enclosing limit unchanged: a ``TLDR(n_jobs=None)``
    fitted by ``shrink --threads 1`` keeps 1)."""
    import torch

    from ._faiss_utils import faiss_threads

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
