"""Arrow helpers shared by every connector: column detection, vector conversion and validation.

Vectors travel as ``FixedSizeList<float32>[dim]`` (or ``<float16>`` when stored as float16; float64
is narrowed to float32). :func:`vectors_to_numpy` turns such a column into an ``(n, dim)`` array
without copying when the storage is already float16/float32 and has no nulls, and honours slice
offsets (``arr.values`` ignores them: see docs/api-notes.md, Parquet pitfalls).

Every check raises a one-line error naming the source, the column, the rule and the value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tldr_index.errors import InvalidInputError, MissingColumnError

from .ids import is_id_type

ID_CANDIDATES = ("id", "_id", "ids", "pk")
FLOAT_TYPES = (pa.float16(), pa.float32(), pa.float64())
JSON_FIELD_KEY = b"tldr.json"  # field metadata marking a utf8 column that holds JSON objects


def describe_columns(schema: pa.Schema) -> str:
    """``"id (int64), vector (fixed_size_list<item: float>[8])"`` for error messages."""
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def is_vector_type(t: pa.DataType) -> bool:
    """A (fixed-size or variable) list of float16/32/64."""
    return _is_list(t) and pa.types.is_floating(t.value_type)


def detect_vector_column(schema: pa.Schema, requested: str | None, source: str) -> str:
    """Return the vector column: ``requested`` if given (checked), else the only list-of-floats
    column. Raises :class:`MissingColumnError` or :class:`InvalidInputError` listing the columns."""
    if requested is not None:
        if requested not in schema.names:
            raise MissingColumnError(
                f"Vector column '{requested}' not found in source '{source}'. Available columns: "
                f"{describe_columns(schema)}.")
        t = schema.field(requested).type
        if not is_vector_type(t):
            what = f"list<{t.value_type}>" if _is_list(t) else str(t)
            raise InvalidInputError(
                f"Vector column '{requested}' of source '{source}' must be a list or fixed-size "
                f"list of floats (float16, float32 or float64). Got {what} instead.")
        return requested
    found = [f.name for f in schema if is_vector_type(f.type)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise MissingColumnError(
            f"No vector column in source '{source}': expected a list or fixed-size list of floats. "
            f"Available columns: {describe_columns(schema)}. Pass vector_column= to name it.")
    raise InvalidInputError(
        f"Source '{source}' has several vector columns ({', '.join(found)}); pass vector_column= "
        f"to choose one.")


def detect_id_column(schema: pa.Schema, requested: str | None, source: str,
                     exclude: Sequence[str] = ()) -> str:
    """Return the id column: ``requested`` if given (checked), else the first of
    ``id, _id, ids, pk`` (case-insensitive) that exists, else the only integer column.

    A lone string column is *not* taken as the id (it is usually the text payload): name it.
    """
    if requested is not None:
        if requested not in schema.names:
            raise MissingColumnError(
                f"Id column '{requested}' not found in source '{source}'. Available columns: "
                f"{describe_columns(schema)}.")
        t = schema.field(requested).type
        if not is_id_type(t):
            raise InvalidInputError(
                f"Id column '{requested}' of source '{source}' must hold integers or strings. "
                f"Got {t} instead.")
        return requested
    lower = {n.lower(): n for n in reversed(schema.names)}
    for cand in ID_CANDIDATES:
        name = lower.get(cand)
        if name is not None and name not in exclude and is_id_type(schema.field(name).type):
            return name
    ints = [f.name for f in schema if pa.types.is_integer(f.type) and f.name not in exclude]
    if len(ints) == 1:
        return ints[0]
    raise MissingColumnError(
        f"No id column in source '{source}': expected one named {', '.join(ID_CANDIDATES)} or a "
        f"single integer column. Available columns: {describe_columns(schema)}. Pass id_column= "
        f"to name it.")


def _fmt_id(ids: pa.Array | None, i: int) -> str:
    if ids is None:
        return f"row {i}"
    return f"id {ids[i].as_py()!r}"


def vector_dim(arr: pa.Array | pa.ChunkedArray) -> int | None:
    """Length of the vectors: the list size, or the first non-null row's length for a list column."""
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    for chunk in (arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]):
        lengths = pc.list_value_length(chunk).drop_null()
        if len(lengths):
            return int(lengths[0].as_py())
    return None


def vectors_to_numpy(arr: pa.Array | pa.ChunkedArray, *, dim: int | None = None,
                     column: str = "vector", ids: pa.Array | None = None,
                     source: str = "input") -> np.ndarray:
    """``(n, dim)`` numpy array of a list / fixed-size-list float column, dtype as stored.

    Zero-copy for float16/float32/float64 storage without nulls (list columns: the flattened child,
    which is a view when the list is unsliced or sliced). Raises :class:`InvalidInputError` on null
    vectors or elements, non-float elements, and rows whose length differs from ``dim`` (default:
    the first row's length), naming the first offending id when ``ids`` is given.
    """
    if isinstance(arr, pa.ChunkedArray):
        parts = [vectors_to_numpy(c, dim=dim, column=column, source=source) for c in arr.chunks]
        if not parts:
            return np.empty((0, dim or 0), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    t = arr.type
    if not _is_list(t) or not pa.types.is_floating(t.value_type):
        what = f"list<{t.value_type}>" if _is_list(t) else str(t)
        raise InvalidInputError(
            f"Vector column '{column}' of source '{source}' must be a list or fixed-size list of "
            f"floats (float16, float32 or float64). Got {what} instead.")
    n = len(arr)
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidInputError(
            f"Vector column '{column}' of source '{source}' must not contain null vectors. Got "
            f"{arr.null_count} null vector(s), first at {_fmt_id(ids, i)}.")
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        if dim is not None and d != dim:
            raise InvalidInputError(
                f"Vector column '{column}' of source '{source}' must have the same length in every "
                f"row. Expected {dim}, got {d} at {_fmt_id(ids, 0)}.")
        flat = arr.values.slice(arr.offset * d, n * d)
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        d = dim if dim is not None else (int(lengths[0]) if n else 0)
        wrong = np.flatnonzero(lengths != d)
        if len(wrong):
            i = int(wrong[0])
            raise InvalidInputError(
                f"Vector column '{column}' of source '{source}' must have the same length in every "
                f"row. Expected {d}, got {int(lengths[i])} at {_fmt_id(ids, i)} ({len(wrong)} "
                f"row(s) differ).")
        flat = pc.list_flatten(arr)
    if flat.null_count:
        nulls = flat.is_null().to_numpy(zero_copy_only=False).reshape(n, d).any(axis=1)
        i = int(np.flatnonzero(nulls)[0])
        raise InvalidInputError(
            f"Vector column '{column}' of source '{source}' must not contain null elements. Got "
            f"{int(nulls.sum())} vector(s) with nulls, first at {_fmt_id(ids, i)}.")
    return flat.to_numpy(zero_copy_only=True).reshape(n, d)


def check_finite(X: np.ndarray, *, column: str, ids: pa.Array | None, source: str,
                 row_offset: int = 0) -> None:
    """Raise if ``X`` holds NaN or inf, with the count of bad rows in this block and the first id."""
    if X.size == 0:
        return
    ok = np.isfinite(X).all(axis=1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise InvalidInputError(
            f"Vector column '{column}' of source '{source}' must contain only finite values. Got "
            f"{len(bad)} row(s) with NaN or inf in rows {row_offset}..{row_offset + len(X) - 1}, "
            f"first at {_fmt_id(ids, int(bad[0]))}.")


def check_nonzero(X: np.ndarray, *, column: str, ids: pa.Array | None, source: str,
                  row_offset: int = 0) -> None:
    """Raise if a row of ``X`` is all zeros (under the cosine distance it has no direction)."""
    if X.size == 0:
        return
    zero = ~np.any(X != 0, axis=1)
    if zero.any():
        bad = np.flatnonzero(zero)
        raise InvalidInputError(
            f"Vector column '{column}' of source '{source}' must not contain zero vectors under "
            f"the cosine distance (they have no direction). Got {len(bad)} zero vector(s) in rows "
            f"{row_offset}..{row_offset + len(X) - 1}, first at {_fmt_id(ids, int(bad[0]))}.")


def invalid_rows(X: np.ndarray, *, cosine: bool) -> np.ndarray:
    """Boolean mask of the rows :func:`check_finite` (and, if ``cosine``, :func:`check_nonzero`)
    refuse. Cost: one pass over ``X``."""
    bad = ~np.isfinite(X).all(axis=1)
    if cosine:
        bad |= ~np.any(X != 0, axis=1)
    return bad


def numpy_to_fsl(X: np.ndarray) -> pa.FixedSizeListArray:
    """``(n, d)`` float array -> ``FixedSizeList<float16|float32>[d]`` (float64 narrowed to float32).

    Zero-copy when ``X`` is C-contiguous float16/float32.
    """
    X = np.asarray(X)
    if X.dtype not in (np.float16, np.float32):
        X = X.astype(np.float32)
    X = np.ascontiguousarray(X)
    return pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])


def vector_storage_type(value_type: pa.DataType) -> pa.DataType:
    """Element type batches carry for a stored element type: float16 stays, the rest -> float32."""
    return pa.float16() if value_type == pa.float16() else pa.float32()


def check_ids(ids: pa.Array, *, column: str, source: str, row_offset: int = 0) -> None:
    """Ids must be integers or strings without nulls."""
    if not is_id_type(ids.type):
        raise InvalidInputError(
            f"Id column '{column}' of source '{source}' must hold integers or strings. Got "
            f"{ids.type} instead.")
    if ids.null_count:
        i = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidInputError(
            f"Id column '{column}' of source '{source}' must not contain nulls. Got "
            f"{ids.null_count} null id(s), first at row {row_offset + i}.")


def check_batch_schema(batch: pa.RecordBatch, expected: pa.Schema, where: str) -> None:
    """Raise if a batch's schema drifts from ``expected`` (metadata ignored)."""
    if not batch.schema.equals(expected, check_metadata=False):
        raise InvalidInputError(
            f"Batch appended to {where} has a different schema. Expected: "
            f"{describe_columns(expected)}. Got: {describe_columns(batch.schema)}.")


def split_batch(batch: pa.RecordBatch, max_rows: int):
    """Yield slices of ``batch`` of at most ``max_rows`` rows (zero-copy)."""
    if batch.num_rows <= max_rows:
        yield batch
        return
    for start in range(0, batch.num_rows, max_rows):
        yield batch.slice(start, max_rows)
