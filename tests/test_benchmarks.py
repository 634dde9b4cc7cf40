"""Every benchmark script runs from a clone (issue 12 item 5): ``--help`` says which corpus it
uses and how to pass the larger one (``--corpus PATH``), and a tiny configuration of each runs
with no ``../shared`` (``TLDR_SHARED`` points nowhere), caches and results in a tmp dir.

The smoke runs check that the script finishes and writes its table, not its figures: the
recorded results in benchmarks/results/ come from the full commands in the README. Each runs as
``python <script> <args>`` in a forked child of a pre-imported interpreter (``tests/_forkrun.py``:
its own process, cwd, environment and exit status, without ~5 CPU s of imports each).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _forkrun import run_python

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                 if not p.stem.startswith("_"))
NO_CORPUS = {"gpu_trainer": "generated", "render_quality": "reads a results file",
             "qdrant_edge_write": "generated", "lance_take": "generated"}

# name -> (arguments of a tiny run, file it must write); {tmp} is the test's tmp dir
SMOKE = {
    "frontier": ("--dims , --codecs sign,sq8 --budgets 16,48 --queries 50 --out {tmp}/frontier",
                 "frontier.md"),
    "rq_encode": ("--dims 16 --bytes 4 --beams 1,2 --rows 2000 --train-rows 1000 "
                  "--out {tmp}/rq_encode", "rq_encode.md"),
    "qat": ("--queries 100 --rows 1500 --dim 8 --bytes 4 --qat-epochs 1 --epochs 1 "
            "--out {tmp}/qat.md",
            "qat.md"),
    "quality": ("--dims 8 --methods pca --no-pq --out {tmp}/quality", "quality.md"),
    "paper_shape": ("--dims 8 --methods pca --pq-bytes 4 --out {tmp}/paper", "paper.md"),
    "store_query": ("--rows 2000 --no-ivf-pq --out {tmp}/store_query.md", "store_query.md"),
    "fit_speed": ("--dims 8 --out {tmp}/fit_speed", "fit_speed.md"),
    "fit_probe": ("--dims 8 --configs k10m3 --graph-k 10 --out {tmp}/fit_probe", "fit_probe.md"),
    "shrink": ("--rows 2000 --methods tldr --configs new,current --sample 1000 --epochs 1 "
               "--queries 20 --out {tmp}/shrink.md",
               "shrink.md"),
    "gpu_shrink": ("--rows 2000 --devices cpu --sample 1000 --dim 8 --pq-bytes 4 --root {tmp}/gpu "
                   "--out {tmp}/gpu.md",
                   "gpu.md"),
    "knn": ("--rows 7000 --variants default --queries 50 --exact-queries 50 --out {tmp}/knn.md",
            "knn.md"),
    "out_of_core": ("--rows 7000 --out {tmp}/ooc.md", "ooc.md"),
    "qdrant": ("--rows 600 --queries 10 --kinds sq8,bq1 --compact 16:4 --epochs 1 "
               "--out {tmp}/qdrant.md", "qdrant.md"),
    "qdrant_edge_write": ("--rows 3000 --configs 1024x2 --baseline-rows 50 --root {tmp}/w "
                          "--out {tmp}/edge_write.md", "edge_write.md"),
    "search": ("--rows 3000 --queries 20 --map pca --sample 1000 --nprobes 1,4 --lance-nprobes 2 "
               "--lance-eval 20 --rabitq-nlist 16 --budget 0.2 --out {tmp}/search.md", "search.md"),
    "reindex": ("--rows 2000 --out {tmp}/reindex.md", "reindex.md"),
    "lance_take": ("--rows 2000 --sets 4 --work {tmp} --out {tmp}/lance_take.md",
                   "lance_take.md"),
    "scale": ("--encode-rows 2000 --shrink-rows 2000 --sample 1000 --shard-rows 1000 "
              "--fragment-rows 1000 --ray-workers 2 --work {tmp}/work --out {tmp}/scale.md",
              "scale.md"),
}
# Not run here, with the reason (each still runs --help above).
NOT_SMOKED = {"gpu_trainer": "needs a CUDA GPU (its error without one is tested below)",
              "render_quality": "run after quality's smoke run, on its output (below)"}
SLOW = {"knn", "out_of_core", "reindex", "scale", "gpu_shrink", "shrink", "paper_shape"}


def _run(name: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TLDR_INDEX_DB")}
    env.update(PYTHONPATH=str(ROOT), TLDR_SHARED=str(tmp / "no-shared"),
               TLDR_BENCH_CACHE=str(tmp / "cache"), LANCE_LOG="error")
    script = str(ROOT / "benchmarks" / f"{name}.py")  # `python <script> <args>`, forked
    return run_python("path", script, [script, *args], cwd=tmp, env=env, timeout=900)


def test_every_script_is_listed():
    assert set(SMOKE) | set(NOT_SMOKED) == set(SCRIPTS)


# Runs ``<script> --help`` for every script in ONE interpreter (``runpy``, as ``python
# <script>``: ``__name__ == "__main__"``, ``sys.argv`` set), so the imports (torch, FAISS...)
# are paid once, not once per script; prints ``{name: [exit code, stdout, stderr]}`` as JSON.
HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    o, e, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out[path.rsplit("/", 1)[-1][:-3]] = [code, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    """``name -> CompletedProcess`` of ``benchmarks/<name>.py --help``, all in one child."""
    import json

    tmp = tmp_path_factory.mktemp("help")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TLDR_INDEX_DB")}
    env.update(PYTHONPATH=str(ROOT), TLDR_SHARED=str(tmp / "no-shared"),
               TLDR_BENCH_CACHE=str(tmp / "cache"), LANCE_LOG="error")
    paths = [str(ROOT / "benchmarks" / f"{n}.py") for n in SCRIPTS]
    r = subprocess.run([sys.executable, "-c", HELP_ALL, *paths], cwd=tmp, env=env, text=True,
                       capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return {n: subprocess.CompletedProcess(n, c, o, e)
            for n, (c, o, e) in json.loads(r.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_names_the_corpus(name, helps):
    r = helps[name]
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    if name in NO_CORPUS:
        assert "runs from a clone" in text.lower()
    else:
        assert "--corpus PATH" in text and "the 6,000-row sample shipped in" in text


def _params():
    for name, (args, out) in SMOKE.items():
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, args, out, id=name, marks=marks)


@pytest.mark.parametrize("name,args,out", list(_params()))
def test_smoke_run_without_shared(name, args, out, tmp_path):
    r = _run(name, args.format(tmp=tmp_path).split(), tmp_path)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (tmp_path / out).stat().st_size > 0
    assert "|" in (tmp_path / out).read_text()  # a Markdown table


def test_render_quality_renders_a_smoke_run(tmp_path):
    r = _run("quality", SMOKE["quality"][0].format(tmp=tmp_path).split(), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("render_quality", ["--json", str(tmp_path / "quality.json")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| pca |" in r.stdout


def test_missing_corpus_is_one_line(tmp_path):
    r = _run("quality", ["--corpus", str(tmp_path / "nope.npz"), "--dims", "8"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"Error: --corpus '{tmp_path / 'nope.npz'}' is not a file (corpus to run on: an .npz")


def test_gpu_trainer_without_cuda_says_so(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    r = _run("gpu_trainer", [], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: benchmarks/gpu_trainer.py needs a CUDA GPU; torch sees none."


def test_frontier_target_checks_by_hand():
    """benchmarks/frontier.py's PASS/FAIL lines: best product vs best on originals per budget
    and issue 14's margins over OPQ16 / RQ16 / OPQ32, with the numbers."""
    sys.path.insert(0, str(ROOT))
    from benchmarks._frontier_report import target_checks, versus_table

    def row(rep, codec, size, raw, resc):
        return {"rep": rep, "kind": "on originals" if rep == "original" else "product",
                "dim": 384 if rep == "original" else 64, "codec": codec, "bytes": size,
                "label": f"{codec.upper()}{size}", "recall_raw": raw, "recall_rescored": resc}

    rows = [row("original", "opq", 16, 0.50, 0.90), row("original", "rq", 16, 0.60, 0.97),
            row("original", "opq", 32, 0.65, 0.99), row("tldr64", "rq", 16, 0.63, 0.96),
            row("tldr64", "pq", 32, 0.74, 0.995)]
    lines = target_checks(rows, [16, 32])
    assert lines[2] == ("| 16 B: product >= OPQ16 on originals + 0.12 (raw) | PASS | d=64 RQ16 "
                        "0.630 raw | OPQ16 0.500 + 0.12 = 0.620 |")
    assert lines[3].startswith("| 16 B: product >= RQ16 on originals (raw) | PASS |")
    assert lines[4] == ("| 16 B: product >= RQ16 on originals (rescored) | FAIL | d=64 RQ16 "
                        "0.960 rescored@100 | RQ16 0.970 |")
    assert lines[5] == ("| 32 B: product >= OPQ32 on originals + 0.10 (raw) | FAIL | d=64 PQ32 "
                        "0.740 raw | OPQ32 0.650 + 0.10 = 0.750 |")
    assert lines[8] == ("| 32 B: best product >= best on originals (raw) | PASS | d=64 PQ32 "
                        "0.740 raw | OPQ32 0.650 |")
    assert target_checks(rows[:1], [16])[3] == \
        "| 16 B: product >= RQ16 on originals (raw) | n/a (product row not run) | | |"
    assert versus_table(rows, [16])[2] == ("| 16 | RQ16 0.600 | d=64 RQ16 0.630 | +0.030 | RQ16 "
                                           "0.970 | d=64 RQ16 0.960 | -0.010 |")
