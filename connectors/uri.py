"""URIs that name a source or a target, and the functions that open them.

=============================================  ===================================================
``lancedb://./db/docs``, ``lancedb:///abs/db/docs``   LanceDB table ``docs`` in database dir ``db``
``lance:///abs/ds.lance``, ``./ds.lance``       a raw Lance dataset (any path ending ``.lance``)
``parquet://data/*.parquet``, ``x.parquet``     Parquet: one file, a glob or a directory
``qdrant://host:6333/docs``                    Qdrant over HTTP (``qdrant+http://`` is the same)
``qdrant+https://host:6333/docs``              Qdrant over HTTPS
``qdrant+path:///dir/docs``                    embedded Qdrant stored in ``/dir``
``qdrant+memory://name/docs``                  in-process Qdrant ``name`` (tests)
``qdrant+edge:///dir/shard``                    a Qdrant Edge shard (the engine embedded)
=============================================  ===================================================

After ``scheme://`` file-based URIs hold a plain path, relative (``lancedb://./db/docs``) or absolute
(``lancedb:///abs/db/docs``). The Qdrant API key comes only from ``api_key=`` or the
``QDRANT_API_KEY`` environment variable, never from a URI (a URI holding ``user@`` is refused), and
never appears in logs, errors or stored metadata.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from tldr_index.errors import UnsupportedURIError

SCHEMES = ("lancedb", "lance", "parquet", "qdrant", "qdrant+http", "qdrant+https", "qdrant+path",
           "qdrant+memory", "qdrant+edge")
DEFAULT_QDRANT_PORT = 6333
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


@dataclass(frozen=True)
class ParsedURI:
    """``kind`` is 'lance', 'parquet', 'qdrant' or 'qdrant-edge'; file kinds (and Qdrant Edge: the
    shard directory) fill ``path``, Qdrant fills the rest."""

    uri: str
    kind: str
    path: str = ""            # lance: dataset dir; parquet: file, glob or dir; qdrant+path: dir
    table: str = ""           # lancedb table name ('' for a raw Lance dataset)
    db: str = ""              # lancedb database dir
    collection: str = ""      # qdrant collection (or alias)
    mode: str = ""            # qdrant: 'http', 'https', 'path', 'memory'
    host: str = ""
    port: int = 0

    @property
    def qdrant_url(self) -> str:
        return f"{self.mode}://{self.host}:{self.port}"


def _bad(uri: str, why: str) -> UnsupportedURIError:
    shown = ", ".join(f"{s}://" for s in SCHEMES)
    return UnsupportedURIError(
        f"The 'uri' parameter must {why} (supported schemes: {shown}; or a path ending in .lance "
        f"or .parquet). Got {redact(uri)!r} instead.")


def redact(uri: str) -> str:
    """``uri`` without user info (``user:secret@``) or query string, safe for logs and errors."""
    m = _SCHEME_RE.match(uri)
    if not m:
        return uri
    scheme, rest = m.groups()
    head, sep, tail = rest.partition("/")
    if "@" in head:
        head = "***@" + head.rsplit("@", 1)[1]
    tail = tail.split("?", 1)[0]
    return f"{scheme}://{head}{sep}{tail}"


def check_name(name: str, what: str = "collection") -> str:
    """Return ``name`` if it is a plain table / collection name: not ``.`` or ``..``, without
    ``/``, ``\\`` or control characters, so a name can never point outside its database
    directory or Qdrant storage. Raises :class:`UnsupportedURIError`."""
    if (not name or name in (".", "..") or any(ch in name for ch in "/\\")
            or any(ord(ch) < 32 for ch in name)):
        raise UnsupportedURIError(
            f"The {what} name must be a plain name (not '.' or '..', no '/', '\\' or control "
            f"characters), so nothing is read or written outside its database. Got {name!r} "
            f"instead.")
    return name


def _split_last(path: str, uri: str, what: str) -> tuple[str, str]:
    parent, sep, name = path.rstrip("/").rpartition("/")
    if not name:
        raise _bad(uri, f"name a {what} after the directory")
    check_name(name, what)
    if not sep:
        parent = "."
    elif not parent:
        parent = "/"
    return parent, name


def parse_uri(uri: str | os.PathLike) -> ParsedURI:
    """Parse ``uri`` (see the module docstring). Raises :class:`UnsupportedURIError`."""
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise _bad(str(uri), "be a non-empty string")
    m = _SCHEME_RE.match(uri)
    if not m:
        bare = uri.rstrip("/")
        if bare.endswith(".lance"):
            return ParsedURI(uri, "lance", path=bare)
        if bare.endswith(".parquet"):
            return ParsedURI(uri, "parquet", path=bare)
        raise _bad(uri, "start with a supported scheme")
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in SCHEMES:
        raise _bad(uri, "use a supported scheme")
    if scheme in ("lancedb", "lance", "parquet", "qdrant+path", "qdrant+memory",
                  "qdrant+edge") and not rest:
        raise _bad(uri, "hold a path after the scheme")
    if scheme == "lancedb":
        db, table = _split_last(rest, uri, "table")
        return ParsedURI(uri, "lance", path=os.path.join(db, table + ".lance"), table=table, db=db)
    if scheme == "lance":
        return ParsedURI(uri, "lance", path=rest.rstrip("/") or "/")
    if scheme == "parquet":
        return ParsedURI(uri, "parquet", path=rest)
    if scheme == "qdrant+edge":
        parent, name = _split_last(rest, uri, "shard")
        return ParsedURI(uri, "qdrant-edge", path=os.path.join(parent, name), mode="edge")
    if scheme == "qdrant+path":
        d, coll = _split_last(rest, uri, "collection")
        return ParsedURI(uri, "qdrant", path=d, collection=coll, mode="path")
    if scheme == "qdrant+memory":
        name, _, coll = rest.strip("/").partition("/")
        if not name or not coll or "/" in coll:
            raise _bad(uri, "look like qdrant+memory://<name>/<collection>")
        check_name(coll, "collection")
        return ParsedURI(uri, "qdrant", path=name, collection=coll, mode="memory")
    parts = urlsplit("x://" + rest)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsupportedURIError(
            f"The 'uri' parameter must not carry credentials; set QDRANT_API_KEY instead. Got "
            f"{redact(uri)!r}.")
    coll = parts.path.strip("/")
    if not parts.hostname or not coll or "/" in coll:
        raise _bad(uri, "look like qdrant://<host>[:<port>]/<collection>")
    check_name(coll, "collection")
    try:
        port = parts.port or DEFAULT_QDRANT_PORT
    except ValueError:
        raise _bad(uri, "have a numeric port") from None
    mode = "https" if scheme == "qdrant+https" else "http"
    return ParsedURI(uri, "qdrant", collection=coll, mode=mode, host=parts.hostname, port=port)


def absolute_uri(uri: str | os.PathLike) -> str:
    """``uri`` with its file path made absolute (so it names the same data from any working
    directory), redacted; server URIs come back unchanged apart from redaction."""
    p = parse_uri(uri)
    if p.kind == "lance" and p.table:
        return lancedb_uri(os.path.abspath(p.db), p.table)
    if p.kind == "lance":
        return "lance://" + os.path.abspath(p.path)
    if p.kind == "parquet":
        return "parquet://" + os.path.abspath(p.path) + ("/" if p.path.endswith("/") else "")
    if p.kind == "qdrant-edge":
        return "qdrant+edge://" + os.path.abspath(p.path)
    if p.mode == "path":
        return f"qdrant+path://{os.path.abspath(p.path)}/{p.collection}"
    return redact(p.uri)


def lancedb_uri(db: str | os.PathLike, table: str) -> str:
    """URI of LanceDB table ``table`` in database dir ``db`` (the CLI's ``--db``/``--collection``);
    ``table`` must be a plain name (:func:`check_name`)."""
    check_name(table, "table")
    db = os.fspath(db).rstrip("/") or "/"
    return f"lancedb://{db}/{table}" if db != "/" else f"lancedb:///{table}"


def default_target_uri(source_uri: str, suffix: str = "_compact") -> str:
    """Target beside the source: same LanceDB db / Qdrant server, name + ``suffix``.

    Raw Lance datasets get ``<name><suffix>.lance`` in the same directory; Parquet sources have no
    default (raises :class:`UnsupportedURIError`: pass a target).
    """
    p = parse_uri(source_uri)
    uri = p.uri.rstrip("/")
    if p.kind in ("qdrant", "qdrant-edge") or p.table:
        return uri + suffix
    if p.kind == "lance":
        stem = uri[: -len(".lance")] if uri.endswith(".lance") else uri
        return stem + suffix + ".lance"
    raise UnsupportedURIError(
        f"The 'target' parameter is required for a Parquet source: there is no default beside "
        f"{redact(source_uri)!r}. Pass e.g. parquet://out/.")
