"""Bad input, as a table: every case gets one exact one-line message naming the parameter (or
column), the rule and the value; nothing is written (no target, no staging, no work directory)
and the source is unchanged.

Elsewhere: the estimator's parameter and array errors (``tests/test_errors.py``), each connector's
own validation (``tests/test_connectors_*.py``), missing / unreachable stores and existing targets
(``tests/test_pipeline.py::test_other_refusals``). Truncated, tampered and pickled model files:
``tests/test_errors.py`` and ``test_security.py`` here.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from _pipeline_helpers import lancedb_source, make_nested

from connectors.arrow_utils import numpy_to_fsl
from tldr_index.errors import (DuplicateIdError, InvalidInputError, InvalidParameterError,
                               MissingColumnError, UnsupportedURIError)
from tldr_index.pipeline import search, shrink

FAST = dict(epochs=2, threads=1, eval_queries=20)
N = 300


def _lancedb_table(root, table: pa.Table, name="docs") -> str:
    """Write ``table`` as it is (LanceDB's create_table would refuse NaN itself)."""
    import lance
    db = os.path.join(root, "db")
    lance.write_dataset(table, os.path.join(db, f"{name}.lance"))
    return f"lancedb://{db}/{name}"


def _bad_tables():
    X = make_nested(N, 8, between=3, within=3)
    ids = np.arange(N, dtype=np.int64)
    Xn = X.copy()
    Xn[17, 2] = np.nan
    Xi = X.copy()
    Xi[[40, 41, 250], 0] = np.inf
    Xz = X.copy()
    Xz[[23, 99]] = 0.0
    dup = ids.copy()
    dup[40] = 12
    ragged = pa.array([list(map(float, x[:8 if i != 9 else 7])) for i, x in enumerate(X)],
                      type=pa.list_(pa.float32()))
    nulls = pa.array([None if i == 5 else list(map(float, x)) for i, x in enumerate(X)],
                     type=pa.list_(pa.float32(), 8))
    ints = pa.array([[int(v * 10) for v in x] for x in X], type=pa.list_(pa.int32(), 8))
    strs = pa.array([[f"{v:.3f}" for v in x] for x in X], type=pa.list_(pa.string()))
    cos = {"source_options": {"distance": "cosine"}}
    return {
        "no_vector": (pa.table({"id": ids, "text": ["x"] * N}), {}, MissingColumnError,
                      "No vector column in source '{src}': expected a list or fixed-size list of "
                      "floats. Available columns: id (int64), text (string). Pass vector_column= "
                      "to name it."),
        "wrong_vector": (pa.table({"id": ids, "vector": numpy_to_fsl(X)}),
                         {"vector_column": "emb"}, MissingColumnError,
                         "Vector column 'emb' not found in source '{src}'. Available columns: id "
                         "(int64), vector (fixed_size_list<item: float>[8])."),
        "nan": (pa.table({"id": ids, "vector": numpy_to_fsl(Xn)}), {}, InvalidInputError,
                "Vector column 'vector' of source '{src}' must contain only finite values. Got 1 "
                "row(s) with NaN or inf in rows 0..299, first at id 17."),
        "inf_batches": (pa.table({"id": ids, "vector": numpy_to_fsl(Xi)}), {"batch_rows": 128},
                        InvalidInputError,
                        "Vector column 'vector' of source '{src}' must contain only finite values. "
                        "Got 2 row(s) with NaN or inf in rows 0..127, first at id 40."),
        "zero_cosine": (pa.table({"id": ids, "vector": numpy_to_fsl(Xz)}), cos, InvalidInputError,
                        "Vector column 'vector' of source '{src}' must not contain zero vectors "
                        "under the cosine distance (they have no direction). Got 2 zero vector(s) "
                        "in rows 0..299, first at id 23."),
        "duplicate": (pa.table({"id": dup, "vector": numpy_to_fsl(X)}), {}, DuplicateIdError,
                      "Id column 'id' of source '{src}' must hold unique ids. Got duplicate id "
                      "12 at row 40."),
        "ragged": (pa.table({"id": ids, "vector": ragged}), {}, InvalidInputError,
                   "Vector column 'vector' of source '{src}' must have the same length in every "
                   "row. Expected 8, got 7 at id 9 (1 row(s) differ)."),
        "null": (pa.table({"id": ids, "vector": nulls}), {}, InvalidInputError,
                 "Vector column 'vector' of source '{src}' must not contain null vectors. Got 1 "
                 "null vector(s), first at id 5."),
        "ints": (pa.table({"id": ids, "vector": ints}), {"vector_column": "vector"},
                 InvalidInputError,
                 "Vector column 'vector' of source '{src}' must be a list or fixed-size list of "
                 "floats (float16, float32 or float64). Got list<int32> instead."),
        "strings": (pa.table({"id": ids, "vector": strs}), {"vector_column": "vector"},
                    InvalidInputError,
                    "Vector column 'vector' of source '{src}' must be a list or fixed-size list "
                    "of floats (float16, float32 or float64). Got list<string> instead."),
        "empty": (pa.table({"id": pa.array([], pa.int64()),
                            "vector": pa.array([], pa.list_(pa.float32(), 8))}), {},
                  InvalidInputError, "Source '{src}' is empty: it has 0 rows."),
        "one_row": (pa.table({"id": ids[:1], "vector": numpy_to_fsl(X[:1])}), {},
                    InvalidInputError,
                    "Source '{src}' has 1 row; shrink needs at least 2 (a one-row table cannot "
                    "be shrunk: there is no neighbour to keep and nothing to learn a map from)."),
    }


@pytest.mark.parametrize("case", list(_bad_tables()))
def test_bad_source_is_one_line_and_leaves_nothing(case, tmp_path, source_guard):
    table, kw, exc, msg = _bad_tables()[case]
    src = source_guard(_lancedb_table(str(tmp_path), table))
    with pytest.raises(exc) as err:
        shrink(src, src + "_out", dim=4, pq_bytes=0, work_dir=tmp_path / "work", **{**FAST, **kw})
    assert str(err.value) == msg.format(src=src)
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]  # no target, no staging
    assert not os.path.exists(tmp_path / "work")


def test_skip_invalid_drops_and_reports_them(tmp_path, source_guard):
    X = make_nested(N, 8, between=3, within=3)
    X[17, 2] = np.nan
    X[40, 0] = -np.inf
    X[99] = 0.0
    ids = np.arange(N, dtype=np.int64) * 2
    src = source_guard(_lancedb_table(str(tmp_path), pa.table({"id": ids,
                                                                "vector": numpy_to_fsl(X)})))
    from connectors import open_target
    rep = shrink(src, src + "_out", dim=4, pq_bytes=0, work_dir=tmp_path / "w", skip_invalid=True,
                 source_options={"distance": "cosine"}, batch_rows=64, **FAST)
    assert (rep.skipped_invalid, rep.first_invalid_id, rep.rows) == (3, 34, N - 3)
    got = sorted(open_target(src + "_out").to_table().column("id").to_pylist())
    assert got == sorted(set(ids.tolist()) - {34, 80, 198})
    # under l2 a zero vector is valid: only the two non-finite rows go
    rep = shrink(src, src + "_l2", dim=4, pq_bytes=0, work_dir=tmp_path / "w", skip_invalid=True,
                 **FAST)
    assert (rep.skipped_invalid, rep.first_invalid_id, rep.rows) == (2, 34, N - 2)


def test_skip_invalid_leaving_too_few_rows(tmp_path, source_guard):
    X = np.full((N, 8), np.nan, dtype=np.float32)
    X[3] = 1.0
    src = source_guard(_lancedb_table(str(tmp_path), pa.table({"id": np.arange(N),
                                                                "vector": numpy_to_fsl(X)})))
    with pytest.raises(InvalidInputError) as err:
        shrink(src, src + "_out", dim=4, pq_bytes=0, work_dir=tmp_path / "w", skip_invalid=True,
               **FAST)
    assert str(err.value) == (f"Source '{src}' has 1 valid row(s) after skipping 299 invalid "
                              f"one(s) (skip_invalid=True); shrink needs at least 2.")
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]
    assert not (tmp_path / "w").exists()


def test_skip_invalid_with_the_cli(tmp_path, source_guard):
    import json

    from reliability._harness import run_cli_here

    X = make_nested(N, 8, between=3, within=3)
    X[5, 1] = np.nan
    src = source_guard(_lancedb_table(str(tmp_path), pa.table({"id": np.arange(N),
                                                                "vector": numpy_to_fsl(X)})))
    argv = ["shrink", "--source", src, "--target", "docs_out", "--dim", "4", "--pq-bytes", "0",
            "--epochs", "1", "--threads", "1", "--work-dir", str(tmp_path / "w")]
    res = run_cli_here(argv + ["--quiet"])
    assert res.exit_code == 1 and "first at id 5." in res.stderr
    res = run_cli_here(argv + ["--skip-invalid", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert (rep["skipped_invalid"], rep["first_invalid_id"], rep["rows"]) == (1, 5, N - 1)


def _param(name, value, rule, owner="shrink"):
    return ({name: value}, InvalidParameterError,
            f"The '{name}' parameter of {owner} must be {rule}. Got {value!r} instead.")


PARAMS = {
    "dim=0": _param("dim", 0, "an int in the range [1, inf)"),
    "dim<0": _param("dim", -3, "an int in the range [1, inf)"),
    "dim huge": ({"dim": 10**12}, InvalidParameterError,
                 "The 'dim' parameter of shrink must be an int in the range [1, 7] (smaller than "
                 "the dimension 8 of source '{src}'). Got 1000000000000 instead."),
    "pq_bytes<0": _param("pq_bytes", -1, "an int in the range [0, inf) or None"),
    "sample=0": _param("sample", 0, "an int in the range [2, inf) or None"),
    "neighbors=0": _param("neighbors", 0, "an int in the range [1, inf)"),
    "neighbors huge": ({"neighbors": 10**9}, InvalidParameterError,
                       "The 'neighbors' parameter of shrink must be an int in the range [1, 299] "
                       "(fewer than the 300 training rows). Got 1000000000 instead."),
    "epochs=0": _param("epochs", 0, "an int in the range [1, inf) or None"),
    "eval_queries<0": _param("eval_queries", -1, "an int in the range [0, inf)"),
    "batch_rows=0": _param("batch_rows", 0, "an int in the range [1, inf)"),
    "threads=0": _param("threads", 0, "an int in the range [1, inf) or None"),
    "shortlist=0": _param("shortlist", 0, "an int in the range [1, inf) or None"),
    "dim float": _param("dim", 4.0, "an int in the range [1, inf)"),
    "skip_invalid str": ({"skip_invalid": "yes"}, InvalidParameterError,
                         "The 'skip_invalid' parameter of shrink must be a bool. Got 'yes' "
                         "instead."),
    "unknown scheme": ({"target": "mongodb://h/db"}, UnsupportedURIError,
                       "The 'uri' parameter must use a supported scheme (supported schemes: "
                       "lancedb://, lance://, parquet://, qdrant://, qdrant+http://, "
                       "qdrant+https://, qdrant+path://, qdrant+memory://, qdrant+edge://; or a "
                       "path ending in .lance or .parquet). Got 'mongodb://h/db' instead."),
    "target ..": ({"target": "lancedb://{db}/.."}, UnsupportedURIError,
                  "The table name must be a plain name (not '.' or '..', no '/', '\\' or "
                  "control characters), so nothing is read or written outside its database. "
                  "Got '..' instead."),
    "qdrant ..": ({"target": "qdrant+path://{db}/.."}, UnsupportedURIError,
                  "The collection name must be a plain name (not '.' or '..', no '/', '\\' or "
                  "control characters), so nothing is read or written outside its database. "
                  "Got '..' instead."),
}

_NAME_RULE = ("name must be a plain name (not '.' or '..', no '/', '\\' or control characters), "
              "so nothing is read or written outside its database. Got {!r} instead.")
_JOB_KEYS = ("batch_rows, collection, db, drift_queries, drift_threshold, refit, seed, source, "
             "target, threads, work_dir")
# `reindex --config job.toml`: (lines replacing the valid job's, exact message); every case exits
# with 2 before the lock is taken or the target opened. `{job}` is the job file's path.
JOB_FILES = {
    "syntax error": ('collection = "docs\n', "Job file '{job}' is not valid TOML (Illegal "
                     "character '\\n' (at line 4, column 19))."),
    "truncated": ("drift_threshold =", "Job file '{job}' is not valid TOML (Invalid value (at end "
                  "of document))."),
    "unknown keys": ('drift_treshold = 0.8\nfoo = 1\n', "Job file '{job}' has unknown key(s): "
                     f"drift_treshold, foo. Allowed keys: {_JOB_KEYS}."),
    "wrong type": ('drift_queries = "200"\n', "The 'drift_queries' key of job file '{job}' must "
                   "be an int. Got '200' instead."),
    "bool for int": ("seed = true\n", "The 'seed' key of job file '{job}' must be an int. Got "
                     "True instead."),
    "table for str": ("[refit]\nmode = 1\n", "The 'refit' key of job file '{job}' must be a str. "
                      "Got {{'mode': 1}} instead."),
    "target ..": ('target = "../evil"\n', "The target " + _NAME_RULE.format("../evil")),
    "collection ..": ('collection = "../docs"\n', "The table " + _NAME_RULE.format("../docs")),
    "missing file": (None, "Job file '{job}' does not exist."),
}


@pytest.mark.parametrize("case", list(PARAMS))
def test_bad_parameters(case, tmp_path, source_guard):
    kw, exc, msg = PARAMS[case]
    src = source_guard(lancedb_source(str(tmp_path), make_nested(N, 8, between=3, within=3)))
    db = str(tmp_path / "db")
    kw = {k: v.format(db=db) if isinstance(v, str) else v for k, v in kw.items()}
    args = {"dim": 4, "pq_bytes": 0, "target": src + "_out", **FAST, **kw}
    target = args.pop("target")
    with pytest.raises(exc) as err:
        shrink(src, target, work_dir=tmp_path / "work", **args)
    assert str(err.value) == msg.format(src=src)
    assert sorted(os.listdir(db)) == ["docs.lance"] and not (tmp_path / "work").exists()


def test_cli_target_name_cannot_leave_the_database(tmp_path, source_guard):
    from reliability._harness import run_cli_here

    src = source_guard(lancedb_source(str(tmp_path), make_nested(N, 8, between=3, within=3)))
    for name in ("../evil", "..", "a/b"):
        res = run_cli_here(["shrink", "--source", src, "--target", name, "--dim", "4",
                            "--work-dir", str(tmp_path / "w"), "--quiet"])
        assert res.exit_code == 1
        assert res.stderr == (f"Error: The target name must be a plain name (not '.' or '..', no "
                              f"'/', '\\' or control characters), so nothing is read or written "
                              f"outside its database. Got {name!r} instead.\n")
    assert sorted(os.listdir(tmp_path)) == ["db"] and os.listdir(tmp_path / "db") == ["docs.lance"]


def test_model_and_source_of_another_dimension(tmp_path, source_guard):
    """A target's model expects D-d input: queries or a rescoring source of another D are
    refused."""
    src = source_guard(lancedb_source(str(tmp_path), make_nested(N, 8, between=3, within=3)))
    other = source_guard(lancedb_source(str(tmp_path), make_nested(N, 6, between=3, within=2),
                                        name="other"))
    shrink(src, src + "_out", dim=4, pq_bytes=0, work_dir=tmp_path / "w", **FAST)
    Q = make_nested(5, 8, between=3, within=3, seed=9)
    with pytest.raises(InvalidInputError, match=r"^Queries must have shape \(n, 8\) with n >= 1 "):
        search(src + "_out", Q[:, :6], k=3)
    with pytest.raises(InvalidInputError) as err:
        search(src + "_out", Q, k=3, rescore=True, source=other)
    assert str(err.value) == (
        f"Source '{other}' has 6-d vectors but the model of target '{src}_out' expects 8-d "
        f"input; rescore against the source it was shrunk from (source=, --source).")


@pytest.fixture(scope="module")
def live_target(tmp_path_factory):
    """A LanceDB source and its compact target, shared by the job-file cases (none writes)."""
    root = tmp_path_factory.mktemp("job")
    src = lancedb_source(str(root), make_nested(N, 8, between=3, within=3))
    shrink(src, src + "_c", dim=4, pq_bytes=0, work_dir=root / "w", **FAST)
    return root


@pytest.mark.parametrize("case", list(JOB_FILES))
def test_bad_job_files(case, live_target, tmp_path):
    """Malformed or hostile ``reindex`` job files: one exact line (stderr, and the JSON summary on
    stdout), exit code 2, no lock or work directory, the live target and source byte for byte."""
    import json

    from _connector_helpers import tree_hashes
    from reliability._harness import run_cli_here

    lines, msg = JOB_FILES[case]
    base = {"db": f'"{live_target / "db"}"', "collection": '"docs"', "target": '"docs_c"',
            "work_dir": f'"{tmp_path / "rw"}"'}
    job = tmp_path / "job.toml"
    if lines is not None:
        for line in lines.splitlines():  # the case's lines replace the valid job's
            base.pop(line.split("=")[0].strip(" []"), None)
        job.write_text("".join(f"{k} = {v}\n" for k, v in base.items()) + lines)
    before = tree_hashes(str(live_target / "db"))
    res = run_cli_here(["reindex", "--config", str(job), "--quiet"])
    want = msg.format(job=job)
    assert (res.exit_code, res.stderr) == (2, f"Error: {want}\n")
    assert json.loads(res.stdout) == {"error": want, "exit_code": 2, "status": "failed"}
    assert tree_hashes(str(live_target / "db")) == before
    assert not (tmp_path / "rw").exists()
