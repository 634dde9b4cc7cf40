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
* AdamW (map ``MAP_LEARNING_RATE``, codebook ``CODEBOOK_LEARNING_RATE``, no weight decay), cosine
  decay over ``qat_epochs``; with a validator, the epoch (0 = the start) with the best held-out
  recall@10 *of the quantized search* is kept, so QAT never returns worse than its start on those
  rows. The start is the better (on the same rows) of the identity and the random rotation, each
  with its k-means codebook: the identity start is the plain "map, then PQ" of the product.

Exported as plain arrays: ``components_``/``bias_`` (the rotation already folded in, the map stays
linear), ``qat_codebook_`` ``(M, 256, d / M)`` float32 (the trained codebook: encode with
:func:`quantizer_for`, never re-train it) and ``qat_rotation_`` ``(d, d)`` (the rotation that was
folded into the map at the start, kept for provenance; do **not** apply it again).

Cost per step: the ranking loss on ``2 B`` rows, O(B^2 (D + d)), plus the assignment
O(2 B x 256 x d); per validation: encoding and quantizing ``n_db`` rows plus ``n_q x n_db x d``.
Memory: one batch, the ``D x d`` map and the ``256 x d`` codebook.
"""

from __future__ import annotations

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
from .losses import cross_similarity, ranking_loss
from .optim import lr_factor
from .quantizer import ProductQuantizer
from .vectors import Vectors

log = logging.getLogger(__name__)

CODECS = (None, "pq")
MAP_LEARNING_RATE = 3e-4
CODEBOOK_LEARNING_RATE = 1e-3
KSUB = 256                      # centroids per sub-quantizer (8-bit codes)
KMEANS_SAMPLE_ROWS = 65_536     # reduced rows the k-means initialisation sees at most


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
    if n_components % M:
        raise InvalidParameterError(
            f"The 'qat_bytes' parameter of {owner} must divide n_components={n_components} (one "
            f"sub-vector per byte). Got {M} instead.")
    if n_train < KSUB:
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


def _prep(z: torch.Tensor, metric: str) -> torch.Tensor:
    return F.normalize(z, dim=1) if metric == "cosine" else z


def asymmetric_similarity(q: torch.Tensor, db: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarities of prepared float queries to (quantized) database rows, as ADC ranks them:
    inner product for cosine (both sides already prepared) and ip, ``-||q - db||^2`` for l2."""
    return cross_similarity(q, db, "l2" if metric == "l2" else "ip")


# ----------------------------------------------------------------------------------------------
class QuantizedValidator:
    """Recall@k of the *quantized* search on held-out queries: database rows PQ-encoded with the
    current codebook, queries float (ADC). Uses the ground truth of a
    :class:`~tldr_index.trainer.Validator` (its ``db``, ``query_pos``, ``truth``, ``k``).
    Cost per call: encoding + quantizing ``n_db`` rows and ``n_q x n_db`` similarities."""

    def __init__(self, validator: Any, metric: str):
        self.v, self.metric = validator, metric

    def score(self, linear: nn.Linear, codebook: torch.Tensor) -> float:
        v, dev = self.v, codebook.device
        with torch.no_grad():
            rows = []
            for s in range(0, len(v.db), 8192):
                rows.append(_prep(linear(torch.from_numpy(v.db[s:s + 8192]).to(dev)), self.metric))
            u = torch.cat(rows)
            rec = pq_reconstruct(pq_assign(u, codebook), codebook)
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
    codebook: np.ndarray            # (M, 256, d / M) float32
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
              codebook_learning_rate: float = CODEBOOK_LEARNING_RATE,
              progress: Callable[[int, int, dict], None] | None = None) -> QATResult:
    """Fine-tune the folded map ``components`` ``(d, D)`` / ``bias`` ``(d,)`` through ``codec``.

    ``vectors`` are the training rows, ``anchors`` the rows that start pairs (validation queries
    left out), ``neighbors[i]`` the kNN positions of row ``i`` (``-1`` pads). ``validator`` (a
    :class:`~tldr_index.trainer.Validator`) turns on early stopping on the quantized recall.
    ``log_scale`` is the ranking fit's learnt inverse temperature (the start here; learnt on).
    Time: ``epochs x len(anchors) / batch_size`` steps (see the module docstring).
    """
    t_start = time.perf_counter()
    if codec != "pq":  # check_params refuses the rest before any work
        raise InvalidParameterError(f"The 'qat' parameter of TLDR must be one of 'pq'. Got "
                                    f"{codec!r} instead.")
    d, M = components.shape[0], n_bytes
    sample_rng = np.random.default_rng([seed, 0x0A8])
    n_rows = vectors.n_rows
    km_rows = np.sort(sample_rng.choice(n_rows, min(n_rows, KMEANS_SAMPLE_ROWS), replace=False))
    qval = QuantizedValidator(validator, metric) if validator is not None else None

    # the start: identity and random rotation, each with its k-means codebook; the better wins
    starts = {"rotation": random_rotation(d, seed)}
    if qval is not None:
        starts = {"identity": np.eye(d, dtype=np.float32), **starts}
    scored = {}
    for name, R in starts.items():
        lin = _linear(R @ components, R @ bias, device)
        cb = torch.from_numpy(_kmeans_codebook(lin, vectors, km_rows, M, metric, seed)).to(device)
        score = qval.score(lin, cb) if qval is not None else None
        scored[name] = (score, R, lin, cb)
    start = max(scored, key=lambda k: scored[k][0]) if qval is not None else "rotation"
    _, R, linear, cb0 = scored[start]
    codebook = nn.Parameter(cb0.clone())
    ls = nn.Parameter(torch.tensor(float(log_scale), device=device))
    history: list[dict] = [{"epoch": 0, "start": start,
                            **{f"val_recall_{k}": v[0] for k, v in scored.items()}}]
    best_score = scored[start][0]
    best = (linear.weight.detach().clone(), linear.bias.detach().clone(), codebook.detach().clone())
    best_epoch = 0
    if qval is not None:
        log.info("QAT start (%s): quantized validation recall@%d %.4f (identity %.4f, "
                 "random rotation %.4f)", start, validator.k, best_score,
                 scored["identity"][0], scored["rotation"][0])

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
            z_hat = pq_straight_through(u, codebook)
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
        if qval is not None:
            rec["val_recall"] = qval.score(linear, codebook.detach())
            if rec["val_recall"] > best_score:
                best_score, best_epoch = rec["val_recall"], epoch + 1
                best = (linear.weight.detach().clone(), linear.bias.detach().clone(),
                        codebook.detach().clone())
        else:
            best = (linear.weight.detach().clone(), linear.bias.detach().clone(),
                    codebook.detach().clone())
            best_epoch = epoch + 1
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
    return QATResult(W, b, np.ascontiguousarray(C), R.astype(np.float32), info)


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
    """The :class:`ProductQuantizer` holding exactly the trained codebook of a QAT model (encode
    ``model.transform(X)`` with it; it normalises for cosine as during training)."""
    if getattr(model, "qat_codebook_", None) is None:
        raise InvalidParameterError(
            f"The 'model' passed to quantizer_for must be fitted with qat='pq'. Got a model "
            f"with qat={getattr(model, 'qat', None)!r} instead.")
    return ProductQuantizer.from_centroids(model.qat_codebook_,
                                           metric=getattr(model, "metric", "cosine"))
