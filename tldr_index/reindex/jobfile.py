"""TOML job files for ``tldr-index reindex --config job.toml``: the same settings as the flags.

Example (``examples/nightly/job.toml``)::

    db = "./lancedb"            # or: source = "lancedb://./lancedb/docs"
    collection = "docs"
    target = "docs_tldr64"      # a name in the same store, or a URI
    refit = "auto"              # auto | always | never
    drift_threshold = 0.7

Flags given on the command line win over the file. Unknown keys and wrong types are refused with
one line naming them (a typo must not silently fall back to a default).

Paths: ``db`` and ``work_dir`` are the directories the job chooses (relative ones are relative to
the file, ``..`` included, as in the example); ``collection`` and ``target`` are names inside the
store and must be plain names (no ``/``, ``..``): one that would read or write outside the store is
refused (:func:`connectors.uri.check_name`, exit code 2).
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from ..errors import InvalidParameterError

#: key -> accepted Python types (after TOML parsing)
KEYS: dict[str, tuple[type, ...]] = {
    "source": (str,), "db": (str,), "collection": (str,), "target": (str,),
    "refit": (str,), "drift_threshold": (float, int), "drift_queries": (int,),
    "work_dir": (str,), "batch_rows": (int,), "seed": (int,), "threads": (int,),
}


def load_job(path: str | os.PathLike) -> dict[str, Any]:
    """Parse ``path`` and return its settings (only :data:`KEYS`).

    Raises :class:`InvalidParameterError` for a missing or unparsable file, unknown keys (all of
    them named) or a value of the wrong type.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidParameterError(f"Job file '{path}' does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameterError(f"Job file '{path}' is not valid TOML ({exc}).") from None
    unknown = sorted(k for k in data if k not in KEYS)
    if unknown:
        raise InvalidParameterError(
            f"Job file '{path}' has unknown key(s): {', '.join(unknown)}. Allowed keys: "
            f"{', '.join(sorted(KEYS))}.")
    for key, value in data.items():
        want = KEYS[key]
        if isinstance(value, bool) or not isinstance(value, want):
            names = " or ".join(t.__name__ for t in want)
            article = "an" if names[0] in "aeiou" else "a"
            raise InvalidParameterError(
                f"The '{key}' key of job file '{path}' must be {article} {names}. Got {value!r} "
                f"instead.")
    if "drift_threshold" in data:
        data["drift_threshold"] = float(data["drift_threshold"])
    if "work_dir" in data and not os.path.isabs(data["work_dir"]):
        # relative paths in a job file are relative to the file, not to cron's working directory
        data["work_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), data["work_dir"])
    if "db" in data and not os.path.isabs(data["db"]):
        data["db"] = os.path.join(os.path.dirname(os.path.abspath(path)), data["db"])
    return data
