"""Objectives, optimizer and schedule checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from tldr_index.losses import barlow_twins_loss, ranking_loss
from tldr_index.optim import LARS, lr_factor


def test_barlow_twins_loss_hand_computed():
    # two dims, batch of 2: after per-dim batch norm every column is (-1, 1) or (1, -1)
    za = torch.tensor([[1.0, 3.0], [3.0, 1.0]])      # normalised: [[-1, 1], [1, -1]]
    zb = torch.tensor([[0.0, 5.0], [2.0, 5.5]])      # normalised: [[-1, -1], [1, 1]]
    # C = za_n^T zb_n / 2 = [[1, 1], [-1, -1]] -> on-diag (1-1)^2 + (1+1)^2 = 4; off-diag 1 + 1 = 2
    lambd, scale = 0.5, 0.25
    expected = scale * (4 + lambd * 2)
    got = barlow_twins_loss(za, zb, lambd=lambd, scale=scale, eps=0.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_barlow_twins_loss_zero_for_identical_decorrelated_views():
    # identical views with uncorrelated unit-variance columns: C = I, loss 0
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z.clone(), eps=0.0).item() == pytest.approx(0.0, abs=1e-7)


def test_ranking_loss_hand_computed():
    # 3 rows; original cosine sims; reduced equal to original -> KL 0 at matching temperature
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = 0.5
    log_scale = torch.tensor(math.log(1 / t))
    assert ranking_loss(x, x.clone(), log_scale, teacher_temperature=t).item() == pytest.approx(0, abs=1e-6)
    # reduced space collapses all rows to one point: Q uniform over the 2 others
    z = torch.ones(3, 2)
    c = 1 / math.sqrt(2)
    # row 0: sims to rows 1, 2 = 0, c ; row 1: 0, c ; row 2: c, c
    def kl_uniform(s):
        p = np.exp(np.array(s) / t); p /= p.sum()
        return float((p * np.log(p / 0.5)).sum())
    expected = (kl_uniform([0, c]) * 2 + kl_uniform([c, c])) / 3
    got = ranking_loss(x, z, log_scale, teacher_temperature=t).item()
    assert got == pytest.approx(expected, abs=1e-6)


def test_ranking_loss_l2_metric_uses_squared_distances():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    log_scale = torch.tensor(0.0)
    # identical spaces, teacher scale 1 and temperature 1 -> same softmax -> KL 0
    assert ranking_loss(x, x.clone(), log_scale, teacher_temperature=1.0,
                        metric="l2").item() == pytest.approx(0.0, abs=1e-6)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(1e-3)
    mid = lr_factor(55, 100, 10)
    assert mid == pytest.approx(1e-3 + (1 - 1e-3) * 0.5, abs=1e-9)


def test_lars_trust_ratio_and_no_decay_group():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))      # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars": True}, {"params": [b], "lars": False, "weight_decay": 0.0}],
               lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001)
    w.grad = torch.tensor([0.0, 10.0])                   # |g| = 10 -> q = 0.001 * 5 / 10
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0 - 10 * 0.0005]))
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 2.0]))   # plain SGD step
