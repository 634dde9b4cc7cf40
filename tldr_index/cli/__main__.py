"""``python -m tldr_index.cli`` (what ``make demo`` runs) runs the ``tldr-index`` command line."""

from . import main

main()
