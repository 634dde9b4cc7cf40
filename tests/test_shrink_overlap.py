"""tldr_index.shrink.overlap.pipelined: order kept, every block written once, an error in the
reader, the compute or the writer raised in the caller (and the other threads stopped)."""

from __future__ import annotations

import threading

import pytest

from tldr_index.shrink.overlap import pipelined


def test_blocks_are_computed_and_written_in_order():
    out: list[int] = []
    n = pipelined(iter(range(50)), lambda b: b * b, out.append, depth=2)
    assert n == 50 and out == [b * b for b in range(50)]
    assert pipelined(iter(()), lambda b: b, out.append) == 0


def _fail_at(i: int, where: str):
    def gen():
        for b in range(20):
            if where == "read" and b == i:
                raise OSError(f"read {b}")
            yield b

    def compute(b):
        if where == "compute" and b == i:
            raise ValueError(f"compute {b}")
        return b

    def write(b):
        if where == "write" and b == i:
            raise OSError(f"write {b}")

    return gen(), compute, write


@pytest.mark.parametrize("where, error", [("read", OSError), ("compute", ValueError),
                                          ("write", OSError)])
def test_an_error_in_any_thread_is_raised_here(where, error):
    before = threading.active_count()
    blocks, compute, write = _fail_at(7, where)
    with pytest.raises(error, match=rf"^{where} 7$"):
        pipelined(blocks, compute, write, depth=2)
    assert threading.active_count() == before  # reader and writer have ended
