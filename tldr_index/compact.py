"""The compact model stored beside a shrunk collection: the folded linear map and the PQ codebook.

One safetensors file (see :mod:`tldr_index.artifact`; never pickle) holding

* ``weight`` (d x D float32) and ``bias`` (d,): ``encode(x) = x @ weight.T + bias``;
* ``pq_centroids`` (M x 256 x d/M float32), absent when the target stores no PQ codes;

and in its JSON ``info`` the reducer's own info (``class``, ``method``, ``params``, ``fit_info``...,
so :func:`tldr_index.load_model` reads the file as a plain TLDR / PCA model too) plus ``compact``:
metric, PQ bytes, dims, and the source it was fitted on (URI and fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .artifact import model_from_bytes, model_to_bytes
from .errors import InvalidInputError, ModelFormatError
from .quantizer import ProductQuantizer, normalize_rows


@dataclass
class CompactModel:
    """A linear map ``R^D -> R^d`` plus an optional PQ codebook over the reduced space."""

    weight: np.ndarray                     # (d, D) float32
    bias: np.ndarray                       # (d,) float32
    metric: str                            # the source's distance: "cosine", "l2" or "ip"
    centroids: np.ndarray | None = None    # (M, 256, d / M) float32
    info: dict = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def pq_bytes(self) -> int:
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    @property
    def method(self) -> str:
        return str(self.info.get("method", "unknown"))

    @classmethod
    def from_reducer(cls, reducer: Any, metric: str, pq: ProductQuantizer | None = None,
                     extra: dict | None = None) -> "CompactModel":
        """Wrap a fitted linear reducer (TLDR with a foldable encoder, or PCA)."""
        tensors = reducer._model_tensors()
        if "weight" not in tensors:
            raise InvalidInputError(
                f"The reducer must be linear (a foldable encoder) to build a compact model. Got "
                f"{type(reducer).__name__} with tensors {sorted(tensors)}.")
        info = reducer._model_info()
        info["compact"] = {"metric": metric, "pq_bytes": 0 if pq is None else int(pq.n_bytes),
                           **(extra or {})}
        return cls(np.asarray(tensors["weight"], dtype=np.float32),
                   np.asarray(tensors["bias"], dtype=np.float32), metric,
                   None if pq is None else np.asarray(pq.centroids_, dtype=np.float32), info)

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, X: np.ndarray, *, finite_checked: bool = False) -> np.ndarray:
        """Reduced float32 vectors of ``X`` (n, D) (not normalised; the PQ normalises for cosine).
        ``finite_checked``: the caller already refused NaN/inf (e.g.
        :class:`~tldr_index.compact_collection.CompactCollection`), so the values are not scanned
        again; the shape is still checked.

        Accumulated in float64 and rounded to float32, so a row's result does not depend on the
        batch it is encoded in (float32 BLAS kernels sum in a block-size-dependent order, which
        moved 0.05% of float16-stored values by one unit): the single-process and Ray engines
        and a query encoded alone all agree. Cost: O(n D d) in float64 (the PQ encoding that
        follows costs about as much); memory: a float64 copy of ``X``.
        """
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.input_dim or len(X) == 0:
            raise InvalidInputError(
                f"Queries must have shape (n, {self.input_dim}) with n >= 1 (the dimension of "
                f"the source vectors). Got {X.shape} instead.")
        if not finite_checked and not np.isfinite(X).all():
            bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise InvalidInputError(
                f"Queries must contain only finite values. Got NaN or inf in row {bad}.")
        Y = X.astype(np.float64) @ self.weight.T.astype(np.float64)
        Y += self.bias
        return Y.astype(np.float32)

    def prepare(self, Y: np.ndarray) -> np.ndarray:
        """Reduced vectors as searched: L2-normalised for cosine, unchanged otherwise."""
        Y = np.ascontiguousarray(Y, dtype=np.float32)
        return normalize_rows(Y) if self.metric == "cosine" else Y

    def quantizer(self) -> ProductQuantizer:
        if self.centroids is None:
            raise ModelFormatError("This compact model holds no PQ codebook (pq_bytes=0).")
        return ProductQuantizer.from_centroids(self.centroids, metric=self.metric)

    # -- bytes -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return model_to_bytes(self.tensors(), self.info)

    @classmethod
    def of_target(cls, target) -> "CompactModel":
        """The model stored with a compact collection (any object with ``model_bytes`` and
        ``uri``, e.g. :class:`connectors.Target`); errors name ``target '<uri>'``. Cost: one
        parse of the model bytes (a few KB to MB)."""
        return cls.from_bytes(target.model_bytes, f"target '{target.uri}'")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "CompactModel":
        tensors, info = model_from_bytes(data, source)
        compact = info.get("compact")
        if not isinstance(compact, dict) or "metric" not in compact:
            raise ModelFormatError(
                f"'{source}' is a tldr-index model but not a compact model (no 'compact' info): "
                f"it was not written by shrink.")
        cent = tensors.get("pq_centroids")
        if cent is not None and (cent.ndim != 3 or cent.shape[1] != 256
                                 or cent.shape[0] * cent.shape[2] != tensors["weight"].shape[0]):
            raise ModelFormatError(
                f"'{source}' is a corrupt compact model: PQ codebook of shape {cent.shape} does "
                f"not fit reduced vectors of dimension {tensors['weight'].shape[0]}.")
        return cls(tensors["weight"], tensors["bias"], compact["metric"], cent, info)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias}
        if self.centroids is not None:
            out["pq_centroids"] = self.centroids
        return out
