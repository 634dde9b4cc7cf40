"""``python -m tldr_index`` runs the ``tldr-index`` command line."""

from .cli import main

main()
