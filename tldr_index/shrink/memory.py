"""Give the heap's free pages back to the OS between the stages of a shrink run.

glibc keeps freed memory in its arenas (one per thread that allocated, and blocks below its
dynamic mmap threshold, which grows to 32 MB once a large block is freed), so the resident set
after a stage holds what the stage freed, and the next stage's allocations stack on top of it
when they do not fit the holes. ``malloc_trim(0)`` returns every arena's free pages; a stage then
starts from what is really live. Without glibc (musl, macOS) only the garbage collector runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from functools import lru_cache

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` or None (another C library)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Collect garbage, then ``malloc_trim(0)`` where glibc provides it; True if it trimmed.
    Cost: one full ``gc.collect()`` and one pass over the arenas' free lists (milliseconds)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
