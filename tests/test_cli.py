"""The command line: exit codes and exact output lines (CliRunner, real stores in tmp dirs)."""

from __future__ import annotations

import json
import os
import re

import lance
import numpy as np
import pyarrow as pa
import pytest
from _connector_helpers import tree_hashes
from _pipeline_helpers import lancedb_source, make_nested
from click.testing import CliRunner

from tldr_index.cli import main

FAST = ["--pq-bytes", "2", "--epochs", "2", "--threads", "1"]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A LanceDB database with table ``docs`` (600 x 16) and the work dir inside tmp_path."""
    monkeypatch.setenv("TLDR_INDEX_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("TLDR_INDEX_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    X = make_nested(600, 16, between=6, within=4, seed=11)
    lancedb_source(str(tmp_path), X)
    np.save(tmp_path / "q.npy", X[:10])
    return tmp_path, X


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_shrink_search_info(env):
    tmp, X = env
    db = str(tmp / "db")
    before = tree_hashes(os.path.join(db, "docs.lance"))
    res = run("shrink", "--db", db, "--collection", "docs", "--dim", "4", *FAST)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"Shrunk lancedb://{db}/docs -> lancedb://{db}/docs_tldr4 (tldr, l2)"
    assert lines[1] == "  rows           600"
    assert lines[2] == "  vectors        16-d -> 4-d float16 + 2-byte RQ codes"
    assert re.fullmatch(r"  bytes on disk  [\d.]+ kB -> [\d.]+ kB \([\d.]+x smaller\)", lines[3])
    assert lines[4] == "  search memory  64 B (float32) -> 2 B (RQ) per vector (32x smaller)"
    assert lines[5] == "  graph recall   1.000 (kNN graph of the training sample)"
    assert re.fullmatch(r"  recall@10      [01]\.\d{3} compact search, [01]\.\d{3} with --rescore "
                        r"\(shortlist 200\); 200 rows vs exact search on the original vectors",
                        lines[6])
    assert re.fullmatch(r"  stage times    scan [\d.]+s \| knn [\d.]+s \| train [\d.]+s \| encode "
                        r"[\d.]+s \| write [\d.]+s \| verify [\d.]+s \| publish [\d.]+s", lines[7])
    assert re.fullmatch(r"  wall time      [\d.]+ s", lines[8]) and len(lines) == 9
    assert tree_hashes(os.path.join(db, "docs.lance")) == before
    assert not (tmp / "work").exists() or not os.listdir(tmp / "work")

    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy",
              "--k", "5", "--output", "ids.npy", "--rescore")
    assert res.exit_code == 0, res.stderr
    assert re.fullmatch(r"Wrote 10x5 ids to ids.npy \(rescored, pq-codes, [\d.]+ s\).\n",
                        res.stdout)
    ids = np.load(tmp / "ids.npy")
    assert ids.dtype == np.int64 and ids.shape == (10, 5)
    assert ids[:, 0].tolist() == [i * 7 + 3 for i in range(10)]  # each query finds itself

    res = run("search", "--target", f"lancedb://{db}/docs_tldr4", "--queries", "q.npy",
              "--k", "3")
    assert res.exit_code == 0
    rows = [line.split("\t") for line in res.stdout.splitlines()]  # not a TTY: plain text
    assert rows[0] == ["query", "rank", "id", "distance"] and len(rows) == 1 + 10 * 3
    assert [r[:2] for r in rows[1:4]] == [["0", "1"], ["0", "2"], ["0", "3"]]
    assert [r[2] for r in rows[1::3]] == [str(i * 7 + 3) for i in range(10)]  # itself first
    assert all(len(r) == 4 and float(r[3]) >= 0 for r in rows[1:])

    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy", "--k",
              "2", "--json")
    out = json.loads(res.stdout)
    assert out["engine"] == "pq-codes" and np.asarray(out["ids"]).shape == (10, 2)
    assert "shortlist" not in out and out["rescored"] is False  # no shortlist without --rescore
    assert all(len(repr(v)) <= 16 for row in out["distances"] for v in row)  # 7 digits
    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy", "--k",
              "2", "--json", "--rescore", "--columns", "text,year")
    out = json.loads(res.stdout)
    assert out["shortlist"] == 200 and out["rescored"] is True
    assert out["columns"]["text"][0][0] == "doc 0" and out["columns"]["year"][1][0] == 1991
    assert [r[0] for r in out["columns"]["text"]] == [f"doc {i}" for i in range(10)]
    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy", "--k",
              "1", "--columns", "text")
    lines = res.stdout.splitlines()
    assert lines[0] == "query\trank\tid\tdistance\ttext" and len(lines) == 11
    assert [line.split("\t")[4] for line in lines[1:]] == [f"doc {i}" for i in range(10)]
    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy",
              "--columns", "vector")
    assert res.exit_code == 1 and res.stderr == (
        f"Error: The 'columns' parameter of search must name id or payload columns of target "
        f"'lancedb://{db}/docs_tldr4': id, text, year. Got 'vector' instead.\n")

    res = run("info", "--db", db, "--collection", "docs_tldr4")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0] == (f"lancedb://{db}/docs_tldr4: 600 rows, tldr 16 -> 4 (l2), float16 "
                        f"vectors + 2-byte RQ codes")
    assert lines[1] == f"  source         lancedb://{db}/docs"
    info = json.loads(run("info", "--db", db, "--collection", "docs_tldr4", "--json").stdout)
    assert info["rows"] == 600 and info["pq_bytes"] == 2 and info["method"] == "tldr"


def test_defaults_env_db_target_names_json_and_quiet(env, monkeypatch):
    tmp, _ = env
    db = str(tmp / "db")
    monkeypatch.setenv("TLDR_INDEX_DB", db)
    res = run("shrink", "--collection", "docs", "--dim", "4", "--target", "docs_small",
              "--method", "pca", "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["target"] == f"lancedb://{db}/docs_small" and rep["method"] == "pca"
    assert rep["rows"] == 600 and rep["graph_recall"] is None
    assert set(rep["stage_seconds"]) == {"scan", "knn", "train", "encode", "write", "verify",
                                         "publish"}
    res = run("shrink", "--source", f"lancedb://{db}/docs", "--dim", "4", "--quiet", *FAST)
    assert res.exit_code == 0 and res.stdout == ""
    assert lance.dataset(os.path.join(db, "docs_tldr4.lance")).count_rows() == 600


def _errors(tmp, X):
    db = str(tmp / "db")
    lance.write_dataset(pa.table({"id": np.arange(5), "text": list("abcde")}),
                        os.path.join(db, "novec.lance"))
    src = f"lancedb://{db}/docs"
    return [
        (["shrink", "--db", db, "--collection", "docs", "--dim", "16"],
         f"Error: The 'dim' parameter of shrink must be an int in the range [1, 15] (smaller than "
         f"the dimension 16 of source '{src}'). Got 16 instead."),
        (["shrink", "--source", "foo://bar/docs", "--dim", "4"],
         "Error: The 'uri' parameter must use a supported scheme (supported schemes: lancedb://, "
         "lance://, parquet://, qdrant://, qdrant+http://, qdrant+https://, qdrant+path://, "
         "qdrant+memory://, qdrant+edge://; or a path ending in .lance or .parquet). Got "
         "'foo://bar/docs' instead."),
        (["shrink", "--db", db, "--collection", "novec", "--dim", "4"],
         f"Error: No vector column in source 'lancedb://{db}/novec': expected a list or "
         f"fixed-size list of floats. Available columns: id (int64), text (string). Pass "
         f"vector_column= to name it."),
        (["shrink", "--db", db, "--collection", "docs", "--dim", "4", "--vector-column", "emb"],
         f"Error: Vector column 'emb' not found in source '{src}'. Available columns: id "
         f"(int64), vector (fixed_size_list<item: float>[16]), text (string), year (int32)."),
        (["shrink", "--db", db, "--collection", "nope", "--dim", "4"],
         f"Error: LanceDB table 'nope' not found in LanceDB database '{db}'. Existing tables: "
         f"docs, novec."),
        (["shrink", "--source", f"qdrant+path://{tmp}/qd/nope", "--dim", "4"],
         f"Error: Embedded Qdrant storage '{tmp}/qd' not found (source "
         f"'qdrant+path://{tmp}/qd/nope')."),
        (["shrink", "--source", f"parquet://{tmp}/none/*.parquet", "--target",
          f"parquet://{tmp}/out/", "--dim", "4"],
         f"Error: Parquet source 'parquet://{tmp}/none/*.parquet' matches no .parquet file "
         f"('{tmp}/none/*.parquet')."),
        (["search", "--db", db, "--collection", "docs", "--queries", "q.npy"],
         f"Error: target '{src}' holds no tldr-index record: it was not written by tldr-index."),
        (["info", "--db", db, "--collection", "docs_nope"],
         f"Error: LanceDB table 'docs_nope' not found in LanceDB database '{db}'. Existing "
         f"tables: docs, novec."),
    ]


def test_errors_are_one_line_with_exit_code_1(env):
    tmp, X = env
    cases = _errors(tmp, X)
    before = tree_hashes(str(tmp / "db"))
    for args, line in cases:
        res = run(*args)
        assert res.exit_code == 1, (args, res.stdout, res.stderr)
        assert res.stderr == line + "\n", args
        assert res.stdout == ""
    assert tree_hashes(str(tmp / "db")) == before  # nothing written: no target, no staging


def test_target_exists_and_bad_queries(env):
    tmp, X = env
    db = str(tmp / "db")
    assert run("shrink", "--db", db, "--collection", "docs", "--dim", "4", "--quiet",
               *FAST).exit_code == 0
    before = tree_hashes(str(tmp / "db"))
    res = run("shrink", "--db", db, "--collection", "docs", "--dim", "4", *FAST)
    assert res.exit_code == 1
    assert res.stderr == (f"Error: Target 'lancedb://{db}/docs_tldr4' already exists. Pass "
                          f"overwrite=True (--overwrite) to replace it.\n")
    assert tree_hashes(str(tmp / "db")) == before
    np.save(tmp / "bad.npy", X[:3, :5])
    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "bad.npy")
    assert res.exit_code == 1
    assert res.stderr == ("Error: Queries must have shape (n, 16) with n >= 1 (the dimension of "
                          "the source vectors). Got (3, 5) instead.\n")
    res = run("shrink", "--db", db, "--collection", "docs", "--dim", "4", "--overwrite",
              "--method", "pca", "--quiet", *FAST)
    assert res.exit_code == 0
    info = json.loads(run("info", "--db", db, "--collection", "docs_tldr4", "--json").stdout)
    assert info["method"] == "pca"


def test_qdrant_unreachable(env):
    res = run("shrink", "--source", "qdrant://127.0.0.1:9/docs", "--dim", "4")
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: Qdrant at http://127.0.0.1:9 is unreachable while "
                                 "trying to list aliases: ")
    assert res.stderr.count("\n") == 1


def test_usage_errors_exit_2(env):
    cases = [
        (["shrink", "--source", "lancedb://db/docs", "--collection", "docs", "--dim", "4"],
         "Error: Pass either --source or --collection, not both."),
        (["shrink", "--dim", "4"], "Error: Missing --collection (a table in --db) or --source "
                                   "(a URI)."),
        (["shrink", "--collection", "docs"], "Error: Missing option '--dim'."),
        (["shrink", "--collection", "docs", "--dim", "4", "--method", "umap"],
         "Error: Invalid value for '--method': 'umap' is not one of 'tldr', 'pca', 'none', "
             "'auto'."),
        (["shrink", "--source", "parquet://x/*.parquet", "--target", "out", "--dim", "4"],
         "Error: --target must be a URI for a Parquet source, e.g. --target parquet://out/."),
    ]
    for args, line in cases:
        res = run(*args)
        assert res.exit_code == 2, args
        assert res.stderr.splitlines()[-1] == line


def test_every_command_has_an_example():
    for cmd in ("shrink", "search", "info", "demo"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.stdout and "tldr-index " + cmd in \
            res.stdout, cmd
    assert "tldr-index demo" in run("--help").stdout


@pytest.mark.slow
def test_demo_creates_shrinks_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLDR_INDEX_DB", raising=False)
    args = ["demo", "--dim", "8", "--pq-bytes", "4", "--epochs", "1"]
    res = run(*args)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == ("Demo: 5,700 docstring embeddings (384-d) in lancedb://./tldr-data/docs, "
                        "300 held-out queries, recall@10 against exact cosine neighbours.")
    assert re.fullmatch(r"  tldr   docs_tldr8 +0\.\d{3} +0\.\d{3} +4 +[\d.]+MB +[\d.]+s",
                        lines[4]), lines[4]
    assert re.fullmatch(r"  pca    docs_pca8 +0\.\d{3} +0\.\d{3} +4 +[\d.]+MB +[\d.]+s",
                        lines[5]), lines[5]
    version = lance.dataset("tldr-data/docs.lance").version
    res = run(*args, "--json", "--quiet")  # second run: reuses docs, replaces the targets
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["method"] for r in out["results"]] == ["tldr", "pca"]
    assert all(0 < r["recall_at_10"] <= r["recall_at_10_rescored"] <= 1 for r in out["results"])
    assert lance.dataset("tldr-data/docs.lance").version == version
    assert sorted(os.listdir("tldr-data")) == ["docs.lance", "docs_pca8.lance",
                                               "docs_tldr8.lance"]
    assert sorted(os.listdir(".")) == ["tldr-data"]  # the work directories are gone


@pytest.mark.parametrize("module", ["tldr_index", "tldr_index.cli"])
def test_both_module_entry_points_list_every_command(module, tmp_path):
    """`python -m tldr_index.cli` is what `make demo` runs; it must register the same commands as
    `python -m tldr_index` and the console script (reindex/rollback live in cli/reindex_cmd.py)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = re.findall(r"^  ([\w-]+)\s", out.stdout.split("Commands:")[1], flags=re.M)
    assert listed == ["calibrate", "demo", "eval", "info", "reindex", "rescore-cache", "rollback",
                      "search", "shrink", "sweep"]


def _low_rank_lancedb(path, n: int = 600, dim: int = 40, rank: int = 6) -> np.ndarray:
    """A ``docs`` table of rows near a ``rank``-d subspace: d=16 with 16-byte PQ keeps them."""
    import lancedb
    from _pipeline_helpers import table_of

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:rank]
    X = (rng.normal(size=(n, rank)) @ basis + 0.01 * rng.normal(size=(n, dim))).astype(np.float32)
    lancedb.connect(str(path)).create_table("docs", data=table_of(X))
    return X


def test_readme_target_recall_method_auto_command_with_logs(tmp_path, monkeypatch):
    """The README's `shrink --db … --collection docs --target-recall R --method auto`, here
    without its `--dims` (the default candidate dims; R = 0.9 on low-rank data that reaches it;
    tests/test_readme.py runs the README's own line), as
    written (logs and bars on, no --quiet/--json): it used to die on a log line formatting
    dim/pq_bytes while they were None."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLDR_INDEX_WORK", raising=False)
    _low_rank_lancedb(tmp_path / "lancedb")
    res = run("shrink", "--db", "./lancedb", "--collection", "docs", "--target-recall", "0.9",
              "--method", "auto")
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = res.stdout.splitlines()
    assert out[0].startswith("Shrunk lancedb://./lancedb/docs -> lancedb://./lancedb/docs_tldr (")
    assert out[2] == "  vectors        40-d -> 16-d float16 + 16-byte RQ codes"
    sel = [x for x in out if x.startswith("  selection      ")]
    assert sel and sel[0].startswith("  selection      smallest candidate with recall@10 of the "
                                     "code search >= 0.9: ")
    log = " ".join(res.stderr.split())
    assert ("choosing the smallest reaching recall@10 >= 0.9 among tldr d=16 RQ 16 B, pca d=16 RQ "
            "16 B, tldr d=32 RQ 16 B, pca d=32 RQ 16 B, none d=40 RQ 16 B; work dir "
            "tldr-work/docs_tldr-") in log
    assert sorted(os.listdir(".")) == ["lancedb"]  # the work directory and its parent are gone


def test_method_auto_with_dim_and_no_pq_bytes(env):
    tmp, X = env
    res = run("shrink", "--db", str(tmp / "db"), "--collection", "docs", "--dim", "8",
              "--method", "auto", "--epochs", "1", "--threads", "1")
    assert res.exit_code == 0, res.stderr
    log = " ".join(res.stderr.split())
    assert ("tldr/pca/none, choosing the better method among tldr d=8 RQ 8 B, pca d=8 RQ 8 B, "
            "none d=16 PQ 8 B, none d=16 OPQ 8 B, none d=16 RQ 8 B, none d=16 RABITQ 8 B; work "
            "dir") in log
    # the best of those on held-out rows (here a codec on the 16-d originals may win)
    sel = [x for x in res.stdout.splitlines() if x.startswith("  selection      best ")][0]
    m = re.match(r"  selection      best recall@10 of the code search: (tldr|pca|none) d=(8|16) "
                 r"(PQ|OPQ|RQ|RABITQ) 8 B ", sel)
    assert m, sel
    assert res.stdout.splitlines()[2] == (f"  vectors        16-d -> {m[2]}-d float16 + 8-byte "
                                          f"{m[3]} codes")


def test_a_failed_run_leaves_no_empty_default_work_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLDR_INDEX_WORK", raising=False)
    ids = np.arange(300)
    ids[7] = 3  # a duplicate id: the scan fails
    lancedb_source(str(tmp_path), make_nested(300, 8, between=3, within=3), ids=ids)
    res = run("shrink", "--db", "db", "--collection", "docs", "--dim", "4", "--quiet", *FAST)
    assert res.exit_code == 1 and "must hold unique ids. Got duplicate id 3" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["db"]  # no ./tldr-work left behind


def test_search_prints_a_table_on_a_terminal(env, monkeypatch):
    tmp, X = env
    db = str(tmp / "db")
    assert run("shrink", "--db", db, "--collection", "docs", "--dim", "4", "--quiet",
               *FAST).exit_code == 0
    import tldr_index.cli.search_cmd as search_cmd

    monkeypatch.setattr(search_cmd, "stdout_is_tty", lambda: True)
    res = run("search", "--db", db, "--collection", "docs_tldr4", "--queries", "q.npy", "--k",
              "2", "--columns", "text")
    lines = res.stdout.splitlines()
    assert lines[0].strip() == "top-2 per query"
    assert [c.strip() for c in lines[2].strip("┃").split("┃")] == [
        "query", "rank", "id", "distance", "text"]
    first = [c.strip() for c in lines[4].strip("│").split("│")]
    assert first[:3] == ["0", "1", "3"] and first[4] == "doc 0"
    assert len([x for x in lines if x.startswith("│")]) == 20


def test_json_floats_are_rounded():
    from tldr_index.cli import tidy_floats

    assert tidy_floats({"a": [0.44049999999999995, 1, "x"], "b": (0.1 + 0.2,),
                        "c": float("nan")})["a"] == [0.4405, 1, "x"]
    assert tidy_floats([0.1 + 0.2]) == [0.3] and tidy_floats(12345.678901234) == 12345.6789


def test_info_json_has_no_float_noise(env):
    tmp, X = env
    db = str(tmp / "db")
    assert run("shrink", "--db", db, "--collection", "docs", "--dim", "4", "--quiet",
               *FAST).exit_code == 0
    text = run("info", "--db", db, "--collection", "docs_tldr4", "--json").stdout
    floats = re.findall(r"\d+\.\d+(?:e-?\d+)?", text)
    assert floats and all(len(f.split("e")[0].replace(".", "").lstrip("0")) <= 10 for f in floats)


def test_demo_names_the_real_target():
    from tldr_index.demo import format_demo

    res = {"method": "tldr", "target": "lancedb://./tldr-data/docs_tldr64", "seconds": 1.0,
           "recall_at_10": 0.5, "recall_at_10_rescored": 0.9, "shortlist": 200,
           "bytes_per_vector": 16, "codec": "rq", "target_disk_bytes": 10**6,
           "source_disk_bytes": 10**7}
    lines = format_demo({"rows": 10, "source_dim": 384, "source": "lancedb://./tldr-data/docs",
                         "queries": 3, "db": "./tldr-data", "results": [res],
                         "example": {"query": "q", "tldr_rescored_top3": ["a", "b", "c"],
                                     "exact_top3": ["a", "c", "b"]}})
    assert ("  (top-3 of docs_tldr64 with --rescore; '=' where it matches the exact top-3)"
            in lines)
    assert lines[-1] == "Try: tldr-index info --db ./tldr-data --collection docs_tldr64"
    assert any(line.startswith("  bytes/vec: the in-memory search structure (RQ codes) vs")
               for line in lines)


def test_every_option_of_every_command_has_help():
    import click

    missing = [f"{name} {p.opts[0]}" for name, cmd in main.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert missing == []
    assert len(main.commands) >= 8  # shrink, search, info, demo, eval, sweep, reindex, rollback
    assert "CPU threads for training and FAISS" in run("sweep", "--help").stdout
    assert "Seed of the drift check's row draw" in " ".join(run("reindex", "--help").stdout.split())
