"""Fixtures of the reliability suite: every test registers the sources it uses with
``source_guard`` and the fixture proves, after the test, that not one byte of them changed
(Lance / Parquet: sha256 of every file; Qdrant: point count and a checksum over ids, vectors and
payloads)."""

from __future__ import annotations

import hashlib
import json

import pytest
from _connector_helpers import tree_hashes

from connectors import parse_uri


def source_state(uri: str) -> dict:
    """What must not change in a source: file hashes, or Qdrant's count + content checksum."""
    p = parse_uri(uri)
    if p.kind != "qdrant":
        import glob
        import os

        path = p.path
        if p.kind == "parquet" and not os.path.isdir(path):  # a file or a glob
            out = {}
            for f in sorted(glob.glob(path)):
                with open(f, "rb") as fh:
                    out[f] = hashlib.sha256(fh.read()).hexdigest()
            return out
        return tree_hashes(path)
    from connectors.qdrant_store import client_for

    client = client_for(p)
    h = hashlib.sha256()
    offset, n = None, 0
    while True:
        pts, offset = client.scroll(p.collection, limit=256, offset=offset, with_payload=True,
                                    with_vectors=True)
        for pt in sorted(pts, key=lambda q: str(q.id)):
            h.update(json.dumps([pt.id, pt.vector, pt.payload], sort_keys=True).encode())
            n += 1
        if offset is None:
            break
    return {"count": client.count(p.collection, exact=True).count, "scrolled": n,
            "checksum": h.hexdigest()}


@pytest.fixture
def source_guard():
    """``source_guard(uri)`` records the source now; the test fails if it differs at teardown."""
    watched: list[tuple[str, dict]] = []

    def watch(uri: str) -> str:
        state = source_state(uri)
        assert state, f"nothing to watch at {uri}"
        watched.append((uri, state))
        return uri

    yield watch
    for uri, before in watched:
        assert source_state(uri) == before, f"source {uri} was modified"
