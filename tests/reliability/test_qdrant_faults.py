"""Qdrant errors mid-stream (connection reset, timeout, 5xx, 429) while a shrink reads a Qdrant
source and writes a Qdrant target: retried with exponential back-off within a bounded total time,
never duplicating a point (upserts are idempotent: deterministic point ids), then one clear
:class:`StoreUnavailableError` with nothing published and the previous target intact.

The faults come from the real client with one method wrapped to raise on chosen calls
(:class:`Flaky`)."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from _pipeline_helpers import assert_same_snapshot, make_nested, qdrant_source, snapshot
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from connectors import parse_uri
from connectors.qdrant_store import client_for
from connectors.retry import RetryPolicy
from tldr_index.errors import StoreUnavailableError
from tldr_index.pipeline import shrink

N = 600
OPTS = dict(dim=4, pq_bytes=2, epochs=2, threads=1, eval_queries=20, batch_rows=128,
            random_state=4)
FAST = {"backoff_s": 0.001}  # real back-off, tiny base

ERRORS = {
    "reset": lambda: ResponseHandlingException(ConnectionResetError(104, "Connection reset")),
    "timeout": lambda: ResponseHandlingException(httpx.ReadTimeout("timed out")),
    "503": lambda: UnexpectedResponse(503, "Service Unavailable", b"overloaded", httpx.Headers()),
    "429": lambda: UnexpectedResponse(429, "Too Many Requests", b"slow down", httpx.Headers()),
}


class Flaky:
    """``client.<method>`` raising ``error()`` on the calls numbered in ``fail`` (from 1);
    ``after=True`` runs the real call first (the write lands, the reply is lost)."""

    def __init__(self, client, method: str, error, fail, after: bool = False):
        self.client, self.method, self.error, self.fail, self.after = \
            client, method, error, set(fail), after
        self.real = getattr(client, method)
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls in self.fail or (self.fail == {0}):
            if self.after:
                self.real(*a, **kw)
            raise self.error()
        return self.real(*a, **kw)


@pytest.fixture(scope="module")
def data():
    return make_nested(N, 16, between=6, within=4, seed=8)


@pytest.fixture(scope="module")
def reference(data):
    src = qdrant_source(data)
    shrink(src, src + "_ref", work_dir=None, **OPTS)
    return snapshot(src + "_ref")


def _client(uri: str):
    return client_for(parse_uri(uri))


# (error, method wrapped, calls that fail, write lands before the error): upserts of the target
# (5 per run: 600 rows in batches of 128), scroll pages of the source (call 1 opens it, 2.. are
# the scan's pages); each error kind once, to keep the suite fast
CASES = [("reset", "upsert", (2, 3), False), ("timeout", "upsert", (2,), True),
         ("503", "scroll", (3, 4), False), ("429", "count", (1,), False)]


@pytest.mark.parametrize("kind,method,fail,after", CASES,
                         ids=["reset-upsert", "timeout-upsert-write-landed", "503-scroll",
                              "429-count"])
def test_transient_errors_are_retried_without_duplicates(kind, method, fail, after, tmp_path,
                                                         data, reference, source_guard,
                                                         monkeypatch, caplog):
    src = qdrant_source(data)
    source_guard(src)
    client = _client(src)
    flaky = Flaky(client, method, ERRORS[kind], fail, after)
    monkeypatch.setattr(client, method, flaky)
    with caplog.at_level(logging.WARNING, logger="connectors"):
        shrink(src, src + "_out", work_dir=tmp_path / "w", source_options=FAST,
               sink_options=FAST, **OPTS)
    monkeypatch.undo()
    assert flaky.calls >= max(fail) + 1
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == len(fail), retries
    assert_same_snapshot(snapshot(src + "_out"), reference)
    assert client.count(client.get_aliases().aliases[0].collection_name,
                        exact=True).count == N   # every point once


def test_exhausted_retries_publish_nothing_and_keep_the_previous_target(tmp_path, data,
                                                                         source_guard,
                                                                         monkeypatch):
    src = qdrant_source(data)
    source_guard(src)
    tgt = src + "_out"
    shrink(src, tgt, method="pca", work_dir=tmp_path / "w0", **OPTS)   # the previous target
    before = snapshot(tgt)
    client = _client(src)
    names = sorted(c.name for c in client.get_collections().collections)
    flaky = Flaky(client, "upsert", ERRORS["503"], fail=(0,))          # every call fails
    monkeypatch.setattr(client, "upsert", flaky)
    name = parse_uri(src).path
    with pytest.raises(StoreUnavailableError, match=(
            rf"^in-memory Qdrant '{name}' failed to upsert 128 points into 'docs_out__v2' after "
            r"3 attempt\(s\) over \d+\.\d s: Unexpected Response: 503 \(Service Unavailable\)\.$")):
        shrink(src, tgt, overwrite=True, work_dir=tmp_path / "w", source_options=FAST,
               sink_options={**FAST, "max_retries": 2}, **OPTS)
    monkeypatch.undo()
    assert flaky.calls == 3
    assert_same_snapshot(snapshot(tgt), before)
    assert sorted(c.name for c in client.get_collections().collections) == names


def test_client_errors_are_not_retried(tmp_path, data, monkeypatch, source_guard):
    src = source_guard(qdrant_source(data))
    client = _client(src)
    bad = Flaky(client, "upsert", lambda: UnexpectedResponse(400, "Bad Request", b"bad vector",
                                                             httpx.Headers()), fail=(1,))
    monkeypatch.setattr(client, "upsert", bad)
    with pytest.raises(UnexpectedResponse, match="400"):
        shrink(src, src + "_out", work_dir=tmp_path / "w", sink_options=FAST, **OPTS)
    assert bad.calls == 1


def test_backoff_doubles_and_total_time_is_bounded():
    """A fake clock: waits double from backoff_s (x 0.5..1 jitter, seeded) and stop before the
    next one would end past max_total_s (here after 11.3 s + a wait of at least 8 s > 20 s)."""
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    policy = RetryPolicy(max_retries=100, backoff_s=0.5, max_total_s=20.0, sleep=sleep,
                         clock=lambda: now[0])
    calls = []

    def down():
        calls.append(now[0])
        raise ConnectionError("connection refused")

    with pytest.raises(StoreUnavailableError, match=re.escape(
            "Qdrant at http://h:6333 failed to scroll after 6 attempt(s) over 11.3 s: "
            "connection refused.")):
        policy.call(down, what="scroll", where="Qdrant at http://h:6333",
                    retryable=lambda e: isinstance(e, ConnectionError))
    assert len(calls) == 6 and len(sleeps) == 5
    for i, s in enumerate(sleeps):
        assert 0.5 * 0.5 * 2 ** i <= s <= 0.5 * 2 ** i
    assert sum(sleeps) <= 20.0
