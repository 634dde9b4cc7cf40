"""Helpers shared by the file stores (Lance, Parquet): ``take`` through an Arrow ``isin`` filter,
staging clean-up, file sizes, and the id digest of one staged file (for a verify in Ray tasks)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tldr_index.errors import InvalidInputError

from . import arrow_utils as au
from .ids import IdDigest

if TYPE_CHECKING:
    from .base import Source

log = logging.getLogger(__name__)


def take_by_filter(scan, ids, src: Source, chunk: int) -> np.ndarray:
    """Shared ``take`` for stores filtered by an Arrow ``isin`` expression (Lance, Parquet)."""
    out, found = take_found_by_filter(scan, ids, src, chunk)
    if not found.all():
        pylist = (ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids)) \
            .cast(src._id_field.type).to_pylist()
        miss = list(dict.fromkeys(v for v, ok in zip(pylist, found) if not ok))
        raise InvalidInputError(
            f"The 'ids' parameter of take must name rows of source '{src.uri}'. Got "
            f"{len(miss)} unknown id(s), first {miss[0]!r}.")
    return out


def take_found_by_filter(scan, ids, src: Source, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared ``take_found`` for stores filtered by an Arrow ``isin`` expression: the vectors of
    ``ids`` (zeros where missing) and a bool mask of the ids found."""
    ids = pa.array(ids) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    ids = ids.cast(src._id_field.type)
    out = np.zeros((len(ids), src.dim), dtype=np.float32)
    found = np.zeros(len(ids), dtype=bool)
    pylist = ids.to_pylist()
    where: dict[Any, list[int]] = {}
    for i, v in enumerate(pylist):
        where.setdefault(v, []).append(i)
    uniq = list(where)
    for s in range(0, len(uniq), chunk):
        part = uniq[s:s + chunk]
        for b in scan(pc.field(src.id_column).isin(pa.array(part, type=ids.type))):
            if b.num_rows == 0:
                continue
            X = au.vectors_to_numpy(b.column(src.vector_column), dim=src.dim,
                                    column=src.vector_column, source=src.uri)
            for r, v in enumerate(b.column(src.id_column).to_pylist()):
                rows = where.get(v)
                if rows is not None:
                    out[rows] = X[r]
                    found[rows] = True
    return out, found


def digest_id_piece(locator: tuple, id_column: str) -> tuple[int, int, int]:
    """:meth:`IdDigest.state` of the ids in one staged file: ``("lance", dataset path, version,
    fragment id)`` or ``("parquet", file path)``. Memory: one 65,536-id batch."""
    digest = IdDigest()
    if locator[0] == "lance":
        import lance

        _, path, version, fragment_id = locator
        frag = lance.dataset(path, version=version).get_fragment(fragment_id)
        batches = frag.to_batches(columns=[id_column], batch_size=65_536)
    else:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(locator[1]).iter_batches(batch_size=65_536, columns=[id_column])
    for b in batches:
        digest.update(b.column(0))
    return digest.state()


def discard_staging_dir(ref: dict) -> None:
    """Remove the staging directory ``ref["path"]`` of a file store if it is still there (only a
    ``.tldr-staging-`` directory, never anything else)."""
    path = ref.get("path")
    if path and ".tldr-staging-" in os.path.basename(path) and os.path.isdir(path):
        log.info("Removing abandoned staging directory %s.", path)
        shutil.rmtree(path, ignore_errors=True)


def file_bytes(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)
