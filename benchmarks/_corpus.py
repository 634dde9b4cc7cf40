"""Shared benchmark helpers: the shared corpus, exact ground truth, recall and label accuracy."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

SHARED = Path(os.environ.get("TLDR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
#: the 40,000-row shared corpus the recorded results used; not part of a clone (pass it as --corpus)
SHARED_CORPUS = SHARED / "data" / "pydoc-minilm.npz"
#: what every benchmark runs on by default: the 6,000-row sample shipped with the package
SAMPLE = Path(__file__).resolve().parents[1] / "tldr_index" / "data" / "sample.npz"
CORPUS_HELP = ("corpus to run on: an .npz with X (rows x D float) and labels (ints), e.g. "
               "../shared/data/pydoc-minilm.npz, the 40,000-row shared corpus that the recorded "
               "results in benchmarks/results/ used (not in a clone). Default: the 6,000-row "
               "sample shipped in tldr_index/data/sample.npz, so the script runs from a clone.")
_SELECTED: list[Path] = [SAMPLE]
#: caches (tiled corpora, built tables): $TLDR_BENCH_CACHE or benchmarks/_cache (gitignored)
CACHE_ROOT = Path(os.environ.get("TLDR_BENCH_CACHE") or Path(__file__).resolve().parent / "_cache")


def add_corpus_arg(ap) -> None:
    """``--corpus PATH`` (see ``CORPUS_HELP``)."""
    ap.add_argument("--corpus", default=None, metavar="PATH", help=CORPUS_HELP)


def select_corpus(path: str | None) -> Path:
    """Use ``path`` (or the shipped sample when None) for every later ``corpus_path()`` call."""
    p = Path(path) if path else SAMPLE
    if not p.is_file():
        raise SystemExit(f"Error: --corpus '{path}' is not a file ({CORPUS_HELP})")
    _SELECTED[0] = p
    return p


def corpus_path() -> Path:
    return _SELECTED[0]


def corpus_tag() -> str:
    """Suffix for cache names, so caches of different corpora never mix ('' = shared corpus)."""
    p = corpus_path()
    return "" if p.name == SHARED_CORPUS.name else f"_{p.stem}"


def load_corpus(n_queries: int | None = None):
    """(database, queries, db_labels, query_labels) of the selected corpus as float32.

    Protocol of shared/data/README.md: the first ``n_queries`` rows are queries (default 2,000;
    300 for a corpus under 20,000 rows, e.g. the shipped sample), the rest the database.
    """
    z = np.load(corpus_path())
    if n_queries is None:
        n_queries = 2000 if len(z["X"]) >= 20_000 else 300
    X = z["X"].astype(np.float32)
    lab = z["labels"]
    return X[n_queries:], X[:n_queries], lab[n_queries:], lab[:n_queries]


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def cosine_topk(queries: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k database rows by cosine similarity (k x n_queries ids)."""
    q, d = _unit(queries), _unit(db)
    out = [torch.topk(q[s:s + 1024] @ d.T, k, dim=1).indices for s in range(0, len(q), 1024)]
    return torch.cat(out).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` found in the same row of ``found``."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[:k], b)) / k for a, b in zip(found, truth)]))


def knn_accuracy(neigh: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray) -> float:
    """Majority-vote label accuracy over each query's neighbours (ties: smallest label)."""
    votes = db_labels[neigh]
    pred = np.array([np.bincount(v).argmax() for v in votes])
    return float((pred == q_labels).mean())


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}"
