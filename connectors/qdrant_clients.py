"""Qdrant clients shared by the Qdrant store: one client per embedded path or server per process
(an embedded path allows one), held by reference count, closed at exit; requests that turn a
connection failure into :class:`StoreUnavailableError`; collection and vector look-ups."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tldr_index.errors import (InvalidInputError, MissingColumnError, SourceNotFoundError,
                               StoreUnavailableError)

from .filestore import file_bytes
from .retry import short_error
from .uri import ParsedURI

log = logging.getLogger(__name__)

UNNAMED = "vector"  # column name of an unnamed Qdrant vector
_CLIENTS: dict[tuple, Any] = {}
_REFS: dict[tuple, int] = {}  # holders of a shared embedded client (see hold_client)
_AT_EXIT = False


def disk_bytes_at(p: ParsedURI) -> int | None:
    """Bytes of ``<path>/collection/<name>`` of an embedded (``qdrant+path``) store, ``name`` being
    the collection an alias (a published target) points to; None for a server or in-memory store,
    or when the storage or the collection is absent. Cost: one alias listing and file sizes."""
    if p.mode != "path":
        return None
    try:
        aliases = {a.alias_name: a.collection_name
                   for a in client_for(p, must_exist=True).get_aliases().aliases}
    except Exception:  # storage missing or unreadable: the size is unknown, not an error
        return None
    folder = os.path.join(p.path, "collection", aliases.get(p.collection, p.collection))
    return file_bytes(folder) if os.path.isdir(folder) else None


def client_for(p: ParsedURI, *, api_key: str | None = None, timeout: float = 10.0,
               must_exist: bool = False):
    """The ``QdrantClient`` for a parsed URI. Embedded (path) and in-memory clients are shared per
    path / name in this process (a path admits one client); server clients are new each call.

    The API key comes from ``api_key`` or ``QDRANT_API_KEY`` and is never logged.
    """
    from qdrant_client import QdrantClient

    if p.mode in ("memory", "path"):
        _close_at_exit()
    if p.mode == "memory":
        key = ("memory", p.path)
        if key not in _CLIENTS:
            _CLIENTS[key] = QdrantClient(location=":memory:")
        return _CLIENTS[key]
    if p.mode == "path":
        key = _client_key(p)
        path = key[1]
        if key not in _CLIENTS:
            if must_exist and not os.path.isdir(path):
                raise SourceNotFoundError(
                    f"Embedded Qdrant storage '{p.path}' not found (source '{p.uri}').")
            try:
                _CLIENTS[key] = QdrantClient(path=path)
            except RuntimeError as exc:
                raise StoreUnavailableError(
                    f"Embedded Qdrant storage '{p.path}' is locked by another client ({exc}); "
                    f"pass client= to share yours.") from None
        return _CLIENTS[key]
    return QdrantClient(host=p.host, port=p.port, https=p.mode == "https",
                        api_key=api_key or os.environ.get("QDRANT_API_KEY") or None,
                        timeout=int(math.ceil(timeout)), check_compatibility=False)


def _client_key(p: ParsedURI) -> tuple:
    return ("path", os.path.realpath(p.path)) if p.mode == "path" else ("memory", p.path)


def _close_at_exit() -> None:
    """Register :func:`close_clients` with :mod:`atexit` (once): embedded clients left to
    ``QdrantClient.__del__`` at interpreter shutdown print an ``ImportError`` traceback
    (qdrant-client imports ``portalocker`` to unlock the path after imports are torn down)."""
    global _AT_EXIT
    if not _AT_EXIT:
        atexit.register(close_clients)
        _AT_EXIT = True


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # pragma: no cover - best effort
        log.debug("closing a Qdrant client failed", exc_info=True)


def close_clients() -> None:
    """Close the shared embedded / in-memory clients (releases path locks). Runs at exit."""
    for key in list(_CLIENTS):
        _REFS.pop(key, None)
        _close(_CLIENTS.pop(key))


def hold_client(p: ParsedURI) -> None:
    """Count one more holder (a :class:`tldr_index.CompactCollection`) of the shared embedded
    client of ``p``; :func:`release_client` closes it when the last holder lets go."""
    if p.mode == "path":
        key = _client_key(p)
        _REFS[key] = _REFS.get(key, 0) + 1


def release_client(p: ParsedURI) -> None:
    """One holder of the embedded client of ``p`` is done: close it (releasing the path lock,
    so another client or process can open the storage) when no holder is left. In-memory and
    server clients are left alone (closing an in-memory client would drop its data)."""
    if p.mode != "path":
        return
    key = _client_key(p)
    left = _REFS.get(key, 0) - 1
    if left > 0:
        _REFS[key] = left
        return
    _REFS.pop(key, None)
    client = _CLIENTS.pop(key, None)
    if client is not None:
        _close(client)


def describe(p: ParsedURI) -> str:
    if p.mode == "path":
        return f"embedded Qdrant '{p.path}'"
    if p.mode == "memory":
        return f"in-memory Qdrant '{p.path}'"
    return f"Qdrant at {p.qdrant_url}"


def retryable(exc: BaseException) -> bool:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (429, 500, 502, 503, 504)
    return isinstance(exc, (ResponseHandlingException, ConnectionError, TimeoutError))


def call(fn: Callable[[], Any], p: ParsedURI, what: str) -> Any:
    """Run one request; a connection failure becomes :class:`StoreUnavailableError`."""
    try:
        return fn()
    except Exception as exc:
        if retryable(exc):
            raise StoreUnavailableError(
                f"{describe(p)} is unreachable while trying to {what}: {short_error(exc)}.") from None
        raise


def open_collection(client, p: ParsedURI, name: str) -> tuple[str, Any]:
    """Resolve ``name`` (collection or alias) to ``(collection, info)`` or raise not found."""
    aliases = {a.alias_name: a.collection_name
               for a in call(lambda: client.get_aliases().aliases, p, "list aliases")}
    real = aliases.get(name, name)
    names = [c.name for c in call(lambda: client.get_collections().collections, p,
                                  "list collections")]
    if real not in names:
        raise SourceNotFoundError(
            f"Qdrant collection '{name}' not found in {describe(p)}. Existing collections: "
            f"{', '.join(sorted(names)) or 'none'}.")
    return real, call(lambda: client.get_collection(real), p, f"read collection '{real}'")


def vector_params(info, requested: str | None, uri: str):
    """``(name or None, VectorParams)`` of the vector to read."""
    vectors = info.config.params.vectors
    if isinstance(vectors, dict):
        names = sorted(vectors)
        if requested is None:
            if len(names) != 1:
                raise InvalidInputError(
                    f"Source '{uri}' has several named vectors ({', '.join(names)}); pass "
                    f"vector_column= to choose one.")
            requested = names[0]
        if requested not in vectors:
            raise MissingColumnError(
                f"Vector '{requested}' not found in source '{uri}'. Available vectors: "
                f"{', '.join(names) or 'none'}.")
        return requested, vectors[requested]
    if requested not in (None, UNNAMED):
        raise MissingColumnError(
            f"Vector '{requested}' not found in source '{uri}': the collection has one unnamed "
            f"vector (size {vectors.size}). Leave vector_column unset.")
    return None, vectors


class PointTake:
    """``take`` / ``take_found`` of a Qdrant source (server, embedded or Edge) by point id, in
    ``take_chunk`` ids per request; the store supplies :meth:`retrieve_vectors`."""

    take_chunk = 256

    def retrieve_vectors(self, ids: list) -> dict:
        """``{point id: vector}`` of those of ``ids`` that exist (one request)."""
        raise NotImplementedError

    def take(self, ids: Sequence | np.ndarray | pa.Array, chunk: int | None = None) -> np.ndarray:
        """Cost: one retrieve request per ``chunk`` ids (default :attr:`take_chunk`)."""
        out, found, ids = self._take_points(ids, chunk or self.take_chunk)
        if not found.all():
            raise InvalidInputError(
                f"The 'ids' parameter of take must name points of source '{self.uri}'. Got "
                f"unknown id {ids[int(np.flatnonzero(~found)[0])]!r}.")
        return out

    def take_found(self, ids: Sequence | np.ndarray | pa.Array,
                   chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cost: as :meth:`take`."""
        out, found, _ = self._take_points(ids, chunk or self.take_chunk)
        return out, found

    def take_positions(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectors of the points at stream ``positions`` (point ids ascending, as
        ``iter_batches`` yields them): the ids in stream order are scanned once and kept for the
        life of this source object (``count`` ids of memory; a source reads a snapshot), then one
        retrieve request per :attr:`take_chunk` points."""
        ids = self.position_ids()
        pos = self.check_positions(positions, len(ids))  # type: ignore[attr-defined]
        if not len(pos):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.take([ids[i] for i in pos.tolist()])

    def position_ids(self) -> list:
        """Point ids in stream order (one scan of the ids on first use, then cached)."""
        if "_position_ids" not in self.__dict__:
            ids: list = []
            for b in self.iter_batches(4096, check_duplicates=False):  # type: ignore[attr-defined]
                ids += b.column(self.id_column).to_pylist()  # type: ignore[attr-defined]
            self.__dict__["_position_ids"] = ids
        return self.__dict__["_position_ids"]

    def _take_points(self, ids, chunk: int) -> tuple[np.ndarray, np.ndarray, list]:
        ids = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        ids = [int(i) if isinstance(i, (int, np.integer)) else str(i) for i in ids]
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            got = self.retrieve_vectors(list(dict.fromkeys(part)))
            for j, i in enumerate(part):
                v = got.get(i)
                if v is not None:
                    out[s + j], found[s + j] = v, True
        return out, found, ids


def point_ids(points: Sequence[Any], id_type: pa.DataType, uri: str) -> pa.Array:
    """The ids of ``points`` (objects with ``.id``) as one Arrow array of ``id_type`` (the type
    of the source's first page), or one clear error when a page mixes integers and UUIDs."""
    try:
        return pa.array([pt.id for pt in points], type=id_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise InvalidInputError(
            f"Point ids of source '{uri}' must be all integers or all UUIDs. Got a mix "
            f"(first page: {id_type}).") from None


def points_batch(ids: pa.Array, X: np.ndarray, payloads: Sequence[dict | None], id_column: str,
                 vector_column: str, string_ids: bool) -> pa.RecordBatch:
    """A target's rows as read back from Qdrant points: id, vector (float32) and ``payload``
    (JSON text, sorted keys; the id key that string ids keep in the payload removed)."""
    from . import arrow_utils as au

    texts = []
    for payload in payloads:
        pl = dict(payload or {})
        if string_ids:
            pl.pop(id_column, None)
        texts.append(json.dumps(pl, sort_keys=True))
    return pa.RecordBatch.from_arrays(
        [ids, au.numpy_to_fsl(np.asarray(X, dtype=np.float32)), pa.array(texts, type=pa.string())],
        names=[id_column, vector_column, "payload"])
