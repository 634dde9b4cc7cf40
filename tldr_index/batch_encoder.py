"""``compact.encode_batch``: a small picklable callable that encodes batches with a compact
collection's model (Ray Data ``map_batches``, any batch loop), and the query / vector checks
:class:`tldr_index.compact_collection.CompactCollection` shares with it.

:class:`BatchEncoder` carries the model bytes (safetensors, verified when loaded) and loads the
model once per process (cached by sha256), so ``ds.map_batches(compact.encode_batch,
batch_format="pyarrow")`` ships it to Ray workers.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa

from .compact import CompactModel
from .errors import InvalidInputError


def _as_matrix(vectors: Any, column: str, what: str) -> np.ndarray:
    """numpy (n, D) from numpy, lists, Arrow list / fixed-size-list arrays, batches or tables."""
    from connectors.arrow_utils import vectors_to_numpy

    if isinstance(vectors, (pa.RecordBatch, pa.Table)):
        if column not in vectors.schema.names:
            raise InvalidInputError(
                f"The '{what}' batch must have a vector column '{column}'. Got columns: "
                f"{', '.join(vectors.schema.names)}.")
        vectors = vectors.column(column)
    if isinstance(vectors, (pa.Array, pa.ChunkedArray)):
        return vectors_to_numpy(vectors, column=column, source=what)
    X = np.asarray(vectors)
    if X.dtype == object or X.dtype.kind not in "fiu":
        raise InvalidInputError(
            f"The '{what}' parameter must be a float array of shape (n, D). Got dtype {X.dtype}.")
    return X


def check_matrix(vectors: Any, column: str, dim: int, target_uri: str, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` matrix (one row for a 1-d input), or one
    :class:`InvalidInputError` naming ``what`` (wrong dimension, NaN / inf)."""
    X = _as_matrix(vectors, column, what)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != dim:
        raise InvalidInputError(
            f"The '{what}' parameter must have shape (n, {dim}) (the dimension of the source "
            f"vectors of target '{target_uri}'). Got {X.shape} instead.")
    if not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise InvalidInputError(
            f"The '{what}' parameter must contain only finite values. Got NaN or inf in row "
            f"{bad}.")
    return np.ascontiguousarray(X, dtype=np.float32)


#: models loaded by :class:`BatchEncoder` in this process, by sha256 of their bytes (a Ray worker
#: that runs many tasks with the same encoder parses the model once)
_LOADED: dict[str, tuple[CompactModel, Any]] = {}
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


class BatchEncoder:
    """``encoder(batch)``: ``batch`` plus ``<vector>_reduced`` (float32) and, when the target
    stores PQ codes, ``pq_codes`` (uint8) columns.

    A drop-in function for ``ray.data.Dataset.map_batches(encoder, batch_format="pyarrow")``
    (or ``"numpy"``) and any batch loop. It pickles to the model bytes (safetensors, never a
    pickled model) plus three strings, and parses the model once per process (cached by its
    sha256). A ``pa.Table`` gives a ``pa.Table``, a ``pa.RecordBatch`` a ``pa.RecordBatch``, a
    dict of columns (Ray's numpy format: the vector column a 2-d array) a dict of numpy arrays.
    Thread-safe. Cost per batch of n rows: O(n D d) for the map plus O(n 256 d) for the codes.
    """

    def __init__(self, model_bytes: bytes, *, vector_column: str, codes_column: str | None,
                 target_uri: str, model: CompactModel | None = None):
        """``model``: the parsed ``model_bytes`` when the caller has it (saves one parse here)."""
        import hashlib

        self.model_bytes = bytes(model_bytes)
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        self.vector_column = vector_column
        self.codes_column = codes_column or "pq_codes"
        self.target_uri = target_uri
        self._model: tuple[CompactModel, Any] | None = None
        if model is not None:
            self._model = (model, model.codec)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None  # parsed again (once per process) where it is unpickled
        return state

    def __repr__(self) -> str:
        return f"BatchEncoder({self.target_uri!r}, model sha256 {self.sha256[:12]})"

    def _loaded(self) -> tuple[CompactModel, Any]:
        if self._model is None:
            with _LOADED_LOCK:
                got = _LOADED.get(self.sha256)
                if got is None:
                    model = CompactModel.from_bytes(self.model_bytes,
                                                    f"target '{self.target_uri}'")
                    got = (model, model.codec)
                    while len(_LOADED) >= _LOADED_MAX:
                        _LOADED.pop(next(iter(_LOADED)))
                    _LOADED[self.sha256] = got
            self._model = got
        return self._model

    @property
    def model(self) -> CompactModel:
        return self._loaded()[0]

    def encode_matrix(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(reduced (n, d) float32, codes (n, code_bytes) uint8)`` of a matrix already checked by
        :func:`check_matrix`."""
        model, pq = self._loaded()
        Y = model.encode(X, finite_checked=True)
        codes = model.encode_codes(Y) if pq is not None else np.empty((len(X), 0), np.uint8)
        return Y.astype(np.float32, copy=False), codes

    def encode(self, vectors: Any, what: str = "vectors") -> tuple[np.ndarray, np.ndarray]:
        """Check ``vectors`` (see :meth:`CompactCollection.encode`) and encode them."""
        X = check_matrix(vectors, self.vector_column, self.model.input_dim, self.target_uri,
                         what)
        return self.encode_matrix(X)

    def __call__(self, batch: pa.RecordBatch | pa.Table | dict) -> Any:
        from connectors.arrow_utils import numpy_to_fsl

        reduced = f"{self.vector_column}_reduced"
        if isinstance(batch, dict):
            if self.vector_column not in batch:
                raise InvalidInputError(
                    f"The 'batch' of encode_batch must have a vector column "
                    f"'{self.vector_column}'. Got columns: {', '.join(map(str, batch))}.")
            col = batch[self.vector_column]
            if isinstance(col, np.ndarray) and col.dtype == object:
                col = np.stack(col) if len(col) else np.empty((0, self.model.input_dim))
            Y, codes = self.encode(col, "batch")
            out = dict(batch)
            out[reduced] = Y
            if codes.shape[1]:
                out[self.codes_column] = codes
            return out
        if not isinstance(batch, (pa.RecordBatch, pa.Table)):
            raise InvalidInputError(
                f"The 'batch' of encode_batch must be a pyarrow Table / RecordBatch or a dict of "
                f"columns. Got {type(batch).__name__}.")
        if batch.num_rows == 0:
            Y = np.empty((0, self.model.output_dim), np.float32)
            codes = np.empty((0, self.model.code_bytes), np.uint8)
        else:
            Y, codes = self.encode(batch, "batch")
        cols = [numpy_to_fsl(Y)]
        names = [reduced]
        if codes.shape[1]:
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)),
                                                          codes.shape[1]))
            names.append(self.codes_column)
        if isinstance(batch, pa.Table):
            out = batch
            for name, col in zip(names, cols):
                out = out.append_column(name, pa.chunked_array([col], type=col.type))
            return out
        return pa.RecordBatch.from_arrays(list(batch.columns) + cols,
                                          names=batch.schema.names + names)


__all__ = ["BatchEncoder", "check_matrix"]
