"""Every parameter and input error: exact messages naming the parameter, the rule and the value."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from tldr_index import PCA, TLDR, load_model
from tldr_index.errors import (InvalidInputError, InvalidParameterError, ModelFormatError,
                               NotFittedError)

FAST = dict(epochs=1, batch_size=64, random_state=0)


def msg(text: str) -> str:
    return re.escape(text)


PARAM_CASES = [
    (dict(n_components=0), "The 'n_components' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(n_components=2.5), "The 'n_components' parameter of TLDR must be an int in the range [1, inf). Got 2.5 instead."),
    (dict(n_neighbors=0), "The 'n_neighbors' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(neighbors_per_anchor=0), "The 'neighbors_per_anchor' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(n_neighbors=3, neighbors_per_anchor=4), "The 'neighbors_per_anchor' parameter of TLDR must be at most n_neighbors (3). Got 4 instead."),
    (dict(n_neighbors=5, neighbors_per_anchor=2, objective="barlow"), "The 'neighbors_per_anchor' parameter of TLDR can exceed 1 only with objective='ranking' and pairs='knn'. Got 2 with objective='barlow', pairs='knn' instead."),
    (dict(n_neighbors=5, neighbors_per_anchor=2, pairs="gaussian"), "The 'neighbors_per_anchor' parameter of TLDR can exceed 1 only with objective='ranking' and pairs='knn'. Got 2 with objective='ranking', pairs='gaussian' instead."),
    (dict(encoder="conv"), "The 'encoder' parameter of TLDR must be 'linear', 'flinear-L-H' or 'mlp-L-H' with integers L >= 1 and H >= 1 (e.g. 'flinear-2-512'). Got 'conv' instead."),
    (dict(encoder="flinear-0-8"), "The 'encoder' parameter of TLDR must be 'linear', 'flinear-L-H' or 'mlp-L-H' with integers L >= 1 and H >= 1 (e.g. 'flinear-2-512'). Got 'flinear-0-8' instead."),
    (dict(objective="barlow", projector="mlp-2"), "The 'projector' parameter of TLDR must be 'mlp-L-H' or 'linear-H' with integers L >= 1 and H >= 1 (e.g. 'mlp-2-2048'). Got 'mlp-2' instead."),
    (dict(objective="contrastive"), "The 'objective' parameter of TLDR must be one of 'ranking', 'barlow', 'ranking+barlow'. Got 'contrastive' instead."),
    (dict(metric="hamming"), "The 'metric' parameter of TLDR must be one of 'cosine', 'ip', 'l2'. Got 'hamming' instead."),
    (dict(pairs="random"), "The 'pairs' parameter of TLDR must be one of 'knn', 'gaussian'. Got 'random' instead."),
    (dict(noise_std=0), "The 'noise_std' parameter of TLDR must be a float in the range (0, inf]. Got 0 instead."),
    (dict(init="svd"), "The 'init' parameter of TLDR must be one of 'auto', 'pca', 'random'. Got 'svd' instead."),
    (dict(init="pca", encoder="mlp-1-8"), "The 'init' parameter of TLDR can be 'pca' only with encoder='linear'. Got init='pca' with encoder='mlp-1-8' instead."),
    (dict(epochs=0), "The 'epochs' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(batch_size=1), "The 'batch_size' parameter of TLDR must be an int in the range [2, inf). Got 1 instead."),
    (dict(optimizer="sgd"), "The 'optimizer' parameter of TLDR must be one of 'adamw', 'lars'. Got 'sgd' instead."),
    (dict(learning_rate=-1.0), "The 'learning_rate' parameter of TLDR must be a float in the range (0, inf]. Got -1.0 instead."),
    (dict(learning_rate=float("nan")), "The 'learning_rate' parameter of TLDR must be a float in the range (0, inf]. Got nan instead."),
    (dict(weight_decay=-1e-3), "The 'weight_decay' parameter of TLDR must be a float in the range [0, inf]. Got -0.001 instead."),
    (dict(warmup_epochs=50, epochs=5), "The 'warmup_epochs' parameter of TLDR must be a float in the range [0, 5]. Got 50 instead."),
    (dict(lambd=-1), "The 'lambd' parameter of TLDR must be a float in the range [0, inf]. Got -1 instead."),
    (dict(loss_scale=0), "The 'loss_scale' parameter of TLDR must be a float in the range (0, inf]. Got 0 instead."),
    (dict(teacher_temperature=0), "The 'teacher_temperature' parameter of TLDR must be a float in the range (0, inf]. Got 0 instead."),
    (dict(barlow_weight=-2), "The 'barlow_weight' parameter of TLDR must be a float in the range [0, inf]. Got -2 instead."),
    (dict(max_train_rows=1), "The 'max_train_rows' parameter of TLDR must be an int in the range [2, inf). Got 1 instead."),
    (dict(early_stopping="yes"), "The 'early_stopping' parameter of TLDR must be a bool. Got 'yes' instead."),
    (dict(patience=0), "The 'patience' parameter of TLDR must be an int in the range [1, inf) or None. Got 0 instead."),
    (dict(min_delta=-0.1), "The 'min_delta' parameter of TLDR must be a float in the range [0, inf]. Got -0.1 instead."),
    (dict(validation_rows=0), "The 'validation_rows' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
    (dict(knn_method="hnsw"), "The 'knn_method' parameter of TLDR must be one of 'auto', 'exact', 'opq'. Got 'hnsw' instead."),
    (dict(knn_params=[1]), "The 'knn_params' parameter of TLDR must be a dict or None. Got [1] instead."),
    (dict(device="tpu"), "The 'device' parameter of TLDR must be one of 'auto', 'cpu', 'cuda'. Got 'tpu' instead."),
    (dict(chunk_rows=0), "The 'chunk_rows' parameter of TLDR must be an int in the range [1, inf). Got 0 instead."),
]


@pytest.mark.parametrize("params,expected", PARAM_CASES, ids=[str(c[0]) for c in PARAM_CASES])
def test_tldr_parameter_errors(structured, params, expected):
    kw = {**FAST, **params}
    n = kw.pop("n_components", 8)
    with pytest.raises(InvalidParameterError, match=f"^{msg(expected)}$"):
        TLDR(n, **kw).fit(structured)


def test_n_components_must_be_below_input_dim(structured):
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'n_components' parameter of TLDR must be an int in the range [1, 47] (smaller "
            "than the input dimension D=48). Got 48 instead.")):
        TLDR(48, **FAST).fit(structured)
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'n_components' parameter of PCA must be an int in the range [1, 47] (smaller "
            "than the input dimension D=48). Got 60 instead.")):
        PCA(60).fit(structured)


def test_n_neighbors_must_be_below_n_rows(structured):
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'n_neighbors' parameter of TLDR must be an int in the range [1, 99] (fewer than "
            "the 100 training rows). Got 100 instead.")):
        TLDR(8, n_neighbors=100, epochs=1, batch_size=16).fit(structured[:100])


def test_fewer_rows_than_a_batch(structured):
    with pytest.raises(InvalidParameterError, match=msg(
            "The 'batch_size' parameter of TLDR must be at most the number of training rows (90 "
            "after holding out 10 validation rows). Got 256 instead; lower batch_size or pass "
            "more rows.")):
        TLDR(8).fit(structured[:100])


@pytest.mark.parametrize("bad,expected", [
    ("nan", "Input 'X' must contain only finite values. Got 2 row(s) with NaN or inf in rows 0..1199, first at row 7."),
    ("int", "Input 'X' must have a floating dtype (float16, float32 or float64). Got dtype int64 instead."),
    ("str", "Input 'X' must have a floating dtype (float16, float32 or float64). Got dtype <U1 instead."),
    ("1d", "Input 'X' must be a 2-D array of shape (n_samples, n_features). Got an array with 1 dimension(s), shape (48,). Reshape your data: a single vector with x.reshape(1, -1)."),
    ("empty", "Input 'X' must have at least 1 row and 1 column: found array with 0 sample(s) (shape=(0, 48)) while a minimum of 1 is required."),
    ("complex", "Input 'X' must have a floating dtype (float16, float32 or float64). Got dtype complex128 instead: Complex data not supported."),
    ("sparse", "Input 'X' is a sparse matrix (csr_matrix): sparse input is not supported; pass a dense 2-D float array (e.g. X.toarray())."),
])
def test_bad_input_errors(structured, bad, expected):
    X = {"nan": structured.copy(), "int": structured.astype(np.int64),
         "str": np.full((10, 3), "a"), "1d": structured[0], "empty": structured[:0],
         "complex": structured.astype(np.complex128)}.get(bad)
    if bad == "sparse":
        import scipy.sparse
        X = scipy.sparse.csr_matrix(structured)
    if bad == "nan":
        X[7, 3] = np.nan
        X[99, 0] = np.inf
    with pytest.raises(InvalidInputError, match=f"^{msg(expected)}$"):
        TLDR(8, **FAST).fit(X)


def test_nan_in_memmap_is_found_while_streaming(structured, tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                   shape=structured.shape)
    mm[:] = structured
    mm[1100, 5] = np.inf
    mm.flush()
    with pytest.raises(InvalidInputError, match=msg("first at row 1100.")):
        TLDR(8, **FAST, chunk_rows=256).fit(np.load(tmp_path / "x.npy", mmap_mode="r"))


def test_transform_errors(structured):
    with pytest.raises(NotFittedError, match=msg(
            "This TLDR instance is not fitted yet. Call 'fit' with appropriate arguments before "
            "using 'transform'.")):
        TLDR(8).transform(structured)
    m = PCA(8).fit(structured)
    with pytest.raises(InvalidInputError, match=msg(
            "X has 20 features, but PCA is expecting 48 features as input (input 'X' must have "
            "the dimension the model was fitted on).")):
        m.transform(structured[:, :20])
    with pytest.raises(NotFittedError, match="before using 'save'"):
        PCA(8).save("never.safetensors")


def test_inputs_are_never_modified(structured):
    X = structured * 3.0            # not unit norm: cosine normalisation must not happen in place
    before = X.copy()
    TLDR(8, **FAST).fit(X)
    np.testing.assert_array_equal(X, before)


def test_loading_files_that_are_not_models(tmp_path, structured):
    # a pickle bomb: would run code if unpickled
    class Bomb:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle was executed')",))
    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(pickle.dumps(Bomb()))
    with pytest.raises(ModelFormatError, match="is not a tldr-index model: not a safetensors file"):
        load_model(bomb)
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(ModelFormatError, match="is not a tldr-index model"):
        load_model(tmp_path / "arr.npy")
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(ModelFormatError, match=msg("3 bytes is too short for a safetensors file.")):
        load_model(tmp_path / "tiny")
    # a safetensors file from another tool
    from safetensors.numpy import save_file
    save_file({"w": np.zeros((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFormatError, match=msg("metadata 'format' is None, expected 'tldr-index/model'.")):
        load_model(tmp_path / "other.safetensors")


def test_tampered_and_truncated_models_are_refused(tmp_path, structured):
    path = tmp_path / "m.safetensors"
    PCA(8).fit(structured).save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF                                  # flip bits inside the weight tensor
    (tmp_path / "t.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="failed its integrity check"):
        load_model(tmp_path / "t.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="is a corrupt tldr-index model"):
        load_model(tmp_path / "cut.safetensors")
    with pytest.raises(ModelFormatError, match="holds a PCA model, not a TLDR"):
        TLDR.load(path)
