"""A local copy of the originals for rescoring by position: ``search --rescore-cache PATH``.

Rescoring a shortlist needs the original vectors of its rows. Fetching them from the source by id
(a filtered scan per call; Lance ``take`` by position is ~15 ms per 100 random rows at 1M) costs
far more than the search itself. A rescore cache is a memory-mapped ``.npy`` array of the
originals in the target's row order (row ``i`` = the original of the target's row ``i``, the
row position the code index returns), float16 by default (``2 D`` bytes per row: 768 B at
D = 384), plus a JSON sidecar (``PATH.json``) naming the target rows it matches (row count and
SHA-256 of the id column). A search reads the shortlist's rows straight from the page cache:
about 0.1 ms per query for 100 rows of 384 dims (measured by ``benchmarks/search.py``).

:func:`write_rescore_cache` builds it from a target and its source (one scan of the source's id
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

from .errors import InvalidInputError, ModelFormatError
from .validation import check_choice

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


def sidecar(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


class RescoreCache:
    """An opened cache: :meth:`take` gives the float32 originals of target row positions."""

    def __init__(self, path: Path, array: np.ndarray, info: dict[str, Any]):
        self.path, self.array, self.info = path, array, info

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), D)`` float32 originals of the target rows at ``positions``.
        Cost: one random read of ``2 D`` (float16) bytes per row from the page cache."""
        pos = np.asarray(positions, dtype=np.int64)
        order = np.argsort(pos, kind="stable")
        out = np.empty((len(pos), self.array.shape[1]), np.float32)
        out[order] = self.array[pos[order]]
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
            raise ModelFormatError(f"Rescore cache '{path}' does not exist ({exc.filename} is "
                                   f"missing); write it with write_rescore_cache "
                                   f"(tldr-index rescore-cache).") from None
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


def write_rescore_cache(target: str, path: str | os.PathLike, *, source: str | None = None,
                        dtype: str = "float16", target_options: dict | None = None,
                        source_options: dict | None = None) -> Path:
    """Write the rescore cache of ``target`` (see the module docstring) to ``path`` (``.npy``)
    and ``path.json``. ``source``: where the originals are read (default: the source the target
    records). Every target row must have its id in the source (else one
    :class:`InvalidInputError` naming how many lack one). Cost: one scan of the source; memory:
    the target's ids (a dict for string ids) and one batch; disk ``N x D x 2`` bytes (float16).
    """
    from connectors import open_target

    from .compact import CompactModel
    from .search import open_source_of
    from .searcher import ids_to_numpy, read_codes

    o = "write_rescore_cache"
    dtype = check_choice(dtype, "dtype", DTYPES, owner=o)
    tgt = open_target(target, **(target_options or {}))
    model = CompactModel.of_target(tgt)
    lay = tgt.layout
    loaded = read_codes(tgt, lay.id_column, lay.codes_column)
    if loaded is None:
        raise InvalidInputError(f"Target '{tgt.uri}' has no readable rows in order (its store "
                                f"keeps its own index): a rescore cache is for Lance and "
                                f"Parquet targets.")
    ids = loaded[0]
    keys = ids_to_numpy(ids)
    src = open_source_of(tgt, source, **(source_options or {}))
    if src.dim != model.input_dim:
        raise InvalidInputError(
            f"Source '{src.uri}' has {src.dim}-d vectors but the model of target '{tgt.uri}' "
            f"expects {model.input_dim}-d input; write the cache from the source it was shrunk "
            f"from.")
    if keys.dtype.kind in "iu":
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]

        def positions(batch_ids: np.ndarray) -> np.ndarray:
            j = np.searchsorted(sorted_keys, batch_ids)
            j = np.minimum(j, max(len(sorted_keys) - 1, 0))
            hit = len(sorted_keys) > 0
            ok = (sorted_keys[j] == batch_ids) if hit else np.zeros(len(batch_ids), bool)
            return np.where(ok, order[j], -1)
    else:
        where = {k: i for i, k in enumerate(keys.tolist())}

        def positions(batch_ids: np.ndarray) -> np.ndarray:
            return np.array([where.get(k, -1) for k in batch_ids.tolist()], dtype=np.int64)

    from connectors.arrow_utils import vectors_to_numpy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype),
                                    shape=(len(keys), model.input_dim))
    filled = np.zeros(len(keys), bool)
    for batch in src.iter_batches(check_duplicates=False):
        pos = positions(ids_to_numpy(batch.column(src.id_column)))
        keep = pos >= 0
        if keep.any():
            X = vectors_to_numpy(batch.column(src.vector_column), dim=src.dim,
                                 column=src.vector_column, source=src.uri)
            arr[pos[keep]] = X[keep]
            filled[pos[keep]] = True
    arr.flush()
    del arr
    if not filled.all():
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(
            f"{int((~filled).sum())} of the {len(keys)} rows of target '{tgt.uri}' have no row "
            f"with their id in source '{src.uri}' (added to the compact collection only?): the "
            f"rescore cache needs every original. Run reindex first.")
    info = {"format": FORMAT, "rows": int(len(keys)), "dim": int(model.input_dim),
            "dtype": dtype, "ids_sha256": ids_digest(ids), "target": tgt.uri,
            "source": src.uri}
    side_tmp = sidecar(path).with_name(sidecar(path).name + ".tmp")
    side_tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmp, path)
    os.replace(side_tmp, sidecar(path))
    log.info("rescore cache %s: %d rows x %d (%s) of target %s", path, len(keys),
             model.input_dim, dtype, tgt.uri)
    return path


__all__ = ["RescoreCache", "write_rescore_cache", "ids_digest"]
