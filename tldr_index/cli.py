"""``tldr-index``: a thin click layer over :mod:`tldr_index.pipeline` (each command calls one
library function; library errors become one-line ``Error: ...`` messages with exit code 1)."""

from __future__ import annotations

import functools
import json
import os
import sys

import click
import numpy as np

from . import __version__

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

    p = parse_uri(source_uri)
    if p.kind == "parquet":
        raise click.UsageError("--target must be a URI for a Parquet source, e.g. "
                               "--target parquet://out/.")
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
    """Logging and progress for a command: rich bars and INFO logs on stderr unless ``quiet``."""
    from .progress import RichProgress, setup_logging

    console, restore = setup_logging(quiet=quiet or json_out)
    click.get_current_context().call_on_close(restore)
    return None if quiet else RichProgress(console)


def _mb(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _summary(report) -> list[str]:
    r = report
    lines = [
        f"Shrunk {r.source} -> {r.target} ({r.method}, {r.metric})",
        f"  rows           {r.rows:,}",
        f"  vectors        {r.source_dim}-d -> {r.dim}-d {r.vector_dtype}"
        + (f" + {r.pq_bytes}-byte PQ codes" if r.pq_bytes else ""),
        f"  bytes on disk  {_mb(r.source_disk_bytes)} -> {_mb(r.target_disk_bytes)}"
        + (f" ({r.disk_compression:.1f}x smaller)" if r.disk_compression else ""),
    ]
    if r.pq_bytes:
        lines.append(f"  search memory  {4 * r.source_dim:,} B (float32) -> {r.pq_bytes} B (PQ) "
                     f"per vector ({r.search_compression:.0f}x smaller)")
    if r.graph_recall is not None:
        lines.append(f"  graph recall   {_fmt(r.graph_recall)} (kNN graph of the training sample)")
    if r.recall_at_10 is not None:
        lines.append(f"  recall@10      {_fmt(r.recall_at_10)} compact search, "
                     f"{_fmt(r.recall_at_10_rescored)} with --rescore (shortlist {r.shortlist}); "
                     f"{r.eval_queries} rows vs exact search on the original vectors")
    stages = " | ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items())
    if r.skipped_stages:
        stages += f" | from checkpoint: {', '.join(r.skipped_stages)}"
    lines += [f"  stage times    {stages}", f"  wall time      {r.wall_seconds:.1f} s"]
    return lines


# ------------------------------------------------------------------------------------------ CLI

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@click.option("--source", default=None, metavar="URI",
              help="Source URI: lancedb://db/table, lance://x.lance, parquet://data/*.parquet, "
                   "qdrant://host:6333/coll, qdrant+path:///dir/coll.")
@_db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--target", default=None, metavar="URI|NAME",
              help="Target URI, or a name in the source's store [default: "
                   "<collection>_tldr<dim>].")
@click.option("--dim", required=True, type=click.IntRange(min=1), help="Reduced dimension.")
@click.option("--method", type=click.Choice(["tldr", "pca"]), default="tldr", show_default=True,
              help="tldr, or the pca baseline through the same pipeline.")
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
              show_default=True)
@click.option("--work-dir", default=None, metavar="DIR",
              help="Checkpoints [default: $TLDR_INDEX_WORK or ./tldr-work, /<target>-<hash>].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoints.")
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
@_quiet_opt
@_json_opt
@_library_errors
def shrink(source, db, collection, target, dim, method, vector_column, id_column, pq_bytes,
           neighbors, epochs, sample, device, work_dir, resume, overwrite, distance, seed,
           threads, keep_work, quiet, json_out):
    """Shrink a collection into a new compact one (reduced vectors + PQ codes + model).

    \b
    Examples:
      tldr-index shrink --collection docs --dim 64
      tldr-index shrink --db ./lancedb --collection docs --dim 64 --target docs_small
      tldr-index shrink --source parquet://data/*.parquet --target parquet://out/ --dim 64
      tldr-index shrink --source qdrant://localhost:6333/docs --dim 64
    """
    from . import pipeline

    src = _source_uri(source, db, collection)
    tgt = None
    if target is not None:
        tgt = target if _is_uri(target) else _sibling_uri(src, target)
    progress = _setup(quiet, json_out)
    report = pipeline.shrink(src, tgt, dim=dim, method=method, pq_bytes=pq_bytes,
                             neighbors=neighbors, epochs=epochs, sample=sample, device=device,
                             work_dir=work_dir, resume=resume, overwrite=overwrite,
                             random_state=seed, progress=progress, vector_column=vector_column,
                             id_column=id_column, keep_work=keep_work, threads=threads,
                             source_options={"distance": distance} if distance else None)
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
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True)
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
@_quiet_opt
@_json_opt
@_library_errors
def search(db, collection, target, queries, k, output, rescore, shortlist, source, threads,
           quiet, json_out):
    """Search a compact collection with queries in the original space.

    \b
    Example:
      tldr-index search --db ./lancedb --collection docs_small --queries q.npy --k 10 \\
          --output ids.npy --rescore
    """
    from .search import search as run_search

    uri = _target_uri(target, db, collection)
    _setup(quiet, json_out)
    res = run_search(uri, queries, k=k, rescore=rescore, shortlist=shortlist, source=source,
                     threads=threads)
    if output:
        np.save(output, res.ids, allow_pickle=False)
    if json_out:
        out = {"target": uri, "queries": len(res.ids), "k": k, "rescored": res.rescored,
               "shortlist": res.shortlist, "engine": res.engine, "seconds": res.seconds,
               "output": output}
        if not output:
            out["ids"] = res.ids.tolist()
            out["distances"] = res.distances.tolist()
        _echo_json(out)
    elif not output:
        for row in res.ids:
            click.echo(" ".join(str(v) for v in row))
    elif not quiet:
        secs = sum(res.seconds.values())
        click.echo(f"Wrote {res.ids.shape[0]}x{res.ids.shape[1]} ids to {output} "
                   f"({'rescored, ' if res.rescored else ''}{res.engine}, {secs:.2f} s).")


@main.command()
@_db_opt
@click.option("--collection", default=None, help="Compact table in --db.")
@click.option("--target", default=None, metavar="URI",
              help="Compact collection URI (instead of --collection).")
@_json_opt
@_library_errors
def info(db, collection, target, json_out):
    """Describe a compact collection: rows, dims, method, sizes, recall, source.

    \b
    Example:
      tldr-index info --db ./lancedb --collection docs_small
    """
    from .search import info as run_info

    uri = _target_uri(target, db, collection)
    out = run_info(uri)
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
        f"  recall@10      {_fmt(rec.get('recall_at_10'))} compact, "
        f"{_fmt(rec.get('recall_at_10_rescored'))} rescored (measured at shrink time on "
        f"{rec.get('eval_queries', 0)} rows)",
        f"  written        {out['written_utc']} by tldr-index {out['library_version']}",
    ]
    click.echo("\n".join(lines))


@main.command()
@_db_opt
@click.option("--dim", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--pq-bytes", type=click.IntRange(min=1), default=16, show_default=True)
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


from .cli_reindex import reindex as _reindex_cmd, rollback as _rollback_cmd  # noqa: E402

main.add_command(_reindex_cmd)
main.add_command(_rollback_cmd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
