"""Rich tables of ``eval`` and ``sweep`` results for the terminal (the CLI prints them)."""

from __future__ import annotations

from rich.table import Table

from ..shrink.qat_select import qat_label
from ..tables import fmt_float


def eval_table(report) -> Table:
    """One row per method x representation: size, compression and recall@k for each k."""
    r = report
    t = Table(title=f"{r.target}: recall against exact {r.metric} search on {r.source} "
                    f"({r.rows:,} x {r.source_dim}), {r.queries} queries ({r.query_kind})",
              title_justify="left")
    for col in ("method", "searched", "d", "bytes/vector", "smaller by"):
        t.add_column(col, justify="left" if col in ("method", "searched") else "right")
    for k in r.ks:
        t.add_column(f"recall@{k}", justify="right")
    for row in r.results:
        t.add_row(row.method, row.representation, str(row.dim), str(row.bytes_per_vector),
                  f"{row.compression:.0f}x", *[fmt_float(row.recall.get(str(k))) for k in r.ks],
                  style="bold" if row.target else None)
    return t


def latency_lines(report) -> list[str]:
    """The search latency line of an eval report (none when latency was not measured)."""
    lat = report.latency_ms
    if not lat:
        return []
    return [f"search latency on this machine ({lat['queries']} single-query calls, k={lat['k']}, "
            f"each opening the target): p50 {lat['search']['p50']:.1f} ms, p99 "
            f"{lat['search']['p99']:.1f} ms; with --rescore p50 "
            f"{lat['search_rescore']['p50']:.1f} ms, p99 {lat['search_rescore']['p99']:.1f} ms"]


def sweep_table(result) -> Table:
    """One row per configuration, smallest first; the chosen one in bold."""
    t = Table(title=f"sweep of {result.source}: recall@10 on {result.queries} held-out rows "
                    f"({result.metric})", title_justify="left")
    for col in ("method", "d", "codec", "bytes", "smaller by", "recall@10 float",
                "recall@10 codes", "recall@10 rescored", "fit s"):
        t.add_column(col, justify="left" if col in ("method", "codec") else "right")
    for c in result.configs:
        t.add_row(c.method + qat_label(c.qat), str(c.dim), c.codec or "-", str(c.code_bytes),
                  f"{4 * result.source_dim / c.pq_bytes:.0f}x" if c.pq_bytes else "-",
                  fmt_float(c.recall_float), fmt_float(c.recall_pq),
                  fmt_float(c.recall_rescored), f"{c.fit_seconds:.1f}",
                  style="bold" if result.chosen is c else None)
    return t
