"""The JSON record every store keeps beside a target: layout, model hash (and the model itself
where the store has no file for it), metadata and writer. Cost: JSON of a few kB."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

from tldr_index.errors import InvalidParameterError, ModelFormatError
from tldr_index.version import __version__

if TYPE_CHECKING:
    from .base import Layout

log = logging.getLogger(__name__)

FORMAT = "tldr-index/1"
RECORD_KEY = "tldr_index"  # metadata key under which every store keeps the JSON record


def build_record(layout: Layout, model_bytes: bytes, metadata: dict, *,
                 model_file: str | None = None, inline: bool = False) -> dict:
    """The JSON record every store keeps beside the target (small unless ``inline``)."""
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
    return {
        "format": FORMAT,
        "layout": asdict(layout),
        "model": model,
        "metadata": metadata,
        "writer": {"library": "tldr-index", "version": __version__,
                   "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }


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
    layout and model of the record)."""
    rec = dict(record)
    rec["metadata"] = metadata
    rec["writer"] = dict(rec.get("writer", {}), written_utc=_dt.datetime.now(
        _dt.timezone.utc).isoformat(timespec="seconds"))
    return dump_record(rec)
