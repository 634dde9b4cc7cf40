"""``tldr-index demo``: shrink the shipped sample of text embeddings and show what it keeps."""

from __future__ import annotations

import click

from .options import db_opt, default_db, json_opt, library_errors, quiet_opt, setup
from .output import echo_json


@click.command()
@db_opt
@click.option("--dim", type=click.IntRange(min=1), default=64, show_default=True,
              help="Reduced dimension of both demo targets.")
@click.option("--pq-bytes", type=click.IntRange(min=1), default=16, show_default=True,
              help="PQ code bytes per row; must divide --dim.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="TLDR epochs [default: 8].")
@quiet_opt
@json_opt
@library_errors
def demo(db, dim, pq_bytes, epochs, quiet, json_out):
    """Shrink a real sample of text embeddings and show what it keeps.

    Creates the embedded LanceDB (--db) with a `docs` table from the sample shipped with
    tldr-index (if missing), shrinks it with TLDR and with PCA, and compares recall@10 of
    `search` against exact neighbours of the original vectors on held-out queries.

    \b
    Example:
      tldr-index demo
    """
    from ..demo import format_demo, run_demo

    progress = setup(quiet, json_out)
    result = run_demo(db or default_db(), dim=dim, pq_bytes=pq_bytes, epochs=epochs,
                      progress=progress)
    if json_out:
        echo_json(result)
    elif not quiet:
        click.echo("\n".join(format_demo(result)))
