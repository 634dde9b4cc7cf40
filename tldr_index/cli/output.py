"""What the commands print: sizes, JSON with tidy floats, and the eval/sweep tables, JSON files
and plots."""

from __future__ import annotations

import json
import sys

import click
import numpy as np


def mb(n: int | None) -> str:
    """``n`` bytes as kB or MB (one decimal), "n/a" for None."""
    if n is None:
        return "n/a"
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def tidy_floats(obj, digits: int = 10):
    """``obj`` with every float rounded to ``digits`` significant digits (``0.44049999999999995``
    -> ``0.4405``), recursively through dicts, lists and tuples; for JSON output."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if np.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: tidy_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tidy_floats(v, digits) for v in obj]
    return obj


def echo_json(obj) -> None:
    """``obj`` as indented JSON on stdout (keys sorted, floats tidied)."""
    click.echo(json.dumps(tidy_floats(obj), indent=2, sort_keys=True, default=str))


def write_outputs(report, rows, plot, json_path, quiet, title: str) -> None:
    """Table on stdout (unless quiet or --json -), JSON file, PNG plot of an eval or sweep
    ``report``."""
    from rich.console import Console

    from ..plots import recall_vs_bytes
    from .tables import eval_table, latency_lines, sweep_table

    data = report.to_dict()
    if json_path == "-":
        echo_json(data)
    elif json_path:
        with open(json_path, "w") as f:
            json.dump(tidy_floats(data), f, indent=2, sort_keys=True, default=str)
    if plot:
        ks = getattr(report, "ks", [10])
        k = 10 if 10 in ks else min(ks, key=lambda v: abs(v - 10))
        recall_vs_bytes(rows, plot, k=k, title=title)
    if not quiet and json_path != "-":
        console = Console(file=sys.stdout, width=160)
        is_sweep = hasattr(report, "configs")
        console.print(sweep_table(report) if is_sweep else eval_table(report))
        for line in (report.summary() if is_sweep else latency_lines(report)):
            click.echo(line)
        for what, path in (("JSON", json_path), ("plot", plot)):
            if path and path != "-":
                click.echo(f"Wrote {what} to {path}.")
