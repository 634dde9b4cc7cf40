"""The codec and byte budget of ``shrink`` and ``sweep``: which codec, how many code bytes per
row (``bytes``, alias ``pq_bytes``) and, for RaBitQ, how many bits per dimension, checked against
the reduced dimension d before anything runs.

==========  ==============================================  ===================================
codec       code bytes per row                              rule on d
==========  ==============================================  ===================================
pq, opq     M sub-quantizers of 256 centroids               M divides d
rq          M residual codebooks of 256 centroids           1 <= M <= d
rabitq      d x bits / 8 + 4 (a float32 factor per row)     d x bits a multiple of 8
==========  ==============================================  ===================================

``bytes=0`` stores no codes (the reduced float vectors are searched instead). The default codec
is :data:`DEFAULT_CODEC`, RQ at beam 5 (:class:`tldr_index.codecs.RQCodec`): at the default
budget (d=64, 16 B) it keeps more neighbours than PQ on the dev corpus (recall@10 0.590 vs
0.539 raw, 0.962 vs 0.942 after re-ranking 100, ``benchmarks/results/frontier_rq14.md``) for an
encoding cost that stays within the 1M-rows-in-60-s budget (``benchmarks/results/rq_encode.md``).
"""

from __future__ import annotations

from ..codecs import feasible_bytes
from ..codecs.rabitq import BITS, FACTOR_BYTES
from ..errors import InvalidParameterError
from ..validation import check_choice, check_int

#: The codecs ``shrink`` writes.
CODECS = ("pq", "opq", "rq", "rabitq")
#: The default codec: RQ (residual quantization, beam 5), the one that wins recall per byte at the
#: default budget in benchmarks/frontier.py (see the module docstring for the figures).
DEFAULT_CODEC = "rq"
#: Default code bytes per row (the paper's setting), or the nearest feasible size below it.
DEFAULT_BYTES = 16
#: RaBitQ's default bits per dimension when neither ``bits`` nor ``bytes`` is given.
DEFAULT_BITS = 1

RULES = {"pq": "a divisor of d (one sub-quantizer of 256 centroids per byte)",
         "opq": "a divisor of d (one sub-quantizer of 256 centroids per byte)",
         "rq": "in the range [1, d] (one residual codebook of 256 centroids per byte)",
         "rabitq": f"d x bits / 8 + {FACTOR_BYTES} with bits in 1, 2, 4 (d x bits a multiple of 8)"}


def default_pq_bytes(dim: int) -> int:
    """16 bytes (the paper's setting) or the largest divisor of ``dim`` below it."""
    return max(m for m in range(1, min(DEFAULT_BYTES, dim) + 1) if dim % m == 0)


def resolve_bytes(bytes_: object, pq_bytes: object, owner: str) -> object:
    """``bytes`` or its alias ``pq_bytes`` (equal when both are given)."""
    if bytes_ is not None and pq_bytes is not None and bytes_ != pq_bytes:
        raise InvalidParameterError(
            f"The 'bytes' parameter of {owner} and its alias 'pq_bytes' must agree when both are "
            f"given. Got bytes={bytes_!r} and pq_bytes={pq_bytes!r} instead.")
    return bytes_ if bytes_ is not None else pq_bytes


def check_codec_args(codec: str, bits: int | None, owner: str) -> None:
    """The codec is one of :data:`CODECS`; ``bits`` is 1, 2 or 4 and given only with rabitq."""
    check_choice(codec, "codec", CODECS, owner=owner)
    if bits is None:
        return
    check_choice(bits, "bits", BITS, owner=owner)
    if codec != "rabitq":
        raise InvalidParameterError(
            f"The 'bits' parameter of {owner} only applies to codec='rabitq' (codec {codec!r} "
            f"has 8-bit codes). Got {bits!r} instead.")


def nearest(value: int, options: list[int]) -> str:
    below = [o for o in options if o < value]
    above = [o for o in options if o > value]
    near = ([max(below)] if below else []) + ([min(above)] if above else [])
    return " and ".join(str(o) for o in near) if near else "none"


def code_bytes(codec: str, dim: int, bytes_: int | None, bits: int | None, owner: str,
               *, warn=None) -> int:
    """The code bytes per row of ``codec`` at dimension ``dim``: ``bytes_`` checked against the
    codec's rule, or the default (PQ/OPQ: :func:`default_pq_bytes`; RQ: ``min(16, d)``; RaBitQ:
    from ``bits``, default :data:`DEFAULT_BITS`). 0 means no codes. Raises one
    :class:`InvalidParameterError` naming ``bytes`` (``--bytes``) or ``bits``, the rule, the value
    and the nearest feasible budgets for this d. ``warn(msg)``: told when a default budget is not
    16 bytes."""
    check_codec_args(codec, bits, owner)
    if bytes_ is not None:
        bytes_ = check_int(bytes_, "bytes", low=0, owner=owner)
        if bytes_ == 0:
            return 0
    if codec == "rabitq":
        if bits is not None:
            if dim * bits % 8:
                raise InvalidParameterError(
                    f"The 'bits' parameter of {owner} must give whole bytes per code with "
                    f"codec='rabitq' (d x bits a multiple of 8). Got {bits} instead (d={dim}: "
                    f"{dim} x {bits} = {dim * bits} bits).")
            size = dim * bits // 8 + FACTOR_BYTES
            if bytes_ is not None and bytes_ != size:
                raise InvalidParameterError(
                    f"The 'bytes' parameter of {owner} (--bytes) must be {size} with "
                    f"codec='rabitq' and bits={bits} at d={dim} (d x bits / 8 + {FACTOR_BYTES} "
                    f"bytes of per-vector factor). Got {bytes_} instead.")
            return size
        if bytes_ is None:
            return code_bytes(codec, dim, None, DEFAULT_BITS, owner)
    feas = feasible_bytes(codec, dim)
    if bytes_ is None:
        size = default_pq_bytes(dim) if codec in ("pq", "opq") else min(DEFAULT_BYTES, dim)
        if size != DEFAULT_BYTES and warn is not None:
            warn(size)
        return size
    if bytes_ not in feas:
        raise InvalidParameterError(
            f"The 'bytes' parameter of {owner} (--bytes) must be {RULES[codec]} for "
            f"codec={codec!r} at d={dim}. Got {bytes_} instead; the nearest feasible budgets "
            f"are {nearest(bytes_, feas)}.")
    return bytes_


def codec_fits(codec: str, dim: int, bytes_: int) -> bool:
    """True when ``codec`` can take exactly ``bytes_`` code bytes at dimension ``dim``."""
    return bytes_ in feasible_bytes(codec, dim)


def needs_kmeans(codecs) -> bool:
    """True when one of ``codecs`` trains 256-centroid codebooks (PQ, OPQ, RQ)."""
    return any(c in ("pq", "opq", "rq") for c in codecs)


__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_BYTES", "DEFAULT_BITS", "code_bytes",
           "codec_fits", "check_codec_args", "default_pq_bytes", "needs_kmeans",
           "resolve_bytes"]
