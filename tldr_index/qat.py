"""Quantization-aware training (QAT): fine-tune the linear map *through the codes*.

After the ranking fit, :func:`fine_tune` continues training the folded linear map with the same
ranking KL (:func:`tldr_index.losses.ranking_loss`), but with the *database side quantized* the way
the compact collection will store it, while the query side stays float (asymmetric search, ADC):

* ``codec="pq"``: a fixed seeded random orthogonal rotation ``R`` of the reduced space (a ``d x d``
  matrix, folded into the map: ``W <- R W``, ``b <- R b``), then product quantization with
  ``qat_bytes`` sub-quantizers of 256 centroids. The codebook starts from k-means (FAISS, via
  :class:`~tldr_index.quantizer.ProductQuantizer`) on the reduced training sample and is learned
  as a parameter. The database side is ``z_hat = C[argmin] + (u - u.detach())``: the forward value
  is the nearest-centroid reconstruction, the gradient reaches the map straight through ``u`` and
  the codebook only at the chosen centroids. ``u`` is ``z`` L2-normalised for ``metric="cosine"``
  (the PQ of the product normalises before encoding), ``z`` otherwise.
* AdamW (map ``MAP_LEARNING_RATE``, codebooks ``CODEBOOK_LEARNING_RATE`` for PQ,
  ``RQ_CODEBOOK_LEARNING_RATE`` for RQ, no weight decay), cosine
  decay over ``qat_epochs``; with a validator, the epoch (0 = the start) with the best held-out
  recall@10 *of the quantized search* is kept, so QAT never returns worse than its start on those
  rows. The start is the better (on the same rows) of the identity and the random rotation, each
  with its k-means codebook: the identity start is the plain "map, then PQ" of the product.
* ``codec="rq"``: residual quantization with ``qat_bytes`` full-dimension codebooks of 256
  entries (the codec of :mod:`tldr_index.codecs.rq`). The start is the product's own "map, then
  RQ": an :class:`~tldr_index.codecs.RQCodec` (beam 5, FAISS ``ResidualQuantizer``) fitted on the
  prepared reduced training sample; its ``(M, 256, d)`` codebooks are then learned as one
  parameter. Each step encodes the database side of the batch with a beam search of width
  ``RQ_TRAIN_BEAM`` = 5, the product's beam, in torch (:func:`tldr_index.codecs.rq.beam_encode`;
  at d=128, 8 B and codebook lr 1e-4 a greedy, beam-1 encode took a 25 s QAT phase vs 40 s and
  gained +0.004 raw recall@10 over the start vs +0.016: ``benchmarks/results/qat.md``) and uses
  ``z_hat = sum_m C_m[code_m] + (u - u.detach())`` (gradient to the map straight through ``u``, to
  the codebooks at the chosen entries); the validator scores the product's encoding (the beam-5
  :class:`~tldr_index.codecs.RQCodec` of the current codebooks, on the map computed as
  :meth:`~tldr_index.base.BaseReducer.transform` computes it), so the epoch kept is judged by
  the codes the product would write. No rotation (full-dimension codebooks make one pointless):
  ``qat_rotation_`` is the identity.
* ``codec="opq"``: the product's :class:`~tldr_index.codecs.OPQCodec` (FAISS ``OPQMatrix``
  rotation ``A``, then PQ with ``qat_bytes`` sub-quantizers) fitted on the prepared reduced
  training sample is the start (epoch 0 = the plain "map, then OPQ"). The rotation is kept (not
  folded into the map: it is the codec's, applied at encode), the PQ codebooks are learned as for
  PQ: ``z_hat = (C[argmin(u A^T)]) A + (u - u.detach())``. With ``OPQ_REFIT_ROTATION`` the
  rotation is refitted to the learned codebooks after each epoch (one orthogonal Procrustes step
  on the prepared sample, :func:`procrustes_rotation`); ``benchmarks/results/qat.md`` measures
  both, the default keeps it. Validation, the epoch kept and ``info["val_codes_sha256"]`` use the
  product's codec holding the current arrays, as for RQ.
* ``codec="rabitq"`` (``qat_bytes`` = the RaBitQ code size ``d x bits / 8 + 4``, bits 1, 2 or 4):
  the product's :class:`~tldr_index.codecs.RaBitQCodec` (centre = mean of the prepared training
  sample, seeded random rotation) is the start. The database side goes straight through the
  product's codec: ``z_hat = u + (decode(encode(u)) - u).detach()``, whose inner product with
  every float query is RaBitQ's estimator (so the forward ranking is the product's); nothing of
  the codec is learned by gradient, but after each epoch the centre is refitted on the prepared
  sample under the current map (the rotation stays the start's: same seed). The epoch kept is
  judged by the product's codes, as for RQ.

Exported as plain arrays: ``components_``/``bias_`` (PQ: the rotation already folded in; the map
stays linear), ``qat_codebook_`` float32 (the codec's learned array: ``(M, 256, d / M)``
centroids for PQ and OPQ, ``(M, 256, d)`` codebooks for RQ, the ``(d,)`` centre for RaBitQ;
:func:`codec_for` turns them into the product's codec, :func:`quantizer_for` into a PQ quantizer;
never re-train them) and ``qat_rotation_`` ``(d, d)``: for PQ the rotation that was folded into
the map at the start, kept for provenance (do **not** apply it again); the identity for RQ; for
OPQ and RaBitQ the codec's own rotation (applied by the codec at encode, not folded in).

Cost per step: the ranking loss on ``2 B`` rows, O(B^2 (D + d)), plus the assignment
O(2 B x 256 x d) (PQ, OPQ plus a ``d x d`` rotation), O(2 B x M x 256 x d) (RQ, greedy) or the
RaBitQ encode, O(2 B x d^2) plus ``2 B x d x 24`` for 2 and 4 bits, in numpy; per validation: encoding and
quantizing ``n_db`` rows (RQ: the beam-5 encode) plus ``n_q x n_db x d``. The RQ start fits the
product's RQ codec (M rounds of k-means on up to 20,000 rows). Memory: one batch, the ``D x d``
map and the codebooks (``M x 256 x d`` floats for RQ).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .validation import check_choice, check_int
from .errors import InvalidParameterError
from .codecs import Codec, codec_from_state, feasible_bytes, get_codec
from .codecs.rabitq import FACTOR_BYTES
from .codecs.rq import beam_encode
from .compact import prepare_rows
from .linear import linear_map
from .losses import cross_similarity, ranking_loss
from .optim import lr_factor
from .quantizer import ProductQuantizer
from .vectors import Vectors

log = logging.getLogger(__name__)

CODECS = (None, "pq", "opq", "rq", "rabitq")
#: the codecs whose QAT start, validation and export are the product's codec object
#: (:func:`product_codec`); PQ keeps its own torch path and random-rotation start
CODEC_PATH = ("opq", "rq", "rabitq")
MAP_LEARNING_RATE = 3e-4
CODEBOOK_LEARNING_RATE = 1e-3
KSUB = 256                      # centroids per sub-quantizer (8-bit codes)
KMEANS_SAMPLE_ROWS = 65_536     # reduced rows the k-means initialisation sees at most
RQ_TRAIN_BEAM = 5               # beam of the RQ encode inside each training step (the product's)
RQ_CODEBOOK_LEARNING_RATE = 3e-4  # chosen on the validation recall (benchmarks/results/qat.md)
#: OPQ: after each epoch, refit the rotation to the learned codebooks (one Procrustes step on the
#: prepared sample); off: the start's rotation is kept (benchmarks/results/qat.md measures both)
OPQ_REFIT_ROTATION = False


# ----------------------------------------------------------------------------------------------
# parameter checks (called from TLDR.fit before any work)
def check_params(qat: Any, qat_bytes: Any, qat_epochs: Any, *, n_components: int,
                 foldable: bool, encoder: str, n_train: int, owner: str = "TLDR") -> None:
    """Raise :class:`InvalidParameterError` naming the parameter, the rule and the value."""
    check_choice(qat, "qat", CODECS, owner=owner)
    if qat is None:
        return
    M = check_int(qat_bytes, "qat_bytes", low=1, owner=owner)
    check_int(qat_epochs, "qat_epochs", low=1, owner=owner)
    if not foldable:
        raise InvalidParameterError(
            f"The 'qat' parameter of {owner} needs a linear map (encoder 'linear' or "
            f"'flinear-L-H'). Got qat={qat!r} with encoder={encoder!r} instead.")
    if qat == "rq" and M > n_components:
        raise InvalidParameterError(
            f"The 'qat_bytes' parameter of {owner} must be at most n_components={n_components} "
            f"for qat='rq' (one residual codebook per byte). Got {M} instead.")
    if qat in ("pq", "opq") and n_components % M:
        raise InvalidParameterError(
            f"The 'qat_bytes' parameter of {owner} must divide n_components={n_components} (one "
            f"sub-vector per byte). Got {M} instead.")
    if qat == "rabitq" and M not in feasible_bytes("rabitq", n_components):
        sizes = ", ".join(str(b) for b in feasible_bytes("rabitq", n_components)) or "none"
        raise InvalidParameterError(
            f"The 'qat_bytes' parameter of {owner} must be a RaBitQ code size at "
            f"n_components={n_components} (n_components x bits / 8 + {FACTOR_BYTES} with bits in "
            f"1, 2, 4: {sizes}) for qat='rabitq'. Got {M} instead.")
    if n_train < KSUB and qat != "rabitq":
        raise InvalidParameterError(
            f"The 'qat' parameter of {owner} needs at least {KSUB} training rows for {qat!r} "
            f"({KSUB} centroids per sub-quantizer). Got {n_train} rows.")


# ----------------------------------------------------------------------------------------------
# the quantizer maths
def random_rotation(d: int, seed: int) -> np.ndarray:
    """A seeded random orthogonal ``(d, d)`` float32 matrix (QR of a Gaussian, signs fixed so the
    draw is uniform over the orthogonal group). Cost O(d^3)."""
    g = np.random.default_rng([seed, 0x0A7]).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))[None, :]).astype(np.float32)


def pq_assign(u: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``(n, M)`` int64 index of the nearest centroid (squared L2) of each sub-vector of ``u``
    ``(n, M * dsub)`` in ``codebook`` ``(M, K, dsub)``. Cost O(n M K dsub)."""
    M, K, dsub = codebook.shape
    us = u.reshape(len(u), M, dsub)
    # ||u - c||^2 = ||u||^2 - 2 u.c + ||c||^2; the first term does not change the argmin
    dist = (codebook * codebook).sum(2)[None] - 2 * torch.einsum("nmd,mkd->nmk", us, codebook)
    return dist.argmin(2)


def pq_reconstruct(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``(n, M * dsub)`` reconstruction ``C[m, codes[:, m]]`` concatenated over ``m``."""
    M = codebook.shape[0]
    return codebook[torch.arange(M, device=codes.device)[None, :], codes].reshape(len(codes), -1)


def pq_straight_through(u: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Hard PQ forward, straight-through backward: ``C[argmin] + (u - u.detach())``.

    The value equals the nearest-centroid reconstruction of ``u``; the gradient reaches ``u``
    unchanged (identity) and ``codebook`` only at the chosen centroids."""
    with torch.no_grad():
        codes = pq_assign(u, codebook)
    return pq_reconstruct(codes, codebook) + (u - u.detach())


def rq_reconstruct(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``(n, d)`` residual-quantization reconstruction ``sum_m C_m[codes[:, m]]`` of ``codes``
    ``(n, M)`` (int64) with ``codebooks`` ``(M, K, d)``. Cost O(n M d)."""
    M = codebooks.shape[0]
    return codebooks[torch.arange(M, device=codes.device)[None, :], codes].sum(1)


def rq_assign(u: torch.Tensor, codebooks: torch.Tensor, beam: int | None = None) -> torch.Tensor:
    """``(n, M)`` int64 residual codes of ``u`` ``(n, d)`` by a beam search of width ``beam``
    (:func:`tldr_index.codecs.rq.beam_encode`, one thread; beam 1: greedy, each codebook takes
    the entry nearest the residual the previous ones left; None: ``RQ_TRAIN_BEAM``).
    Cost O(n M beam 256 d)."""
    codes = beam_encode(u.detach().cpu().numpy(), codebooks.detach().cpu().numpy(),
                        beam or RQ_TRAIN_BEAM, threads=1)
    return torch.from_numpy(codes.astype(np.int64)).to(u.device)


def rq_straight_through(u: torch.Tensor, codebooks: torch.Tensor,
                        beam: int | None = None) -> torch.Tensor:
    """Hard RQ forward, straight-through backward: ``sum_m C_m[code_m] + (u - u.detach())``
    with the codes of :func:`rq_assign`; the gradient reaches ``u`` unchanged and ``codebooks``
    only at the chosen entries."""
    return rq_reconstruct(rq_assign(u, codebooks, beam), codebooks) + (u - u.detach())


def opq_straight_through(u: torch.Tensor, codebook: torch.Tensor,
                         rotation: torch.Tensor) -> torch.Tensor:
    """Hard OPQ forward, straight-through backward: the PQ reconstruction of the rotated rows
    ``u A^T`` rotated back (``A`` the OPQ rotation, orthogonal, so inner products with float
    queries are those of :class:`~tldr_index.codecs.OPQCodec`'s ADC), plus ``u - u.detach()``;
    the gradient reaches ``u`` unchanged and ``codebook`` only at the chosen centroids."""
    v = u.detach() @ rotation.T
    with torch.no_grad():
        codes = pq_assign(v, codebook)
    return pq_reconstruct(codes, codebook) @ rotation + (u - u.detach())


def procrustes_rotation(Z: np.ndarray, codebook: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """One OPQ rotation update: the orthogonal ``A`` minimising ``||Z A^T - Y||_F`` where ``Y``
    is the PQ reconstruction (``codebook``) of ``Z rotation^T`` (orthogonal Procrustes, an SVD
    of ``Z^T Y``). Cost O(n d^2 + n 256 d + d^3)."""
    Zr = torch.from_numpy(np.ascontiguousarray(Z @ rotation.T, dtype=np.float32))
    cb = torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32))
    Y = pq_reconstruct(pq_assign(Zr, cb), cb).numpy().astype(np.float64)
    U, _, Vt = np.linalg.svd(Z.astype(np.float64).T @ Y)
    return np.ascontiguousarray((U @ Vt).T, dtype=np.float32)


def codec_straight_through(u: torch.Tensor, codec: Codec) -> torch.Tensor:
    """Hard forward through a fitted product codec, straight-through backward:
    ``u + (decode(encode(u)) - u).detach()``. For RaBitQ ``decode`` is the vector whose inner
    product with every float query is the estimator, so the forward similarities are the
    product's scores. No gradient reaches the codec. Cost: the codec's encode of ``len(u)`` rows
    (RaBitQ: ``n d^2`` plus ``n d n_scales`` for 2 and 4 bits), on the CPU."""
    dec = codec.decode(codec.encode(u.detach().cpu().numpy()))
    return u + (torch.from_numpy(dec).to(u.device) - u).detach()


def product_codec(name: str, learned: np.ndarray, rotation: np.ndarray, n_bytes: int) -> Codec:
    """The product's codec (:func:`tldr_index.codecs.get_codec` defaults) holding exactly the
    QAT arrays (no training): ``learned`` is the PQ/OPQ centroids ``(M, 256, d / M)``, the RQ
    codebooks ``(M, 256, d)`` or the RaBitQ centre ``(d,)``; ``rotation`` ``(d, d)`` is the
    codec's (OPQ, RaBitQ; unused for PQ and RQ); ``n_bytes`` the code size."""
    learned = np.ascontiguousarray(learned, dtype=np.float32)
    if name == "rq":
        return rq_codec(learned)
    if name in ("pq", "opq"):
        M, _, dsub = learned.shape
        tensors = {"centroids": learned}
        if name == "opq":
            tensors["rotation"] = np.ascontiguousarray(rotation, dtype=np.float32)
        return codec_from_state(tensors, get_codec(name, M * dsub, bytes=M).config())
    d = len(learned)
    return codec_from_state({"center": learned,
                             "rotation": np.ascontiguousarray(rotation, dtype=np.float32)},
                            get_codec("rabitq", d, bytes=n_bytes).config())


def codec_arrays(codec: Codec) -> tuple[np.ndarray, np.ndarray]:
    """``(learned, rotation)`` of a fitted OPQ/RQ/RaBitQ codec, the inverse of
    :func:`product_codec` (RQ: the identity as its rotation)."""
    t = codec.state()[0]
    if codec.name == "rq":
        return t["codebooks"], np.eye(codec.dim, dtype=np.float32)
    if codec.name == "opq":
        return t["centroids"], t["rotation"]
    return t["center"], t["rotation"]


def fit_start_codec(name: str, components: np.ndarray, bias: np.ndarray, vectors: Vectors,
                    rows: np.ndarray, n_bytes: int, metric: str, seed: int) -> Codec:
    """The product's "map, then codec": ``get_codec(name)`` fitted on the prepared reduced
    ``rows`` of ``vectors`` with codec seed ``seed % (2^31 - 1)`` (what a benchmark's plain row
    fits to reproduce QAT's epoch 0). Cost: the codec's training (OPQ: its rotation and k-means;
    RQ: M rounds of k-means on up to 20,000 rows; RaBitQ: a mean and a d x d QR)."""
    Z = prepare_rows(linear_map(vectors.take(rows), components, bias), metric)
    return get_codec(name, components.shape[0], bytes=n_bytes).fit(Z, seed % (2**31 - 1))


def _prep(z: torch.Tensor, metric: str) -> torch.Tensor:
    return F.normalize(z, dim=1) if metric == "cosine" else z


def asymmetric_similarity(q: torch.Tensor, db: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarities of prepared float queries to (quantized) database rows, as ADC ranks them:
    inner product for cosine (both sides already prepared) and ip, ``-||q - db||^2`` for l2."""
    return cross_similarity(q, db, "l2" if metric == "l2" else "ip")


# ----------------------------------------------------------------------------------------------
class QuantizedValidator:
    """Recall@k of the *quantized* search on held-out queries: database rows quantized with the
    current codebooks, queries float (ADC). Uses the ground truth of a
    :class:`~tldr_index.trainer.Validator` (its ``db``, ``query_pos``, ``truth``, ``k``).
    Cost per call: encoding + quantizing ``n_db`` rows and ``n_q x n_db`` similarities."""

    def __init__(self, validator: Any, metric: str):
        self.v, self.metric = validator, metric
        self.last_codes: np.ndarray | None = None   # the codes of the last :meth:`score_codec`

    def score(self, linear: nn.Linear, codebook: torch.Tensor) -> float:
        """PQ: the map in torch, nearest-centroid codes of ``codebook``."""
        v, dev = self.v, codebook.device
        with torch.no_grad():
            rows = []
            for s in range(0, len(v.db), 8192):
                rows.append(_prep(linear(torch.from_numpy(v.db[s:s + 8192]).to(dev)), self.metric))
            u = torch.cat(rows)
            rec = pq_reconstruct(pq_assign(u, codebook), codebook)
        return self._recall(u, rec)

    def score_codec(self, weight: np.ndarray, bias: np.ndarray, codec: Codec) -> float:
        """The product's path: the map as :meth:`~tldr_index.base.BaseReducer.transform` computes
        it (float64 accumulation), :func:`~tldr_index.compact.prepare_rows`, then ``codec``'s
        encode and decode. Keeps the codes in :attr:`last_codes`."""
        u = prepare_rows(linear_map(self.v.db, weight, bias), self.metric)
        self.last_codes = codec.encode(u)
        return self._recall(torch.from_numpy(u), torch.from_numpy(codec.decode(self.last_codes)))

    def _recall(self, u: torch.Tensor, rec: torch.Tensor) -> float:
        v, dev = self.v, u.device
        with torch.no_grad():
            qp = torch.from_numpy(v.query_pos).to(dev)
            s = asymmetric_similarity(u[qp], rec, self.metric)
            s[torch.arange(len(qp), device=dev), qp] = -float("inf")  # not its own neighbour
            found = torch.topk(s, v.k, dim=1).indices.cpu().numpy()
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, v.truth))
        return hits / (len(found) * v.k)


@dataclass
class QATResult:
    components: np.ndarray          # (d, D) float32, rotation folded in
    bias: np.ndarray                # (d,) float32
    codebook: np.ndarray            # (M, 256, d / M) float32 (PQ) or (M, 256, d) (RQ)
    rotation: np.ndarray            # (d, d) float32 (identity when the identity start won)
    info: dict = field(default_factory=dict)


def _kmeans_codebook(linear: nn.Linear, vectors: Vectors, rows: np.ndarray, M: int, metric: str,
                     seed: int) -> np.ndarray:
    with torch.no_grad():
        w = linear.weight.detach().cpu().numpy()
        b = linear.bias.detach().cpu().numpy()
    Z = vectors.take(rows) @ w.T + b
    pq = ProductQuantizer(M, metric=metric, random_state=seed % (2**31 - 1)).fit(Z)
    return np.asarray(pq.centroids_, dtype=np.float32)


def _digest(qval: QuantizedValidator | None) -> str | None:
    if qval is None or qval.last_codes is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(qval.last_codes).tobytes()).hexdigest()


def rq_codec(codebooks: np.ndarray) -> Codec:
    """The product's RQ codec (:func:`tldr_index.codecs.get_codec` defaults: beam 5) holding
    exactly ``codebooks`` ``(M, 256, d)`` (no training)."""
    M, _, d = codebooks.shape
    return codec_from_state({"codebooks": np.ascontiguousarray(codebooks, dtype=np.float32)},
                            get_codec("rq", d, bytes=M).config())


def _linear(W: np.ndarray, b: np.ndarray, device: torch.device) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)))
        lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))
    return lin.to(device)


def fine_tune(components: np.ndarray, bias: np.ndarray, vectors: Vectors, anchors: np.ndarray,
              neighbors: np.ndarray, *, codec: str, n_bytes: int, epochs: int, batch_size: int,
              metric: str, teacher_temperature: float, teacher_scale: float, log_scale: float,
              seed: int, device: torch.device, validator: Any = None,
              map_learning_rate: float = MAP_LEARNING_RATE,
              codebook_learning_rate: float | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> QATResult:
    """Fine-tune the folded map ``components`` ``(d, D)`` / ``bias`` ``(d,)`` through ``codec``.

    ``vectors`` are the training rows, ``anchors`` the rows that start pairs (validation queries
    left out), ``neighbors[i]`` the kNN positions of row ``i`` (``-1`` pads). ``validator`` (a
    :class:`~tldr_index.trainer.Validator`) turns on early stopping on the quantized recall.
    ``log_scale`` is the ranking fit's learnt inverse temperature (the start here; learnt on).
    ``codebook_learning_rate``: None picks ``CODEBOOK_LEARNING_RATE`` (PQ) or
    ``RQ_CODEBOOK_LEARNING_RATE`` (RQ; OPQ takes the PQ rate; RaBitQ learns no codec array).
    With OPQ, RQ and RaBitQ, ``info["val_codes_sha256"]`` is the digest of the validation codes
    of the epoch kept (what :func:`codec_for` writes for those rows).
    Time: ``epochs x len(anchors) / batch_size`` steps (see the module docstring).
    """
    t_start = time.perf_counter()
    if codec not in CODECS[1:]:  # check_params refuses the rest before any work
        raise InvalidParameterError(f"The 'qat' parameter of TLDR must be one of 'pq', 'opq', "
                                    f"'rq', 'rabitq'. Got {codec!r} instead.")
    if codebook_learning_rate is None:
        codebook_learning_rate = RQ_CODEBOOK_LEARNING_RATE if codec == "rq" \
            else CODEBOOK_LEARNING_RATE
    d, M = components.shape[0], n_bytes
    sample_rng = np.random.default_rng([seed, 0x0A8])
    n_rows = vectors.n_rows
    km_rows = np.sort(sample_rng.choice(n_rows, min(n_rows, KMEANS_SAMPLE_ROWS), replace=False))
    qval = QuantizedValidator(validator, metric) if validator is not None else None
    digest, fixed = None, None

    if progress is not None:  # the phase begins with fitting the start's codec (no steps yet)
        progress(0, (len(anchors) // batch_size) * epochs, {"epoch": 0, "phase": "qat"})
    if codec == "pq":
        # the start: identity and random rotation, each with its k-means codebook; the better wins
        starts = {"rotation": random_rotation(d, seed)}
        if qval is not None:
            starts = {"identity": np.eye(d, dtype=np.float32), **starts}
        scored = {}
        for name, R in starts.items():
            lin = _linear(R @ components, R @ bias, device)
            cb = torch.from_numpy(_kmeans_codebook(lin, vectors, km_rows, M, metric,
                                                   seed)).to(device)
            score = qval.score(lin, cb) if qval is not None else None
            scored[name] = (score, R, lin, cb)
        start = max(scored, key=lambda k: scored[k][0]) if qval is not None else "rotation"
    else:
        # the start: the product's "map, then <codec>" (its codec fitted on the prepared sample)
        start = "identity"
        lin = _linear(components, bias, device)
        fixed = fit_start_codec(codec, components, bias, vectors, km_rows, M, metric, seed)
        score = qval.score_codec(components, bias, fixed) if qval is not None else None
        digest = _digest(qval)
        learned, R = codec_arrays(fixed)
        scored = {start: (score, R, lin, torch.from_numpy(learned.copy()).to(device))}
    _, R, linear, cb0 = scored[start]
    codebook = nn.Parameter(cb0.clone(), requires_grad=codec != "rabitq")
    rot = torch.from_numpy(R).to(device)
    ls = nn.Parameter(torch.tensor(float(log_scale), device=device))
    history: list[dict] = [{"epoch": 0, "start": start,
                            **{f"val_recall_{k}": v[0] for k, v in scored.items()}}]
    best_score = scored[start][0]
    best = (linear.weight.detach().clone(), linear.bias.detach().clone(), codebook.detach().clone())
    best_epoch, best_R = 0, R
    if qval is not None:
        log.info("QAT %s start (%s): quantized validation recall@%d %.4f (%s)", codec, start,
                 validator.k, best_score,
                 ", ".join(f"{k} {v[0]:.4f}" for k, v in scored.items()))

    opt = torch.optim.AdamW([{"params": [linear.weight], "base_lr": map_learning_rate},
                             {"params": [linear.bias], "base_lr": map_learning_rate},
                             {"params": [codebook, ls], "base_lr": codebook_learning_rate}],
                            lr=map_learning_rate, weight_decay=0.0)
    B = batch_size
    steps = len(anchors) // B
    total = steps * epochs
    for epoch in range(epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, 0x0A7, epoch])
        perm = anchors[rng.permutation(len(anchors))][:steps * B].reshape(steps, B)
        nb = neighbors[perm]
        valid = (nb >= 0).sum(2)
        pick = np.floor(rng.random(perm.shape) * np.maximum(valid, 1)).astype(np.int64)
        pair = np.take_along_axis(nb, pick[..., None], 2)[..., 0]
        pair = np.where(valid > 0, pair, perm)
        loss_sum = torch.zeros((), device=device)
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(epoch * steps + s, total, 0)
            xy = torch.from_numpy(vectors.take(np.concatenate([perm[s], pair[s]]))).to(device)
            u = _prep(linear(xy), metric)
            if codec == "pq":
                z_hat = pq_straight_through(u, codebook)
            elif codec == "rq":
                z_hat = rq_straight_through(u, codebook)
            elif codec == "opq":
                z_hat = opq_straight_through(u, codebook, rot)
            else:
                z_hat = codec_straight_through(u, fixed)
            sim = asymmetric_similarity(u, z_hat, metric)
            loss = ranking_loss(xy, u, ls, teacher_temperature=teacher_temperature, metric=metric,
                                teacher_scale=teacher_scale, reduced=sim)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            if progress is not None:
                progress(epoch * steps + s + 1, total, {"epoch": epoch + 1, "phase": "qat"})
        rec = {"epoch": epoch + 1, "loss": float(loss_sum) / max(steps, 1),
               "seconds": time.perf_counter() - t0}
        if not np.isfinite(rec["loss"]):
            raise FloatingPointError(f"Quantization-aware training diverged at epoch {epoch + 1} "
                                     f"(loss {rec['loss']}).")
        if codec == "opq" and OPQ_REFIT_ROTATION:
            R = procrustes_rotation(prepare_rows(linear_map(
                vectors.take(km_rows), linear.weight.detach().cpu().numpy(),
                linear.bias.detach().cpu().numpy()), metric), codebook.detach().cpu().numpy(), R)
            rot = torch.from_numpy(R).to(device)
        if codec == "rabitq":  # the centre follows the map (the rotation is the start's)
            fixed = fit_start_codec(codec, linear.weight.detach().cpu().numpy(),
                                    linear.bias.detach().cpu().numpy(), vectors, km_rows, M,
                                    metric, seed)
            with torch.no_grad():
                codebook.copy_(torch.from_numpy(codec_arrays(fixed)[0]))
        if qval is not None:
            if codec == "pq":
                rec["val_recall"] = qval.score(linear, codebook.detach())
            else:
                rec["val_recall"] = qval.score_codec(
                    linear.weight.detach().cpu().numpy(), linear.bias.detach().cpu().numpy(),
                    product_codec(codec, codebook.detach().cpu().numpy(), R, M))
            if rec["val_recall"] > best_score:
                best_score, best_epoch = rec["val_recall"], epoch + 1
                digest = _digest(qval) if codec in CODEC_PATH else None
                best = (linear.weight.detach().clone(), linear.bias.detach().clone(),
                        codebook.detach().clone())
                best_R = R
        else:
            best = (linear.weight.detach().clone(), linear.bias.detach().clone(),
                    codebook.detach().clone())
            best_epoch, best_R = epoch + 1, R
        history.append(rec)
        log.info("QAT epoch %d/%d: loss %.5f%s (%.1f s)", epoch + 1, epochs, rec["loss"],
                 f", quantized validation recall {rec['val_recall']:.4f}" if qval else "",
                 rec["seconds"])
    W, b, C = (t.cpu().numpy().astype(np.float32) for t in best)
    info = {"codec": codec, "bytes": M, "epochs": epochs, "start": start,
            "best_epoch": best_epoch, "val_recall_start": scored[start][0],
            "val_recall_best": best_score, "history": history,
            "learning_rates": {"map": map_learning_rate, "codebook": codebook_learning_rate},
            "seconds": time.perf_counter() - t_start}
    if codec == "rq":
        info.update(train_beam=RQ_TRAIN_BEAM, encode_beam=rq_codec(C).beam)
    if codec in CODEC_PATH:
        info["val_codes_sha256"] = digest
    if codec == "opq":
        info["refit_rotation"] = OPQ_REFIT_ROTATION
    return QATResult(W, b, np.ascontiguousarray(C), best_R.astype(np.float32), info)


# ----------------------------------------------------------------------------------------------
# model file hooks
def model_tensors(model: Any) -> dict[str, np.ndarray]:
    """The QAT arrays of a fitted model for its safetensors file (empty without QAT)."""
    if getattr(model, "qat_codebook_", None) is None:
        return {}
    return {"qat.codebook": np.asarray(model.qat_codebook_, dtype=np.float32),
            "qat.rotation": np.asarray(model.qat_rotation_, dtype=np.float32)}


def restore(model: Any, tensors: dict[str, np.ndarray]) -> None:
    """Set ``qat_codebook_``/``qat_rotation_`` from a model file's tensors (None when absent)."""
    cb, rot = tensors.get("qat.codebook"), tensors.get("qat.rotation")
    model.qat_codebook_ = None if cb is None else np.asarray(cb, dtype=np.float32)
    model.qat_rotation_ = None if rot is None else np.asarray(rot, dtype=np.float32)


def quantizer_for(model: Any) -> ProductQuantizer:
    """The :class:`ProductQuantizer` holding exactly the trained codebook of a ``qat="pq"`` model
    (encode ``model.transform(X)`` with it; it normalises for cosine as during training)."""
    if getattr(model, "qat_codebook_", None) is None or getattr(model, "qat", None) != "pq":
        raise InvalidParameterError(
            f"The 'model' passed to quantizer_for must be fitted with qat='pq'. Got a model "
            f"with qat={getattr(model, 'qat', None)!r} instead.")
    return ProductQuantizer.from_centroids(model.qat_codebook_,
                                           metric=getattr(model, "metric", "cosine"))


def codec_for(model: Any) -> Codec:
    """The product's codec (:func:`tldr_index.codecs.get_codec` defaults) holding exactly the
    trained arrays of a QAT model (:func:`product_codec`): a
    :class:`~tldr_index.codecs.PQCodec` for ``qat="pq"``, an
    :class:`~tldr_index.codecs.OPQCodec` (its rotation ``qat_rotation_``) for ``"opq"``, an
    :class:`~tldr_index.codecs.RQCodec` (beam 5) for ``"rq"``, a
    :class:`~tldr_index.codecs.RaBitQCodec` (centre ``qat_codebook_``, rotation
    ``qat_rotation_``, ``qat_bytes`` per code) for ``"rabitq"``. Pass it to
    :meth:`~tldr_index.compact.CompactModel.from_reducer` (it encodes
    ``prepare_rows(model.transform(X))``); no training, plain arrays only."""
    cb, qat = getattr(model, "qat_codebook_", None), getattr(model, "qat", None)
    if cb is None or qat not in CODECS[1:]:
        raise InvalidParameterError(
            f"The 'model' passed to codec_for must be fitted with qat='pq', 'opq', 'rq' or "
            f"'rabitq'. Got a model with qat={qat!r} instead.")
    return product_codec(qat, cb, model.qat_rotation_, int(model.qat_bytes))


def trained_codec(model: Any, name: str, dim: int, n_bytes: int) -> Codec | None:
    """:func:`codec_for` ``model`` when it was fitted with ``qat=name`` at ``n_bytes`` bytes and
    ``dim`` output dimensions (what a shrink stage encodes with instead of training a codec),
    else None."""
    if getattr(model, "qat_codebook_", None) is None or getattr(model, "qat", None) != name:
        return None
    codec = codec_for(model)
    return codec if (codec.dim, codec.code_size) == (dim, n_bytes) else None
