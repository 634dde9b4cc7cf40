"""Shared fixtures: small seeded *structured* data (low intrinsic dimension)."""

from __future__ import annotations

import numpy as np
import pytest


def make_structured(n: int = 1200, dim: int = 48, latent: int = 8, clusters: int = 12,
                    noise: float = 0.05, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Points of ``clusters`` Gaussian blobs in a ``latent``-d space, mapped linearly to ``dim``-d,
    plus isotropic noise; optionally L2-normalised (like text embeddings). float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, latent)) * 2.0
    lab = rng.integers(0, clusters, n)
    z = centers[lab] + rng.normal(size=(n, latent))
    A = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    x = z @ A + noise * rng.normal(size=(n, dim))
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def structured() -> np.ndarray:
    return make_structured()


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (``ray.init(num_cpus=2)``) in this process for a module's tests (starting
    Ray costs seconds), shut down after them unless it was running before; skips without Ray."""
    ray = pytest.importorskip("ray", reason="optional extra: pip install 'tldr-index[ray]'")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def pytest_unconfigure(config):
    """End the fork server of ``tests/_forkrun.py`` (if this process started one) before the
    process exits, also in a pytest-xdist worker: its children's CPU time is then counted in
    ours."""
    import sys

    forkrun = sys.modules.get("_forkrun")
    if forkrun is not None:
        forkrun._stop()
