"""Shared face of every reducer: transform in blocks, save/load as safetensors + JSON."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin

from .version import __version__
from .artifact import load_model_file, save_model_file
from .errors import InvalidInputError, ModelFormatError, NotFittedError
from .linear import linear_map
from .vectors import DEFAULT_CHUNK_ROWS, ArrayVectors, as_vectors

METRICS = ("cosine", "ip", "l2")


#: Model classes by the name a model file records, filled as each subclass is defined
#: (:func:`tldr_index.load_model` imports both of ours first).
MODEL_CLASSES: dict[str, type] = {}


class BaseReducer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A fitted map R^D -> R^d. Linear models hold ``components_`` (d x D) and ``bias_`` (d,):
    ``transform(X) = X @ components_.T + bias_``.
    """

    method: str = "base"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]   # outputs are always float32
        return tags

    # -- helpers -----------------------------------------------------------------------------
    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                f"appropriate arguments before using '{what}'.")

    @property
    def _n_features_out(self) -> int:
        return self.n_components_

    def _encode_block(self, block: np.ndarray) -> np.ndarray:
        """``block @ W.T + b`` accumulated in float64, rounded to float32: a row's result does
        not depend on how many rows it is encoded with (float32 BLAS sums in a block-size
        dependent order), and it equals :meth:`CompactModel.encode` of the same map.
        Cost: O(n D d) float64 multiply-adds."""
        return linear_map(block, self.components_, self.bias_)

    # -- public API --------------------------------------------------------------------------
    def transform(self, X: Any, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """Reduce ``X`` (n, D) to float32 (n, d), streaming ``chunk_rows`` rows at a time.

        Cost: O(n D d) time; memory: the (n, d) output plus one block.
        """
        self._check_fitted("transform")
        v = as_vectors(X)
        if v.dim != self.n_features_in_:
            raise InvalidInputError(
                f"X has {v.dim} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input (input 'X' must have the dimension "
                f"the model was fitted on).")
        out = np.empty((v.n_rows, self.n_components_), dtype=np.float32)
        check = not isinstance(v, ArrayVectors)  # arrays were checked by as_vectors
        for start, block in v.iter_chunks(chunk_rows, check_finite=check):
            out[start:start + len(block)] = self._encode_block(block)
        return out

    def _model_tensors(self) -> dict[str, np.ndarray]:
        return {"weight": self.components_.astype(np.float32),
                "bias": self.bias_.astype(np.float32)}

    def _model_info(self) -> dict[str, Any]:
        return {"method": self.method, "class": type(self).__name__, "foldable": True,
                "input_dim": int(self.n_features_in_), "output_dim": int(self.n_components_),
                "metric": getattr(self, "metric", "cosine"), "params": _jsonable(self.get_params()),
                "library": "tldr-index", "library_version": __version__,
                "fit_info": _jsonable(without_timings(getattr(self, "fit_info_", {})))}

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path`` (safetensors + JSON metadata, atomic, no pickle)."""
        self._check_fitted("save")
        save_model_file(path, self._model_tensors(), self._model_info())

    def to_bytes(self) -> bytes:
        """The model file's bytes (what connectors store beside a collection)."""
        from .artifact import model_to_bytes
        self._check_fitted("to_bytes")
        return model_to_bytes(self._model_tensors(), self._model_info())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BaseReducer":
        """Load a model written by :meth:`save`; refuses anything that is not one (never unpickles)."""
        tensors, info = load_model_file(path)
        return cls._from_parts(tensors, info, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "BaseReducer":
        from .artifact import model_from_bytes
        tensors, info = model_from_bytes(data, source)
        return cls._from_parts(tensors, info, source)

    @classmethod
    def _from_parts(cls, tensors: dict, info: dict, source: str) -> "BaseReducer":
        klass = MODEL_CLASSES.get(info.get("class"))
        if klass is None:
            raise ModelFormatError(f"'{source}' holds an unknown model class {info.get('class')!r}.")
        if cls is not BaseReducer and not issubclass(klass, cls):
            raise ModelFormatError(f"'{source}' holds a {klass.__name__} model, not a {cls.__name__}.")
        params = {k: v for k, v in info.get("params", {}).items()
                  if k in klass._get_param_names()}
        obj = klass(**params)
        obj._restore(tensors, info)
        return obj

    def _restore(self, tensors: dict, info: dict) -> None:
        self.components_ = np.asarray(tensors["weight"], dtype=np.float32)
        self.bias_ = np.asarray(tensors["bias"], dtype=np.float32)
        self.n_features_in_ = int(info["input_dim"])
        self.n_components_ = int(info["output_dim"])
        self.fit_info_ = info.get("fit_info", {})


TIMING_KEYS = ("seconds", "fit_seconds")


def without_timings(info: Any) -> Any:
    """``info`` without its wall-clock entries (the keys in :data:`TIMING_KEYS`, at any depth).

    The model file holds what the fit computed, not how long it took, so two fits of the same
    data with the same seed, or a fit resumed from a checkpoint and an uninterrupted one, write
    the same bytes. The timings stay on ``fit_info_`` of the fitted object (and in ``shrink``'s
    report); a loaded model has none. Cost: one walk of a small dict."""
    if isinstance(info, dict):
        return {k: without_timings(v) for k, v in info.items() if k not in TIMING_KEYS}
    if isinstance(info, (list, tuple)):
        return [without_timings(v) for v in info]
    return info


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
