"""The JSON record every store keeps beside a target: layout, model hash (and the model itself
where the store has no file for it), metadata and writer. Cost: JSON of a few kB."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from typing import TYPE_CHECKING

from tldr_index.errors import InvalidParameterError, ModelFormatError
from tldr_index.version import __version__

if TYPE_CHECKING:
    from .base import Layout

log = logging.getLogger(__name__)

FORMAT = "tldr-index/1"
RECORD_KEY = "tldr_index"  # metadata key under which every store keeps the JSON record
ARTIFACT_NAME = re.compile(r"[a-z0-9_-]{1,64}")


def build_record(layout: Layout, model_bytes: bytes, metadata: dict, *,
                 model_file: str | None = None, inline: bool = False,
                 artifacts: dict | None = None) -> dict:
    """The JSON record every store keeps beside the target (small unless ``inline``);
    ``artifacts``: ``{name: {"file", "sha256", "size"}}`` of the files staged by
    :meth:`Sink.store_artifact` (listed only when there is one)."""
    if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
        raise InvalidParameterError(
            f"The 'model_bytes' parameter of store_model must be bytes. Got "
            f"{type(model_bytes).__name__} instead.")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(
            f"The 'metadata' parameter of store_model must be JSON-serialisable. Got {exc}.") from None
    model = {"sha256": hashlib.sha256(model_bytes).hexdigest(), "size": len(model_bytes)}
    if model_file is not None:
        model["file"] = model_file
    if inline:
        model["base64"] = base64.b64encode(bytes(model_bytes)).decode("ascii")
    rec = {
        "format": FORMAT,
        "layout": asdict(layout),
        "model": model,
        "metadata": metadata,
        "writer": {"library": "tldr-index", "version": __version__,
                   "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    if artifacts:
        rec["artifacts"] = dict(artifacts)
    return rec


def check_artifact_name(name: str) -> str:
    """``name`` if it is 1-64 characters of ``[a-z0-9_-]`` (it becomes part of a file name)."""
    if not isinstance(name, str) or not ARTIFACT_NAME.fullmatch(name):
        raise InvalidParameterError(
            f"The 'name' parameter of store_artifact must be 1-64 characters of a-z, 0-9, '_' or "
            f"'-'. Got {name!r} instead.")
    return name


def artifact_entry(data: bytes, file: str) -> dict:
    """The record entry of an artifact stored as ``file`` (relative to the target root)."""
    return {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def read_artifact(root: str, record: dict, name: str, where: str) -> bytes | None:
    """The bytes of artifact ``name`` listed in ``record`` (a file under ``root``), checked
    against its size and sha256; None when the record lists none. Raises
    :class:`ModelFormatError` if the file is missing or differs."""
    entry = (record.get("artifacts") or {}).get(name)
    if entry is None:
        return None
    path = os.path.join(root, entry["file"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelFormatError(
            f"The artifact '{name}' of {where} is missing: no file '{entry['file']}'.") from None
    got = hashlib.sha256(data).hexdigest()
    if len(data) != entry["size"] or got != entry["sha256"]:
        raise ModelFormatError(
            f"The artifact '{name}' of {where} is corrupt: expected {entry['size']} bytes with "
            f"sha256 {entry['sha256'][:16]}..., got {len(data)} bytes with sha256 {got[:16]}....")
    return data


def dump_record(record: dict) -> str:
    """JSON text of ``record``; a Qdrant API key (from ``QDRANT_API_KEY``) never leaves here."""
    text = json.dumps(record, sort_keys=True)
    key = os.environ.get("QDRANT_API_KEY")
    if key and len(key) >= 4 and key in text:
        log.warning("Removed a copy of QDRANT_API_KEY from the metadata before storing it.")
        text = text.replace(key, "***")
    return text


def load_record(text: str | bytes | None, where: str) -> dict:
    """Parse and check a stored record; raise :class:`ModelFormatError` if absent or foreign."""
    if text is None:
        raise ModelFormatError(f"{where} holds no tldr-index record: it was not written by tldr-index.")
    try:
        rec = json.loads(text)
    except ValueError as exc:
        raise ModelFormatError(f"The tldr-index record of {where} is not valid JSON ({exc}).") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ModelFormatError(
            f"The tldr-index record of {where} must have format '{FORMAT}'. Got "
            f"{rec.get('format') if isinstance(rec, dict) else type(rec).__name__!r} instead.")
    return rec


def check_model(model_bytes: bytes, record: dict, where: str) -> bytes:
    """Return ``model_bytes`` if its size and sha256 match the record, else raise."""
    want = record["model"]
    got = hashlib.sha256(model_bytes).hexdigest()
    if len(model_bytes) != want["size"] or got != want["sha256"]:
        raise ModelFormatError(
            f"The model stored in {where} is corrupt: expected {want['size']} bytes with sha256 "
            f"{want['sha256'][:16]}..., got {len(model_bytes)} bytes with sha256 {got[:16]}....")
    return bytes(model_bytes)


def updated_record_text(record: dict, metadata: dict) -> str:
    """JSON text of ``record`` with new ``metadata`` and a new write time (a delta keeps the
    layout and model of the record; it drops the artifacts, built over the rows it replaces,
    so that no stale one is ever listed)."""
    rec = dict(record)
    rec.pop("artifacts", None)
    rec["metadata"] = metadata
    rec["writer"] = dict(rec.get("writer", {}), written_utc=_dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"))
    return dump_record(rec)
