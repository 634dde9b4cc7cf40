"""Stable 64-bit id hashing, an order-independent ids digest and a streaming duplicate detector.

Integer ids (any Arrow int type) are cast to int64 and mixed with splitmix64, a bijection: two
different integer ids never share a key, so duplicate detection on integers is exact. String ids
are hashed with BLAKE2b-64 (one Python call per id, about 1 µs); two different strings collide with
probability about n²/2⁶⁵ (3e-6 for 10M ids), in which case a false duplicate would be reported.

Memory cost of :class:`DuplicateIdTracker`: 8 bytes per id seen (80 MB for 10M ids), plus a
transient copy of the largest run while merging. Hashes are kept in sorted runs merged like a
log-structured tree, so checking n ids costs O(n log n) in total.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from tldr_index.errors import InvalidInputError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_M3, _M4 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)


def splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of uint64 keys, elementwise (a new array; wraps around mod 2**64)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def fmix(x: np.ndarray) -> np.ndarray:
    """murmur3 ``fmix64`` of uint64 keys, elementwise: a second mixer, independent of
    :func:`splitmix`."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(33))) * _M3
        x = (x ^ (x >> np.uint64(33))) * _M4
        return x ^ (x >> np.uint64(33))


def is_id_type(t: pa.DataType) -> bool:
    """Ids may be integers or strings."""
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def hash_ids(ids: pa.Array | pa.ChunkedArray | list) -> np.ndarray:
    """64-bit keys (uint64) of ``ids``: integers via splitmix64 (exact), strings via BLAKE2b-64.

    Nulls are not allowed (callers check them first). Cost: vectorised for integers, one hash call
    per id for strings.
    """
    if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(ids)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    t = ids.type
    if pa.types.is_integer(t):
        if t == pa.uint64():
            raw = ids.to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
        else:
            raw = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        return splitmix(raw)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = np.empty(len(ids), dtype=np.uint64)
        for i, s in enumerate(ids.to_pylist()):
            out[i] = int.from_bytes(
                hashlib.blake2b(s.encode("utf-8"), digest_size=8, person=b"tldr-id").digest(),
                "little")
        return out
    raise InvalidInputError(f"Ids must be integers or strings. Got type {t} instead.")


class IdDigest:
    """Order-independent digest of a set of ids: ``update`` with id arrays in any order or batching.

    Two 64-bit sums of independently mixed keys plus the count, so the digest of a target read back
    in another order (Qdrant scrolls by point id) matches the digest of the source stream.
    """

    def __init__(self) -> None:
        self.count = 0
        self._a = np.uint64(0)
        self._b = np.uint64(0)

    def update(self, ids: pa.Array | pa.ChunkedArray | list) -> None:
        self.update_keys(hash_ids(ids))

    def update_keys(self, keys: np.ndarray) -> None:
        """``update`` with keys already computed by :func:`hash_ids`."""
        with np.errstate(over="ignore"):
            self._a = np.uint64(self._a + splitmix(keys).sum(dtype=np.uint64))
            self._b = np.uint64(self._b + fmix(keys ^ _GOLDEN).sum(dtype=np.uint64))
        self.count += len(keys)

    def state(self) -> tuple[int, int, int]:
        """``(count, sum a, sum b)``: what :meth:`merge` adds (digests of disjoint parts)."""
        return self.count, int(self._a), int(self._b)

    def merge(self, state: tuple[int, int, int]) -> None:
        """Add the :meth:`state` of a digest of other ids: the result equals one digest updated
        with both (sums modulo 2^64), so workers can digest their parts separately."""
        count, a, b = state
        with np.errstate(over="ignore"):
            self._a = np.uint64(self._a + np.uint64(a))
            self._b = np.uint64(self._b + np.uint64(b))
        self.count += int(count)

    def hexdigest(self) -> str:
        return f"{self.count}-{int(self._a):016x}{int(self._b):016x}"


def ids_digest(batches) -> str:
    """Digest of all ids in an iterable of id arrays (see :class:`IdDigest`)."""
    d = IdDigest()
    for ids in batches:
        d.update(ids)
    return d.hexdigest()


class DuplicateIdTracker:
    """Streaming duplicate detection over id batches; memory: 8 bytes per id seen."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted unique keys; sizes non-increasing
        self.seen = 0

    def add(self, ids: pa.Array) -> int | None:
        """Record ``ids``; return the position in ``ids`` of the first id already seen (earlier in
        this call or in a previous one), or ``None`` if all are new (they are then recorded)."""
        keys = hash_ids(ids)
        n = len(keys)
        if n == 0:
            return None
        bad = np.zeros(n, dtype=bool)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        dup_sorted = np.flatnonzero(sk[1:] == sk[:-1]) + 1  # later occurrences (stable order)
        bad[order[dup_sorted]] = True
        for run in self._runs:
            pos = np.searchsorted(run, keys)
            pos[pos == len(run)] = len(run) - 1
            bad |= run[pos] == keys
        if bad.any():
            return int(np.flatnonzero(bad)[0])
        self._runs.append(sk)
        self.seen += n
        while len(self._runs) >= 2 and len(self._runs[-1]) >= len(self._runs[-2]):
            b = self._runs.pop()
            a = self._runs.pop()
            merged = np.concatenate([a, b])
            merged.sort(kind="stable")
            self._runs.append(merged)
        return None


def first_duplicate(keys: np.ndarray, positions: np.ndarray) -> tuple[int, int] | None:
    """The first repeat among ``keys`` (from :func:`hash_ids`) at source ``positions``: the
    smallest position holding a key seen at a smaller position, as ``(position, key)``, or None.

    This is the row at which :class:`DuplicateIdTracker`, streaming in position order, stops, so a
    distributed scan can partition keys by ``key % buckets``, call this per bucket and keep the
    smallest answer. Cost: one sort of the bucket (16 bytes per key).
    """
    keys = np.asarray(keys, dtype=np.uint64)
    positions = np.asarray(positions, dtype=np.int64)
    if len(keys) < 2:
        return None
    order = np.lexsort((positions, keys))
    sk, sp = keys[order], positions[order]
    repeat = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    if not len(repeat):
        return None
    i = repeat[np.argmin(sp[repeat])]
    return int(sp[i]), int(sk[i])
