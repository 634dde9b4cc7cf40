"""``tldr-index``: a thin click layer over the library (each command parses its options, calls
one library function and prints; library errors become one-line ``Error: ...`` messages with
exit code 1; Ctrl-C exits 130 saying which stage it stopped and the command that resumes).

Modules: ``group`` (the ``main`` group, Ctrl-C handling), ``options`` (shared options and URI
resolution), ``output`` (JSON and the eval/sweep outputs), ``tables`` (rich tables), one module
per command group: ``shrink_cmd``, ``search_cmd`` (search, info), ``eval_cmd`` (eval, sweep),
``reindex_cmd`` (reindex, rollback), ``demo_cmd``.
"""

from __future__ import annotations

from .demo_cmd import demo
from .eval_cmd import eval_cmd, sweep_cmd
from .group import EXIT_INTERRUPTED, interrupted_message, main
from .options import DEFAULT_DB, default_db
from .output import tidy_floats
from .reindex_cmd import reindex, rollback
from .search_cmd import calibrate, info, rescore_cache, search
from .shrink_cmd import shrink

for _command in (shrink, search, info, rescore_cache, calibrate, demo, eval_cmd, sweep_cmd, reindex,
                 rollback):
    main.add_command(_command)

__all__ = ["main", "EXIT_INTERRUPTED", "interrupted_message", "tidy_floats", "default_db",
           "DEFAULT_DB"]
