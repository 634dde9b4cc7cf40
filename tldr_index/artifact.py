"""The model file: safetensors tensors + JSON metadata, with a content hash. Never pickle.

Layout: tensors ``weight`` (d x D float32) and ``bias`` (d,) for every foldable model, plus
``encoder.*`` tensors for non-foldable (MLP) encoders; safetensors metadata holds
``format`` = ``tldr-index/model``, ``format_version``, ``info`` (JSON: method, dims, metric, training
config, library version, ...) and ``sha256`` over the tensors and ``info``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError

FORMAT = "tldr-index/model"
FORMAT_VERSION = "1"
MAX_MODEL_BYTES = 1 << 31  # 2 GiB: far above any D x d map; refuses absurd files early


def content_hash(tensors: dict[str, np.ndarray], info_json: str) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (sorted by name) and the info JSON."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{t.dtype.str}|{t.shape}|".encode())
        h.update(t.tobytes())
    h.update(info_json.encode())
    return h.hexdigest()


def model_to_bytes(tensors: dict[str, np.ndarray], info: dict[str, Any]) -> bytes:
    """Serialise a model to safetensors bytes (what connectors store beside a collection)."""
    from safetensors.numpy import save

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    info_json = json.dumps(info, sort_keys=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info_json,
            "sha256": content_hash(tensors, info_json)}
    return canonical_header(save(tensors, metadata=meta))


def canonical_header(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header rewritten with sorted keys and no
    spaces, padded with spaces to a multiple of 8 bytes as safetensors does; the tensor bytes
    are unchanged (their offsets are relative to the end of the header).

    safetensors writes the ``__metadata__`` entries in a random order (a Rust ``HashMap``), so
    the same model would otherwise give different file bytes from one save to the next: with
    this, equal tensors and info give equal bytes (and an equal sha256 of the file). Cost: one
    copy of the file's bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def model_from_bytes(data: bytes, source: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict]:
    """Parse and verify model bytes; raise :class:`ModelFormatError` naming ``source`` otherwise."""
    from safetensors import safe_open  # noqa: F401  (import check)
    from safetensors.numpy import load

    if len(data) < 8:
        raise ModelFormatError(f"'{source}' is not a tldr-index model: {len(data)} bytes is too "
                               f"short for a safetensors file.")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or header_len > min(len(data) - 8, 100 << 20):
        raise ModelFormatError(
            f"'{source}' is not a tldr-index model: not a safetensors file (header length "
            f"{header_len} does not fit a file of {len(data)} bytes).")
    try:
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ModelFormatError(f"'{source}' is not a tldr-index model: its safetensors header "
                               f"is not valid JSON.") from None
    if meta.get("format") != FORMAT:
        raise ModelFormatError(f"'{source}' is not a tldr-index model: metadata 'format' is "
                               f"{meta.get('format')!r}, expected {FORMAT!r}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"'{source}' has model format version {meta.get('format_version')!r}; "
                               f"this tldr-index reads version {FORMAT_VERSION!r}.")
    try:
        tensors = load(data)
    except Exception as exc:  # truncated or inconsistent file
        raise ModelFormatError(f"'{source}' is a corrupt tldr-index model: {exc}.") from None
    info_json = meta.get("info", "")
    if content_hash(tensors, info_json) != meta.get("sha256"):
        raise ModelFormatError(f"'{source}' failed its integrity check: the content hash does not "
                               f"match the one recorded at save time (file modified or damaged).")
    info = json.loads(info_json)
    _check_shapes(tensors, info, source)
    return tensors, info


def _check_shapes(tensors: dict[str, np.ndarray], info: dict, source: str) -> None:
    D, d = info.get("input_dim"), info.get("output_dim")
    W, b = tensors.get("weight"), tensors.get("bias")
    if info.get("foldable", True):
        if W is None or b is None or W.shape != (d, D) or b.shape != (d,):
            raise ModelFormatError(
                f"'{source}' is a corrupt tldr-index model: expected weight ({d}, {D}) and bias "
                f"({d},), got {None if W is None else W.shape} and {None if b is None else b.shape}.")


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where it is shown, else set and put
    back at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename.

    The file gets the mode a plain ``open(path, "wb")`` would give it: that of the file it
    replaces, else ``0o666`` minus the umask (0644 under the usual 022), like the data files the
    stores write next to it (``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_file(path: str | os.PathLike, tensors: dict[str, np.ndarray], info: dict) -> None:
    """Atomically write a model file."""
    atomic_write_bytes(path, model_to_bytes(tensors, info))


def load_model_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a model file written by :func:`save_model_file`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFormatError(f"Model file '{path}' does not exist.") from None
    if size > MAX_MODEL_BYTES:
        raise ModelFormatError(f"'{path}' is not a tldr-index model: {size} bytes is larger than "
                               f"the {MAX_MODEL_BYTES} byte limit.")
    return model_from_bytes(path.read_bytes(), str(path))
