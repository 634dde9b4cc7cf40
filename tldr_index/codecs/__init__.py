"""Vector codecs behind one interface (:class:`Codec`): ``pq``, ``opq``, ``rq``, ``rabitq``,
``sign``, ``sq8``, ``sq4``. Pick one with :func:`get_codec`, rebuild a stored one with
:func:`codec_from_state`.

>>> c = get_codec("rq", 64, bytes=16).fit(Z, seed=0)       # doctest: +SKIP
>>> codes = c.encode(Z); D, I = c.search(queries, codes, 10)   # doctest: +SKIP
>>> tensors, cfg = c.state(); same = codec_from_state(tensors, cfg)   # doctest: +SKIP

Byte budgets (``bytes`` = ``code_size``, everything a row stores):

===========  =============================================  ==========================
codec        bytes per vector                               rule on d
===========  =============================================  ==========================
pq, opq      M (sub-quantizers of 256 centroids)            M divides d
rq           M (residual codebooks of 256 centroids)        1 <= M <= d
rabitq       d x bits / 8 + 4 (float32 factor)              d x bits a multiple of 8
sign         d / 8                                          d a multiple of 8
sq8, sq4     d, d / 2                                       sq4: d even
===========  =============================================  ==========================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..validation import check_choice, check_int
from ..errors import InvalidParameterError, ModelFormatError
from .base import Codec, top_k
from .pq import OPQCodec, PQCodec
from .rabitq import BITS, FACTOR_BYTES, RaBitQCodec
from .rq import RQCodec
from .scalar import SignCodec, SQCodec
from .kernel import codec_topk, decoded_sq_norms

CODECS = ("pq", "opq", "rq", "rabitq", "sign", "sq8", "sq4")
_CLASSES: dict[str, type[Codec]] = {c.name: c for c in (PQCodec, OPQCodec, RQCodec, RaBitQCodec,
                                                        SignCodec, SQCodec)}


def feasible_bytes(name: str, dim: int) -> list[int]:
    """Every code size (bytes per vector) codec ``name`` can have at dimension ``dim``."""
    if name in ("pq", "opq"):
        return [m for m in range(1, dim + 1) if dim % m == 0]
    if name == "rq":
        return list(range(1, dim + 1))
    if name == "rabitq":
        return [dim * b // 8 + FACTOR_BYTES for b in BITS if dim * b % 8 == 0]
    if name == "sign":
        return [dim // 8] if dim % 8 == 0 else []
    if name == "sq8":
        return [dim]
    if name == "sq4":
        return [dim // 2] if dim % 2 == 0 else []
    raise AssertionError(name)


def _nearest(value: int, options: list[int]) -> str:
    below = [o for o in options if o < value]
    above = [o for o in options if o > value]
    near = ([max(below)] if below else []) + ([min(above)] if above else [])
    return " and ".join(str(o) for o in near) if near else "none"


def get_codec(name: str, dim: int, *, bytes: int | None = None, bits: int | None = None,  # noqa: A002
              **options: Any) -> Codec:
    """An unfitted codec ``name`` for ``dim``-d vectors at ``bytes`` per vector.

    ``bytes`` is required for pq/opq/rq; for rabitq give ``bits`` (1, 2 or 4) or the matching
    ``bytes``; sign/sq8/sq4 have one size each (``bytes``, if given, must equal it). ``options``
    go to the codec class (e.g. ``beam`` for rq). Every invalid combination raises one
    :class:`~tldr_index.errors.InvalidParameterError` naming the parameter, rule and value.
    """
    o = "get_codec"
    check_choice(name, "name", CODECS, owner=o)
    dim = check_int(dim, "dim", low=1, owner=o)
    bytes = check_int(bytes, "bytes", low=1, owner=o, allow_none=True)  # noqa: A001
    if bits is not None and name != "rabitq":
        raise InvalidParameterError(f"The 'bits' parameter of {o} only applies to codec "
                                    f"'rabitq' (codec {name!r} has a fixed code layout). Got "
                                    f"{bits!r} instead.")
    feas = feasible_bytes(name, dim)
    owner = f"{o}({name!r}, dim={dim})"
    if name == "rabitq":
        if bits is not None:
            check_choice(bits, "bits", BITS, owner=o)
            if dim * bits % 8:
                raise InvalidParameterError(
                    f"The 'bits' parameter of {owner} must give whole bytes per code (dim x bits "
                    f"a multiple of 8). Got {bits} instead ({dim} x {bits} = {dim * bits} bits).")
            size = dim * bits // 8 + FACTOR_BYTES
            if bytes is not None and bytes != size:
                raise InvalidParameterError(
                    f"The 'bytes' parameter of {owner} must be {size} with bits={bits} (dim x "
                    f"bits / 8 + {FACTOR_BYTES} bytes of per-vector factor). Got {bytes} instead.")
        elif bytes is None:
            raise InvalidParameterError(f"The 'bits' parameter of {owner} must be one of 1, 2, 4 "
                                        f"when 'bytes' is not given. Got None instead.")
        else:
            if bytes not in feas:
                raise _budget_error(owner, "dim x bits / 8 + 4 with bits in 1, 2, 4", bytes, feas)
            bits = next(b for b in BITS if dim * b // 8 + FACTOR_BYTES == bytes
                        and dim * b % 8 == 0)
        return RaBitQCodec(dim, bits=bits, **options)
    if name in ("sign", "sq4") and not feas:
        rule = "a multiple of 8 (one bit per dimension)" if name == "sign" else \
            "even (two 4-bit levels per byte)"
        raise InvalidParameterError(f"The 'dim' parameter of {o}({name!r}) must be {rule}. Got "
                                    f"{dim} instead.")
    if name in ("sign", "sq8", "sq4"):
        if bytes is not None and bytes != feas[0]:
            raise _budget_error(owner, f"the codec's fixed size {feas[0]}", bytes, feas)
        if name == "sign":
            return SignCodec(dim, **options)
        return SQCodec(dim, bits=8 if name == "sq8" else 4, **options)
    if bytes is None:
        raise InvalidParameterError(f"The 'bytes' parameter of {owner} must be an int (code "
                                    f"bytes per vector). Got None instead.")
    if bytes not in feas:
        rule = "a divisor of the dimension (one sub-quantizer of 256 centroids per byte)" \
            if name in ("pq", "opq") else "at most the dimension (one codebook per byte)"
        raise _budget_error(owner, rule, bytes, feas)
    return _CLASSES[name](dim, n_bytes=bytes, **options)


def _budget_error(owner: str, rule: str, value: int, feas: list[int]) -> InvalidParameterError:
    return InvalidParameterError(
        f"The 'bytes' parameter of {owner} must be {rule}. Got {value} instead; the nearest "
        f"feasible budgets are {_nearest(value, feas)}.")


def codec_from_state(tensors: dict[str, np.ndarray], config: dict[str, Any]) -> Codec:
    """Rebuild a fitted codec from :meth:`Codec.state` (no training, no pickle)."""
    name = config.get("codec") if isinstance(config, dict) else None
    if name not in _CLASSES:
        raise ModelFormatError(f"The stored codec config must name one of "
                               f"{', '.join(repr(c) for c in _CLASSES)} under 'codec'. "
                               f"Got {name!r} instead.")
    return _CLASSES[name].from_state(tensors, config)


__all__ = ["CODECS", "Codec", "PQCodec", "OPQCodec", "RQCodec", "RaBitQCodec", "SignCodec",
           "SQCodec", "get_codec", "codec_from_state", "feasible_bytes", "top_k", "codec_topk",
           "decoded_sq_norms"]
