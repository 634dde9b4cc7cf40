"""A local copy of the originals for rescoring by position: ``search --rescore-cache PATH``.

Rescoring a shortlist needs the original vectors of its rows. Fetching them from the source by id
(a filtered scan per call; Lance ``take`` by position is 2-18 ms per 100 random rows at 1M) costs
far more than the search itself. A rescore cache is a memory-mapped ``.npy`` array of the
originals in the target's row order (row ``i`` = the original of the target's row ``i``, the
row position the code index returns), float16 by default (``2 D`` bytes per row: 768 B at
D = 384), plus a JSON sidecar (``PATH.json``) naming the target rows it matches (row count and
SHA-256 of the id column). A search reads the shortlist's rows straight from the page cache:
0.15-0.25 ms per query for 100 rows of 384 dims (measured by ``benchmarks/search.py`` on the
shared 2-core machine).

:func:`tldr_index.rescore_cache_write.write_rescore_cache` builds it from a target and its source (one scan of the source's id
and vector columns; ids not in the target are skipped); the files are written under temporary
names and renamed into place (a crash leaves no half-written cache under ``PATH``).
:meth:`RescoreCache.open` checks it against the target's ids: a cache of other rows is a clear
:class:`ModelFormatError`, or, with ``fallback=True``, a logged warning and None (rescoring then
fetches from the source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import ModelFormatError

log = logging.getLogger(__name__)

FORMAT = "tldr-index/rescore-cache"
DTYPES = ("float16", "float32")


def ids_digest(ids: pa.Array) -> str:
    """SHA-256 of an id column (int ids: their int64 bytes; strings: UTF-8, NUL-separated), in
    row order. Cost: one pass."""
    h = hashlib.sha256(f"{len(ids)}|".encode())
    if pa.types.is_integer(ids.type):
        h.update(memoryview(np.ascontiguousarray(
            ids.cast(pa.int64()).to_numpy(zero_copy_only=False))))
    else:
        for s in ids.to_pylist():
            h.update(str(s).encode() + b"\0")
    return h.hexdigest()


def to_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32. float16 goes through torch's vectorised conversion: NumPy's own
    ``astype`` converts float16 one element at a time (measured on the 2-core benchmark machine:
    1.5 ms for 1,000 x 384 values against 0.09 ms through torch), which made rescoring a shortlist
    of 1,000 rows from the cache cost more than the code scan. Same values (exact conversion)."""
    if a.dtype != np.float16:
        return np.asarray(a, dtype=np.float32)
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()


def sidecar(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def missing(path: str | os.PathLike, filename: Any) -> ModelFormatError:
    return ModelFormatError(f"Rescore cache '{path}' does not exist ({filename} is missing); "
                            f"write it with write_rescore_cache (tldr-index rescore-cache).")


def check_files(path: str | os.PathLike) -> Path:
    """``path`` if the cache's two files exist (a cheap check, e.g. at
    ``tldr_index.open(uri, rescore_cache=path)``), else the error :meth:`RescoreCache.open`
    raises for a missing cache."""
    path = Path(path)
    for f in (path, sidecar(path)):
        if not f.is_file():
            raise missing(path, f)
    return path


class RescoreCache:
    """An opened cache: :meth:`take` gives the float32 originals of target row positions."""

    def __init__(self, path: Path, array: np.ndarray, info: dict[str, Any]):
        self.path, self.array, self.info = path, array, info

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), D)`` float32 originals of the target rows at ``positions``.
        Cost: one random read of ``2 D`` (float16) bytes per row from the page cache (in
        ascending row order) and one float16 -> float32 conversion (:func:`to_float32`)."""
        pos = np.asarray(positions, dtype=np.int64)
        if len(pos) < 2 or bool((pos[1:] >= pos[:-1]).all()):  # sorted already (rerank's keys)
            return to_float32(np.take(self.array, pos, axis=0))
        order = np.argsort(pos, kind="stable")
        out = np.empty((len(pos), self.array.shape[1]), np.float32)
        out[order] = to_float32(np.take(self.array, pos[order], axis=0))
        return out

    @classmethod
    def open(cls, path: str | os.PathLike, ids: pa.Array, dim: int, target_uri: str, *,
             fallback: bool = False) -> "RescoreCache | None":
        """The cache at ``path`` if it holds the originals (``dim`` columns) of exactly the rows
        ``ids`` (the target's, in row order); otherwise :class:`ModelFormatError`, or with
        ``fallback`` a warning and None. Cost: a hash of the ids; the array is memory-mapped."""
        path = Path(path)
        problem = None
        try:
            info = json.loads(sidecar(path).read_text())
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as exc:
            raise missing(path, exc.filename) from None
        except ValueError as exc:
            raise ModelFormatError(f"'{path}' is not a tldr-index rescore cache: {exc}.") \
                from None
        if info.get("format") != FORMAT:
            raise ModelFormatError(f"'{path}' is not a tldr-index rescore cache (format "
                                   f"{info.get('format')!r}).")
        if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] != info.get("rows"):
            problem = (f"it holds {arr.shape[0] if arr.ndim else 0} rows of "
                       f"{arr.shape[1] if arr.ndim == 2 else 0}-d vectors, the target "
                       f"{len(ids)} rows of {dim}-d originals")
        elif arr.shape[0] != len(ids):
            problem = f"it holds {arr.shape[0]} rows, the target has {len(ids)}"
        elif info.get("ids_sha256") != ids_digest(ids):
            problem = "the SHA-256 of the target's ids differs from the one it was written for"
        if problem:
            msg = (f"Rescore cache '{path}' does not match target '{target_uri}': {problem}. "
                   f"Rewrite it (tldr-index rescore-cache), or pass rescore_cache_fallback=True "
                   f"(--rescore-cache-fallback) to fetch the originals from the source.")
            if fallback:
                log.warning("%s Fetching from the source instead.", msg)
                return None
            raise ModelFormatError(msg)
        return cls(path, arr, info)


__all__ = ["RescoreCache", "ids_digest", "sidecar", "check_files", "to_float32", "FORMAT", "DTYPES"]
