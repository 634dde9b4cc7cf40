"""Codecs without training beyond per-dimension ranges: sign bits (binary quantization) and
SQ8/SQ4 (per-dimension uniform scalar quantization), as vector stores offer them.

* ``sign``: 1 bit per dimension (``x > 0``), ``d / 8`` bytes. Scores are *symmetric*: the query is
  binarised too and the score is ``<sign(q), sign(x)> = d - 2 x Hamming`` (what "binary
  quantization" means without a query-side correction). Cost: ``n_queries x n x d``.
* ``sq8`` / ``sq4``: each dimension's training ``[min, max]`` split into 256 / 16 uniform levels
  (cell centres), ``d`` / ``d / 2`` bytes; ADC scores ``<q, decode(x)>`` (exact for this decode).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec
from .rabitq import pack_levels, unpack_levels


class SignCodec(Codec):
    """Sign bits of the vectors as given (no centring, no rotation)."""

    name = "sign"

    @property
    def code_size(self) -> int:
        return self.dim // 8

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _fit(self, X: np.ndarray, seed: int) -> None:
        pass

    def _tensors(self) -> dict[str, np.ndarray]:
        return {}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        pass

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return np.packbits(X > 0, axis=1)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return np.unpackbits(codes, axis=1, count=self.dim).astype(np.float32) * 2 - 1

    def _scores(self, Q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return np.where(Q > 0, 1.0, -1.0).astype(np.float32) @ self._decode(codes).T


class SQCodec(Codec):
    """Per-dimension uniform scalar quantization with ``bits`` in {4, 8}."""

    name = "sq"

    def __init__(self, dim: int, bits: int = 8):
        super().__init__(dim)
        self.bits = int(bits)

    @property
    def code_size(self) -> int:
        return self.dim * self.bits // 8

    def config(self) -> dict[str, Any]:
        return {**super().config(), "bits": self.bits}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"vmin": (self.dim,), "vmax": (self.dim,)}

    def _fit(self, X: np.ndarray, seed: int) -> None:
        self.vmin_ = X.min(axis=0).astype(np.float32)
        self.vmax_ = X.max(axis=0).astype(np.float32)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"vmin": self.vmin_, "vmax": self.vmax_}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.vmin_ = np.ascontiguousarray(tensors["vmin"], dtype=np.float32)
        self.vmax_ = np.ascontiguousarray(tensors["vmax"], dtype=np.float32)

    def _step(self) -> np.ndarray:
        span = np.maximum(self.vmax_ - self.vmin_, np.float32(1e-30))
        return span / (1 << self.bits)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        top = (1 << self.bits) - 1
        lev = np.clip(np.floor((X - self.vmin_) / self._step()), 0, top).astype(np.uint8)
        return lev if self.bits == 8 else pack_levels(lev, self.bits)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        lev = codes if self.bits == 8 else unpack_levels(codes, self.bits, self.dim)
        return self.vmin_ + (lev.astype(np.float32) + 0.5) * self._step()
