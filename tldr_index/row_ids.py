"""The ids of an open collection's rows, kept out of the process's heap where they can be.

A search returns the ids of its ``k`` hits only, so a searcher needs the id of a row position
rarely (``k`` per query) and never the whole column at once. :class:`RowIds` holds them as:

* ``"range"``: integer ids that are ``first + position`` (what a collection written with
  ``0..N-1`` or any run of consecutive ids holds): two ints, 0 bytes per row;
* ``"mapped"``: other int64 ids, written once to an unlinked temporary file (under
  ``tempfile.gettempdir()``, or ``spill_dir``) and memory-mapped read-only: the pages are the
  kernel's page cache (file-backed, evictable and re-read on demand), not this process's heap;
  a search touches ``k`` of them per query;
* ``"arrow"``: string ids (or ids with nulls) stay an Arrow array in RAM.

What counts as resident (:attr:`RowIds.heap_bytes`): the Arrow buffers of ``"arrow"`` ids only;
:attr:`RowIds.mapped_bytes` is the memory-mapped file's size (page cache when touched, like a
rescore cache). Cost of :meth:`RowIds.of`: one pass over the ids (the range check) and, for
``"mapped"``, one sequential write of ``8 N`` bytes.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np
import pyarrow as pa

KINDS = ("range", "mapped", "arrow")


def ids_to_numpy(ids: pa.Array) -> np.ndarray:
    """An Arrow id array as numpy: int64 for integer ids, else str."""
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(ids.to_pylist(), dtype=str)


class RowIds:
    """Row position -> id of one opened target (see the module docstring). Immutable."""

    def __init__(self, kind: str, n: int, *, first: int = 0, array: np.ndarray | None = None,
                 arrow: pa.Array | None = None, mapping: mmap.mmap | None = None):
        self.kind, self.n, self.first = kind, int(n), int(first)
        self._array, self._arrow, self._mmap = array, arrow, mapping

    @classmethod
    def of(cls, ids: pa.Array, spill_dir: str | os.PathLike | None = None) -> "RowIds":
        """The ids ``ids`` (the target's id column in row order), held as the module docstring
        says."""
        n = len(ids)
        if ids.type != pa.int64() or ids.null_count:
            if pa.types.is_integer(ids.type) and not ids.null_count:
                ids = ids.cast(pa.int64())
            else:
                return cls("arrow", n, arrow=ids)
        arr = ids.to_numpy(zero_copy_only=True)
        if n == 0 or (arr[-1] - arr[0] == n - 1 and bool((np.diff(arr) == 1).all())):
            return cls("range", n, first=int(arr[0]) if n else 0)
        with tempfile.TemporaryFile(dir=spill_dir) as f:  # unlinked: gone when unmapped
            f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
            f.flush()
            mapping = mmap.mmap(f.fileno(), arr.nbytes, access=mmap.ACCESS_READ)
        return cls("mapped", n, array=np.frombuffer(mapping, dtype=np.int64), mapping=mapping)

    def __len__(self) -> int:
        return self.n

    @property
    def is_int(self) -> bool:
        return self.kind != "arrow"

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The ids (int64 or str numpy array, same shape) of row ``positions`` (in
        ``[0, n)``). Cost: a gather of ``len(positions)`` ids (mapped: that many page-cache
        reads; arrow: an Arrow take)."""
        P = np.asarray(positions)
        if self.kind == "range":
            return (P.astype(np.int64) + self.first) if self.first else P.astype(np.int64)
        if self.kind == "mapped":
            return self._array[P]
        return ids_to_numpy(self._arrow.take(pa.array(P.ravel()))).reshape(P.shape)

    def numpy(self) -> np.ndarray | None:
        """Every id as an int64 numpy array (range: materialised, ``8 N`` bytes; mapped: the
        mapping itself), or None for string ids."""
        if self.kind == "range":
            return np.arange(self.first, self.first + self.n, dtype=np.int64)
        return self._array if self.kind == "mapped" else None

    def arrow(self) -> pa.Array:
        """Every id as an Arrow array (int64 ids: a new int64 array over :meth:`numpy`)."""
        if self.kind == "arrow":
            return self._arrow
        return pa.array(self.numpy(), type=pa.int64())

    @property
    def heap_bytes(self) -> int:
        """Bytes of ids in this process's heap (string ids only; see the module docstring)."""
        if self.kind != "arrow":
            return 0
        return sum(b.size for b in self._arrow.buffers() if b is not None)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of the memory-mapped id file (page cache, not heap; 0 unless mapped)."""
        return 8 * self.n if self.kind == "mapped" else 0

    def __repr__(self) -> str:
        return f"RowIds({self.kind}, n={self.n})"


__all__ = ["RowIds", "KINDS", "ids_to_numpy"]
