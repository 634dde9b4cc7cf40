"""Security: model files are never unpickled (pickle bombs leave no trace), the Qdrant API key
(from ``QDRANT_API_KEY`` or ``--api-key``) never shows in logs at DEBUG, errors, progress output,
reports, work directories or stored metadata, and HTTPS is used when asked for.

A local fake Qdrant server (plain HTTP, answers 503 to everything) records the request headers,
which proves the key was really sent where it should be, and only there."""

from __future__ import annotations

import http.server
import json
import logging
import os
import pickle
import threading

import numpy as np
import pytest
from reliability._harness import run_cli_here
from _pipeline_helpers import make_nested, parquet_source, qdrant_source

from connectors import open_source, open_target, parse_uri
from connectors.qdrant_store import client_for
from tldr_index import PCA, TLDR, load_model
from tldr_index.compact import CompactModel
from tldr_index.errors import InvalidInputError, ModelFormatError, StoreUnavailableError
from tldr_index.pipeline import search, shrink

SECRET = "sk-reliability-7f3a9c1e"


# ------------------------------------------------------------------------------- pickle bombs

class Bomb:
    """Creates ``path`` if it is ever unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def bombs(tmp_path):
    marker = tmp_path / "PICKLE-WAS-EXECUTED"
    raw = tmp_path / "bomb.safetensors"
    raw.write_bytes(pickle.dumps(Bomb(marker)))
    npy = tmp_path / "bomb.npy"
    np.save(npy, np.array([Bomb(marker)], dtype=object), allow_pickle=True)
    import torch
    pt = tmp_path / "bomb.pt"
    torch.save({"weight": Bomb(marker)}, pt)          # torch's zip + pickle format
    yield marker, {"pickle": raw, "npy": npy, "torch": pt}
    assert not marker.exists(), "a pickle was executed"


def test_model_loaders_refuse_pickles(bombs):
    marker, files = bombs
    for name, path in files.items():
        for load in (load_model, TLDR.load, PCA.load):
            with pytest.raises(ModelFormatError, match="is not a tldr-index model"):
                load(path)
        with pytest.raises(ModelFormatError, match="is not a tldr-index model"):
            CompactModel.from_bytes(path.read_bytes(), name)
    assert not marker.exists()


def test_pickled_queries_and_target_models_are_refused(bombs, tmp_path, source_guard):
    marker, files = bombs
    src = source_guard(parquet_source(str(tmp_path), make_nested(300, 8, between=3, within=3)))
    tgt = f"parquet://{tmp_path}/out/"
    shrink(src, tgt, dim=4, pq_bytes=0, epochs=1, threads=1, eval_queries=10,
           work_dir=tmp_path / "w")
    with pytest.raises(InvalidInputError, match="must be a .npy float array"):
        search(tgt, str(files["npy"]), k=3)
    # the published model replaced by a pickle: its recorded sha256 no longer matches
    (tmp_path / "out" / "_tldr_model.safetensors").write_bytes(files["pickle"].read_bytes())
    with pytest.raises(ModelFormatError):
        open_target(tgt)
    with pytest.raises(ModelFormatError):
        search(tgt, np.zeros((1, 8), np.float32), k=3)
    assert not marker.exists()


# ------------------------------------------------------------------------------- API key

class FakeQdrant(http.server.BaseHTTPRequestHandler):
    """Answers 503 to every request and records its headers in ``server.seen``."""

    def _answer(self):
        self.server.seen.append(dict(self.headers))
        body = b'{"status": {"error": "overloaded"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_qdrant():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeQdrant)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _sent_keys(server) -> list:
    return [h.get("api-key") for h in server.seen]


def test_api_key_from_env_is_sent_but_never_shown(fake_qdrant, monkeypatch, caplog, capsys,
                                                  recwarn):
    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    port = fake_qdrant.server_address[1]
    caplog.set_level(logging.DEBUG)                     # every logger, DEBUG and up
    with pytest.raises(StoreUnavailableError) as err:
        shrink(f"qdrant://127.0.0.1:{port}/docs", dim=4, progress=True)
    assert str(err.value).startswith(f"Qdrant at http://127.0.0.1:{port} is unreachable while "
                                     f"trying to list aliases: Unexpected Response: 503")
    assert _sent_keys(fake_qdrant) and set(_sent_keys(fake_qdrant)) == {SECRET}
    out = capsys.readouterr()
    shown = [str(err.value), repr(err.value), caplog.text, out.out, out.err,
             *[str(w.message) for w in recwarn]]
    assert all(SECRET not in s for s in shown)


def test_api_key_flag_in_the_cli(fake_qdrant, monkeypatch):
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    port = fake_qdrant.server_address[1]
    for cmd in (["shrink", "--source", f"qdrant://127.0.0.1:{port}/docs", "--dim", "4"],
                ["info", "--target", f"qdrant://127.0.0.1:{port}/docs_small"]):
        res = run_cli_here([*cmd, "--api-key", SECRET])
        assert res.exit_code == 1
        assert res.stderr.startswith(f"Error: Qdrant at http://127.0.0.1:{port} is unreachable")
        assert SECRET not in res.output and SECRET not in res.stderr
    assert len(fake_qdrant.seen) == 2 and set(_sent_keys(fake_qdrant)) == {SECRET}


def test_https_is_used_when_asked(fake_qdrant, monkeypatch):
    """``qdrant+https://``: TLS first, so a plain-HTTP server never receives the key."""
    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    port = fake_qdrant.server_address[1]
    uri = f"qdrant+https://127.0.0.1:{port}/docs"
    client = client_for(parse_uri(uri))
    assert client._client.rest_uri.startswith("https://")
    with pytest.raises(StoreUnavailableError) as err:
        open_source(uri, timeout=5)
    assert str(err.value).startswith(f"Qdrant at https://127.0.0.1:{port} is unreachable")
    assert SECRET not in str(err.value)
    assert fake_qdrant.seen == []                       # no plaintext request got through


def test_api_key_is_in_no_report_work_dir_or_target(tmp_path, monkeypatch, caplog, source_guard):
    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    src = source_guard(qdrant_source(make_nested(300, 8, between=3, within=3)))
    work = tmp_path / "work"
    rep = shrink(src, src + "_out", dim=4, pq_bytes=0, epochs=1, threads=1, eval_queries=10,
                 work_dir=work, keep_work=True,
                 source_options={"api_key": SECRET}, sink_options={"api_key": SECRET})
    client = client_for(parse_uri(src))
    meta = json.dumps(client.get_collection(open_target(src + "_out").collection)
                      .config.metadata)
    files = [p.read_bytes() for p in work.rglob("*") if p.is_file()]
    assert files and all(SECRET.encode() not in b for b in files)
    assert SECRET not in json.dumps(rep.to_dict(), default=str)
    assert SECRET not in meta and SECRET not in caplog.text
    assert os.environ["QDRANT_API_KEY"] == SECRET
