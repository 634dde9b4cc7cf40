"""Disk full / permission denied in the work directory or the target: one clear
:class:`StorageError` line, nothing published, the previous target intact, the source untouched,
and a rerun with ``resume=True`` finishes the job.

Tests may run as root, where ``chmod`` stops no write: the faults are injected with
``TLDR_INDEX_FAULT=<point>=enospc|eacces`` (:mod:`tldr_index.faults`) or by patching the function
that writes, and the ``chmod`` variant runs only for other users (its body also passes as root
without the capability that bypasses permissions: ``capsh --drop=cap_dac_override,
cap_dac_read_search,cap_fowner -- -c "python ..."``).
"""

from __future__ import annotations

import errno
import os
import re

import pytest
from _connector_helpers import staging_leftovers
from _pipeline_helpers import (assert_same_snapshot, lancedb_source, make_nested, parquet_source,
                               snapshot)

from tldr_index import faults
from tldr_index.errors import StorageError
from tldr_index.pipeline import shrink

OPTS = dict(dim=4, pq_bytes=2, epochs=2, threads=1, eval_queries=20, batch_rows=128,
            random_state=3)


def expected(text: str, name: str, target: str, work, where: str = "") -> str:
    return (f"Shrink stopped: {text} ({name}){where}. Nothing was published: the source and any "
            f"previous target '{target}' are unchanged. Free space or fix the permissions of the "
            f"work directory '{work}' or the target, then rerun with resume=True (--resume) to "
            f"continue from the last checkpoint.")


ENOSPC, EACCES = os.strerror(errno.ENOSPC), os.strerror(errno.EACCES)


@pytest.fixture(scope="module")
def data():
    return make_nested(600, 16, between=6, within=4, seed=2)


@pytest.fixture
def fault(monkeypatch):
    def set_fault(spec: str) -> None:
        faults.reset()
        monkeypatch.setenv(faults.ENV, spec)

    yield set_fault
    faults.reset()


def _store(kind: str, root, data) -> tuple[str, str]:
    if kind == "lance":
        src = lancedb_source(str(root), data)
        return src, src + "_out"
    return parquet_source(str(root), data), f"parquet://{root}/out/"


# (fault, errno text, errno name): the work directory (scan, encode, a checkpoint) and the target
# (staging while writing, just before the atomic switch)
FAULTS = [("scan:update@2=enospc", ENOSPC, "ENOSPC"),
          ("encode:done=enospc", ENOSPC, "ENOSPC"),
          ("write:update@2=enospc", ENOSPC, "ENOSPC"),
          ("publish:update@1=eacces", EACCES, "EACCES")]


@pytest.mark.parametrize("kind", ["lance", "parquet"])
@pytest.mark.parametrize("spec,text,name", FAULTS, ids=[f[0] for f in FAULTS])
def test_disk_full_or_denied_keeps_previous_target(kind, spec, text, name, tmp_path, data, fault,
                                                   source_guard, monkeypatch):
    src, tgt = _store(kind, tmp_path, data)
    source_guard(src)
    shrink(src, tgt, method="pca", work_dir=tmp_path / "w0", **OPTS)   # the previous target
    before = snapshot(tgt)
    work = tmp_path / "work"
    fault(spec)
    with pytest.raises(StorageError) as err:
        shrink(src, tgt, overwrite=True, work_dir=work, **OPTS)
    assert str(err.value) == expected(text, name, tgt, work)
    assert_same_snapshot(snapshot(tgt), before)
    parent = tmp_path / "db" if kind == "lance" else tmp_path
    assert staging_leftovers(str(parent)) == []
    monkeypatch.delenv(faults.ENV)
    rep = shrink(src, tgt, overwrite=True, resume=True, work_dir=work, **OPTS)   # space freed
    assert rep.resumed and rep.method == "tldr"


def test_real_write_errors_name_the_file(tmp_path, data, source_guard, monkeypatch):
    """Errors raised by the libraries that write (here patched in): the message names the file."""
    from connectors import lance_store
    from tldr_index.vectors import VectorStoreWriter

    src = source_guard(lancedb_source(str(tmp_path), data))
    tgt, work = src + "_out", tmp_path / "work"

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, ENOSPC, str(tmp_path / "db" / ".docs_out.tldr-staging-x"))

    monkeypatch.setattr(lance_store, "write_fragments", full)
    with pytest.raises(StorageError) as err:
        shrink(src, tgt, work_dir=work, **OPTS)
    assert str(err.value) == expected(
        ENOSPC, "ENOSPC", tgt, work, f" at '{tmp_path / 'db' / '.docs_out.tldr-staging-x'}'")
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]
    monkeypatch.undo()

    def denied(self, X):
        raise PermissionError(errno.EACCES, EACCES, str(self.root))

    monkeypatch.setattr(VectorStoreWriter, "append", denied)   # the work directory's vector store
    with pytest.raises(StorageError, match=re.escape(f"Shrink stopped: {EACCES} (EACCES) at '"
                                                     f"{work / 'scan' / 'vectors'}")):
        shrink(src, tgt, work_dir=work, overwrite=True, **OPTS)
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]


def test_other_os_errors_are_not_rewritten(tmp_path, data, monkeypatch, source_guard):
    from tldr_index.vectors import VectorStoreWriter

    src = source_guard(lancedb_source(str(tmp_path), data))

    def broken(self, X):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(VectorStoreWriter, "append", broken)
    with pytest.raises(OSError) as err:
        shrink(src, src + "_out", work_dir=tmp_path / "w", **OPTS)
    assert not isinstance(err.value, StorageError) and err.value.errno == errno.EIO


def test_cli_prints_one_line_and_exits_1(tmp_path, data, fault, source_guard):
    from reliability._harness import run_cli_here

    src = source_guard(lancedb_source(str(tmp_path), data))
    work = tmp_path / "work"
    fault("knn:done=enospc")
    res = run_cli_here(["shrink", "--source", src, "--target", "docs_out", "--dim", "4",
                        "--pq-bytes", "2", "--epochs", "1", "--threads", "1", "--quiet",
                        "--work-dir", str(work)])
    assert res.exit_code == 1
    assert res.stderr == "Error: " + expected(ENOSPC, "ENOSPC", src + "_out", work) + "\n"
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555")
def test_read_only_directories(tmp_path, data, source_guard):
    src = source_guard(lancedb_source(str(tmp_path), data))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StorageError, match=re.escape(f"Shrink stopped: {EACCES} (EACCES)")):
            shrink(src, src + "_out", work_dir=ro / "work", **OPTS)
        (tmp_path / "db").chmod(0o555)
        with pytest.raises(StorageError, match=re.escape(f"Shrink stopped: {EACCES} (EACCES)")):
            shrink(src, src + "_out", work_dir=tmp_path / "work", **OPTS)
    finally:
        ro.chmod(0o755)
        (tmp_path / "db").chmod(0o755)
    assert sorted(os.listdir(tmp_path / "db")) == ["docs.lance"]
