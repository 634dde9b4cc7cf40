"""Shared benchmark helpers: the shared corpus, exact ground truth, recall and label accuracy."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

SHARED = Path(os.environ.get("TLDR_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CORPUS = SHARED / "data" / "pydoc-minilm.npz"


def load_corpus(n_queries: int = 2000):
    """(database, queries, db_labels, query_labels) of the shared corpus as float32.

    Protocol of shared/data/README.md: the first ``n_queries`` rows are queries, the rest the database.
    """
    z = np.load(CORPUS)
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
