"""Retries with exponential back-off and a bounded total time, for calls to remote stores.

Attempt ``i`` (1, 2, ...) that fails with a retryable error waits
``min(backoff_s * 2**(i-1), max_delay_s)``, half-jittered (x 0.5..1 from a seeded generator), and
the call gives up after ``max_retries`` retries or when the next wait would end past
``max_total_s`` seconds since the first attempt. Other errors are raised at once. Callers must
make the retried call idempotent (Qdrant upserts: deterministic point ids, see
:func:`connectors.qdrant_store.point_id`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tldr_index.validation import check_float, check_int
from tldr_index.errors import StoreUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


def short_error(exc: BaseException) -> str:
    """First line of ``exc`` (at most 200 characters), for one-line messages."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


@dataclass
class RetryPolicy:
    """How often and how long to retry (see the module docstring). ``sleep`` and ``clock`` are
    replaceable for tests."""

    max_retries: int = 5
    backoff_s: float = 0.5
    max_total_s: float = 600.0
    max_delay_s: float = 30.0
    seed: int = 0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "RetryPolicy"
        check_int(self.max_retries, "max_retries", low=0, owner=owner)
        check_float(self.backoff_s, "backoff_s", low=0, owner=owner)
        check_float(self.max_total_s, "max_total_s", low=0, owner=owner)
        check_float(self.max_delay_s, "max_delay_s", low=0, owner=owner)
        self.rng = random.Random(self.seed)

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_delay_s) * (
            0.5 + 0.5 * self.rng.random())

    def call(self, fn: Callable[[], T], *, what: str, where: str,
             retryable: Callable[[BaseException], bool]) -> T:
        """``fn()``, retried on ``retryable`` errors; then :class:`StoreUnavailableError`:
        "<where> failed to <what> after <n> attempt(s) over <s> s: <error>."."""
        start = self.clock()
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                attempt += 1
                delay = self.delay(attempt)
                elapsed = self.clock() - start
                if attempt > self.max_retries or elapsed + delay > self.max_total_s:
                    raise StoreUnavailableError(
                        f"{where} failed to {what} after {attempt} attempt(s) over {elapsed:.1f} "
                        f"s: {short_error(exc)}.") from None
                log.warning("%s: %s failed (%s); retry %d/%d in %.2f s.", where, what,
                            short_error(exc), attempt, self.max_retries, delay)
                self.sleep(delay)

