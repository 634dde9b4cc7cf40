"""Write a rescore cache (:mod:`tldr_index.rescore_cache`): the originals of a target's rows,
in its row order, from its source."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .rescore_cache import DTYPES, FORMAT, ids_digest, sidecar
from .validation import check_choice

log = logging.getLogger(__name__)


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


__all__ = ["write_rescore_cache"]
