"""Payload columns of search results: ``tldr-index search --columns text,title``.

:func:`result_columns` reads the id column and the requested columns of a compact collection once
and keeps the rows whose id is among the results. Cost: one pass over ``1 + len(columns)``
columns of the target (Lance / Parquet read only those columns; Qdrant scrolls its points),
memory: the values of the found rows only (at most ``n_queries x k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidParameterError


def payload_columns(target) -> list[str]:
    """The columns of ``target`` a result can show: the id and payload (not the reduced
    vectors or the PQ codes)."""
    lay = target.layout
    first = next(iter(target.iter_batches(1)), None)
    if first is None:
        return [lay.id_column]
    return [n for n in first.schema.names if n not in (lay.vector_column, lay.codes_column)]


def check_columns(target, columns: Sequence[str]) -> list[str]:
    """``columns`` if each is an id or payload column of ``target`` (a Target or its URI);
    raises :class:`InvalidParameterError` naming the available ones otherwise."""
    if isinstance(target, str):
        from connectors import open_target

        target = open_target(target)
    names = payload_columns(target)
    for col in columns:
        if col not in names:
            raise InvalidParameterError(
                f"The 'columns' parameter of search must name id or payload columns of target "
                f"'{target.uri}': {', '.join(names)}. Got {col!r} instead.")
    return list(columns)


def result_columns(target_uri: str, ids: np.ndarray, columns: Sequence[str],
                   **target_options: Any) -> dict[str, list[list]]:
    """``{column: values shaped like ids (n, k)}`` for the result ``ids`` of a search of
    ``target_uri``.

    Raises :class:`InvalidParameterError` naming the available columns when one of ``columns``
    is not an id or payload column of the target.
    """
    from connectors import open_target

    tgt = open_target(target_uri, **target_options)
    columns = check_columns(tgt, columns)
    if not columns:
        return {}
    id_col = tgt.layout.id_column
    read = [id_col] + [c for c in columns if c != id_col]
    try:
        batches = tgt.iter_columns(read)
    except NotImplementedError:
        batches = tgt.iter_batches()
    found: dict[Any, dict[str, Any]] = {}
    want = None
    for b in batches:
        idc = b.column(b.schema.get_field_index(id_col))
        if want is None:
            want = pa.array(np.unique(ids.ravel()).tolist()).cast(idc.type)
        sub = b.filter(pc.is_in(idc, value_set=want))
        if sub.num_rows == 0:
            continue
        cols = {c: sub.column(sub.schema.get_field_index(c)).to_pylist() for c in read}
        for i, key in enumerate(cols[id_col]):
            found[key] = {c: cols[c][i] for c in read}
    return {c: [[found.get(_key(v), {}).get(c) for v in row] for row in ids] for c in columns}


def _key(v):
    """A result id (numpy int or str) as the Python value Arrow returns for it."""
    return v.item() if isinstance(v, np.generic) else v


def search_with_columns(target_uri: str, queries: Any, columns: Sequence[str] = (), *,
                        fetch_columns: bool = True, target_options: dict | None = None,
                        **search_options: Any) -> tuple[Any, dict[str, list[list]]]:
    """:func:`tldr_index.search.search` of ``target_uri`` plus the values of ``columns`` for
    each hit: ``(SearchResult, {column: values shaped like its ids})`` (``{}`` without columns
    or with ``fetch_columns=False``).

    The column names are checked before the search runs (:class:`InvalidParameterError` naming
    the available ones). Cost: the search, plus one pass over ``1 + len(columns)`` columns of the
    target when values are fetched (see :func:`result_columns`).
    """
    from .search import search

    opts = target_options or {}
    if columns:
        from connectors import open_target

        columns = check_columns(open_target(target_uri, **opts), columns)
    res = search(target_uri, queries, target_options=target_options, **search_options)
    values = (result_columns(target_uri, res.ids, columns, **opts)
              if columns and fetch_columns else {})
    return res, values
