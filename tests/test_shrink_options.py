"""Typed training options of a shrink plan (tldr_index.shrink.options): defaults equal the
library's, only changed fields are recorded, bad values refused with one exact message, and the
CLI's KEY=VALUE form parses to the same options."""

from __future__ import annotations

import pytest
from _pipeline_helpers import lancedb_source, make_nested

from tldr_index.errors import InvalidParameterError
from tldr_index.reducer import PATIENCE, TLDR
from tldr_index.shrink.options import (DEFAULT_PATIENCE, FitOptions, GraphOptions,
                                       parse_option_pairs)
from tldr_index.shrink.plan import plan_shrink


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts")
    return lancedb_source(str(root), make_nested(300, 24, seed=1))


def test_defaults_are_the_library_defaults():
    assert DEFAULT_PATIENCE == PATIENCE == TLDR(8).patience
    assert GraphOptions().kwargs() == {} and FitOptions().kwargs() == {}


def test_plan_records_only_changed_options(source):
    plain = plan_shrink(source, dim=8)
    assert "graph_options" not in plain.params and "fit_options" not in plain.params
    plan = plan_shrink(source, dim=8, graph_options={"method": "exact"},
                       fit_options=FitOptions(learning_rate=3e-3, patience=None))
    assert plan.graph_options == GraphOptions(method="exact")
    assert plan.params["graph_options"] == {"method": "exact"}
    assert plan.params["fit_options"] == {"learning_rate": 3e-3, "patience": None}


@pytest.mark.parametrize("kwargs, message", [
    ({"graph_options": {"method": "hnsw"}},
     r"^The 'graph_options\.method' parameter of shrink must be one of 'auto', 'exact', "
     r"'opq'\. Got 'hnsw' instead\.$"),
    ({"graph_options": {"nlist": 4}},
     r"^The 'graph_options' parameter of shrink takes the keys method, train_rows, nprobe, "
     r"refine\. Got unknown key\(s\) 'nlist'\.$"),
    ({"fit_options": {"patience": 0}},
     r"^The 'fit_options\.patience' parameter of shrink must be an int in the range \[1, inf\) "
     r"or None\. Got 0 instead\.$"),
    ({"fit_options": {"learning_rate": -1.0}},
     r"^The 'fit_options\.learning_rate' parameter of shrink must be a float in the range "
     r"\(0\.0, inf\]\. Got -1\.0 instead\.$"),
    ({"fit_options": [("patience", 1)]},
     r"^The 'fit_options' parameter of shrink must be a FitOptions, a dict or None\. Got "
     r"\[\('patience', 1\)\] instead\.$"),
])
def test_bad_options_are_refused_before_anything_runs(source, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        plan_shrink(source, dim=8, **kwargs)


def test_cli_pairs_parse_to_typed_options():
    opts = parse_option_pairs(("learning_rate=3e-3", "patience=none", "validation_rows=500"),
                              FitOptions, "--fit-option")
    assert opts == FitOptions(learning_rate=3e-3, patience=None, validation_rows=500)
    assert parse_option_pairs((), GraphOptions, "--graph-option") is None
    assert parse_option_pairs(("method=opq", "refine=0"), GraphOptions,
                              "--graph-option") == GraphOptions(method="opq", refine=0)
    with pytest.raises(InvalidParameterError,
                       match=r"^The '--graph-option' option takes KEY=VALUE\. Got 'exact' "
                             r"instead\.$"):
        parse_option_pairs(("exact",), GraphOptions, "--graph-option")


def test_cli_options_reach_the_run_and_the_target(tmp_path, source):
    from click.testing import CliRunner
    from connectors import open_target

    from tldr_index.cli import main as cli

    target = f"lancedb://{tmp_path}/db/small"
    res = CliRunner().invoke(cli, [
        "shrink", "--source", source, "--target", target, "--dim", "8", "--pq-bytes", "4",
        "--epochs", "1", "--graph-option", "method=exact", "--fit-option", "patience=none",
        "--fit-option", "learning_rate=0.01", "--work-dir", str(tmp_path / "w"), "--json",
        "--quiet"])
    assert res.exit_code == 0, res.output
    params = open_target(target).metadata["params"]
    assert params["graph_options"] == {"method": "exact"}
    assert params["fit_options"] == {"learning_rate": 0.01, "patience": None}
    bad = CliRunner().invoke(cli, ["shrink", "--source", source, "--target", target, "--dim",
                                   "8", "--fit-option", "patience=0", "--quiet"])
    assert bad.exit_code == 1
    assert "Error: The 'fit_options.patience' parameter of shrink (--fit-option) must be an " \
           "int in the range [1, inf) or None. Got 0 instead." in bad.output


def test_default_sample_grows_with_the_collection(source):
    from tldr_index.shrink.plan import default_sample

    assert [default_sample(n) for n in (300, 250_000, 300_000, 500_000, 10 ** 9)] == \
        [50_000, 50_000, 60_000, 100_000, 100_000]
    assert plan_shrink(source, dim=8).sample == 50_000
    assert plan_shrink(source, dim=8, sample=280).sample == 280
