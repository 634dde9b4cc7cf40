"""The GPU path against the CPU path: exact kNN through torch CUDA, the trainer on CUDA (rows
resident on the GPU or gathered on the host), and a shrink on CUDA.

Skipped without a CUDA GPU (CI has none); run on a GPU machine with ``python -m pytest -q
tests/test_gpu.py``. Tolerances are stated per test: float32 GEMMs on the GPU sum in another order,
so scores agree to ~1e-5 and neighbour ids agree except where two scores tie within that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_structured
from tldr_index import TLDR, trainer as trainer_mod
from tldr_index import faiss_utils as fu
from tldr_index.knn import exact_search, knn_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAST = dict(epochs=3, random_state=0)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of each row of ``a`` found in the same row of ``b``."""
    return float(np.mean([len(np.intersect1d(x, y)) / len(x) for x, y in zip(a, b)]))


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return make_structured(6000, 64, latent=10, clusters=20, seed=3)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_search_cuda_equals_cpu(X, metric):
    Q = X[:500] + 0.01
    rows = np.arange(500)
    Dc, Ic = exact_search(X, Q, 10, metric=metric, exclude=rows, device="cpu")
    Dg, Ig = exact_search(X, Q, 10, metric=metric, exclude=rows, device="cuda", chunk_rows=1000)
    np.testing.assert_allclose(Dg, Dc, rtol=1e-4, atol=1e-4)
    assert _overlap(Ig, Ic) >= 0.999
    assert not (Ig == rows[:, None]).any()  # excluded by id on the GPU too


def test_self_graph_cuda_equals_cpu(X):
    gc = knn_graph(X, 10, method="exact", metric="cosine", device="cpu")
    gg = knn_graph(X, 10, method="exact", metric="cosine", device="cuda", chunk_rows=1500)
    assert gg.params["device"] == "cuda" and gc.params["device"] == "cpu"
    assert _overlap(np.asarray(gg.neighbors), np.asarray(gc.neighbors)) >= 0.999
    assert not (np.asarray(gg.neighbors) == np.arange(len(X))[:, None]).any()


def test_auto_picks_the_gpu_kernel(X):
    g = knn_graph(X[:2000], 5)
    assert g.method == "exact" and g.params["device"] == "cuda"
    assert type(fu.make_kernel("auto")).__name__ in ("GpuKernel", "TorchCudaKernel")


@pytest.mark.parametrize("objective", ["ranking", "barlow"])
def test_tldr_cuda_close_to_cpu(X, objective):
    """Same data, seed and settings on both devices: maps within 2e-3 (relative to the largest
    reduced coordinate) after 3 epochs, and the same validation recall within 0.01."""
    kw = dict(FAST, objective=objective)
    if objective == "barlow":
        kw.update(encoder="linear", projector="mlp-1-64", batch_size=256)
    cpu = TLDR(16, device="cpu", **kw).fit(X)
    gpu = TLDR(16, device="cuda", **kw).fit(X)
    Zc, Zg = cpu.transform(X[:1000]), gpu.transform(X[:1000])
    rel = np.abs(Zc - Zg).max() / np.abs(Zc).max()
    print(f"{objective}: max relative difference CPU vs CUDA {rel:.2e}; val recall "
          f"{cpu.fit_info_['val_recall_best']:.4f} vs {gpu.fit_info_['val_recall_best']:.4f}")
    assert rel < 2e-3
    assert abs(cpu.fit_info_["val_recall_best"] - gpu.fit_info_["val_recall_best"]) <= 0.01


def test_resident_rows_equal_host_gathered_rows(X, monkeypatch):
    """Batches gathered on the GPU from resident rows (CUDA-graphed steps) are the same batches as
    rows read on the host and copied (pinned, asynchronous; eager steps): the same map up to
    float32 noise (1e-4; the graphed AdamW keeps its step counts on the GPU)."""
    a = TLDR(16, device="cuda", **FAST).fit(X)
    monkeypatch.setattr(trainer_mod, "RESIDENT_FRACTION", 0.0)
    b = TLDR(16, device="cuda", **FAST).fit(X)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-4)


def test_cuda_graph_steps_equal_eager_steps(X, monkeypatch, tmp_path):
    """One captured step replayed (the default on CUDA) trains the same map as eager steps, the
    warm-up before capture leaves no trace, and a resumed graphed run equals an uninterrupted one."""
    g = TLDR(16, device="cuda", **FAST).fit(X)
    monkeypatch.setattr(trainer_mod, "CUDA_GRAPHS", False)
    e = TLDR(16, device="cuda", **FAST).fit(X)
    rel = np.abs(g.components_ - e.components_).max() / np.abs(e.components_).max()
    print(f"graphed vs eager: max relative difference {rel:.2e}")
    assert rel < 1e-4
    monkeypatch.setattr(trainer_mod, "CUDA_GRAPHS", True)
    kw = dict(FAST, epochs=4)
    full = TLDR(16, device="cuda", **kw).fit(X)

    def crash(done, total, info):
        if done == total // 2 + 3:  # in the middle of epoch 3
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        TLDR(16, device="cuda", **kw).fit(X, checkpoint_dir=tmp_path / "c", progress=crash)
    resumed = TLDR(16, device="cuda", **kw).fit(X, checkpoint_dir=tmp_path / "c", resume=True)
    np.testing.assert_allclose(resumed.components_, full.components_, atol=1e-4)


def test_gaussian_pairs_on_cuda(X):
    m = TLDR(16, pairs="gaussian", device="cuda", **FAST).fit(X)
    assert np.isfinite(m.components_).all()


def test_shrink_on_cuda_beats_pca(tmp_path):
    from _pipeline_helpers import make_nested, parquet_source
    from tldr_index.pipeline import shrink

    Xs = make_nested(3000, 32, between=12, within=6)
    src = parquet_source(str(tmp_path / "src"), Xs)
    kw = dict(dim=8, pq_bytes=0, sample=3000, eval_queries=300, random_state=0)
    t = shrink(src, f"parquet://{tmp_path}/tldr", device="cuda", work_dir=tmp_path / "w1", **kw)
    p = shrink(src, f"parquet://{tmp_path}/pca", method="pca", device="cuda",
               work_dir=tmp_path / "w2", **kw)
    print(f"shrink on cuda: TLDR recall@10 {t.recall_at_10:.3f}, PCA {p.recall_at_10:.3f}")
    assert t.recall_at_10 >= p.recall_at_10 + 0.05
