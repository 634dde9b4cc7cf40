"""Dynamic hard negatives and weight averaging of the TLDR trainer (issue 14): the mined table,
the batch layout, the moving average, resume, and every parameter error."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tldr_index import TLDR
from tldr_index.errors import InvalidParameterError
from tldr_index.trainer import TrainConfig, Trainer
from tldr_index.vectors import as_vectors


def _trainer(batch_size: int = 8, m: int = 1, h: int = 0, pool: int = 10, ema: float = 0.0,
             encoder: torch.nn.Module | None = None) -> Trainer:
    cfg = TrainConfig(objective="ranking", epochs=1, batch_size=batch_size, learning_rate=1e-3,
                      optimizer="adamw", weight_decay=0.0, warmup_epochs=0.0, lambd=0.0,
                      loss_scale=1.0, teacher_temperature=0.05, barlow_weight=0.0, pairs="knn",
                      noise_std=0.1, metric="cosine", seed=0, device="cpu",
                      neighbors_per_anchor=m, hard_negatives=h, hard_pool=pool, ema_decay=ema)
    return Trainer(encoder or torch.nn.Linear(4, 2), None, cfg, torch.device("cpu"))


def test_mine_hard_is_the_reduced_top_pool_minus_the_graph_row(structured):
    # reference: brute-force cosine top-pool of the encoded rows (own row excluded), with the
    # row's kNN graph entries replaced by -1
    torch.manual_seed(0)
    enc = torch.nn.Linear(structured.shape[1], 4)
    tr = _trainer(h=2, pool=6, encoder=enc)
    rng = np.random.default_rng(0)
    neighbors = rng.integers(0, len(structured), (len(structured), 3))
    got = tr.mine_hard(as_vectors(structured), neighbors, chunk_rows=500)
    with torch.no_grad():
        z = torch.nn.functional.normalize(enc(torch.from_numpy(structured)), dim=1).numpy()
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :6]
    want = np.where((top[:, :, None] == neighbors[:, None, :]).any(2), -1, top)
    # float32 near-ties may swap order within a row: compare the sets, allow 0.5% of rows off
    same = [set(g) == set(w) for g, w in zip(got, want)]
    assert np.mean(same) >= 0.995
    assert enc.training  # back in training mode


def test_hard_negatives_follow_the_neighbours_and_keep_the_other_draws():
    n, k, B, m, h, pool = 40, 6, 8, 3, 2, 5
    nb = 100 + 10 * np.arange(n)[:, None] + np.arange(k)[None, :]
    hard = 1000 + 10 * np.arange(n)[:, None] + np.arange(pool)[None, :]
    hard[5, 1:] = -1          # one hard negative only: the second is a random anchor
    hard[9, :] = -1           # none: two random anchors
    anchors = np.arange(n)
    a0, b0 = _trainer(B, m, 0)._epoch_pairs(anchors, nb, np.random.default_rng(0), hard)
    a, b = _trainer(B, m, h)._epoch_pairs(anchors, nb, np.random.default_rng(0), hard)
    assert b.shape == (n // B, B * (m + h))
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b[:, :B * m], b0)       # neighbours first, the same draws
    for s in range(len(a)):
        for i, row in enumerate(a[s]):
            got = b[s, B * m + i * h:B * m + (i + 1) * h]
            if row == 5:
                assert got[0] == hard[5, 0] and got[1] in anchors
            elif row == 9:
                assert set(got) <= set(anchors)
            else:
                assert len(set(got)) == h and set(got) <= set(hard[row])


def test_without_a_hard_table_the_batch_is_unchanged():
    nb = np.arange(50 * 4).reshape(50, 4)
    a0, b0 = _trainer(10, 1, 0)._epoch_pairs(np.arange(50), nb, np.random.default_rng(2))
    a, b = _trainer(10, 1, 3)._epoch_pairs(np.arange(50), nb, np.random.default_rng(2), None)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_fit_with_hard_negatives_puts_mined_rows_in_the_batches(structured, monkeypatch):
    seen = []
    keep = Trainer._step_loss

    def spy(self, x, y):
        seen.append(y.shape[0] / x.shape[0])
        return keep(self, x, y)
    monkeypatch.setattr(Trainer, "_step_loss", spy)
    TLDR(8, n_neighbors=5, neighbors_per_anchor=2, hard_negatives=3, hard_pool=4, epochs=1,
         batch_size=64, random_state=0).fit(structured)
    assert seen and set(seen) == {2 + 3}


def test_ema_update_is_the_moving_average():
    tr = _trainer(ema=0.9)
    ema = {k: torch.zeros_like(v) for k, v in tr.state_tensors().items()}
    live = tr._live_tensors()
    for step in (0, 50):
        before = {k: v.clone() for k, v in ema.items()}
        tr._update_ema(ema, live, step)
        decay = min(0.9, (1 + step) / (10 + step))
        for k, v in live.items():
            torch.testing.assert_close(ema[k], decay * before[k] + (1 - decay) * v,
                                       rtol=0, atol=1e-7)


def test_ema_with_a_tiny_decay_is_the_raw_fit(structured):
    # decay 1e-12: the average is the last step's weights, to float rounding
    kw = dict(epochs=2, batch_size=64, random_state=0, patience=None)
    raw = TLDR(8, **kw).fit(structured)
    avg = TLDR(8, ema_decay=1e-12, **kw).fit(structured)
    np.testing.assert_allclose(avg.components_, raw.components_, atol=1e-6)
    assert [h.get("val_recall") for h in avg.history_] == \
        pytest.approx([h.get("val_recall") for h in raw.history_])


def test_ema_fit_returns_the_average_not_the_last_weights(structured):
    kw = dict(epochs=2, batch_size=64, random_state=0, patience=None, early_stopping=False)
    raw = TLDR(8, **kw).fit(structured)
    avg = TLDR(8, ema_decay=0.99, **kw).fit(structured)
    assert np.abs(avg.components_ - raw.components_).max() > 1e-4


class _Crash(Exception):
    pass


def test_resume_with_ema_and_hard_negatives_equals_uninterrupted_run(structured, tmp_path):
    kw = dict(epochs=3, batch_size=64, random_state=3, patience=None, n_neighbors=4,
              neighbors_per_anchor=2, hard_negatives=1, hard_pool=3, ema_decay=0.95)
    full = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "full")

    def crash(done, total, info):
        if done == total // 3 * 2 + 2:        # in epoch 3
            raise _Crash
    with pytest.raises(_Crash):
        TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "run", progress=crash)
    resumed = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "run", resume=True)
    np.testing.assert_allclose(resumed.components_, full.components_, atol=1e-6)
    assert [h.get("val_recall") for h in resumed.history_] == \
        pytest.approx([h.get("val_recall") for h in full.history_])


@pytest.mark.parametrize("kw, text", [
    (dict(hard_negatives=-1), "The 'hard_negatives' parameter of TLDR must be an int in the range [0, inf). Got -1 instead."),
    (dict(hard_pool=0), "The 'hard_pool' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(hard_negatives=4, hard_pool=3), "The 'hard_negatives' parameter of TLDR must be at most hard_pool (3). Got 4 instead."),
    (dict(hard_negatives=1, objective="barlow"), "The 'hard_negatives' parameter of TLDR can exceed 0 only with objective='ranking' and pairs='knn'. Got 1 with objective='barlow', pairs='knn' instead."),
    (dict(hard_negatives=1, pairs="gaussian"), "The 'hard_negatives' parameter of TLDR can exceed 0 only with objective='ranking' and pairs='knn'. Got 1 with objective='ranking', pairs='gaussian' instead."),
    (dict(ema_decay=-0.1), "The 'ema_decay' parameter of TLDR must be a float in the range [0, 1]. Got -0.1 instead."),
    (dict(ema_decay=1.0), "The 'ema_decay' parameter of TLDR must be a float in the range [0, 1) (0: no weight averaging). Got 1 instead."),
])
def test_parameter_errors(structured, kw, text):
    with pytest.raises(InvalidParameterError, match=re.escape(text)):
        TLDR(8, epochs=1, batch_size=64, **kw).fit(structured)
