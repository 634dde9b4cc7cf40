"""Number formatting shared by summaries and tables (the rich tables themselves are in
:mod:`tldr_index.cli.tables`)."""

from __future__ import annotations


def fmt_float(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, or "n/a" for None (tables, summaries, the CLI)."""
    return "n/a" if x is None else f"{x:.{digits}f}"
