"""``tldr-index reindex`` and ``tldr-index rollback``: thin click wrappers over
:func:`tldr_index.reindex.reindex` and :func:`tldr_index.reindex.rollback` (registered on the
``tldr-index`` group in :mod:`tldr_index.cli`).

Both print exactly one JSON line on stdout at the end (the summary for logs; on failure
``{"status": "failed", "error": ..., "exit_code": ...}``); logs and progress go to stderr. Exit
codes (for schedulers): 0 updated, 3 nothing to do, 4 refitted, 1 failed, 2 bad usage or job
file, 5 another job holds the lock, 130 interrupted (Ctrl-C; ``{"status": "interrupted"}``, run
it again to continue).
"""

from __future__ import annotations

import json
import sys

import click

from ..reindex import DEFAULT_DRIFT_QUERIES, DEFAULT_DRIFT_THRESHOLD, EXIT_CODES, REFIT
from .options import db_opt, default_db, is_uri, quiet_opt, setup, sibling_uri, source_uri

EXIT_USAGE = 2


def fail(exc: BaseException, code: int):
    """Print the failure JSON line on stdout and ``Error: ...`` on stderr, exit with ``code``."""
    msg = " ".join(str(exc).split())
    click.echo(json.dumps({"status": "failed", "error": msg, "exit_code": code}, sort_keys=True))
    click.echo(f"Error: {msg}", err=True)
    sys.exit(code)


def find_target(source_uri: str) -> str:
    """The one tldr-index target beside a LanceDB source that was built from it."""
    from connectors import parse_uri, targets_built_from

    found = targets_built_from(source_uri)
    if found is None:
        raise click.UsageError("--target is required unless the source is a LanceDB table "
                               "(--db/--collection).")
    if len(found) != 1:
        raise click.UsageError(
            f"Pass --target: {len(found)} tldr-index targets in '{parse_uri(source_uri).db}' "
            f"were built from '{source_uri}'" + (f" ({', '.join(found)})." if found else "."))
    return found[0]


def resolve_uris(source, db, collection, target) -> tuple[str | None, str]:
    """(source URI or None: the one recorded in the target, target URI) of reindex."""
    src = source_uri(source, db, collection) if (source or collection) else None
    if target and is_uri(target):
        return src, target
    if target:
        if src is None:
            from connectors import lancedb_uri
            return None, lancedb_uri(db or default_db(), target)
        return src, sibling_uri(src, target)
    if src is None:
        raise click.UsageError("Missing --collection (a table in --db), --source or --target.")
    return src, find_target(src)


@click.command()
@click.option("--source", default=None, metavar="URI",
              help="Source URI [default: the source recorded in the target].")
@db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--target", default=None, metavar="URI|NAME",
              help="The compact collection: a URI, or a name in the source's store [default: "
                   "the one target in --db built from --collection].")
@click.option("--refit", type=click.Choice(REFIT), default=None,
              help="auto: retrain when the drift check fails; always; never [default: auto].")
@click.option("--drift-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Retrain when recall@10 of new rows < this x that of unchanged rows "
                   f"[default: {DEFAULT_DRIFT_THRESHOLD}].")
@click.option("--drift-queries", type=click.IntRange(min=1), default=None,
              help=f"Rows in the drift check [default: {DEFAULT_DRIFT_QUERIES}].")
@click.option("--work-dir", default=None, metavar="DIR",
              help="Lock, hash states, history, refit checkpoints [default: "
                   ".<target>.tldr-reindex in the directory holding a local target; for a "
                   "Qdrant server, $XDG_STATE_HOME or ~/.local/state, then "
                   "/tldr-index/reindex/<target>-<hash>]. Never the current directory.")
@click.option("--config", "config", default=None, metavar="TOML",
              help="Job file holding any of these settings (flags win).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the drift check's row draw, and of a refit when the target records "
                   "none [default: 0].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch and FAISS [default: the cores that look idle].")
@click.option("--batch-rows", type=click.IntRange(min=1), default=None,
              help="Rows per read and encode batch [default: 8192].")
@quiet_opt
def reindex(source, db, collection, target, refit, drift_threshold, drift_queries, work_dir,
            config, seed, threads, batch_rows, quiet):
    """Bring a compact collection up to date with its source, incrementally.

    New source rows are encoded and added, deleted ones removed, changed ones (content hash of
    vector and payload) re-encoded; when the current map keeps neighbours of new rows clearly
    worse than of old ones (drift), or with --refit always, the model is retrained into a new
    version. The switch is atomic and the previous version is kept for `tldr-index rollback`.

    Prints one JSON summary line. Exit codes: 0 updated, 3 nothing to do, 4 refitted,
    1 failed, 2 bad usage or job file, 5 locked by another job, 130 interrupted (Ctrl-C).

    \b
    Examples:
      tldr-index reindex --db ./lancedb --collection docs --target docs_tldr64
      tldr-index reindex --config job.toml
    """
    from ..errors import InvalidParameterError, TLDRError
    from ..reindex import LockedError, load_job, reindex as run_reindex

    try:
        job = load_job(config) if config else {}
    except InvalidParameterError as exc:
        fail(exc, EXIT_USAGE)
    pick = {"source": source, "db": db, "collection": collection, "target": target,
            "refit": refit, "drift_threshold": drift_threshold, "drift_queries": drift_queries,
            "work_dir": work_dir, "seed": seed, "threads": threads, "batch_rows": batch_rows}
    opts = {k: (v if v is not None else job.get(k)) for k, v in pick.items()}
    try:
        src, tgt = resolve_uris(opts["source"], opts["db"], opts["collection"], opts["target"])
    except (click.UsageError, InvalidParameterError) as exc:  # incl. names that leave the store
        fail(exc, EXIT_USAGE)
    progress = setup(quiet, False)
    kwargs = {k: opts[k] for k in ("refit", "drift_threshold", "drift_queries", "work_dir",
                                   "seed", "threads", "batch_rows") if opts[k] is not None}
    try:
        report = run_reindex(tgt, src, progress=progress, **kwargs)
    except LockedError as exc:
        fail(exc, EXIT_CODES["locked"])
    except TLDRError as exc:
        fail(exc, EXIT_CODES["failed"])
    if not quiet:
        reindex_summary(report)
    click.echo(report.to_json())
    sys.exit(report.exit_code)


def reindex_summary(r) -> None:
    """The human summary of a reindex report, on stderr (stdout holds the JSON line)."""
    what = {"nothing": "nothing to do", "updated": "updated", "refitted": "refitted"}[r.status]
    lines = [f"Reindex {r.target} from {r.source}: {what}",
             f"  rows    {r.target_rows_before:,} -> {r.target_rows_after:,} (+{r.added:,} new, "
             f"{r.changed:,} changed, -{r.deleted:,} deleted"
             + (f", {r.rechecked:,} re-encoded without a recorded hash" if r.rechecked else "")
             + ")"]
    if r.drift:
        d = r.drift
        lines.append(f"  drift   recall@10 new rows {d['recall_new']:.3f}, unchanged rows "
                     f"{d['recall_old']:.3f} (ratio {d['ratio']:.3f}, threshold "
                     f"{d['threshold']:.2f})")
    if r.refit_reason:
        lines.append(f"  refit   {r.refit_reason}")
    click.echo("\n".join(lines), err=True)


@click.command()
@db_opt
@click.option("--target", required=True, metavar="URI|NAME",
              help="The compact collection (a URI, or a table in --db).")
@click.option("--work-dir", default=None, metavar="DIR",
              help="As given to reindex [default: the same place as reindex's default].")
def rollback(db, target, work_dir):
    """Switch a compact collection back to the version live before the last reindex (a second
    rollback undoes the first). Prints one JSON line.

    \b
    Example:
      tldr-index rollback --db ./lancedb --target docs_tldr64
    """
    from connectors import lancedb_uri

    from ..errors import TLDRError
    from ..reindex import LockedError, rollback as run_rollback

    uri = target if is_uri(target) else lancedb_uri(db or default_db(), target)
    try:
        out = run_rollback(uri, work_dir=work_dir)
    except LockedError as exc:
        fail(exc, EXIT_CODES["locked"])
    except TLDRError as exc:
        fail(exc, EXIT_CODES["failed"])
    click.echo(json.dumps({"status": "rolled-back", **out}, sort_keys=True, default=str))
