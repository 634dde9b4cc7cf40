"""The codec interface: vectors -> ``(n, code_size)`` uint8 codes -> inner-product scores.

Every codec approximates the **inner product** of float queries with the encoded database rows
(cosine when the caller L2-normalises both sides; codecs never normalise by themselves). The query
side always stays float (asymmetric distance computation, ADC).

A fitted codec is fully described by :meth:`Codec.state`: a flat ``dict[str, np.ndarray]`` (stored
as tensors in the model's safetensors file, never pickled) plus a small JSON-able config;
:func:`tldr_index.codecs.codec_from_state` rebuilds it and gives identical codes and scores.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from ..errors import InvalidInputError, ModelFormatError, NotFittedError

#: Rows per block when scoring by decoding (bounds memory to ``block x dim`` float32).
SCORE_BLOCK_ROWS = 16_384
#: Queries per block in the default :meth:`Codec.search` (bounds memory to ``block x n`` float32).
QUERY_BLOCK = 256


def check_matrix(X: Any, name: str, dim: int | None, owner: str) -> np.ndarray:
    """``X`` as a C-contiguous float32 ``(n, dim)`` matrix of finite values, or one clear error."""
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInputError(f"The '{name}' input of {owner} must be a 2-D array of floats. "
                                f"Got {type(X).__name__} ({exc}).") from None
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating)
                             or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"The '{name}' input of {owner} must be a 2-D array of floats. "
                                f"Got shape {arr.shape} and dtype {arr.dtype} instead.")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"The '{name}' input of {owner} must have {dim} columns (the "
                                f"codec's dimension). Got {arr.shape[1]} instead.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidInputError(f"The '{name}' input of {owner} must hold finite values only. "
                                f"Got NaN or inf in row {bad}.")
    return arr


def check_codes(codes: Any, code_size: int, owner: str) -> np.ndarray:
    """``codes`` as a C-contiguous uint8 ``(n, code_size)`` array, or one clear error."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != code_size:
        raise InvalidInputError(f"The 'codes' input of {owner} must be a uint8 array of shape "
                                f"(n, {code_size}). Got shape {arr.shape} and dtype {arr.dtype} "
                                f"instead.")
    return np.ascontiguousarray(arr)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first ``(scores, ids)`` of the ``k`` largest entries of each row (ties: lower id)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, ids, axis=1).astype(np.float32), ids.astype(np.int64)


class Codec:
    """Base class. Subclasses set :attr:`name`, implement ``_fit``, ``_encode``, ``_decode``,
    ``_tensors``/``_restore`` and, where decoding is not the exact ADC, ``_scores``.

    Attributes
    ----------
    dim : int
        Vector dimension d.
    code_size : int
        Bytes per encoded vector (everything the scorer reads, per-vector factors included).
    """

    name: ClassVar[str] = "codec"

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.fitted = False

    # -- configuration ---------------------------------------------------------------------
    @property
    def code_size(self) -> int:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (``codec`` names the class)."""
        return {"codec": self.name, "dim": self.dim}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "codec")
        return f"{type(self).__name__}({args})"

    # -- public API -------------------------------------------------------------------------
    def fit(self, X: Any, seed: int = 0) -> "Codec":
        """Learn the codebooks / rotation from the rows of ``X`` (float, ``(n, dim)``)."""
        X = check_matrix(X, "X", self.dim, f"{type(self).__name__}.fit")
        self._fit(X, int(seed))
        self.fitted = True
        return self

    def encode(self, X: Any) -> np.ndarray:
        """``(n, code_size)`` uint8 codes of the rows of ``X``."""
        self._check_fitted("encode")
        X = check_matrix(X, "X", self.dim, f"{type(self).__name__}.encode")
        out = self._encode(X)
        assert out.dtype == np.uint8 and out.shape == (len(X), self.code_size)
        return out

    def decode(self, codes: Any) -> np.ndarray:
        """``(n, dim)`` float32 reconstructions of ``codes``."""
        self._check_fitted("decode")
        codes = check_codes(codes, self.code_size, f"{type(self).__name__}.decode")
        return np.ascontiguousarray(self._decode(codes), dtype=np.float32)

    def scores(self, queries: Any, codes: Any) -> np.ndarray:
        """``(n_queries, n)`` estimated inner products of float ``queries`` with the encoded rows.
        Cost: ``n_queries x n x dim`` multiply-adds plus decoding, block by block."""
        self._check_fitted("scores")
        Q = check_matrix(queries, "queries", self.dim, f"{type(self).__name__}.scores")
        codes = check_codes(codes, self.code_size, f"{type(self).__name__}.scores")
        out = np.empty((len(Q), len(codes)), dtype=np.float32)
        for s in range(0, len(codes), SCORE_BLOCK_ROWS):
            out[:, s:s + SCORE_BLOCK_ROWS] = self._scores(Q, codes[s:s + SCORE_BLOCK_ROWS])
        return out

    def search(self, queries: Any, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, row ids)`` of the encoded rows for each float query, best first.
        Default: :meth:`scores` for blocks of 256 queries, then a partial sort (memory
        ``256 x n`` float32); PQ/OPQ/RQ use FAISS lookup tables instead."""
        self._check_fitted("search")
        Q = check_matrix(queries, "queries", self.dim, f"{type(self).__name__}.search")
        codes = check_codes(codes, self.code_size, f"{type(self).__name__}.search")
        parts = [top_k(self.scores(Q[s:s + QUERY_BLOCK], codes), k)
                 for s in range(0, len(Q), QUERY_BLOCK)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(tensors, config)``: a flat dict of numpy arrays and a JSON-able dict that
        :func:`tldr_index.codecs.codec_from_state` turns back into this codec."""
        self._check_fitted("state")
        tensors = {k: np.ascontiguousarray(v) for k, v in self._tensors().items()}
        cfg = self.config()
        json.dumps(cfg)  # must be JSON-able
        return tensors, cfg

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> "Codec":
        """Rebuild a fitted codec from :meth:`state` (no training, no pickle)."""
        kwargs = {k: v for k, v in config.items() if k != "codec"}
        obj = cls(**kwargs)
        missing = sorted(set(obj._tensor_names()) - set(tensors))
        if missing:
            raise ModelFormatError(f"The stored {cls.name!r} codec lacks the tensors "
                                   f"{', '.join(missing)}.")
        for k, shape in obj._shapes().items():
            got = np.shape(tensors[k])
            if tuple(got) != shape:
                raise ModelFormatError(f"The stored {cls.name!r} codec tensor {k!r} must have "
                                       f"shape {shape} for its config. Got {tuple(got)} instead.")
        obj._restore({k: np.asarray(tensors[k]) for k in obj._tensor_names()})
        obj.fitted = True
        return obj

    # -- hooks ------------------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if not self.fitted:
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call "
                                 f"'fit' before using '{what}'.")

    def _tensor_names(self) -> list[str]:
        return list(self._shapes())

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Stored tensor names and the shapes the config implies."""
        raise NotImplementedError

    def _fit(self, X: np.ndarray, seed: int) -> None:
        raise NotImplementedError

    def _encode(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _scores(self, Q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Exact ADC for additive codecs: ``<q, decode(code)>``."""
        return Q @ self._decode(codes).T
