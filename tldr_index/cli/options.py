"""Options and argument helpers shared by the ``tldr-index`` commands: the store options
(``--db``, ``--api-key``), output options (``--quiet``, ``--json``), URI resolution of
``--source``/``--collection``/``--target``, logging and progress setup, and the mapping of
library errors to one-line ``Error: ...`` messages (exit code 1)."""

from __future__ import annotations

import functools
import os

import click

DEFAULT_DB = "./tldr-data"


def default_db() -> str:
    """``$TLDR_INDEX_DB`` or ``./tldr-data``: the embedded LanceDB used when no store is named."""
    return os.environ.get("TLDR_INDEX_DB") or DEFAULT_DB


def library_errors(fn):
    """Turn tldr-index errors into ``click.ClickException`` one-liners."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import TLDRError
        try:
            return fn(*args, **kwargs)
        except TLDRError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
    return wrapper


def is_uri(value: str) -> bool:
    """True when ``value`` is a URI (or a ``.lance``/``.parquet`` path), not a name in a store."""
    return "://" in value or value.rstrip("/").endswith((".lance", ".parquet"))


def source_uri(source: str | None, db: str | None, collection: str | None) -> str:
    """The source URI of ``--source`` or ``--db``/``--collection`` (a usage error otherwise)."""
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


def sibling_uri(source_uri: str, name: str) -> str:
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


def target_uri(target: str | None, db: str | None, collection: str | None) -> str:
    """The URI of a compact collection named by ``--target`` or ``--db``/``--collection``."""
    from connectors import lancedb_uri

    if target and collection:
        raise click.UsageError("Pass either --target or --collection, not both.")
    if target and is_uri(target):
        return target
    name = target or collection
    if not name:
        raise click.UsageError("Missing --collection (a table in --db) or --target (a URI).")
    return lancedb_uri(db or default_db(), name)


def setup(quiet: bool, json_out: bool):
    """Logging and progress for a command, on stderr unless ``quiet``: INFO logs, and rich bars
    on a terminal or one plain line per finished stage otherwise (cron, CI)."""
    from ..progress import make_progress, setup_logging

    console, restore = setup_logging(quiet=quiet or json_out)
    click.get_current_context().call_on_close(restore)
    return None if quiet else make_progress(console)


def store_options(uri: str, api_key: str | None, **extra) -> dict | None:
    """Connector options for ``uri``: the API key only for Qdrant URIs."""
    from connectors import parse_uri

    opts = {k: v for k, v in extra.items() if v is not None}
    if api_key and parse_uri(uri).kind == "qdrant":
        opts["api_key"] = api_key
    return opts or None


def int_list(value: str | None, param: str) -> list[int] | None:
    """"1,10,100" -> [1, 10, 100] (a usage error naming ``param`` otherwise)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"must be comma-separated integers, e.g. 1,10,100. Got "
                                 f"{value!r}.", param_hint=param) from None


json_opt = click.option("--json", "json_out", is_flag=True,
                        help="Print one JSON object on stdout instead of the summary.")
quiet_opt = click.option("--quiet", "-q", is_flag=True,
                         help="No progress bars, logs or summary (errors only).")
db_opt = click.option("--db", default=None, metavar="DIR",
                      help="LanceDB database directory [default: $TLDR_INDEX_DB or ./tldr-data].")
api_key_opt = click.option("--api-key", envvar="QDRANT_API_KEY", default=None, metavar="KEY",
                           help="Qdrant API key [default: $QDRANT_API_KEY]; never printed, "
                                "logged or stored. Prefer the variable: a flag shows in `ps`.")
