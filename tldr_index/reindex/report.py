"""The report of a ``reindex`` run, its statuses and exit codes (for schedulers)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

REFIT = ("auto", "always", "never")
EXIT_CODES = {"updated": 0, "failed": 1, "nothing": 3, "refitted": 4, "locked": 5}


@dataclass
class ReindexReport:
    """What a reindex did; :meth:`to_json` is the one summary line printed for logs."""

    status: str                      # "nothing", "updated" or "refitted"
    target: str
    source: str
    source_rows: int = 0
    target_rows_before: int = 0
    target_rows_after: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    rechecked: int = 0               # target rows without a recorded hash, re-encoded
    baseline: str = "state"          # where the previous hashes came from
    drift: dict = field(default_factory=dict)
    refit_reason: str | None = None
    generation: str | None = None
    previous: dict | None = None
    stale_lock: dict | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)
