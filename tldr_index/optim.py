"""LARS (the paper's optimizer) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as used by Barlow Twins and TLDR.

    Parameter groups with ``lars=False`` (biases, norms) get neither weight decay nor the
    trust-ratio adaptation. State: one momentum buffer per parameter.
    """

    def __init__(self, params, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if g["lars"]:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(dp)
                    q = torch.where(p_norm > 0,
                                    torch.where(u_norm > 0, g["eta"] * p_norm / u_norm,
                                                torch.ones_like(p_norm)),
                                    torch.ones_like(p_norm))
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def split_decay(module: torch.nn.Module) -> tuple[list, list]:
    """Parameters with weight decay (matrices) and without (biases, norm scales)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def lr_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float = 1e-3) -> float:
    """Linear warm-up from 0 over ``warmup_steps`` then cosine decay to ``final_fraction``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    rest = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / rest)
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t))
