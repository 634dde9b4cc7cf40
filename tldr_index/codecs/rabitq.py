"""RaBitQ with 1, 2 or 4 bits per dimension: our own numpy implementation of the estimator of
Gao & Long, "RaBitQ" (SIGMOD 2024) and its multi-bit extension (Gao et al., "Practical and
Asymptotically Optimal Quantization of High-Dimensional Vectors", SIGMOD 2025). Not FAISS's
``IndexRaBitQ``: its code layout (factors packed inside the code, quantized queries by default)
cannot be rebuilt from documented arrays, and this one keeps every piece a plain tensor.

Fit: the centre ``c`` (mean of the training rows) and a random orthogonal ``rotation`` P (QR of a
seeded Gaussian matrix). Encode a row x: residual ``x - c``, its norm r, the rotated unit residual
``u = P (x - c) / r``; each coordinate is rounded to the nearest odd integer of ``s u`` clipped to
``[-(2^B - 1), 2^B - 1]`` (B = 1: the sign), with the per-vector scale s picked from a grid of
``n_scales`` values to maximise ``cos(o, u)``. The code holds the B-bit levels (``d x B / 8``
bytes) and one float32 per-vector factor ``f = r / <o, u>`` (4 bytes).

Estimator of ``<q, x>`` for a float query q (no query quantization):
``<q, c> + f <P q, o>``; it is the RaBitQ estimator ``<q, c> + r <P q, o_hat> / <o_hat, u>``
(``o_hat = o / ||o||``), unbiased in expectation over the rotation. :meth:`decode` returns
``c + f P^T o``: the vector whose inner product with every query is that estimate (its norm is
inflated by ``1 / cos(o, u)``; it is not a least-squares reconstruction).

Cost: fit ``d^3`` (the QR); encode ``n x d^2`` (rotation) ``+ n x d x n_scales`` (scale search,
B > 1); scores ``n_queries x n x d`` multiply-adds (unpacked levels, block by block).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Codec

BITS = (1, 2, 4)
FACTOR_BYTES = 4  # one float32 per vector


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A ``(dim, dim)`` float32 orthogonal matrix, Haar-distributed (QR with sign fix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return np.ascontiguousarray((q * np.sign(np.diag(r))).T, dtype=np.float32)


def pack_levels(levels: np.ndarray, bits: int) -> np.ndarray:
    """``(n, d)`` ints in ``[0, 2^bits)`` -> ``(n, d x bits / 8)`` uint8 (little-endian in a byte)."""
    per = 8 // bits
    g = levels.astype(np.uint8).reshape(len(levels), -1, per)
    shifts = (bits * np.arange(per, dtype=np.uint8))
    return np.bitwise_or.reduce(g << shifts, axis=2).astype(np.uint8)


def unpack_levels(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_levels`: ``(n, dim)`` uint8 levels."""
    per = 8 // bits
    shifts = (bits * np.arange(per, dtype=np.uint8))
    out = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return out.reshape(len(packed), dim)


class RaBitQCodec(Codec):
    """RaBitQ at ``bits`` per dimension plus a 4-byte per-vector factor."""

    name = "rabitq"

    def __init__(self, dim: int, bits: int = 1, n_scales: int = 24):
        super().__init__(dim)
        self.bits, self.n_scales = int(bits), int(n_scales)

    @property
    def code_size(self) -> int:
        return self.dim * self.bits // 8 + FACTOR_BYTES

    def config(self) -> dict[str, Any]:
        return {**super().config(), "bits": self.bits, "n_scales": self.n_scales}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {"center": (self.dim,), "rotation": (self.dim, self.dim)}

    def _fit(self, X: np.ndarray, seed: int) -> None:
        self.center_ = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.rotation_ = random_rotation(self.dim, seed)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"center": self.center_, "rotation": self.rotation_}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.center_ = np.ascontiguousarray(tensors["center"], dtype=np.float32)
        self.rotation_ = np.ascontiguousarray(tensors["rotation"], dtype=np.float32)

    # -- quantization of the rotated unit residuals -------------------------------------------
    def quantize_unit(self, u: np.ndarray) -> np.ndarray:
        """Levels ``(n, d)`` in ``[0, 2^bits)`` of unit rows ``u`` (odd-integer grid ``2 l - L``,
        ``L = 2^bits - 1``) maximising ``cos(2 l - L, u)`` over the scale grid."""
        B = self.bits
        top = (1 << B) - 1
        if B == 1:
            return (u >= 0).astype(np.uint8)
        amax = np.maximum(np.abs(u).max(axis=1, keepdims=True), 1e-30)
        best = np.zeros(u.shape, dtype=np.uint8)
        best_cos = np.full((len(u), 1), -np.inf, dtype=np.float32)
        for t in np.linspace(0.3, 1.6, self.n_scales, dtype=np.float32):
            y = u * (t * top / amax)
            lev = np.clip(np.floor(y / 2) + (1 << (B - 1)), 0, top)
            o = 2 * lev - top
            cos = (o * u).sum(axis=1, keepdims=True) / np.linalg.norm(o, axis=1, keepdims=True)
            better = cos > best_cos
            best = np.where(better, lev.astype(np.uint8), best)
            best_cos = np.where(better, cos, best_cos)
        return best

    def _encode(self, X: np.ndarray) -> np.ndarray:
        R = X - self.center_
        r = np.linalg.norm(R, axis=1, keepdims=True)
        u = np.divide(R @ self.rotation_.T, r, out=np.zeros_like(R), where=r > 0)
        lev = self.quantize_unit(u)
        o = 2.0 * lev.astype(np.float32) - ((1 << self.bits) - 1)
        dot = (o * u).sum(axis=1, keepdims=True)
        f = np.divide(r, dot, out=np.zeros_like(r), where=dot > 0).astype(np.float32)
        return np.concatenate([pack_levels(lev, self.bits), f.view(np.uint8)], axis=1)

    def split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(levels (n, d) uint8, factors (n,) float32)`` of packed codes."""
        nb = self.dim * self.bits // 8
        lev = unpack_levels(codes[:, :nb], self.bits, self.dim)
        f = np.ascontiguousarray(codes[:, nb:]).view(np.float32)[:, 0]
        return lev, f

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        lev, f = self.split(codes)
        o = 2.0 * lev.astype(np.float32) - ((1 << self.bits) - 1)
        return self.center_ + (f[:, None] * o) @ self.rotation_

    def _scores(self, Q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # <q,c> + f (2 <Pq, l> - L sum(Pq)): the levels are multiplied as small integers
        lev, f = self.split(codes)
        Qr = Q @ self.rotation_.T
        top = (1 << self.bits) - 1
        dots = 2.0 * (Qr @ lev.astype(np.float32).T) - top * Qr.sum(axis=1, keepdims=True)
        return (Q @ self.center_)[:, None] + dots * f[None, :]
