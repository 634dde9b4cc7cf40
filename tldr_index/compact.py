"""The compact model stored beside a shrunk collection: the folded linear map and the codec.

One safetensors file (see :mod:`tldr_index.artifact`; never pickle) holding

* ``weight`` (d x D float32) and ``bias`` (d,): ``encode(x) = x @ weight.T + bias``;
* ``codec.<tensor>``: the fitted codec's tensors (:meth:`tldr_index.codecs.Codec.state`, e.g.
  ``codec.centroids`` for PQ), absent when the target stores no codes;

and in its JSON ``info`` the reducer's own info (``class``, ``method``, ``params``, ``fit_info``...,
so :func:`tldr_index.load_model` reads the file as a plain TLDR / PCA model too) plus ``compact``:
metric, ``codec`` (the codec config, None without codes), ``code_bytes`` (and ``pq_bytes``, the
same number under its old name), dims, and the source it was fitted on (URI and fingerprint).

Files written before the codec library (tensor ``pq_centroids``, info ``pq_bytes``) load as a
``pq`` codec with the same codebook: same codes, same search results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .artifact import model_from_bytes, model_to_bytes
from .codecs import Codec, PQCodec, codec_from_state, codec_topk
from .errors import InvalidInputError, ModelFormatError
from .linear import linear_map
from .quantizer import normalize_rows

CODEC_PREFIX = "codec."


def prepare_rows(Y: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as codecs see them: L2-normalised rows for ``cosine``, unchanged (float32)
    otherwise. Cost: O(n x d)."""
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    return normalize_rows(Y) if metric == "cosine" else Y


@dataclass
class CompactModel:
    """A linear map ``R^D -> R^d`` plus an optional fitted codec over the reduced space (fitted
    on :meth:`prepare`-d vectors: L2-normalised for cosine)."""

    weight: np.ndarray                     # (d, D) float32
    bias: np.ndarray                       # (d,) float32
    metric: str                            # the source's distance: "cosine", "l2" or "ip"
    codec: Codec | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def code_bytes(self) -> int:
        """Bytes of codes per row (0: the target stores no codes)."""
        return 0 if self.codec is None else int(self.codec.code_size)

    @property
    def pq_bytes(self) -> int:
        """Old name of :attr:`code_bytes` (kept for compatibility, whatever the codec)."""
        return self.code_bytes

    @property
    def codec_name(self) -> str | None:
        """``"pq"``, ``"opq"``, ``"rq"``, ``"rabitq"``..., or None without codes."""
        return None if self.codec is None else self.codec.name

    @property
    def method(self) -> str:
        return str(self.info.get("method", "unknown"))

    @classmethod
    def from_reducer(cls, reducer: Any, metric: str, codec: Codec | None = None,
                     extra: dict | None = None) -> "CompactModel":
        """Wrap a fitted linear reducer (TLDR with a foldable encoder, PCA or the identity) and
        the codec fitted on its prepared output."""
        tensors = reducer._model_tensors()
        if "weight" not in tensors:
            raise InvalidInputError(
                f"The reducer must be linear (a foldable encoder) to build a compact model. Got "
                f"{type(reducer).__name__} with tensors {sorted(tensors)}.")
        info = reducer._model_info()
        if codec is not None and not isinstance(codec, Codec):
            raise InvalidInputError(
                f"The 'codec' parameter of CompactModel.from_reducer must be a fitted "
                f"tldr_index.codecs.Codec (e.g. get_codec('pq', d, bytes=16).fit(Z)) or None. "
                f"Got {type(codec).__name__} instead.")
        size = 0 if codec is None else int(codec.code_size)
        info["compact"] = {"metric": metric, "codec": None if codec is None else codec.config(),
                           "code_bytes": size, "pq_bytes": size, **(extra or {})}
        return cls(np.asarray(tensors["weight"], dtype=np.float32),
                   np.asarray(tensors["bias"], dtype=np.float32), metric, codec, info)

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
        return linear_map(X, self.weight, self.bias)

    def prepare(self, Y: np.ndarray) -> np.ndarray:
        """Reduced vectors as searched: L2-normalised for cosine, unchanged otherwise."""
        return prepare_rows(Y, self.metric)

    def require_codec(self) -> Codec:
        if self.codec is None:
            raise ModelFormatError("This compact model holds no codec (code_bytes=0): its "
                                   "target stores no codes.")
        return self.codec

    def encode_codes(self, Y: np.ndarray) -> np.ndarray:
        """``(n, code_bytes)`` uint8 codes of reduced vectors ``Y`` (prepared first). Cost: the
        codec's encoding (PQ: ``n x 256 x d``; RQ: its beam search, 10-100x PQ's)."""
        return self.require_codec().encode(self.prepare(Y))

    def topk(self, codes: np.ndarray, Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``codes`` for reduced (not yet prepared) queries ``Y``:
        ``(distances lower-is-better, row positions)``, by
        :func:`tldr_index.codecs.codec_topk` (see there for the cost and memory)."""
        return codec_topk(self.require_codec(), self.metric, codes, self.prepare(Y), k)

    # -- bytes -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The safetensors file; ``info["compact"]`` is brought up to date with the codec (an
        old-format model read and written again is stored in the current format)."""
        info = dict(self.info)
        size = self.code_bytes
        info["compact"] = {**info.get("compact", {}), "metric": self.metric,
                           "codec": None if self.codec is None else self.codec.config(),
                           "code_bytes": size, "pq_bytes": size}
        return model_to_bytes(self.tensors(), info)

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
        d = int(tensors["weight"].shape[0])
        codec = None
        cent = tensors.get("pq_centroids")  # the format before the codec library
        if cent is not None:
            if cent.ndim != 3 or cent.shape[1] != 256 or cent.shape[0] * cent.shape[2] != d:
                raise ModelFormatError(
                    f"'{source}' is a corrupt compact model: PQ codebook of shape {cent.shape} "
                    f"does not fit reduced vectors of dimension {d}.")
            codec = PQCodec.from_state({"centroids": cent},
                                       {"codec": "pq", "dim": d, "n_bytes": int(cent.shape[0])})
        elif compact.get("codec") is not None:
            cfg = compact["codec"]
            sub = {k[len(CODEC_PREFIX):]: v for k, v in tensors.items()
                   if k.startswith(CODEC_PREFIX)}
            try:
                codec = codec_from_state(sub, cfg)
            except ModelFormatError as exc:
                raise ModelFormatError(f"'{source}' is a corrupt compact model: {exc}") from None
            except (TypeError, ValueError) as exc:
                raise ModelFormatError(f"'{source}' is a corrupt compact model: codec config "
                                       f"{cfg!r} ({exc}).") from None
            if codec.dim != d:
                raise ModelFormatError(
                    f"'{source}' is a corrupt compact model: its codec is for {codec.dim}-d "
                    f"vectors, not the reduced dimension {d}.")
        return cls(tensors["weight"], tensors["bias"], compact["metric"], codec, info)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias}
        if self.codec is not None:
            t, _ = self.codec.state()
            out.update({CODEC_PREFIX + k: v for k, v in t.items()})
        return out
