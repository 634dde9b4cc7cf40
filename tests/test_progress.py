"""Progress output: the plain one-line-per-stage display used when stderr is not a terminal (cron,
CI), the rich bars' sub-steps, and what a small shrink / eval prints through the CLI."""

from __future__ import annotations

import io
import re
import time

import pytest
from click.testing import CliRunner
from rich.console import Console

from _pipeline_helpers import lancedb_source, make_nested
from tldr_index.cli import main
from tldr_index.progress import (PlainProgress, Progress, RichProgress, StageTimer, as_progress,
                                 format_rate, make_progress)

STAGES = ["scan", "knn", "train", "encode", "write", "verify", "publish"]
ARGS = ["--dim", "4", "--pq-bytes", "2", "--epochs", "2", "--threads", "1", "--seed", "3"]


def plain() -> tuple[PlainProgress, list[str]]:
    lines: list[str] = []
    return PlainProgress(write=lines.append), lines


def test_plain_progress_prints_one_line_per_stage_with_seconds_rows_and_rate():
    p, lines = plain()
    p.begin("scan", 2000, "rows")
    p.update("scan", 1000)
    p.update("scan", 2000)
    assert lines == []  # nothing until the stage ends
    p.end("scan", 0.5)
    p.begin("train", None, "steps")  # total learnt from the updates
    p.update("train", 3, total=40)
    p.update("train", 40, total=40)
    p.end("train", 8.0)
    p.end("knn", 0.0, note="checkpoint")  # skipped: never begun
    assert lines == ["progress: scan         0.5 s  2,000 rows  4,000 rows/s",
                     "progress: train        8.0 s  40 steps  5.0 steps/s",
                     "progress: knn      skipped (checkpoint)"]


def test_plain_progress_counts_the_stage_not_its_phases():
    p, lines = plain()
    p.begin("encode", 600, "rows")
    p.phase("encode", "PQ training", None)
    p.phase("encode", "encoding", 600, "rows")
    p.update("encode", 600)
    p.phase("encode", "recall estimate", 200, "queries")
    p.update("encode", 50)  # counts of a phase do not replace the stage's rows
    p.end("encode", 2.0)
    p.begin("publish", None, "")
    p.phase("publish", "building the index", None)
    p.end("publish", 0.25)
    assert lines == ["progress: encode       2.0 s  600 rows  300 rows/s",
                     "progress: publish      0.2 s"]


def test_format_rate():
    assert format_rate(12_345, 1.0, "rows") == "12,345 rows/s"
    assert format_rate(7, 2.0, "steps") == "3.5 steps/s"
    assert format_rate(7, 0.0, "steps") == ""


def test_stage_timer_uses_its_clock_and_skips_end_on_error():
    ticks = iter([10.0, 12.5, 20.0])
    p, lines = plain()
    with StageTimer(p, "truth", 100, "queries", clock=lambda: next(ticks)):
        pass
    assert lines == ["progress: truth        2.5 s  100 queries  40.0 queries/s"]
    with pytest.raises(RuntimeError):
        with StageTimer(p, "opq", clock=lambda: next(ticks)):
            raise RuntimeError("boom")
    assert len(lines) == 1


def test_make_progress_picks_plain_lines_off_a_terminal():
    assert isinstance(make_progress(Console(file=io.StringIO())), PlainProgress)
    assert isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)),
                      RichProgress)
    assert type(as_progress(None)) is Progress


def test_rich_progress_names_phases_and_never_shows_unknown_totals():
    out = io.StringIO()
    p = RichProgress(Console(file=out, force_terminal=True, width=150))
    p.begin("train", 600, "rows")
    p.phase("train", "fitting PCA", None)
    task = p._bars.tasks[p._tasks["train"]]
    assert task.description == "train · fitting PCA" and task.total is None
    p.end("train", 0.1)
    assert (task.description, task.total, task.completed) == ("train", 600, 600)
    p.begin("publish", None, "")
    p.phase("publish", "building the index", None)
    p.end("publish", 0.1)
    p.close()
    text = out.getvalue()
    assert "/?" not in text and "0/1" not in text
    assert "600/600 rows" in text


def test_rich_progress_shows_an_eta_while_a_measurable_step_runs():
    p = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=150))
    eta = p._bars.columns[-1]
    p.begin("encode", 1000, "rows")
    task = p._bars.tasks[p._tasks["encode"]]
    p.update("encode", 100)
    time.sleep(0.05)
    p.update("encode", 200)
    assert re.fullmatch(r"ETA \d+:\d\d:\d\d", eta.render(task).plain)
    p.end("encode", 0.1)
    assert eta.render(task).plain == ""  # a finished stage shows its elapsed time only
    p.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    return lancedb_source(str(root), make_nested(600, 16, between=6, within=4, seed=5)), root


def stage_lines(stderr: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^progress: (\S+)", stderr, re.M)]


@pytest.mark.parametrize("method", ["tldr", "pca"])
def test_shrink_off_a_terminal_prints_one_plain_line_per_stage_in_order(method, source):
    src, root = source
    res = CliRunner().invoke(main, ["shrink", "--source", src, "--target", f"docs_{method}",
                                    "--work-dir", str(root / f"work-{method}"),
                                    "--method", method, *ARGS])
    assert res.exit_code == 0, res.stderr
    assert stage_lines(res.stderr) == STAGES
    assert re.search(r"^progress: scan +\d+\.\d s  600 rows  [\d,.]+ rows/s$", res.stderr, re.M)
    assert "/?" not in res.stderr and "0/1" not in res.stderr
    # in order with the log lines: the recall estimate is logged inside encode
    err = res.stderr
    assert err.index("progress: train") < err.index("recall@10 on 200 rows") < \
        err.index("progress: encode")
    if method == "tldr":
        assert err.index("kNN graph (exact") < err.index("progress: knn") < err.index("epoch 1/2")


def test_eval_off_a_terminal_prints_its_stages(source):
    src, root = source
    res = CliRunner().invoke(main, ["eval", "--source", src, "--target", "docs_tldr",
                                    "--queries", "50", "--k", "1,10", "--latency-queries", "2",
                                    "--threads", "1"])
    assert res.exit_code == 0, res.stderr
    # an l2 source (no vector index): RaBitQ and sign bits, inner-product codecs, are skipped
    assert stage_lines(res.stderr) == ["read", "truth", "target", "latency", "pca",
                                       "pca-whiten", "pq", "opq"]


def test_rich_phase_with_the_same_total_only_renames():
    p = RichProgress(Console(file=io.StringIO(), force_terminal=True))
    p.begin("select", 8, "fits")
    p.phase("select", "exact neighbours", 500, "queries")
    p.update("select", 500)
    p.phase("select", "fitting tldr d=16", 8, "fits")  # new total: counting restarts
    p.update("select", 3)
    p.phase("select", "fitting tldr d=32", 8, "fits")  # same total and unit: the count goes on
    task = p._bars.tasks[p._tasks["select"]]
    assert (task.description, task.total, task.completed) == ("select · fitting tldr d=32", 8, 3)
    p.close()
