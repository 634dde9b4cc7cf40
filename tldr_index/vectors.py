"""Row-addressable vector sources: in-memory arrays, memory-mapped files and on-disk stores.

Everything in the engine (PCA, kNN graph, trainer) reads vectors through :class:`Vectors`, so the
same code runs on a small array or on a file far larger than RAM. File-backed sources read with
``os.pread`` instead of touching an ``np.memmap``: mapped pages count towards the process RSS,
plain reads do not, so a pass over a 3 GB file keeps the resident set at one chunk.

Memory cost of every method below: the rows it returns, as float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_CHUNK_ROWS = 16_384


class Vectors:
    """Base class: ``n_rows`` rows of ``dim`` floats, read as float32 blocks.

    Subclasses implement :meth:`read` (a contiguous block) and may override :meth:`take`.
    """

    n_rows: int
    dim: int
    dtype: np.dtype

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a fresh C-contiguous float32 array (the caller owns it)."""
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order, repeats allowed) as float32, in the order asked.

        Cost: one read per run of consecutive sorted indices.
        """
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        if len(idx) == 0:
            return out
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        # split sorted indices into runs of consecutive rows and read each run once
        breaks = np.flatnonzero(np.diff(sidx) > 1) + 1
        pos = 0
        for run in np.split(sidx, breaks):
            lo, hi = int(run[0]), int(run[-1]) + 1
            block = self.read(lo, hi)
            out[order[pos:pos + len(run)]] = block[run - lo]
            pos += len(run)
        return out

    def iter_chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS, *, check_finite: bool = False,
                    name: str = "X") -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` over all rows in order; memory: one block of float32.

        With ``check_finite`` a block holding NaN or inf raises :class:`InvalidInputError` naming
        the first offending row.
        """
        for start in range(0, self.n_rows, chunk_rows):
            block = self.read(start, min(start + chunk_rows, self.n_rows))
            if check_finite:
                check_finite_block(block, start, name)
            yield start, block


def check_finite_block(block: np.ndarray, start: int, name: str = "X") -> None:
    """Raise if ``block`` (rows ``start...``) holds NaN or inf, naming the count and first row."""
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InvalidInputError(
            f"Input '{name}' must contain only finite values. Got {len(rows)} row(s) with NaN or "
            f"inf in rows {start}..{start + len(block) - 1}, first at row {start + int(rows[0])}.")


class ArrayVectors(Vectors):
    """An in-memory 2-D float array (float16/32/64); blocks are converted to float32 on read."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.n_rows, self.dim = array.shape
        self.dtype = array.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.array[start:stop], dtype=np.float32, order="C", copy=True)

    def take(self, idx: np.ndarray) -> np.ndarray:
        # fancy indexing already copies
        return np.ascontiguousarray(self.array[np.asarray(idx, dtype=np.int64)], dtype=np.float32)


class FileVectors(Vectors):
    """A raw row-major file of ``n_rows x dim`` values of ``dtype`` starting at byte ``offset``.

    Reads use ``os.pread`` (no mapping), so RSS stays at the size of the block being read.
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, dim: int, dtype: Any = np.float32,
                 offset: int = 0):
        self.path = str(path)
        self.n_rows, self.dim = int(n_rows), int(dim)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self._row_bytes = self.dim * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # reopen after fork
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        nbytes = n * self._row_bytes
        buf = bytearray(nbytes)  # writable, owned by the caller
        got = os.preadv(self._handle(), [buf], self.offset + start * self._row_bytes) if nbytes else 0
        if got != nbytes:
            raise InvalidInputError(
                f"Vector file '{self.path}' is truncated: expected {nbytes} bytes for rows "
                f"{start}..{stop - 1}, got {got}.")
        arr = np.frombuffer(buf, dtype=self.dtype).reshape(n, self.dim)
        return arr if self.dtype == np.float32 else arr.astype(np.float32)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, -1
        return state


class SubsetVectors(Vectors):
    """Rows ``rows`` (sorted, unique) of ``base`` seen as a source of ``len(rows)`` rows."""

    def __init__(self, base: Vectors, rows: np.ndarray):
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        self.n_rows, self.dim, self.dtype = len(self.rows), base.dim, base.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.base.take(self.rows[start:stop])

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.base.take(self.rows[np.asarray(idx, dtype=np.int64)])


class VectorStore(FileVectors):
    """An on-disk vector store: ``<dir>/vectors.bin`` (raw rows) + ``<dir>/meta.json``.

    Create with :meth:`create`, fill with :meth:`append`, then :meth:`finalize`; reopen with
    :meth:`open`. ``meta.json`` is written last (atomically), so a store without it is incomplete.
    """

    META = "meta.json"
    DATA = "vectors.bin"

    def __init__(self, path: str | os.PathLike, n_rows: int, dim: int, dtype: Any = np.float32):
        self.root = Path(path)
        super().__init__(self.root / self.DATA, n_rows, dim, dtype)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "VectorStore":
        root = Path(path)
        try:
            meta = json.loads((root / cls.META).read_text())
        except FileNotFoundError:
            raise InvalidInputError(
                f"'{root}' is not a complete vector store: {cls.META} is missing.") from None
        store = cls(root, meta["n_rows"], meta["dim"], meta["dtype"])
        size = os.path.getsize(store.path)
        if size != store.n_rows * store._row_bytes:
            raise InvalidInputError(
                f"Vector store '{root}' is corrupt: {store.DATA} has {size} bytes, expected "
                f"{store.n_rows * store._row_bytes} for {store.n_rows} rows of {store.dim} "
                f"{store.dtype.name}.")
        return store

    @classmethod
    def create(cls, path: str | os.PathLike, dim: int, dtype: Any = np.float32) -> "VectorStoreWriter":
        return VectorStoreWriter(Path(path), dim, np.dtype(dtype))


class VectorStoreWriter:
    """Appends blocks to a new :class:`VectorStore`; :meth:`finalize` publishes ``meta.json``."""

    def __init__(self, root: Path, dim: int, dtype: np.dtype):
        root.mkdir(parents=True, exist_ok=True)
        (root / VectorStore.META).unlink(missing_ok=True)
        self.root, self.dim, self.dtype = root, dim, dtype
        self.n_rows = 0
        self._f = open(root / VectorStore.DATA, "wb")

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise InvalidInputError(
                f"Block appended to vector store '{self.root}' must have shape (n, {self.dim}). "
                f"Got {block.shape} instead.")
        self._f.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.n_rows += len(block)

    def finalize(self, extra: dict | None = None) -> VectorStore:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        meta = {"n_rows": self.n_rows, "dim": self.dim, "dtype": self.dtype.name, **(extra or {})}
        tmp = self.root / (VectorStore.META + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.root / VectorStore.META)
        return VectorStore.open(self.root)


def memmap_offset(X: np.memmap) -> int:
    """Byte offset in its file of the first row of ``X``: a slice of a memmap (``mm[100:]``)
    keeps its parent's ``offset``, so the distance from the mapped root's first byte is added."""
    root = X
    while isinstance(root.base, np.memmap):
        root = root.base
    ptr = X.__array_interface__["data"][0]
    return int(root.offset + ptr - root.__array_interface__["data"][0])


def as_vectors(X: Any, name: str = "X") -> Vectors:
    """Wrap ``X`` (2-D float array, ``np.memmap``, :class:`Vectors`, or a vector-store directory)
    as a :class:`Vectors` source, checking shape and dtype.

    In-memory arrays are checked for NaN/inf here (cost: one pass); file-backed sources are checked
    block by block by the first streaming pass over them.
    """
    if isinstance(X, Vectors):
        return X
    if isinstance(X, (str, os.PathLike)):
        return VectorStore.open(X)
    if isinstance(X, np.memmap) and X.ndim == 2 and X.flags.c_contiguous and X.filename:
        _check_dtype(X.dtype, name)
        _check_rows(X.shape, name)
        return FileVectors(X.filename, X.shape[0], X.shape[1], X.dtype, memmap_offset(X))
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise InvalidInputError(
            f"Input '{name}' is a sparse matrix ({type(X).__name__}): sparse input is not "
            f"supported; pass a dense 2-D float array (e.g. X.toarray()).")
    if not isinstance(X, np.ndarray):
        try:
            X = np.asarray(X)
        except Exception as exc:  # ragged lists etc.
            raise InvalidInputError(
                f"Input '{name}' must be a 2-D float array. Got an object that numpy cannot "
                f"convert ({type(X).__name__}: {exc}).") from None
    if X.ndim != 2:
        raise InvalidInputError(
            f"Input '{name}' must be a 2-D array of shape (n_samples, n_features). Got an array "
            f"with {X.ndim} dimension(s), shape {X.shape}. Reshape your data: a single vector "
            f"with x.reshape(1, -1).")
    _check_dtype(X.dtype, name)
    _check_rows(X.shape, name)
    check_finite_block(X, 0, name)
    return ArrayVectors(X)


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind == "c":
        raise InvalidInputError(
            f"Input '{name}' must have a floating dtype (float16, float32 or float64). Got dtype "
            f"{dtype} instead: Complex data not supported.")
    if dtype not in FLOAT_DTYPES:
        raise InvalidInputError(
            f"Input '{name}' must have a floating dtype (float16, float32 or float64). Got dtype "
            f"{dtype} instead.")


def _check_rows(shape: tuple, name: str) -> None:
    for axis, what in ((0, "sample"), (1, "feature")):
        if shape[axis] < 1:
            raise InvalidInputError(
                f"Input '{name}' must have at least 1 row and 1 column: found array with 0 "
                f"{what}(s) (shape={shape}) while a minimum of 1 is required.")
