"""The TLDR estimator and PCA baselines: quality, folding, persistence, resume, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tldr_index import PCA, TLDR, load_model
from tldr_index.errors import CheckpointError

from conftest import make_structured

FAST = dict(epochs=3, batch_size=64, random_state=0)


def recall_at_10(model, X, q_idx):
    """Recall@10 of cosine search in the reduced space vs exact cosine search in the original."""
    def top(Z):
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        s = Z[q_idx] @ Z.T
        s[np.arange(len(q_idx)), q_idx] = -np.inf
        return np.argsort(-s, axis=1)[:, :10]
    a, b = top(model.transform(X)), top(X)
    return np.mean([len(np.intersect1d(u, v)) / 10 for u, v in zip(a, b)])


def test_ranking_objective_beats_pca(structured):
    q = np.arange(0, len(structured), 6)
    pca = PCA(6).fit(structured)
    tldr = TLDR(6, n_neighbors=10, epochs=8, batch_size=64, random_state=0).fit(structured)
    r_pca, r_tldr = recall_at_10(pca, structured, q), recall_at_10(tldr, structured, q)
    assert r_tldr >= r_pca + 0.03, (r_tldr, r_pca)


@pytest.mark.parametrize("objective", ["barlow", "ranking+barlow"])
def test_barlow_objectives_train_and_lower_their_loss(structured, objective):
    m = TLDR(8, objective=objective, projector="mlp-1-64", epochs=4, batch_size=128,
             early_stopping=False, random_state=0).fit(structured)
    losses = [h["loss"] for h in m.history_]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert m.transform(structured).shape == (len(structured), 8)


def test_gaussian_pairs_baseline_runs(structured):
    m = TLDR(8, pairs="gaussian", objective="barlow", projector="mlp-1-64", epochs=2,
             batch_size=128, random_state=0).fit(structured)
    assert np.isfinite(m.transform(structured)).all()


def test_flinear_folds_into_one_matrix_within_1e4(structured):
    m = TLDR(8, encoder="flinear-2-32", **FAST, early_stopping=False).fit(structured)
    # rebuild the unfolded network by re-training with the same seed and keep the module
    m2 = TLDR(8, encoder="mlp-2-32", **FAST, early_stopping=False)  # sanity: mlp is not foldable
    m2.fit(structured)
    assert m2.encoder_ is not None and m.encoder_ is None
    # direct folding check on a random flinear network with non-trivial BN statistics
    from tldr_index.model import build_encoder, fold_linear, parse_encoder
    torch.manual_seed(0)
    enc = build_encoder(parse_encoder("flinear-3-16"), 48, 8)
    enc.train()
    with torch.no_grad():
        for _ in range(5):
            enc(torch.from_numpy(structured[:256]) * 3 + 1)   # move BN running stats
        for mod in enc:
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.uniform_(-1, 1)
    enc.eval()
    W, b = fold_linear(enc, 48)
    with torch.no_grad():
        ref = enc(torch.from_numpy(structured)).numpy()
    np.testing.assert_allclose(structured @ W.T + b, ref, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(), dict(encoder="flinear-2-32"), dict(encoder="mlp-1-32")])
def test_save_load_round_trip(structured, tmp_path, kw):
    m = TLDR(8, **FAST, **kw).fit(structured)
    path = tmp_path / "m.safetensors"
    m.save(path)
    back = TLDR.load(path)
    np.testing.assert_allclose(back.transform(structured), m.transform(structured), atol=1e-6)
    assert back.get_params() == m.get_params()
    assert type(load_model(path)) is TLDR
    back.save(tmp_path / "again.safetensors")
    # safetensors orders its metadata map arbitrarily: compare content, not bytes
    from tldr_index.artifact import load_model_file
    t1, i1 = load_model_file(path)
    t2, i2 = load_model_file(tmp_path / "again.safetensors")
    assert i1 == i2 and t1.keys() == t2.keys()
    for key in t1:
        np.testing.assert_array_equal(t1[key], t2[key])


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_exact_reference_and_round_trips(structured, tmp_path, whiten):
    from sklearn.decomposition import PCA as SkPCA
    X = structured.astype(np.float64)
    ours = PCA(6, whiten=whiten, chunk_rows=100).fit(structured)   # 12 streamed blocks
    ref = SkPCA(6, whiten=whiten, svd_solver="full").fit(X)
    Z, R = ours.transform(structured), ref.transform(X)
    signs = np.sign((Z * R).sum(0))                  # components are defined up to sign
    np.testing.assert_allclose(Z * signs, R, atol=2e-3 * np.abs(R).max())
    ours.save(tmp_path / "p.safetensors")
    back = load_model(tmp_path / "p.safetensors")
    assert isinstance(back, PCA) and back.whiten == whiten
    np.testing.assert_array_equal(back.transform(structured), Z)


def test_cpu_determinism(structured):
    a = TLDR(8, **FAST).fit(structured)
    b = TLDR(8, **FAST).fit(structured)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.bias_, b.bias_)


def test_fit_does_not_touch_global_rngs(structured):
    np.random.seed(123)
    torch.manual_seed(123)
    before = (np.random.random(), torch.rand(1).item())
    np.random.seed(123)
    torch.manual_seed(123)
    TLDR(8, **FAST).fit(structured)
    assert (np.random.random(), torch.rand(1).item()) == before


class _Crash(Exception):
    pass


@pytest.mark.parametrize("objective", ["ranking", "barlow"])
def test_resume_equals_uninterrupted_run(structured, tmp_path, objective):
    # patience=None: every epoch runs, so the crash in epoch 3 is reached (early stopping on
    # resume is tested below)
    kw = dict(objective=objective, projector="mlp-1-64", epochs=4, batch_size=64, random_state=3,
              patience=None)
    full = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "full")
    steps_per_epoch = None

    def crash(done, total, info):
        nonlocal steps_per_epoch
        steps_per_epoch = total // 4
        if done == 2 * steps_per_epoch + 3:    # in the middle of epoch 3
            raise _Crash
    with pytest.raises(_Crash):
        TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "run", progress=crash)
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()
    resumed = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path / "run", resume=True)
    np.testing.assert_allclose(resumed.components_, full.components_, atol=1e-6)
    np.testing.assert_allclose(resumed.bias_, full.bias_, atol=1e-6)
    assert [h.get("val_recall") for h in resumed.history_] == \
        pytest.approx([h.get("val_recall") for h in full.history_])


def test_resume_of_a_run_that_stopped_early_runs_no_further_epoch(structured, tmp_path):
    kw = dict(epochs=5, batch_size=64, patience=1, min_delta=1.0, random_state=3)
    first = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path)
    assert first.fit_info_["stopped_epoch"] == 1
    again = TLDR(8, **kw).fit(structured, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in again.history_] == [0, 1]
    np.testing.assert_allclose(again.components_, first.components_, atol=1e-6)


def test_resume_refuses_checkpoint_of_another_run(structured, tmp_path):
    TLDR(8, **FAST).fit(structured, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        TLDR(6, **FAST).fit(structured, checkpoint_dir=tmp_path, resume=True)


def test_memmap_and_store_inputs_equal_array_input(structured, tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                   shape=structured.shape)
    mm[:] = structured
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = TLDR(8, **FAST).fit(structured)
    b = TLDR(8, **FAST, chunk_rows=128).fit(mm)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-5)
    np.testing.assert_allclose(a.transform(structured), b.transform(mm), atol=1e-5)


def test_sub_sampling_training_rows(structured):
    m = TLDR(8, **FAST, max_train_rows=600).fit(structured)
    assert m.fit_info_["n_train"] == 600 and m.fit_info_["n_rows"] == len(structured)


def test_early_stopping_never_returns_worse_than_initial_pca_on_validation(structured):
    m = TLDR(8, epochs=2, batch_size=64, learning_rate=5.0, random_state=0)  # absurd lr
    try:
        m.fit(structured)
    except FloatingPointError:
        return   # divergence is reported, never silently returned
    assert m.fit_info_["val_recall_best"] >= m.fit_info_["val_recall_initial"]


def test_stale_epochs_counts_epochs_without_a_gain_of_min_delta():
    from tldr_index.trainer import stale_epochs
    h = [{"epoch": 0, "val_recall": 0.50}, {"epoch": 1, "val_recall": 0.60},
         {"epoch": 2, "val_recall": 0.6005}, {"epoch": 3, "val_recall": 0.59}]
    assert stale_epochs(h, 0.0) == 1          # 0.6005 beat 0.60; 0.59 did not
    assert stale_epochs(h, 1e-3) == 2         # 0.6005 is no gain of 1e-3
    assert stale_epochs(h[:2], 1e-3) == 0
    assert stale_epochs([{"epoch": 1, "loss": 1.0}], 0.0) == 0   # no validation: never stale


def test_patience_stops_the_fit_once_validation_recall_stops_improving(structured):
    # min_delta 1.0: no epoch can gain a whole point of recall, so the fit stops after `patience`
    m = TLDR(8, epochs=5, batch_size=64, patience=2, min_delta=1.0, random_state=0).fit(structured)
    assert [h["epoch"] for h in m.history_] == [0, 1, 2]
    assert m.fit_info_["stopped_epoch"] == 2
    full = TLDR(8, epochs=5, batch_size=64, patience=None, random_state=0).fit(structured)
    assert [h["epoch"] for h in full.history_] == [0, 1, 2, 3, 4, 5]
    assert full.fit_info_["stopped_epoch"] is None
    # the epochs that ran are the same epochs (same schedule, same batches)
    assert m.history_[1]["val_recall"] == full.history_[1]["val_recall"]


def test_given_graph_is_used_and_checked(structured):
    from tldr_index.knn import knn_graph
    g = knn_graph(structured, 5, method="exact", metric="cosine")
    m = TLDR(8, n_neighbors=5, **FAST).fit(structured, graph=g)
    assert m.fit_info_["graph"]["method"] == "exact"
    m2 = TLDR(8, n_neighbors=5, **FAST).fit(structured, graph=g.neighbors)
    np.testing.assert_array_equal(m.components_, m2.components_)


def test_device_auto_is_cpu_here_and_cuda_gives_clear_error(structured):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    from tldr_index.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="'device' parameter of TLDR is 'cuda' but torch sees no CUDA GPU"):
        TLDR(8, device="cuda", **FAST).fit(structured)


def test_structured_data_helper_has_low_intrinsic_dimension():
    X = make_structured(500)
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    assert (s[:8] ** 2).sum() / (s ** 2).sum() > 0.9


def test_n_jobs_limits_torch_threads_during_fit_and_restores_them(structured, monkeypatch):
    """``TLDR(n_jobs=...)``: the CLI's thread policy. The threads torch uses inside fit are
    recorded from the training progress callback."""
    import tldr_index.threads as threads_mod
    from tldr_index.threads import thread_limit
    from tldr_index.errors import InvalidParameterError

    X = structured[:600]
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        def seen_in_fit(**kw) -> set:
            seen, outside = set(), torch.get_num_threads()
            TLDR(4, epochs=1, batch_size=64, random_state=0, **kw).fit(
                X, progress=lambda *_: seen.add(torch.get_num_threads()))
            assert torch.get_num_threads() == outside   # restored
            return seen

        assert seen_in_fit(n_jobs=1) == {1}
        assert seen_in_fit(n_jobs=2) == {2}
        monkeypatch.setattr(threads_mod, "auto_threads", lambda: 1)  # "one core looks idle"
        assert seen_in_fit() == {1}                 # default None: the idle cores
        with thread_limit(2):                      # inside a command (shrink --threads 2)
            assert seen_in_fit() == {2}
        assert torch.get_num_threads() == 3
        assert TLDR(4).get_params()["n_jobs"] is None
        assert TLDR(4).get_params()["verbose"] is False
        for bad in (0, -2, 1.5, True):
            with pytest.raises(InvalidParameterError,
                               match=rf"^The 'n_jobs' parameter of TLDR must be None, -1 or an "
                                     rf"int in the range \[1, inf\)\. Got {bad!r} instead\.$"):
                TLDR(4, n_jobs=bad).fit(X)
        with pytest.raises(InvalidParameterError,
                           match=r"^The 'verbose' parameter of TLDR must be a bool or an int >= "
                                 r"0\. Got 'yes' instead\.$"):
            TLDR(4, verbose="yes").fit(X)
    finally:
        torch.set_num_threads(before)


def test_verbose_shows_knn_and_epoch_bars(structured, capsys):
    TLDR(4, epochs=2, batch_size=64, random_state=0, n_jobs=1).fit(structured[:600])
    assert capsys.readouterr().err == ""           # silent by default
    TLDR(4, epochs=2, batch_size=64, random_state=0, n_jobs=1, verbose=True).fit(
        structured[:600])
    err = capsys.readouterr().err
    lines = [ln.split()[:3] for ln in err.splitlines() if ln.strip()]
    n_train = 600
    assert ["knn", lines[0][1], "100%"] == lines[0] and f"{n_train}/{n_train} rows" in err
    steps = (600 - 60) // 64                       # anchors after 60 validation rows
    for e in (1, 2):
        assert f"epoch {e}/2" in err
        assert f"100% {steps}/{steps} steps" in err
    assert err.count("steps/s") == 2  # the ETA shows while a bar runs (test_progress.py)


def test_sliced_memmap_is_read_from_its_own_rows(tmp_path):
    """``transform(mm[a:b])`` encodes rows a..b of the file, not the file's first rows."""
    from tldr_index import PCA  # noqa: F811
    X = np.random.default_rng(3).standard_normal((200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    pca = PCA(n_components=3).fit(X)
    for a, b in ((100, 110), (0, 5), (37, 200)):
        np.testing.assert_array_equal(pca.transform(mm[a:b]), pca.transform(X[a:b]))
    np.testing.assert_array_equal(pca.transform(mm[50:150][10:20]), pca.transform(X[60:70]))


def _trainer(batch_size: int, m: int):
    from tldr_index.trainer import TrainConfig, Trainer
    cfg = TrainConfig(objective="ranking", epochs=1, batch_size=batch_size, learning_rate=1e-3,
                      optimizer="adamw", weight_decay=0.0, warmup_epochs=0.0, lambd=0.0,
                      loss_scale=1.0, teacher_temperature=0.05, barlow_weight=0.0, pairs="knn",
                      noise_std=0.1, metric="cosine", seed=0, device="cpu",
                      neighbors_per_anchor=m)
    return Trainer(torch.nn.Linear(4, 2), None, cfg, torch.device("cpu"))


def test_neighbors_per_anchor_draws_distinct_neighbours_of_each_anchor_anchor_major():
    # row i's neighbours are 100 + 10 i + j (j < 6); row 7 has only 2 valid ones (-1 pads)
    n, k, m, B = 40, 6, 3, 8
    nb = 100 + 10 * np.arange(n)[:, None] + np.arange(k)[None, :]
    nb[7, 2:] = -1
    a, b = _trainer(B, m)._epoch_pairs(np.arange(n), nb, np.random.default_rng(0))
    assert a.shape == (n // B, B) and b.shape == (n // B, B * m)
    assert sorted(a.ravel()) == list(range(n))
    for s in range(len(a)):
        for i, row in enumerate(a[s]):
            got = b[s, i * m:(i + 1) * m]
            if row == 7:   # its 2 neighbours, then itself
                assert sorted(got[:2]) == [170, 171] and got[2] == 7
            else:
                assert len(set(got)) == m and set(got) <= set(nb[row])


def test_neighbors_per_anchor_draws_every_neighbour_equally_often():
    n, k, m = 2000, 10, 3
    nb = np.tile(np.arange(k), (n, 1))
    _, b = _trainer(100, m)._epoch_pairs(np.arange(n), nb, np.random.default_rng(1))
    freq = np.bincount(b.ravel(), minlength=k) / b.size
    # 6,000 draws (seeded): one bin's standard deviation is ~0.004; 0.015 is ~4 of them
    np.testing.assert_allclose(freq, 1 / k, atol=0.015)


def test_one_neighbor_per_anchor_is_the_single_pair_stream(structured):
    # m=1 keeps the former random stream: one uniform pick per anchor among its valid neighbours
    nb = np.arange(50 * 4).reshape(50, 4)
    a, b = _trainer(10, 1)._epoch_pairs(np.arange(50), nb, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    perm = np.arange(50)[rng.permutation(50)].reshape(5, 10)
    pick = np.floor(rng.random(perm.shape) * 4).astype(np.int64)
    np.testing.assert_array_equal(a, perm)
    np.testing.assert_array_equal(b, nb[perm, pick])
