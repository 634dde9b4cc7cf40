"""``tldr-index search`` and ``tldr-index info``: a compact collection's nearest rows for query
vectors, and its description."""

from __future__ import annotations

import sys

import click
import numpy as np

from ..tables import fmt_float
from .options import (api_key_opt, db_opt, json_opt, library_errors, quiet_opt, setup,
                      store_options, target_uri)
from .output import echo_json, mb

_COMPACT_TARGET_OPTS = (
    db_opt,
    click.option("--collection", default=None, help="Compact table in --db."),
    click.option("--target", default=None, metavar="URI",
                 help="Compact collection URI (instead of --collection)."),
)


def compact_target_opts(fn):
    """``--db``, ``--collection``, ``--target``: which compact collection a command reads
    (resolved by :func:`tldr_index.cli.options.target_uri`)."""
    for opt in reversed(_COMPACT_TARGET_OPTS):
        fn = opt(fn)
    return fn


@click.command()
@compact_target_opts
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".npy float array (n, D) of queries in the original space.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Neighbours returned per query.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the ids (n, k) as .npy (int64, or str ids) [default: print them].")
@click.option("--rescore", is_flag=True,
              help="Re-rank a shortlist by exact distance to the original vectors (source).")
@click.option("--shortlist", type=click.IntRange(min=1), default=None,
              help="Candidates re-ranked per query with --rescore [default: from the code "
                   "index's recall table (the cheapest nprobe and shortlist reaching rescored "
                   "recall@10 0.95), else max(20k, 200)].")
@click.option("--source", default=None, metavar="URI",
              help="Where --rescore fetches originals [default: the source recorded in the "
                   "target].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for FAISS [default: the cores that look idle].")
@click.option("--nprobe", type=int, default=None,
              help="Lists of the target's code index scored per query, in [1, nlist] "
                   "[default: from the stored recall table, see --shortlist; without --rescore "
                   "the smallest nprobe within 0.003 of every list's recall@10].")
@click.option("--target-recall", type=float, default=None,
              help="Pick the cheapest stored nprobe (and, with --rescore, shortlist) whose "
                   "recall@10 against exact search reaches this (instead of --nprobe).")
@click.option("--rescore-cache", default=None, type=click.Path(dir_okay=False),
              help="With --rescore: re-rank from this local copy of the originals by row "
                   "position (written by 'tldr-index rescore-cache') instead of the source.")
@click.option("--rescore-cache-fallback", is_flag=True,
              help="If the --rescore-cache does not match the target's rows, fetch the "
                   "originals from the source instead of failing.")
@click.option("--exhaustive", is_flag=True,
              help="Scan every code even where the target has a code index.")
@click.option("--index-fallback", is_flag=True,
              help="If the stored code index does not match the target's codes, scan every "
                   "code instead of failing.")
@click.option("--columns", default=None, metavar="COL,COL,...",
              help="Id or payload columns to show with each hit (e.g. text,title), in the "
                   "table and in --json.")
@api_key_opt
@quiet_opt
@json_opt
@library_errors
def search(db, collection, target, queries, k, output, rescore, shortlist, source, threads,
           nprobe, target_recall, rescore_cache, rescore_cache_fallback, exhaustive,
           index_fallback, columns, api_key, quiet, json_out):
    """Search a compact collection with queries in the original space.

    \b
    Example:
      tldr-index search --db ./lancedb --collection docs_small --queries q.npy --k 10 \\
          --output ids.npy --rescore
      tldr-index search --db ./lancedb --collection docs_small --queries q.npy --nprobe 8
    """
    from ..search_columns import search_with_columns

    uri = target_uri(target, db, collection)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else []
    setup(quiet, json_out)
    res, values = search_with_columns(
        uri, queries, cols, fetch_columns=not output, k=k, rescore=rescore, shortlist=shortlist,
        source=source, threads=threads, nprobe=nprobe, target_recall=target_recall,
        exhaustive=exhaustive, index_fallback=index_fallback, rescore_cache=rescore_cache,
        rescore_cache_fallback=rescore_cache_fallback,
        target_options=store_options(uri, api_key),
        source_options=store_options(source, api_key) if source else None)
    if output:
        np.save(output, res.ids, allow_pickle=False)
    if json_out:
        out = {"target": uri, "queries": len(res.ids), "k": k, "rescored": res.rescored,
               "engine": res.engine, "nprobe": res.nprobe, "seconds": res.seconds,
               "output": output}
        if res.rescored:  # the shortlist exists only when rescoring
            out["shortlist"] = res.shortlist
        if not output:
            out["ids"] = res.ids.tolist()
            # float32 distances: 7 significant digits, not float64 noise
            out["distances"] = [[float(f"{v:.7g}") for v in row] for row in res.distances.tolist()]
            if cols:
                out["columns"] = values
        echo_json(out)
    elif not output:
        print_hits(res, cols, values)
    elif not quiet:
        secs = sum(res.seconds.values())
        click.echo(f"Wrote {res.ids.shape[0]}x{res.ids.shape[1]} ids to {output} "
                   f"({'rescored, ' if res.rescored else ''}{res.engine}, {secs:.2f} s).")


@click.command("rescore-cache")
@compact_target_opts
@click.option("--path", "path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the cache (.npy, plus PATH.json).")
@click.option("--source", default=None, metavar="URI",
              help="Where the originals are read [default: the source recorded in the target].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Stored precision of the originals.")
@api_key_opt
@quiet_opt
@library_errors
def rescore_cache(db, collection, target, path, source, dtype, api_key, quiet):
    """Write a local copy of a compact collection's originals for search --rescore-cache.

    \b
    Example:
      tldr-index rescore-cache --db ./lancedb --collection docs_small --path docs.f16.npy
      tldr-index search --db ./lancedb --collection docs_small --queries q.npy --rescore \\
          --rescore-cache docs.f16.npy
    """
    from ..rescore_cache_write import write_rescore_cache

    uri = target_uri(target, db, collection)
    setup(quiet, False)
    out = write_rescore_cache(uri, path, source=source, dtype=dtype,
                              target_options=store_options(uri, api_key),
                              source_options=store_options(source, api_key) if source else None)
    if not quiet:
        click.echo(f"Wrote the rescore cache of {uri} to {out} ({mb(out.stat().st_size)}).")


@click.command()
@compact_target_opts
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".npy float array (n, D), n >= 50, of queries like the real ones, in the "
                   "original space.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Neighbours of the recall measured (recall@k).")
@click.option("--rescore-cache", default=None, type=click.Path(dir_okay=False),
              help="Read the exact neighbours from this local copy of the originals "
                   "[default: scan the source].")
@click.option("--source", default=None, metavar="URI",
              help="Where the originals are read without --rescore-cache [default: the source "
                   "recorded in the target].")
@api_key_opt
@quiet_opt
@json_opt
@library_errors
def calibrate(db, collection, target, queries, k, rescore_cache, source, api_key, quiet,
              json_out):
    """Measure the recall table on your own queries and store it in the target: search
    --target-recall then picks nprobe and shortlist from what these queries reached.

    \b
    Example:
      tldr-index calibrate --db ./lancedb --collection docs_small --queries q.npy
      tldr-index search --db ./lancedb --collection docs_small --queries q2.npy --rescore \\
          --target-recall 0.95
    """
    import time

    import tldr_index

    from ..search import load_queries

    uri = target_uri(target, db, collection)
    setup(quiet, json_out)
    t0 = time.perf_counter()
    with tldr_index.open(uri, **(store_options(uri, api_key) or {})) as c:
        table = c.calibrate(load_queries(queries, c.input_dim), k=k, rescore_cache=rescore_cache,
                            source=source,
                            source_options=store_options(source, api_key) if source else None)
    secs = time.perf_counter() - t0
    if json_out:
        echo_json({"target": uri, "seconds": secs, "recall_table": table.to_json()})
    elif not quiet:
        best = max(max(row) for row in table.rescored)
        click.echo(f"Stored the recall table of {uri} measured on {table.describe()} against "
                   f"exact search of the originals ({'rescore cache' if rescore_cache else 'source'}"
                   f", {secs:.1f} s): rescored recall@{table.k} up to {fmt_float(best)}.")


def stdout_is_tty() -> bool:
    """Whether stdout is a terminal (a rich table) or a pipe/file (tab-separated lines)."""
    return sys.stdout.isatty()


def print_hits(res, cols: list[str], values: dict) -> None:
    """One row per hit (query, rank, id, distance, the chosen columns): a rich table on a
    terminal, tab-separated text with a header line otherwise (pipes, files, CI)."""
    head = ["query", "rank", "id", "distance"] + cols
    rows = [[str(q), str(r + 1), str(res.ids[q, r]), f"{res.distances[q, r]:.6g}"]
            + ["" if values[c][q][r] is None else str(values[c][q][r]) for c in cols]
            for q in range(res.ids.shape[0]) for r in range(res.ids.shape[1])]
    if stdout_is_tty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*head, title=f"top-{res.ids.shape[1]} per query"
                      + (" (rescored)" if res.rescored else ""))
        for row in rows:
            table.add_row(*(Text(v) for v in row))  # payload text is not rich markup
        Console(file=sys.stdout).print(table)
        return
    for row in [head] + rows:
        click.echo("\t".join(" ".join(v.split()) for v in row))


@click.command()
@compact_target_opts
@api_key_opt
@json_opt
@library_errors
def info(db, collection, target, api_key, json_out):
    """Describe a compact collection: rows, dims, method, sizes, recall, source.

    \b
    Example:
      tldr-index info --db ./lancedb --collection docs_small
    """
    from ..search import info as run_info

    uri = target_uri(target, db, collection)
    out = run_info(uri, **(store_options(uri, api_key) or {}))
    if json_out:
        echo_json(out)
        return
    rec = out.get("recall") or {}
    lines = [
        f"{out['target']}: {out['rows']:,} rows, {out['method']} {out['source_dim']} -> "
        f"{out['dim']} ({out['metric']}), {out['vector_dtype']} vectors"
        + (f" + {out['code_bytes']}-byte {out['codec'].upper()} codes" if out["code_bytes"]
           else ""),
        f"  source         {out['source']}",
        f"  on disk        {mb(out['disk_bytes'])} (model {mb(out['model_bytes'])})",
        f"  recall@10      {fmt_float(rec.get('recall_at_10'))} compact, "
        f"{fmt_float(rec.get('recall_at_10_rescored'))} rescored (measured at shrink time on "
        f"{rec.get('eval_queries', 0)} rows)",
        f"  written        {out['written_utc']} by tldr-index {out['library_version']}",
    ]
    click.echo("\n".join(lines))
