"""Encoder and projector architectures, built from short spec strings, and folding to one matrix.

Specs (the paper's names):

* ``"linear"``: ``f(x) = W x + b``.
* ``"flinear-L-H"``: factorized linear, ``L`` blocks of Linear(., H) + BatchNorm, then Linear(H, d);
  no non-linearity, so at inference it folds into one ``d x D`` matrix and bias.
* ``"mlp-L-H"``: ``L`` blocks of Linear(., H) + BatchNorm + ReLU, then Linear(H, d).

Projectors (Barlow Twins only) use ``"mlp-L-H"``: ``L`` blocks of Linear + BN + ReLU, then
Linear(H, H): the loss lives in that ``H``-wide space. ``"linear-H"`` is a single Linear(d, H).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import InvalidParameterError

_SPEC = re.compile(r"^(linear|flinear|mlp)(?:-(\d+)-(\d+))?$")
_PROJ = re.compile(r"^(?:(mlp)-(\d+)-(\d+)|(linear)-(\d+))$")


@dataclass(frozen=True)
class ArchSpec:
    kind: str          # "linear" | "flinear" | "mlp"
    layers: int = 0    # hidden blocks
    hidden: int = 0    # hidden width

    @property
    def foldable(self) -> bool:
        return self.kind in ("linear", "flinear")


def parse_encoder(spec: str, owner: str = "TLDR") -> ArchSpec:
    """Parse ``"linear"``, ``"flinear-L-H"`` or ``"mlp-L-H"``; raise naming the parameter otherwise."""
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if not m or (m.group(1) == "linear") != (m.group(2) is None) or \
            (m.group(2) is not None and (int(m.group(2)) < 1 or int(m.group(3)) < 1)):
        raise InvalidParameterError(
            f"The 'encoder' parameter of {owner} must be 'linear', 'flinear-L-H' or 'mlp-L-H' with "
            f"integers L >= 1 and H >= 1 (e.g. 'flinear-2-512'). Got {spec!r} instead.")
    if m.group(1) == "linear":
        return ArchSpec("linear")
    return ArchSpec(m.group(1), int(m.group(2)), int(m.group(3)))


def parse_projector(spec: str, owner: str = "TLDR") -> ArchSpec:
    """Parse ``"mlp-L-H"`` or ``"linear-H"`` (output width H)."""
    m = _PROJ.match(spec) if isinstance(spec, str) else None
    ok = bool(m) and (m.group(1) is None or (int(m.group(2)) >= 1 and int(m.group(3)) >= 1)) and \
        (m.group(4) is None or int(m.group(5)) >= 1)
    if not ok:
        raise InvalidParameterError(
            f"The 'projector' parameter of {owner} must be 'mlp-L-H' or 'linear-H' with integers "
            f"L >= 1 and H >= 1 (e.g. 'mlp-2-2048'). Got {spec!r} instead.")
    if m.group(1):
        return ArchSpec("mlp", int(m.group(2)), int(m.group(3)))
    return ArchSpec("linear", 0, int(m.group(5)))


def build_encoder(spec: ArchSpec, in_dim: int, out_dim: int) -> nn.Sequential:
    """Build the encoder network (weights from torch's current default generator state)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(spec.layers):
        layers += [nn.Linear(width, spec.hidden), nn.BatchNorm1d(spec.hidden)]
        if spec.kind == "mlp":
            layers.append(nn.ReLU())
        width = spec.hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def build_projector(spec: ArchSpec, in_dim: int) -> nn.Sequential:
    """Build the Barlow Twins projector; its output width is ``spec.hidden``."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(spec.layers):
        layers += [nn.Linear(width, spec.hidden), nn.BatchNorm1d(spec.hidden), nn.ReLU()]
        width = spec.hidden
    layers.append(nn.Linear(width, spec.hidden))
    return nn.Sequential(*layers)


@torch.no_grad()
def fold_linear(encoder: nn.Module, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold a linear/flinear encoder (in eval mode) into ``(W, b)`` with ``f(x) = x @ W.T + b``.

    Computed in float64 by probing the affine map with 0 and the unit vectors: exact up to
    rounding for any chain of Linear and (eval-mode) BatchNorm layers. Cost: one forward pass of
    ``in_dim + 1`` rows.
    """
    was_training = encoder.training
    enc64 = encoder.double().eval()
    try:
        probe = torch.cat([torch.zeros(1, in_dim, dtype=torch.float64),
                           torch.eye(in_dim, dtype=torch.float64)])
        out = enc64(probe)
        b = out[0]
        W = (out[1:] - b).T
    finally:
        encoder.float()
        encoder.train(was_training)
    return W.numpy().astype(np.float32), b.numpy().astype(np.float32)


def init_linear_from(encoder: nn.Sequential, weight: np.ndarray, bias: np.ndarray) -> None:
    """Set a plain ``linear`` encoder to ``x @ weight.T + bias`` (e.g. the PCA map)."""
    lin = encoder[-1]
    if len(encoder) != 1 or not isinstance(lin, nn.Linear):
        raise InvalidParameterError(
            "The 'init' parameter of TLDR can only be 'pca' with encoder='linear'. Got an encoder "
            f"with {len(encoder)} layers instead.")
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        lin.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
