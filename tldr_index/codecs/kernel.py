"""One search kernel for every codec and metric: top-``k`` rows of a code array for float
queries, as ``(distances lower-is-better, row positions)``.

The queries must be prepared as the codes were (L2-normalised for ``cosine``, as
:meth:`tldr_index.compact.CompactModel.prepare` does). Per metric:

* ``cosine``: ``1 - <q, x_hat>``; ``ip``: ``-<q, x_hat>`` (the codec's inner-product search);
* ``l2``: ``||q||^2 - 2 <q, x_hat> + ||x_hat||^2``, with ``||x_hat||^2`` computed from the codes
  (decoded block by block, cached per code array while it lives) -- except PQ, which keeps
  FAISS's L2 lookup tables (``IndexPQ`` with ``METRIC_L2``), so targets written before the codec
  library give identical results.

Memory: codecs that score by decoding (RaBitQ, SQ, sign, and every codec under ``l2`` but PQ)
score queries in blocks of at most ``SCORE_FLOATS / n`` (and 256) queries, so a block holds at
most ``SCORE_FLOATS`` float32 scores (128 MiB) whatever the number of rows n (at 1M rows:
32 queries per block, each block decoding the codes once more). FAISS lookup-table codecs
(PQ, OPQ, RQ) search 1,024 queries per call. Cost: ``n_queries x n x code_size`` lookups (FAISS
codecs) or ``n_queries x n x d`` multiply-adds plus one decode of the codes per query block.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import InvalidParameterError
from ..quantizer import ProductQuantizer
from .base import QUERY_BLOCK, SCORE_BLOCK_ROWS, Codec, check_codes, top_k

METRICS = ("cosine", "ip", "l2")
#: Float32 scores held at once by the decoding search (``query block x n``): 2^25 = 128 MiB.
SCORE_FLOATS = 1 << 25
#: Queries per call for codecs with FAISS lookup tables (their memory is ``block x k``).
TABLE_QUERY_BLOCK = 1024

#: id(codes) -> (weak ref to codes, weak ref to codec, norms); at most NORM_CACHE entries.
_NORMS: dict[int, tuple] = {}
NORM_CACHE = 8


def query_block(n: int) -> int:
    """Queries scored at once against ``n`` rows by the decoding search (see module doc)."""
    return int(max(1, min(QUERY_BLOCK, SCORE_FLOATS // max(n, 1))))


def decoded_sq_norms(codec: Codec, codes: np.ndarray) -> np.ndarray:
    """``||decode(code)||^2`` of every row (float32, ``(n,)``), decoded ``SCORE_BLOCK_ROWS``
    rows at a time and cached while ``codes`` lives. Cost: one decode of the codes."""
    hit = _NORMS.get(id(codes))
    if hit is not None and hit[0]() is codes and hit[1]() is codec:
        return hit[2]
    out = np.empty(len(codes), dtype=np.float32)
    for s in range(0, len(codes), SCORE_BLOCK_ROWS):
        x = codec.decode(codes[s:s + SCORE_BLOCK_ROWS]).astype(np.float64)
        out[s:s + len(x)] = np.einsum("nd,nd->n", x, x)
    key = id(codes)
    try:
        ref = weakref.ref(codes, lambda _r, key=key: _NORMS.pop(key, None))
        cref = weakref.ref(codec)
    except TypeError:  # not weak-referenceable: no cache
        return out
    while len(_NORMS) >= NORM_CACHE:
        _NORMS.pop(next(iter(_NORMS)), None)
    _NORMS[key] = (ref, cref, out)
    return out


def uses_tables(codec: Codec) -> bool:
    """True when ``codec`` searches with FAISS lookup tables (its own ``search``)."""
    return type(codec).search is not Codec.search


def codec_topk(codec: Codec, metric: str, codes: np.ndarray, Y: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``codes`` for prepared float queries ``Y`` ``(n_queries, d)``:
    ``(distances (n_queries, k') float32 lower-is-better, positions (n_queries, k') int64)``,
    ``k' = min(k, n)``, best first. See the module docstring for the distances and the cost."""
    if metric not in METRICS:
        raise InvalidParameterError(f"The 'metric' parameter of codec_topk must be one of "
                                    f"{', '.join(METRICS)}. Got {metric!r} instead.")
    codes = check_codes(codes, codec.code_size, "codec_topk")
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    n, kk = len(codes), min(k, len(codes))
    D = np.empty((len(Y), kk), dtype=np.float32)
    I = np.empty((len(Y), kk), dtype=np.int64)
    if kk == 0:
        return D, I
    if metric == "l2" and codec.name == "pq":
        pq = ProductQuantizer.from_centroids(codec.state()[0]["centroids"], metric="l2")
        index = pq.index(codes)
        for s in range(0, len(Y), TABLE_QUERY_BLOCK):
            D[s:s + TABLE_QUERY_BLOCK], I[s:s + TABLE_QUERY_BLOCK] = \
                index.search(Y[s:s + TABLE_QUERY_BLOCK], kk)
        return D, I
    if metric != "l2":
        step = TABLE_QUERY_BLOCK if uses_tables(codec) else query_block(n)
        for s in range(0, len(Y), step):
            sc, ids = codec.search(Y[s:s + step], codes, kk)
            D[s:s + step] = (1.0 - sc) if metric == "cosine" else -sc
            I[s:s + step] = ids
        return D, I
    norms = decoded_sq_norms(codec, codes)
    step = query_block(n)
    for s in range(0, len(Y), step):
        q = Y[s:s + step]
        val, ids = top_k(2.0 * codec.scores(q, codes) - norms[None, :], kk)
        qn = np.einsum("nd,nd->n", q.astype(np.float64), q.astype(np.float64))
        D[s:s + step] = qn[:, None] - val
        I[s:s + step] = ids
    return D, I


__all__ = ["codec_topk", "decoded_sq_norms", "query_block", "SCORE_FLOATS"]
