"""``tldr-index``: a thin click layer over :mod:`tldr_index.pipeline` (each command calls one
library function; library errors become one-line ``Error: ...`` messages with exit code 1; Ctrl-C
exits 130 saying which stage it stopped and the command that resumes)."""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys

import click
import numpy as np

from . import __version__
from .tables import fmt_float

DEFAULT_DB = "./tldr-data"


def default_db() -> str:
    """``$TLDR_INDEX_DB`` or ``./tldr-data``: the embedded LanceDB used when no store is named."""
    return os.environ.get("TLDR_INDEX_DB") or DEFAULT_DB


def _library_errors(fn):
    """Turn tldr-index errors into ``click.ClickException`` one-liners."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import TLDRError
        try:
            return fn(*args, **kwargs)
        except TLDRError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
    return wrapper


def _is_uri(value: str) -> bool:
    return "://" in value or value.rstrip("/").endswith((".lance", ".parquet"))


def _source_uri(source: str | None, db: str | None, collection: str | None) -> str:
    from connectors import lancedb_uri

    if source and collection:
        raise click.UsageError("Pass either --source or --collection, not both.")
    if source:
        if db:
            raise click.UsageError("--db names the database of --collection; with --source, "
                                   "put the database in the URI.")
        return source
    if not collection:
        raise click.UsageError("Missing --collection (a table in --db) or --source (a URI).")
    return lancedb_uri(db or default_db(), collection)


def _sibling_uri(source_uri: str, name: str) -> str:
    """``name`` in the same store as ``source_uri`` (same LanceDB database, Qdrant server, ...)."""
    from connectors import parse_uri
    from connectors.uri import check_name

    p = parse_uri(source_uri)
    if p.kind == "parquet":
        raise click.UsageError("--target must be a URI for a Parquet source, e.g. "
                               "--target parquet://out/.")
    check_name(name, "target")
    parent = source_uri.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/{name}" + (".lance" if p.kind == "lance" and not p.table else "")


def _target_uri(target: str | None, db: str | None, collection: str | None) -> str:
    from connectors import lancedb_uri

    if target and collection:
        raise click.UsageError("Pass either --target or --collection, not both.")
    if target and _is_uri(target):
        return target
    name = target or collection
    if not name:
        raise click.UsageError("Missing --collection (a table in --db) or --target (a URI).")
    return lancedb_uri(db or default_db(), name)


def _setup(quiet: bool, json_out: bool):
    """Logging and progress for a command, on stderr unless ``quiet``: INFO logs, and rich bars
    on a terminal or one plain line per finished stage otherwise (cron, CI)."""
    from .progress import make_progress, setup_logging

    console, restore = setup_logging(quiet=quiet or json_out)
    click.get_current_context().call_on_close(restore)
    return None if quiet else make_progress(console)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
# how each command continues after Ctrl-C: "resume" (same command + --resume), "rerun" (the same
# command picks up its own state), or nothing to continue (the command wrote nothing)
_CONTINUE = {"shrink": "resume", "reindex": "rerun", "sweep": "rerun"}
_JSON_STATUS_COMMANDS = ("reindex", "rollback")


def _program_name(ctx: click.Context) -> str:
    name = ctx.find_root().info_name or ""
    return name if name in ("tldr-index", "python -m tldr_index") else "tldr-index"


def interrupted_message(command: str, argv: list[str], exc: KeyboardInterrupt,
                        program: str = "tldr-index") -> list[str]:
    """The lines printed when Ctrl-C stops ``command`` run as ``program argv...``: where it
    stopped, and the exact command that continues (or that nothing was kept)."""
    stage = getattr(exc, "stage", None)
    where = f"during stage '{stage}' of {command}" if stage else f"during {command}"
    lines = [f"Interrupted {where} (Ctrl-C)."]
    how = _CONTINUE.get(command)
    work = getattr(exc, "work_dir", None)
    if how == "resume":
        again = list(argv) if "--resume" in argv else [*argv, "--resume"]
        lines.append((f"Finished stages are checkpointed in {work}; resume" if work else
                      "Resume") + " with:")
        lines.append(f"  {program} {shlex.join(again)}")
    elif how == "rerun":
        lines.append("Run the same command again to continue from its saved state:")
        lines.append(f"  {program} {shlex.join(argv)}")
    else:
        lines.append("Nothing to resume: run the command again to start over.")
    return lines


class _Group(click.Group):
    """The ``tldr-index`` group: keeps the command line, and turns Ctrl-C into exit code 130
    with the stage and the resume command instead of click's ``Aborted!`` (exit 1)."""

    def make_context(self, info_name, args, parent=None, **extra):
        ctx = super().make_context(info_name, list(args), parent=parent, **extra)
        ctx.meta["tldr_index.argv"] = list(args)
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            argv = ctx.meta.get("tldr_index.argv", [])
            command = next((a for a in argv if a in self.commands), ctx.invoked_subcommand or "")
            lines = interrupted_message(command, argv, exc, _program_name(ctx))
            if command in _JSON_STATUS_COMMANDS:  # they promise one JSON line on stdout
                click.echo(json.dumps({"status": "interrupted", "error": lines[0],
                                       "exit_code": EXIT_INTERRUPTED}, sort_keys=True))
            click.echo("\n" + "\n".join(lines), err=True)
            sys.stderr.flush()
            ctx.exit(EXIT_INTERRUPTED)


def _mb(n: int | None) -> str:
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


def _echo_json(obj) -> None:
    click.echo(json.dumps(tidy_floats(obj), indent=2, sort_keys=True, default=str))


def _summary(report) -> list[str]:
    r = report
    lines = [
        f"Shrunk {r.source} -> {r.target} ({r.method}, {r.metric})",
        f"  rows           {r.rows:,}" + (f" ({r.skipped_invalid:,} invalid row(s) skipped, "
                                             f"first id {r.first_invalid_id!r})"
                                             if r.skipped_invalid else ""),
        f"  vectors        {r.source_dim}-d -> {r.dim}-d {r.vector_dtype}"
        + (f" + {r.pq_bytes}-byte PQ codes" if r.pq_bytes else ""),
        f"  bytes on disk  {_mb(r.source_disk_bytes)} -> {_mb(r.target_disk_bytes)}"
        + (f" ({r.disk_compression:.1f}x smaller)" if r.disk_compression else ""),
    ]
    if r.pq_bytes:
        lines.append(f"  search memory  {4 * r.source_dim:,} B (float32) -> {r.pq_bytes} B (PQ) "
                     f"per vector ({r.search_compression:.0f}x smaller)")
    if r.graph_recall is not None:
        lines.append(f"  graph recall   {fmt_float(r.graph_recall)} "
                     f"(kNN graph of the training sample)")
    if r.recall_at_10 is not None:
        lines.append(f"  recall@10      {fmt_float(r.recall_at_10)} compact search, "
                     f"{fmt_float(r.recall_at_10_rescored)} with --rescore "
                     f"(shortlist {r.shortlist}); "
                     f"{r.eval_queries} rows vs exact search on the original vectors")
    if r.selection:
        lines.append(f"  selection      {r.selection['reason']}")
    stages = " | ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items())
    if r.skipped_stages:
        stages += f" | from checkpoint: {', '.join(r.skipped_stages)}"
    lines += [f"  stage times    {stages}", f"  wall time      {r.wall_seconds:.1f} s"]
    return lines


# ------------------------------------------------------------------------------------------ CLI

@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="tldr-index")
def main() -> None:
    """Shrink embedding collections (LanceDB / Lance, Parquet, Qdrant) into compact collections:
    a learned linear map to fewer dimensions plus PQ codes, with the model stored beside them.

    \b
    Start with:  tldr-index demo
    """


_json_opt = click.option("--json", "json_out", is_flag=True,
                         help="Print one JSON object on stdout instead of the summary.")
_quiet_opt = click.option("--quiet", "-q", is_flag=True,
                          help="No progress bars, logs or summary (errors only).")
_db_opt = click.option("--db", default=None, metavar="DIR",
                       help="LanceDB database directory [default: $TLDR_INDEX_DB or ./tldr-data].")
_api_key_opt = click.option("--api-key", envvar="QDRANT_API_KEY", default=None, metavar="KEY",
                            help="Qdrant API key [default: $QDRANT_API_KEY]; never printed, "
                                 "logged or stored. Prefer the variable: a flag shows in `ps`.")


def _store_options(uri: str, api_key: str | None, **extra) -> dict | None:
    """Connector options for ``uri``: the API key only for Qdrant URIs."""
    from connectors import parse_uri

    opts = {k: v for k, v in extra.items() if v is not None}
    if api_key and parse_uri(uri).kind == "qdrant":
        opts["api_key"] = api_key
    return opts or None


@main.command()
@click.option("--source", default=None, metavar="URI",
              help="Source URI: lancedb://db/table, lance://x.lance, parquet://data/*.parquet, "
                   "qdrant://host:6333/coll, qdrant+path:///dir/coll.")
@_db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--target", default=None, metavar="URI|NAME",
              help="Target URI, or a name in the source's store [default: "
                   "<collection>_tldr<dim>].")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Reduced dimension (required unless --target-recall).")
@click.option("--method", type=click.Choice(["tldr", "pca", "auto"]), default="tldr",
              show_default=True,
              help="tldr, the pca baseline through the same pipeline, or auto: fit both, keep "
                   "the better on held-out rows.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Pick the smallest d (and PQ size) whose compact search reaches this "
                   "recall@10 on held-out rows (candidates: --dims).")
@click.option("--dims", default=None, metavar="D,D,...",
              help="Candidate dims for --target-recall [default: 16,32,64,128].")
@click.option("--vector-column", default=None, help="Vector column (Qdrant: named vector).")
@click.option("--id-column", default=None, help="Id column.")
@click.option("--pq-bytes", type=click.IntRange(min=0), default=None,
              help="PQ code bytes per row; must divide --dim; 0 for none [default: 16].")
@click.option("--neighbors", type=click.IntRange(min=1), default=3, show_default=True,
              help="k of the kNN graph TLDR learns from.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: 8].")
@click.option("--sample", type=click.IntRange(min=2), default=100_000, show_default=True,
              help="Training rows (a seeded random sample).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True,
              help="Where the kNN graph, training and the recall estimate run (auto: the GPU "
                   "when one is seen; cuda without a GPU is an error).")
@click.option("--work-dir", default=None, metavar="DIR",
              help="Checkpoints [default: $TLDR_INDEX_WORK or ./tldr-work, /<target>-<hash>].")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its checkpoints (a plain rerun does too when "
                   "source and parameters are unchanged); refuse when they changed.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing target (and a work dir that cannot be resumed).")
@click.option("--distance", type=click.Choice(["cosine", "l2", "ip"]), default=None,
              help="Distance of the source vectors [default: Lance/Parquet: the vector index's "
                   "metric, else l2; Qdrant: the collection's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of every random choice: equal seeds give equal targets.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training and FAISS [default: the cores that look idle].")
@click.option("--keep-work", is_flag=True, help="Keep the work directory after publishing.")
@click.option("--skip-invalid", is_flag=True,
              help="Drop rows whose vector has NaN/inf (or is zero, under cosine) and report "
                   "them, instead of failing.")
@_api_key_opt
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: scan (validation, id digest, sample) and encode + write every row as "
                   "Ray jobs (Lance/Parquet; needs pip install 'tldr-index[ray]'); kNN and "
                   "training stay on this node, on the sample.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--engine ray: Ray tasks in flight [default: the cluster's CPUs].")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None,
              help="--engine ray: rows per Ray task and per written shard [default: 262144].")
@_quiet_opt
@_json_opt
@_library_errors
def shrink(source, db, collection, target, dim, method, target_recall, dims, vector_column,
           id_column, pq_bytes,
           neighbors, epochs, sample, device, work_dir, resume, overwrite, distance, seed,
           threads, keep_work, skip_invalid, api_key, engine, workers, shard_rows, quiet,
           json_out):
    """Shrink a collection into a new compact one (reduced vectors + PQ codes + model).

    \b
    Examples:
      tldr-index shrink --collection docs --dim 64
      tldr-index shrink --db ./lancedb --collection docs --dim 64 --target docs_small
      tldr-index shrink --source parquet://data/*.parquet --target parquet://out/ --dim 64
      tldr-index shrink --source qdrant://localhost:6333/docs --dim 64
      tldr-index shrink --collection docs --target-recall 0.9 --method auto
    """
    from . import pipeline
    from .errors import InvalidParameterError
    from .shrink.plan import check_engine_options, default_target

    if dim is None and target_recall is None:
        raise click.UsageError("Missing option '--dim'.")  # or --target-recall
    engine_options = {k: v for k, v in (("workers", workers), ("shard_rows", shard_rows))
                      if v is not None}
    try:  # the library's rule (tldr_index.shrink.plan), with the CLI's words
        check_engine_options(engine, engine_options)
    except InvalidParameterError:
        raise click.UsageError("--workers and --shard-rows apply to --engine ray only.") from None

    src = _source_uri(source, db, collection)
    tgt = None
    if target is not None:
        tgt = target if _is_uri(target) else _sibling_uri(src, target)
    progress = _setup(quiet, json_out)
    report = pipeline.shrink(src, tgt, dim=dim, method=method, target_recall=target_recall,
                             dims=_int_list(dims, "--dims"), pq_bytes=pq_bytes,
                             neighbors=neighbors, epochs=epochs, sample=sample, device=device,
                             work_dir=work_dir, resume=resume, overwrite=overwrite,
                             random_state=seed, progress=progress, vector_column=vector_column,
                             id_column=id_column, keep_work=keep_work, threads=threads,
                             source_options=_store_options(src, api_key, distance=distance),
                             sink_options=_store_options(
                                 tgt or default_target(src, dim),
                                 api_key),
                             skip_invalid=skip_invalid, engine=engine,
                             engine_options=engine_options or None)
    if json_out:
        _echo_json(report.to_dict())
    elif not quiet:
        click.echo("\n".join(_summary(report)))


@main.command()
@_db_opt
@click.option("--collection", default=None, help="Compact table in --db.")
@click.option("--target", default=None, metavar="URI",
              help="Compact collection URI (instead of --collection).")
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".npy float array (n, D) of queries in the original space.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Neighbours returned per query.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the ids (n, k) as .npy (int64, or str ids) [default: print them].")
@click.option("--rescore", is_flag=True,
              help="Re-rank a shortlist by exact distance to the original vectors (source).")
@click.option("--shortlist", type=click.IntRange(min=1), default=None,
              help="Candidates re-ranked per query with --rescore [default: max(20k, 200)].")
@click.option("--source", default=None, metavar="URI",
              help="Where --rescore fetches originals [default: the source recorded in the "
                   "target].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for FAISS [default: the cores that look idle].")
@click.option("--columns", default=None, metavar="COL,COL,...",
              help="Id or payload columns to show with each hit (e.g. text,title), in the "
                   "table and in --json.")
@_api_key_opt
@_quiet_opt
@_json_opt
@_library_errors
def search(db, collection, target, queries, k, output, rescore, shortlist, source, threads,
           columns, api_key, quiet, json_out):
    """Search a compact collection with queries in the original space.

    \b
    Example:
      tldr-index search --db ./lancedb --collection docs_small --queries q.npy --k 10 \\
          --output ids.npy --rescore
    """
    from .search import search as run_search

    uri = _target_uri(target, db, collection)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else []
    if cols:  # a wrong name fails before the search runs
        from connectors import open_target

        from .search_columns import check_columns
        check_columns(open_target(uri, **(_store_options(uri, api_key) or {})), cols)
    _setup(quiet, json_out)
    res = run_search(uri, queries, k=k, rescore=rescore, shortlist=shortlist, source=source,
                     threads=threads, target_options=_store_options(uri, api_key),
                     source_options=_store_options(source, api_key) if source else None)
    values = {}
    if cols and not output:
        from .search_columns import result_columns

        values = result_columns(uri, res.ids, cols, **(_store_options(uri, api_key) or {}))
    if output:
        np.save(output, res.ids, allow_pickle=False)
    if json_out:
        out = {"target": uri, "queries": len(res.ids), "k": k, "rescored": res.rescored,
               "engine": res.engine, "seconds": res.seconds, "output": output}
        if res.rescored:  # the shortlist exists only when rescoring
            out["shortlist"] = res.shortlist
        if not output:
            out["ids"] = res.ids.tolist()
            # float32 distances: 7 significant digits, not float64 noise
            out["distances"] = [[float(f"{v:.7g}") for v in row] for row in res.distances.tolist()]
            if cols:
                out["columns"] = values
        _echo_json(out)
    elif not output:
        _print_hits(res, cols, values)
    elif not quiet:
        secs = sum(res.seconds.values())
        click.echo(f"Wrote {res.ids.shape[0]}x{res.ids.shape[1]} ids to {output} "
                   f"({'rescored, ' if res.rescored else ''}{res.engine}, {secs:.2f} s).")


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _print_hits(res, cols: list[str], values: dict) -> None:
    """One row per hit (query, rank, id, distance, the chosen columns): a rich table on a
    terminal, tab-separated text with a header line otherwise (pipes, files, CI)."""
    head = ["query", "rank", "id", "distance"] + cols
    rows = [[str(q), str(r + 1), str(res.ids[q, r]), f"{res.distances[q, r]:.6g}"]
            + ["" if values[c][q][r] is None else str(values[c][q][r]) for c in cols]
            for q in range(res.ids.shape[0]) for r in range(res.ids.shape[1])]
    if _stdout_is_tty():
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


@main.command()
@_db_opt
@click.option("--collection", default=None, help="Compact table in --db.")
@click.option("--target", default=None, metavar="URI",
              help="Compact collection URI (instead of --collection).")
@_api_key_opt
@_json_opt
@_library_errors
def info(db, collection, target, api_key, json_out):
    """Describe a compact collection: rows, dims, method, sizes, recall, source.

    \b
    Example:
      tldr-index info --db ./lancedb --collection docs_small
    """
    from .search import info as run_info

    uri = _target_uri(target, db, collection)
    out = run_info(uri, **(_store_options(uri, api_key) or {}))
    if json_out:
        _echo_json(out)
        return
    rec = out.get("recall") or {}
    lines = [
        f"{out['target']}: {out['rows']:,} rows, {out['method']} {out['source_dim']} -> "
        f"{out['dim']} ({out['metric']}), {out['vector_dtype']} vectors"
        + (f" + {out['pq_bytes']}-byte PQ codes" if out["pq_bytes"] else ""),
        f"  source         {out['source']}",
        f"  on disk        {_mb(out['disk_bytes'])} (model {_mb(out['model_bytes'])})",
        f"  recall@10      {fmt_float(rec.get('recall_at_10'))} compact, "
        f"{fmt_float(rec.get('recall_at_10_rescored'))} rescored (measured at shrink time on "
        f"{rec.get('eval_queries', 0)} rows)",
        f"  written        {out['written_utc']} by tldr-index {out['library_version']}",
    ]
    click.echo("\n".join(lines))


@main.command()
@_db_opt
@click.option("--dim", type=click.IntRange(min=1), default=64, show_default=True,
              help="Reduced dimension of both demo targets.")
@click.option("--pq-bytes", type=click.IntRange(min=1), default=16, show_default=True,
              help="PQ code bytes per row; must divide --dim.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="TLDR epochs [default: 8].")
@_quiet_opt
@_json_opt
@_library_errors
def demo(db, dim, pq_bytes, epochs, quiet, json_out):
    """Shrink a real sample of text embeddings and show what it keeps.

    Creates the embedded LanceDB (--db) with a `docs` table from the sample shipped with
    tldr-index (if missing), shrinks it with TLDR and with PCA, and compares recall@10 of
    `search` against exact neighbours of the original vectors on held-out queries.

    \b
    Example:
      tldr-index demo
    """
    from .demo import format_demo, run_demo

    progress = _setup(quiet, json_out)
    result = run_demo(db or default_db(), dim=dim, pq_bytes=pq_bytes, epochs=epochs,
                      progress=progress)
    if json_out:
        _echo_json(result)
    elif not quiet:
        click.echo("\n".join(format_demo(result)))


def _int_list(value: str | None, param: str) -> list[int] | None:
    """"1,10,100" -> [1, 10, 100] (a usage error naming ``param`` otherwise)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"must be comma-separated integers, e.g. 1,10,100. Got "
                                 f"{value!r}.", param_hint=param) from None


def _eval_uris(source, db, collection, target) -> tuple[str | None, str]:
    """(source URI or None: the one recorded in the target, target URI) of eval."""
    src = _source_uri(source, db, collection) if (source or collection) else None
    if _is_uri(target):
        return src, target
    return src, (_sibling_uri(src, target) if src else _target_uri(target, db, None))


@main.command("eval")
@click.option("--source", default=None, metavar="URI",
              help="Original collection [default: the source recorded in the target].")
@_db_opt
@click.option("--collection", default=None, help="Original table in --db (instead of --source).")
@click.option("--target", required=True, metavar="URI|NAME",
              help="Compact collection written by shrink (a URI or a name beside the source).")
@click.option("--queries", default="1000", show_default=True, metavar="N|FILE.npy",
              help="Held-out rows to draw as queries, or a .npy (n, D) file of query vectors.")
@click.option("--k", "ks", default="1,10,100", show_default=True, metavar="K,K,...",
              help="The k of recall@k.")
@click.option("--shortlist", "shortlists", default=None, metavar="S,S,...",
              help="Shortlist sizes for search --rescore [default: max(20 max(k), 200)].")
@click.option("--baselines", default="pca,pca-whiten,pq,opq", show_default=True,
              help="Side by side: pca, pca-whiten, pq, opq (of the original vectors), or none.")
@click.option("--latency-queries", type=click.IntRange(min=0), default=50, show_default=True,
              help="Single-query search calls timed for p50/p99 (0: skip).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: recall@10 against bytes per vector, one line per method.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON ('-': stdout instead of the table).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the query draw and of the baselines' fits.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for FAISS [default: the cores that look idle].")
@_quiet_opt
@_library_errors
def eval_cmd(source, db, collection, target, queries, ks, shortlists, baselines,
             latency_queries, plot, json_path, seed, threads, quiet):
    """Recall of a compact collection against exact search on the original vectors, with PCA,
    whitened PCA, PQ and OPQ side by side.

    \b
    Example:
      tldr-index eval --db ./lancedb --collection docs --target docs_tldr64 \\
          --queries 1000 --k 1,10,100 --plot eval.png --json eval.json
    """
    from .evaluate import evaluate
    from .plots import require_matplotlib

    if plot:
        require_matplotlib("plot")
    src, tgt = _eval_uris(source, db, collection, target)
    progress = _setup(quiet, json_path == "-")
    q = int(queries) if queries.strip().isdigit() else queries
    base = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    report = evaluate(tgt, source=src, queries=q, k=_int_list(ks, "--k"),
                      shortlists=_int_list(shortlists, "--shortlist"), baselines=base,
                      latency_queries=latency_queries, random_state=seed, threads=threads,
                      progress=progress)
    _write_outputs(report, report.results, plot, json_path, quiet,
                   title=f"{report.target} vs alternatives")


@main.command("sweep")
@click.option("--source", default=None, metavar="URI", help="Source URI (instead of --collection).")
@_db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--dims", default=None, metavar="D,D,...",
              help="Candidate dims [default: 16,32,64,128 below the source's dimension].")
@click.option("--pq-bytes", "pq_bytes", default=None, metavar="B,B,...",
              help="PQ sizes per d (those that divide d) [default: 16 or the largest divisor].")
@click.option("--method", type=click.Choice(["tldr", "pca", "auto"]), default="tldr",
              show_default=True, help="auto: TLDR and PCA side by side, the better one chosen.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Name the smallest configuration whose compact search reaches this "
                   "recall@10; exit code 6 when none does.")
@click.option("--criterion", type=click.Choice(["pq", "rescored", "float"]), default="pq",
              show_default=True, help="Which recall@10 decides: PQ codes, --rescore, float.")
@click.option("--sample", type=click.IntRange(min=2), default=100_000, show_default=True,
              help="Training rows (a seeded random sample); the rest are query candidates.")
@click.option("--neighbors", type=click.IntRange(min=1), default=3, show_default=True,
              help="k of the kNN graph TLDR learns from.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="TLDR epochs per candidate [default: 8].")
@click.option("--queries", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out rows used as queries.")
@click.option("--work-dir", default=None, metavar="DIR",
              help="Keeps the scan and the kNN graph for later sweeps "
                   "[default: ./tldr-work/sweep-<name>-<hash>].")
@click.option("--distance", type=click.Choice(["cosine", "l2", "ip"]), default=None,
              help="Distance of the source vectors [default: Lance/Parquet: the vector index's "
                   "metric, else l2; Qdrant: the collection's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of every random choice (sample, graph, training, PQ, queries).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training and FAISS [default: the cores that look idle].")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of the recall/size frontier.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON ('-': stdout instead of the table).")
@_quiet_opt
@_library_errors
def sweep_cmd(source, db, collection, dims, pq_bytes, method, target_recall, criterion, sample,
              neighbors, epochs, queries, work_dir, distance, seed, threads, plot, json_path,
              quiet):
    """Train several dims (and PQ sizes) from one kNN graph and print the recall/size frontier.

    \b
    Example:
      tldr-index sweep --db ./lancedb --collection docs --dims 16,32,64,128 \\
          --pq-bytes 8,16,32 --target-recall 0.9 --plot sweep.png
    """
    from .plots import require_matplotlib
    from .sweep import sweep

    if plot:
        require_matplotlib("plot")
    src = _source_uri(source, db, collection)
    progress = _setup(quiet, json_path == "-")
    result = sweep(src, dims=_int_list(dims, "--dims"), pq_bytes=_int_list(pq_bytes, "--pq-bytes"),
                   method=method, target_recall=target_recall, criterion=criterion,
                   neighbors=neighbors, epochs=epochs, sample=sample, eval_queries=queries,
                   work_dir=work_dir, random_state=seed, threads=threads, progress=progress,
                   source_options={"distance": distance} if distance else None)
    _write_outputs(result, result.results, plot, json_path, quiet,
                   title=f"sweep of {result.source}")
    if target_recall is not None and result.chosen is None:
        from .sweep import EXIT_NOT_REACHED

        shown = not quiet and json_path != "-"  # the table's summary line holds the reason
        why = "; see above" if shown else ": " + result.reason.rstrip(".")
        click.echo(f"Error: --target-recall {target_recall} is not reached (exit code "
                   f"{EXIT_NOT_REACHED}){why}.", err=True)
        click.get_current_context().exit(EXIT_NOT_REACHED)


def _write_outputs(report, rows, plot, json_path, quiet, title: str) -> None:
    """Table on stdout (unless quiet or --json -), JSON file, PNG plot."""
    from rich.console import Console

    from .plots import recall_vs_bytes
    from .tables import eval_table, latency_lines, sweep_table

    data = report.to_dict()
    if json_path == "-":
        _echo_json(data)
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


if __name__ == "__main__":  # pragma: no cover - python -m tldr_index.cli (what `make demo` runs)
    # Run the package's module, not this copy: cli_reindex imports its helpers from
    # tldr_index.cli, and registering its commands here would import that module a second time.
    from tldr_index.cli import main as _package_main

    sys.exit(_package_main())
else:
    from .cli_reindex import reindex as _reindex_cmd, rollback as _rollback_cmd

    main.add_command(_reindex_cmd)
    main.add_command(_rollback_cmd)
