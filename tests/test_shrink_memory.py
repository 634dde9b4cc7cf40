"""Freed heap pages go back to the OS between shrink stages (tldr_index/shrink/memory.py)."""

from __future__ import annotations

import os

import pytest

from tldr_index.shrink import memory
from tldr_index.shrink.memory import release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or memory._malloc_trim() is None,
                    reason="needs Linux /proc and glibc")
def test_freed_heap_pages_are_returned():
    # 256 MB in 16 KB blocks (below glibc's mmap threshold, so on the heap), each followed by a
    # small block that stays (600 B: above pymalloc's 512 B limit, so it is glibc's too and sits
    # between the big ones): when the big ones are freed the heap cannot shrink from its top,
    # so the pages stay resident until malloc_trim returns them
    big = [bytearray(16 << 10) for _ in range(16_384)]
    keep = []
    for i in range(len(big)):
        keep.append(bytearray(600))
        big[i][::4096] = b"x" * len(big[i][::4096])  # touch every page
    del big
    before = _rss_mb()
    assert release_free_memory() is True
    after = _rss_mb()
    assert before - after >= 128, (before, after)  # at least half of the 256 MB freed
    assert len(keep) == 16_384


def test_without_glibc_only_the_collector_runs(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert release_free_memory() is False
