"""FAISS building blocks for :mod:`tldr_index.knn`: device choice, exact top-k kernels merged into a
result heap, the OPQ-IVF-PQ index, and row gathering for exact re-ranking.

Nothing here validates user arguments; :mod:`tldr_index.knn` does that before calling in.
"""

from __future__ import annotations

import logging
import math
import mmap
from typing import Any

import faiss
import numpy as np

from .vectors import ArrayVectors, FileVectors, Vectors, VectorStore

logger = logging.getLogger("tldr_index.knn")

#: Query rows x database rows of one GEMM tile in the CPU kernel (2048 x 8192 float32 = 64 MiB).
TILE_QUERIES = 2048
TILE_DATABASE = 8192
#: Query rows per score tile of the torch CUDA kernel (2048 x 262144 float32 = 2 GiB at most).
TORCH_TILE_QUERIES = 2048
#: When gathering rows from a file for re-ranking, rows closer than this are read in one call.
GATHER_GAP = 8


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def worst(metric: str) -> float:
    """The score that never enters a top-k heap: +inf for l2 (ascending), -inf for ip/cosine."""
    return math.inf if metric == "l2" else -math.inf


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def torch_cuda_available() -> bool:
    """True when torch sees a CUDA GPU (the exact kernel can then run there without faiss-gpu)."""
    import torch
    return torch.cuda.is_available()


def make_kernel(device: str) -> Any:
    """The exact top-k kernel for ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``, already checked):
    FAISS GPU when this build has it, else torch on CUDA, else the CPU GEMM kernel."""
    if device == "cpu":
        return CpuKernel()
    if gpu_available():
        return GpuKernel()
    if torch_cuda_available():
        return TorchCudaKernel()
    return CpuKernel()


def prepare(block: np.ndarray, metric: str) -> np.ndarray:
    """L2-normalise rows in place for cosine (zero rows stay zero); other metrics unchanged."""
    if metric == "cosine":
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, norms, out=block, where=norms > 0)
    return block


def new_heap(n_rows: int, k: int, metric: str) -> faiss.ResultHeap:
    """A FAISS result heap of ``n_rows x k`` (float32 scores + int64 ids, 12 bytes per slot)."""
    return faiss.ResultHeap(n_rows, k, keep_max=metric != "l2")


def _mask_excluded(S: np.ndarray, excl: np.ndarray | None, b0: int, metric: str) -> None:
    """Set ``S[r, excl[r] - b0]`` to the worst score where ``excl[r]`` falls in this tile."""
    if excl is None:
        return
    r = np.flatnonzero((excl >= b0) & (excl < b0 + S.shape[1]))
    if len(r):
        S[r, excl[r] - b0] = worst(metric)


class CpuKernel:
    """Exact scores by float32 GEMM (numpy BLAS) pushed into a FAISS heap, tile by tile.

    Measured on this project's 2-core machine: 2.5-4x faster than ``faiss.knn`` on the same blocks
    (the faiss-cpu wheel's BLAS path is slower than numpy's here). Memory: one 64 MiB tile.
    """

    name = "cpu"

    def add(self, heap: faiss.ResultHeap, q0: int, Q: np.ndarray, b0: int, B: np.ndarray,
            metric: str, excl: np.ndarray | None = None, symmetric: bool = False,
            tick=None) -> None:
        """Push scores of queries ``Q`` (heap rows ``q0...``) against ``B`` (ids ``b0...``).

        ``excl[r]`` is a database id that query row ``r`` must never get. With ``symmetric`` the
        same tile is also pushed the other way (rows of ``B`` get ids of ``Q``): used for a
        self-graph so each pair of blocks is multiplied once. ``tick(pairs)``, if given, is
        called after each tile with the row pairs it scored (for progress).
        """
        l2 = metric == "l2"
        qn = np.einsum("ij,ij->i", Q, Q) if l2 else None
        bn = np.einsum("ij,ij->i", B, B) if l2 else None
        for ta in range(0, len(Q), TILE_QUERIES):
            Qt = Q[ta:ta + TILE_QUERIES]
            qrows = np.arange(q0 + ta, q0 + ta + len(Qt))
            ex = None if excl is None else excl[ta:ta + len(Qt)]
            for tb in range(0, len(B), TILE_DATABASE):
                Bt = B[tb:tb + TILE_DATABASE]
                S = Qt @ Bt.T
                if l2:
                    S *= -2.0
                    S += qn[ta:ta + len(Qt), None]
                    S += bn[None, tb:tb + len(Bt)]
                brows = np.arange(b0 + tb, b0 + tb + len(Bt))
                if symmetric:
                    ST = np.ascontiguousarray(S.T)
                    _mask_excluded(ST, brows, q0 + ta, metric)
                    heap.add_result_subset(brows, ST, qrows)
                _mask_excluded(S, ex, b0 + tb, metric)
                heap.add_result_subset(qrows, S, brows)
                if tick is not None:
                    tick(len(Qt) * len(Bt))


class GpuKernel:
    """Exact top-(k+1) per block with ``faiss.knn_gpu``, excluded ids dropped, merged into a heap.

    Memory on the GPU: one query block and one database block. Untested on this project's CPU
    machines.
    """

    name = "cuda"

    def __init__(self) -> None:
        self.res = faiss.StandardGpuResources()

    def add(self, heap: faiss.ResultHeap, q0: int, Q: np.ndarray, b0: int, B: np.ndarray,
            metric: str, excl: np.ndarray | None = None, symmetric: bool = False) -> None:
        if symmetric:  # pragma: no cover - the GPU path never asks for it
            raise NotImplementedError("GpuKernel has no symmetric mode")
        kk = min(heap.k + (excl is not None), len(B))
        D, I = faiss.knn_gpu(self.res, Q, B, kk, metric=faiss_metric(metric))
        if excl is not None:
            D[(I + b0) == excl[:, None]] = worst(metric)
        valid = I >= 0
        I = np.where(valid, I + b0, -1)
        D[~valid] = worst(metric)
        heap.add_result_subset(np.arange(q0, q0 + len(Q)), D, I)


class TorchCudaKernel:
    """Exact top-(k+1) per block on a CUDA GPU through torch, merged into the FAISS heap.

    Used when torch sees a GPU but FAISS is a CPU build (the usual pip install). Scores are float32
    GEMMs (TF32 off, so ties and order match the CPU kernel up to float32 rounding); query rows go
    through in tiles of ``TORCH_TILE_QUERIES`` so GPU memory stays at one score tile
    (``TORCH_TILE_QUERIES x len(B)`` float32) plus the two blocks.
    """

    name = "cuda"

    def __init__(self) -> None:
        import torch
        self.torch = torch
        self.dev = torch.device("cuda")

    def add(self, heap: faiss.ResultHeap, q0: int, Q: np.ndarray, b0: int, B: np.ndarray,
            metric: str, excl: np.ndarray | None = None, symmetric: bool = False) -> None:
        if symmetric:  # pragma: no cover - the GPU path never asks for it
            raise NotImplementedError("TorchCudaKernel has no symmetric mode")
        torch = self.torch
        kk = min(heap.k + (excl is not None), len(B))
        b = torch.from_numpy(B).to(self.dev)
        bn = (b * b).sum(1) if metric == "l2" else None
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for t in range(0, len(Q), TORCH_TILE_QUERIES):
                q = torch.from_numpy(Q[t:t + TORCH_TILE_QUERIES]).to(self.dev)
                S = q @ b.T
                if metric == "l2":
                    S = (q * q).sum(1, keepdim=True) - 2.0 * S + bn[None]
                    D, I = torch.topk(S, kk, dim=1, largest=False)
                else:
                    D, I = torch.topk(S, kk, dim=1)
                D, I = D.cpu().numpy(), I.cpu().numpy().astype(np.int64) + b0
                if excl is not None:
                    D[I == excl[t:t + len(q), None]] = worst(metric)
                heap.add_result_subset(np.arange(q0 + t, q0 + t + len(q)), D, I)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32


def finalize(heap: faiss.ResultHeap, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted scores and ids of a heap; squared L2 clamped at 0 (GEMM rounding); empty slots get
    id -1 and the worst score (+inf or -inf)."""
    heap.finalize()
    D, I = heap.D, heap.I
    if metric == "l2":
        np.maximum(D, 0.0, out=D)
    D[I < 0] = worst(metric)
    return D, I


# --------------------------------------------------------------------------------------------
# OPQ-IVF-PQ


def build_opq_index(dim: int, m: int, opq_dim: int, nlist: int, metric: str, *, seed: int,
                    opq_niter: int, opq_niter_pq_0: int, opq_max_train_points: int,
                    kmeans_niter: int, pq_niter: int | None = None,
                    max_points_per_centroid: int = 256):
    """An untrained ``OPQ{m}_{opq_dim},IVF{nlist},PQ{m}np`` index with reduced training effort.

    Returns ``(index, factory_string)``. Training settings are applied on the downcast IVF index
    (``extract_index_ivf`` alone returns a base class without ``.pq``, where settings are silently
    lost). ``max_points_per_centroid`` caps the rows each k-means (coarse and PQ) samples from
    the training rows (faiss's default 256); ``pq_niter`` (default ``kmeans_niter``) sets the
    PQ k-means iterations. The PQ k-means warnings about fewer than 39 points per centroid are silenced (they
    print once per sub-quantizer and OPQ iteration); :mod:`tldr_index.knn` logs one instead.
    """
    factory = f"OPQ{m}_{opq_dim},IVF{nlist},PQ{m}np"
    index = faiss.index_factory(dim, factory, faiss_metric(metric))
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.do_polysemous_training = False
    ivf.cp.niter = kmeans_niter
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = max_points_per_centroid
    ivf.pq.cp.niter = kmeans_niter if pq_niter is None else pq_niter
    ivf.pq.cp.seed = seed + 1
    ivf.pq.cp.min_points_per_centroid = 1
    ivf.pq.cp.max_points_per_centroid = max_points_per_centroid
    opq = faiss.downcast_VectorTransform(index.chain.at(0))
    opq.niter = opq_niter
    opq.niter_pq_0 = opq_niter_pq_0
    opq.max_train_points = opq_max_train_points
    pq = faiss.ProductQuantizer(opq_dim, m, 8)  # the PQ that OPQ trains with
    pq.cp.min_points_per_centroid = 1
    pq.cp.max_points_per_centroid = max_points_per_centroid
    pq.cp.seed = seed + 2
    opq.pq = pq
    index.referenced_objects = [pq]  # keep the Python owner of pq alive with the index
    return index, factory


def set_nprobe(index: Any, nprobe: int, on_gpu: bool) -> None:
    if on_gpu:  # pragma: no cover - no GPU here
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    else:
        faiss.extract_index_ivf(index).nprobe = nprobe


def index_to_gpu(index: Any) -> tuple[Any, Any]:  # pragma: no cover - no GPU here
    """Copy a trained CPU index to GPU 0; returns ``(gpu_index, resources)`` (keep both alive)."""
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16LookupTables = True
    return faiss.index_cpu_to_gpu(res, 0, index, co), res


def train_on_gpu_kmeans(index: Any) -> Any:  # pragma: no cover - no GPU here
    """Make the IVF coarse k-means of ``index`` run on GPU 0 (OPQ and PQ training stay on CPU)."""
    res = faiss.StandardGpuResources()
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.clustering_index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(ivf.d))
    return res


# --------------------------------------------------------------------------------------------
# re-ranking


def gather(vec: Vectors, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (sorted, unique) of ``vec`` as float32.

    In-memory arrays use fancy indexing, raw files (:class:`FileVectors`, :class:`VectorStore`) a
    short-lived read-only memory map; other sources use :meth:`Vectors.read` on runs of ids no
    more than ``GATHER_GAP`` rows apart (one read per run; up to ``GATHER_GAP - 1`` unused rows
    read between two ids), which cuts the number of reads several-fold on dense id sets.
    """
    if isinstance(vec, ArrayVectors) or len(ids) == 0:
        return vec.take(ids)
    if type(vec) in (FileVectors, VectorStore):
        # A read-only mapping for this gather only: ~1 us per row instead of ~5-10 us per pread
        # call on sparse ids (measured); pages count towards RSS only until the mapping is closed.
        mm = np.memmap(vec.path, dtype=vec.dtype, mode="r", offset=vec.offset, shape=vec.shape)
        try:
            mm._mmap.madvise(mmap.MADV_RANDOM)  # no read-ahead around scattered rows
        except (AttributeError, OSError, ValueError):  # pragma: no cover - platform dependent
            pass
        out = np.ascontiguousarray(mm[ids], dtype=np.float32)
        del mm
        return out
    out = np.empty((len(ids), vec.dim), dtype=np.float32)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(ids) > GATHER_GAP) + 1, [len(ids)]))
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        lo = int(ids[a])
        block = vec.read(lo, int(ids[b - 1]) + 1)
        out[a:b] = block[ids[a:b] - lo]
    return out


def exact_scores(Q: np.ndarray, I: np.ndarray, rows: np.ndarray, uniq: np.ndarray,
                 metric: str) -> np.ndarray:
    """Exact scores between each query ``Q[i]`` and candidates ``I[i]`` (-1 gets the worst score).

    ``rows[j]`` holds the (prepared) vector of id ``uniq[j]``. Memory: ``Q.shape`` float32 per
    candidate column. Cost: ``Q.shape[0] * I.shape[1] * dim`` multiply-adds.
    """
    valid = I >= 0
    pos = np.searchsorted(uniq, np.where(valid, I, uniq[0] if len(uniq) else 0))
    S = np.zeros(I.shape, dtype=np.float32)
    if len(rows):
        # one candidate column at a time: a (n_queries x dim) gather that stays in cache, ~10x
        # faster than one (n_queries x n_candidates x dim) einsum (measured)
        for j in range(I.shape[1]):
            S[:, j] = np.einsum("qd,qd->q", Q, rows[pos[:, j]])
    if metric == "l2":
        rn = np.einsum("rd,rd->r", rows, rows) if len(rows) else np.zeros(1, np.float32)
        S *= -2.0
        S += rn[pos]
        S += np.einsum("qd,qd->q", Q, Q)[:, None]
        np.maximum(S, 0.0, out=S)
    S[~valid] = worst(metric)
    return S.astype(np.float32, copy=False)


def best_first(S: np.ndarray, metric: str) -> np.ndarray:
    """Per-row order of ``S`` from best to worst (stable)."""
    return np.argsort(S if metric == "l2" else -S, axis=1, kind="stable")
