"""Encode + codes of one Arrow record batch with a :class:`~tldr_index.compact.CompactModel`.

The one place where rows of the compact target are computed and laid out, shared by the
single-process engine (:mod:`tldr_index.shrink.encode`, :mod:`tldr_index.shrink.engine`) and
the Ray Data engine (:mod:`tldr_index.shrink.ray_engine`), so the two cannot drift:

* :func:`encode_block`: ``(n, D)`` vectors -> reduced float32 ``(n, d)`` and codes ``(n, code_bytes)``;
* :func:`assemble_batch`: id + payload columns of a batch, the reduced vectors and the codes ->
  a batch with exactly the target schema (``Source.target_schema``);
* :func:`encode_record_batch`: both, for a source batch (id, vector, payload).

Cost per batch of n rows: O(n D d) for the map plus the codec's encoding (PQ: O(n 256 d)); memory: the batch,
its float32 copy when stored as float16, and the ``(n, d)`` output.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from connectors.arrow_utils import invalid_rows, numpy_to_fsl, vectors_to_numpy

from ..compact import CompactModel
from ..errors import InvalidInputError

CODES_COLUMN = "pq_codes"
FLOAT16_MAX = 65_000.0  # reduced values above this are stored as float32 instead of float16


def read_rows(path, start: int, stop: int, width: int, dtype=np.uint8) -> np.ndarray:
    """Rows ``[start, stop)`` of a raw row-major file (plain reads: no mapping, no RSS
    growth). Cost: ``(stop - start) x width x itemsize`` bytes read."""
    itemsize = np.dtype(dtype).itemsize
    with open(path, "rb") as f:
        f.seek(start * width * itemsize)
        buf = f.read((stop - start) * width * itemsize)
    return np.frombuffer(buf, dtype=dtype).reshape(stop - start, width)


def encode_block(X: np.ndarray, model: CompactModel) -> tuple[np.ndarray, np.ndarray | None]:
    """Reduced float32 vectors ``X @ W.T + b`` of ``X`` (n, D) and their ``(n, code_bytes)`` uint8
    codes by the model's codec (None when the model holds no codec)."""
    Y = model.encode(X)
    if model.codec is None:
        return Y, None
    return Y, model.encode_codes(Y)


def assemble_batch(rows: pa.RecordBatch, Y: np.ndarray, codes: np.ndarray | None,
                   schema: pa.Schema, *, vector_column: str,
                   codes_column: str | None = CODES_COLUMN) -> pa.RecordBatch:
    """The target batch: every field of ``schema`` but the vector and codes columns is taken from
    ``rows`` by name (cast to the schema's type if it differs), the vector column from ``Y``
    (cast to the schema's float16/float32) and the codes column from ``codes``."""
    value_type = schema.field(vector_column).type.value_type
    cols = []
    for f in schema:
        if f.name == vector_column:
            cols.append(numpy_to_fsl(Y.astype(value_type.to_pandas_dtype(), copy=False)))
        elif f.name == codes_column:
            if codes is None:
                raise InvalidInputError(
                    f"The target schema has a codes column '{codes_column}' but the model holds "
                    f"no codec (code_bytes=0).")
            codes = np.ascontiguousarray(codes, dtype=np.uint8)
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)),
                                                          codes.shape[1]))
        else:
            col = rows.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def encode_record_batch(batch: pa.RecordBatch, model: CompactModel, schema: pa.Schema, *,
                        vector_column: str, codes_column: str | None = CODES_COLUMN,
                        source: str = "input",
                        skip_invalid: bool = False, cosine: bool = False) -> pa.RecordBatch:
    """Encode one source batch (id, vector, payload columns) into a batch with the target
    ``schema`` (id, payload, reduced vector, codes; see ``Source.target_schema``).

    Raises :class:`InvalidInputError` for null/ragged/non-finite vectors, and when the target
    stores float16 vectors but a reduced value exceeds float16's range (the single-process
    pipeline then stores float32; a distributed run cannot change the schema half-way).
    ``skip_invalid``: drop the rows the scan skipped instead (NaN/inf vectors; zero vectors when
    ``cosine``), as ``Source.iter_batches(skip_invalid=True)`` does.
    """
    X = vectors_to_numpy(batch.column(vector_column), dim=model.input_dim, column=vector_column,
                         source=source)
    if skip_invalid:
        bad = invalid_rows(X, cosine=cosine)
        if bad.any():
            X, batch = X[~bad], batch.filter(pa.array(~bad))
    Y, codes = encode_block(X, model)
    if schema.field(vector_column).type.value_type == pa.float16() and len(Y):
        top = float(np.abs(Y).max())
        if top > FLOAT16_MAX:
            raise InvalidInputError(
                f"Reduced vectors of source '{source}' must fit float16 (|value| <= "
                f"{FLOAT16_MAX:g}) to be stored as float16. Got {top:.6g}; pass "
                f"reduced_dtype='float32'.")
    return assemble_batch(batch, Y, codes, schema, vector_column=vector_column,
                          codes_column=codes_column)
