"""Large benchmark corpora whose rows are not copies: each row lies between a corpus row and
one of its true neighbours, plus a little noise, then normalised.

The tiled corpus (25 noisy copies of each row) makes recall at 1M meaningless: a query's top-10
are the copies of one row. Here row ``r`` is ``normalise((1 - t) x_i + t x_j + sigma g)`` with
``i`` a uniformly drawn database row, ``j`` one of ``i``'s ``neighbors`` exact nearest rows (cosine),
``t ~ U(0, 1)`` and ``g`` standard normal noise: the new rows fill the corpus's own neighbourhoods,
so neighbours at 1M are as varied as the corpus allows. Queries stay the corpus's held-out query
rows (never used to build the database).

>>> X = interpolated(1_000_000)            # doctest: +SKIP  (cached float32 memmap, unit rows)

Cost: one exact kNN of the base database (``n^2 D`` multiply-adds, seconds at 40k) and
``rows x D`` work to generate; the result is cached in ``benchmarks/_cache`` (``rows x D x 4`` bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks._corpus import CACHE_ROOT, corpus_tag, load_corpus

#: noise std per coordinate (unit rows of 384 dims have coordinates of std ~0.05)
SIGMA = 0.01
GEN_BLOCK = 65_536


def base_neighbors(db: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` exact cosine top-``k`` of each row of ``db`` among the others (self excluded)."""
    t = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(db)), dim=1)
    out = []
    for s in range(0, len(t), 2048):
        sim = t[s:s + 2048] @ t.T
        sim[torch.arange(len(sim)), torch.arange(s, s + len(sim))] = -2.0
        out.append(torch.topk(sim, k, dim=1).indices)
    return torch.cat(out).numpy()


def generate(db: np.ndarray, rows: int, *, neighbors: int = 10, sigma: float = SIGMA,
             seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """``rows`` interpolated unit rows (see the module docstring) into ``out`` (or a new array).
    The first ``len(db)`` rows are the database rows themselves (normalised)."""
    rng = np.random.default_rng(seed)
    nb = base_neighbors(db, neighbors)
    unit = db / np.linalg.norm(db, axis=1, keepdims=True)
    out = np.empty((rows, db.shape[1]), dtype=np.float32) if out is None else out
    first = min(rows, len(db))
    out[:first] = unit[:first]
    for s in range(first, rows, GEN_BLOCK):
        m = min(GEN_BLOCK, rows - s)
        i = rng.integers(0, len(db), m)
        j = nb[i, rng.integers(0, neighbors, m)]
        t = rng.random((m, 1), dtype=np.float32)
        x = (1 - t) * unit[i] + t * unit[j] + sigma * rng.standard_normal((m, db.shape[1]),
                                                                             dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def interpolated(rows: int, *, sigma: float = SIGMA, seed: int = 0) -> np.ndarray:
    """The selected corpus's database grown to ``rows`` interpolated rows, as a read-only float32
    memmap cached under ``benchmarks/_cache`` (built on first use)."""
    db, _, _, _ = load_corpus()
    path = Path(CACHE_ROOT) / f"interp_{rows}_s{sigma}_seed{seed}{corpus_tag()}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                       shape=(rows, db.shape[1]))
        generate(db, rows, sigma=sigma, seed=seed, out=mm)
        mm.flush()
        del mm
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def queries() -> np.ndarray:
    """The selected corpus's held-out query rows (never part of an interpolated database)."""
    return load_corpus()[1]
