"""Search the rows of a collection through a fitted map and each candidate codec, for the
selection (:mod:`tldr_index.shrink.select`): the candidates' row positions for held-out queries.

Every codec is trained on the same training rows mapped and prepared (L2-normalised for cosine),
encodes every scanned row block by block, and is searched with the product's own kernel
(:func:`tldr_index.codecs.codec_topk`, as ``search`` does), so what the selection measures is
what the chosen target returns.

Cost per (map, codec): the codec's training, one pass over the rows (map + encode) and the
search (``n_queries x N x code_bytes`` lookups or ``x d`` multiply-adds); memory: the codes
(``N x code_bytes``) and one block of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..codecs import Codec, codec_topk, get_codec
from ..compact import prepare_rows
from ..comparisons import MappedVectors, reduced_search, topk_excluding
from ..threads import run_in_worker

CHUNK_ROWS = 16_384


def codec_candidates(transform: Callable[[np.ndarray], np.ndarray], dim: int, scan,
                     train: np.ndarray, queries: np.ndarray, k: int, *, metric: str,
                     codecs: Sequence[tuple[str, int]], exclude: np.ndarray,
                     random_state: int = 0,
                     trained: Mapping[tuple[str, int], Codec] | None = None) -> dict:
    """``{"float": positions, (codec, bytes): positions, ...}`` (each ``(n_queries, k)``, best
    first, the query's own row excluded): exact search of the mapped float vectors and, for each
    ``(codec, bytes)`` of ``codecs`` (``bytes`` 0: skipped), the codec trained on
    ``transform(train)``, or the fitted one ``trained`` holds for it (the codebooks QAT trained:
    no training, as the encode stage). See the module docstring for the cost."""
    out = reduced_search(transform, dim, scan, train, queries, k, metric=metric,
                         exclude=exclude, random_state=random_state)
    specs = [(c, b) for c, b in codecs if b]
    if not specs:
        return out
    Ztrain = prepare_rows(transform(train), metric)
    Yq = prepare_rows(transform(queries), metric)
    mapped = MappedVectors(scan, transform, dim)
    for name, size in specs:
        codec = (trained or {}).get((name, size))
        if codec is None:
            codec = get_codec(name, dim, bytes=size)
            run_in_worker(codec.fit, Ztrain, random_state, name="pq-train")
        codes = np.empty((mapped.n_rows, codec.code_size), dtype=np.uint8)
        for start, block in mapped.iter_chunks(CHUNK_ROWS):
            codes[start:start + len(block)] = codec.encode(prepare_rows(block, metric))
        out[(name, size)] = topk_excluding(
            lambda kk, c=codec, x=codes: codec_topk(c, metric, x, Yq, kk)[1], k, exclude)
    return out


__all__ = ["codec_candidates"]
