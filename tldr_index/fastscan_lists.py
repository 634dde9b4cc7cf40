"""The fast-scan lists of a code index (:class:`tldr_index.code_index.CodeIndex`, ``scan =
"fastscan"``): the rows of each IVF list re-encoded as 4-bit product-quantization codes of their
residual to the list's centroid, in FAISS's SIMD fast-scan block layout (``IndexIVFPQFastScan``,
``by_residual``), scored with 8-bit quantized lookup tables (16 entries per sub-quantizer, 32
codes per SIMD block).

These codes are the index's own, apart from the collection's codes (whatever their codec): the
4-bit layout scans about 3x faster than 8-bit PQ lookups (raw queries/s at nprobe 64 in the run
below: 6,249 against 1,883) and needs fewer bytes for nearly the same recall after rescoring. ``M = 2 x code_bytes`` sub-quantizers of 4 bits over the
reduced vectors rotated into ``dim_pad = ceil(d / M) x M`` dimensions by a seeded matrix with
orthonormal columns (``(dim_pad, d)``: inner products and distances are kept exactly, the
padding is spread over every sub-space instead of leaving whole sub-quantizers empty).

Measured at 1M interpolated MiniLM rows (``benchmarks/results/search.md``: TLDR d=64, IVF2000,
1,000 held-out queries, one core of a shared machine): 12 B (24 x 4 bit, d rotated into 72)
reached recall@10 0.952 after an exact re-ranking of its top 1,000 from a float16 cache at
nprobe 64, 1,231 queries/s; lists over the collection's 8-bit PQ16 codes (FAISS ``IndexIVFPQ``,
16 B + 8 B id) 0.958 at 810 queries/s.

Memory per row: ``code_bytes`` (packed, the last block of each list padded to 32 rows) plus the
8-byte FAISS id; the rotation (``dim_pad x d``) and the ``M x 16 x dim_pad / M`` sub-quantizer
centroids are fixed. Files: the rotation, the sub-quantizer centroids and each list's packed
blocks (as they are in RAM; the ids are the rows of each list in ascending order, rebuilt from
the list assignment).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

#: bits per sub-quantizer (FAISS fast-scan works with 4)
NBITS = 4
#: codes per SIMD block of the fast-scan layout (FAISS's default ``bbs``)
BLOCK_ROWS = 32
#: k-means iterations of each 16-centroid sub-quantizer
PQ_ITER = 25


def rotation(d: int, dim_pad: int, seed: int) -> np.ndarray:
    """A seeded ``(dim_pad, d)`` float32 matrix with orthonormal columns (QR of a Gaussian)."""
    g = np.random.default_rng([seed, 0xF5]).standard_normal((dim_pad, dim_pad))
    return np.ascontiguousarray(np.linalg.qr(g)[0][:, :d], dtype=np.float32)


class FastScanLists:
    """IVF fast-scan lists over ``nlist`` given centroids (see the module docstring). ``rows``
    added are the row positions FAISS returns (its int64 ids)."""

    def __init__(self, centroids: np.ndarray, metric: str, code_bytes: int, R: np.ndarray,
                 pq_centroids: np.ndarray | None = None):
        self.code_bytes, self.metric = int(code_bytes), metric
        self.M = 2 * self.code_bytes
        self.R = np.ascontiguousarray(R, dtype=np.float32)
        self.dim_pad = self.R.shape[0]
        self.nlist = len(centroids)
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self._quantizer = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(
            self.dim_pad)
        self._quantizer.add(self.rotate(centroids))
        self.ivf = faiss.IndexIVFPQFastScan(self._quantizer, self.dim_pad, self.nlist, self.M,
                                            NBITS, fm)
        self.ivf.by_residual = True
        if pq_centroids is not None:
            faiss.copy_array_to_vector(np.ascontiguousarray(pq_centroids, np.float32).ravel(),
                                       self.ivf.pq.centroids)
            self.ivf.pq.is_trained = True
            self.ivf.is_trained = True

    @staticmethod
    def padded_dim(d: int, code_bytes: int) -> int:
        m = 2 * code_bytes
        return int(math.ceil(d / m) * m)

    @classmethod
    def train(cls, centroids: np.ndarray, metric: str, code_bytes: int, sample: np.ndarray,
              seed: int) -> "FastScanLists":
        """Lists over ``centroids`` whose sub-quantizers are trained on the residuals of
        ``sample`` (prepared reduced rows). Cost: ``M`` k-means of 16 centroids on
        ``len(sample)`` rows (:data:`PQ_ITER` iterations) plus one assignment of the sample."""
        d = centroids.shape[1]
        R = rotation(d, cls.padded_dim(d, code_bytes), seed)
        lists = cls(centroids, metric, code_bytes, R)
        lists.ivf.cp.seed = seed
        lists.ivf.pq.cp.seed = seed
        lists.ivf.pq.cp.niter = PQ_ITER
        lists.ivf.train(lists.rotate(sample))  # the coarse quantizer is full: PQ only
        return lists

    def rotate(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(X, np.float32) @ self.R.T, dtype=np.float32)

    def add(self, X: np.ndarray, rows: np.ndarray) -> None:
        """Encode prepared rows ``X`` (row positions ``rows``, ascending and above every row
        held) into their lists. Cost: ``len x nlist x dim_pad`` (assignment) plus the encoding."""
        self.ivf.add_with_ids(self.rotate(X), np.ascontiguousarray(rows, dtype=np.int64))

    def search(self, Q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores higher-is-better, rows)`` of prepared queries ``Q`` over ``nprobe`` lists
        (l2: ``-||q - x||^2``); missing: -inf / -1. Thread-safe."""
        D, I = self.ivf.search(self.rotate(Q), k,
                               params=faiss.SearchParametersIVF(nprobe=nprobe))
        D = np.asarray(D, np.float32)
        if self.metric == "l2":
            D = -D
        D[I < 0] = -np.inf
        return D, I.astype(np.int64)

    def list_rows(self, li: int) -> np.ndarray:
        il = self.ivf.invlists
        size = il.list_size(li)
        if not size:
            return np.empty(0, np.int64)
        return faiss.rev_swig_ptr(il.get_ids(li), size).copy()

    def _block_bytes(self) -> int:
        return faiss.downcast_InvertedLists(self.ivf.invlists).block_size

    def packed_bytes(self) -> int:
        """Bytes of every list's packed blocks (what :meth:`packed` returns), without a copy."""
        il = self.ivf.invlists
        bb = self._block_bytes()
        return int(sum(-(-il.list_size(li) // BLOCK_ROWS) * bb for li in range(self.nlist)))

    def packed(self) -> np.ndarray:
        """Every list's packed blocks, list after list (uint8)."""
        il = self.ivf.invlists
        bb = self._block_bytes()
        parts = [faiss.rev_swig_ptr(il.get_codes(li), -(-il.list_size(li) // BLOCK_ROWS) * bb)
                 for li in range(self.nlist) if il.list_size(li)]
        return np.concatenate(parts) if parts else np.empty(0, np.uint8)

    def tensors(self) -> dict[str, np.ndarray]:
        """What :meth:`restore` needs besides the list of each row."""
        pq = faiss.vector_to_array(self.ivf.pq.centroids).reshape(self.M, 1 << NBITS, -1)
        return {"fs_rotation": self.R, "fs_pq_centroids": pq, "fs_packed": self.packed()}

    @classmethod
    def restore(cls, centroids: np.ndarray, metric: str, code_bytes: int,
                tensors: dict[str, np.ndarray], assign: np.ndarray) -> "FastScanLists":
        """The lists of :meth:`tensors`, each holding the rows ``assign`` puts in it (ascending,
        as :meth:`add` left them). Raises ValueError when the packed blocks do not fit."""
        lists = cls(centroids, metric, code_bytes, tensors["fs_rotation"],
                    tensors["fs_pq_centroids"])
        packed = np.ascontiguousarray(tensors["fs_packed"], dtype=np.uint8)
        il = faiss.downcast_InvertedLists(lists.ivf.invlists)
        bb = il.block_size
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(lists.nlist + 1))
        sizes = np.diff(bounds)
        need = int((-(-sizes // BLOCK_ROWS) * bb).sum())
        if need != len(packed):
            raise ValueError(f"{len(packed)} bytes of packed codes for lists needing {need}")
        pos = 0
        for li in np.flatnonzero(sizes):
            rows = np.ascontiguousarray(order[bounds[li]:bounds[li + 1]], dtype=np.int64)
            nb = -(-len(rows) // BLOCK_ROWS) * bb
            chunk = np.ascontiguousarray(packed[pos:pos + nb])
            il.add_entries(int(li), len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(chunk))
            pos += nb
        lists.ivf.ntotal = len(assign)
        return lists

    def clone(self) -> "FastScanLists":
        out = FastScanLists.__new__(FastScanLists)
        out.__dict__.update(self.__dict__)
        out.ivf = faiss.clone_index(self.ivf)  # owns a copy of the quantizer
        out._quantizer = None
        return out

    def fixed_bytes(self) -> int:
        """Bytes that do not grow with the rows: the rotation and the sub-quantizer centroids."""
        return self.R.nbytes + self.M * (1 << NBITS) * (self.dim_pad // self.M) * 4


__all__ = ["FastScanLists", "rotation", "NBITS", "BLOCK_ROWS"]
