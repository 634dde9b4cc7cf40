"""Training objectives.

* :func:`barlow_twins_loss`: the paper's TLDR objective (Zbontar et al.'s Barlow Twins on kNN pairs).
* :func:`ranking_loss`: similarity-ranking distillation. For every row of a batch, the softmax over
  the other rows of the reduced similarities is fitted (KL divergence) to the softmax of the original
  similarities. It targets what a vector-database user measures: are my nearest neighbours still
  my nearest neighbours?

Both cost O(B^2 * width) per batch of B rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def barlow_twins_loss(za: torch.Tensor, zb: torch.Tensor, lambd: float = 3.9e-3,
                      scale: float = 1 / 32, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss of two ``(B, p)`` views.

    Each view is batch-normalised per dimension (biased variance, like ``BatchNorm1d(affine=False)``),
    ``C = za^T zb / B`` and ``L = scale * (sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2)``.
    """
    B = za.shape[0]
    na = (za - za.mean(0)) / torch.sqrt(za.var(0, unbiased=False) + eps)
    nb = (zb - zb.mean(0)) / torch.sqrt(zb.var(0, unbiased=False) + eps)
    c = na.T @ nb / B
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


def cross_similarity(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """``(n_a, n_b)`` similarities: cosine, inner product or negative squared L2 distance."""
    if metric == "cosine":
        return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    if metric == "ip":
        return a @ b.T
    return -((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)).clamp_min(0)


def similarity_logits(v: torch.Tensor, metric: str) -> torch.Tensor:
    """``(n, n)`` similarity matrix of the rows of ``v`` (see :func:`cross_similarity`)."""
    return cross_similarity(v, v, metric)


def ranking_loss(x: torch.Tensor, z: torch.Tensor, log_scale: torch.Tensor, *,
                 teacher_temperature: float = 0.05, metric: str = "cosine",
                 teacher_scale: float = 1.0, reduced: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P_x || P_z) averaged over rows, where for row i

    ``P_x(i, .) = softmax_{j != i}(s_x(i, j) * teacher_scale / teacher_temperature)`` and
    ``P_z(i, .) = softmax_{j != i}(s_z(i, j) * exp(log_scale))``.

    ``s`` is cosine similarity (``metric="cosine"``), inner product, or negative squared L2 distance;
    ``exp(log_scale)`` is the learnable inverse temperature of the reduced space; ``teacher_scale``
    makes L2/inner-product similarities scale-free (1 for cosine). ``reduced``: the ``(n, n)``
    reduced similarities when the caller computes them itself (quantization-aware training: float
    rows against their quantized database side, see :mod:`tldr_index.qat`); ``z`` is then unused.
    """
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    with torch.no_grad():
        t = similarity_logits(x, metric) * (teacher_scale / teacher_temperature)
        log_p = F.log_softmax(t.masked_fill(eye, float("-inf")), dim=1)
    s = (similarity_logits(z, metric) if reduced is None else reduced) * log_scale.exp()
    log_q = F.log_softmax(s.masked_fill(eye, float("-inf")), dim=1)
    p = log_p.exp()
    kl = torch.where(eye, torch.zeros_like(p), p * (log_p - log_q))
    return kl.sum(1).mean()
