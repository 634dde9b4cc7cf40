"""Where the row-parallel stages run: :class:`LocalEngine` (this process) or :class:`RayEngine`
(Ray tasks: :mod:`tldr_index.shrink.ray_scan` and :mod:`tldr_index.shrink.ray_engine`), chosen
once per run by :func:`make_engine`. The kNN graph and training always run on this node.

An engine has ``session()`` (a context around the run: a Ray session for Ray), ``scan(run)``
(the scan stage), ``encodes_in_write`` (rows are encoded by ``write`` rather than ``encode``),
``write(run, sink, model, schema, codes_column)`` (every encoded row into a created sink) and
``map_pieces`` (how the staged target is read back by ``Sink.verify``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from ..compact import CompactModel
from ..vectors import VectorStore
from .encode_batches import CODES_COLUMN, assemble_batch, read_rows
from .results import ScanResult
from .scan import scan_local

if TYPE_CHECKING:
    from .run import ShrinkRun


class LocalEngine:
    """Every stage in this process."""

    name = "local"
    encodes_in_write = False
    map_pieces: Callable | None = None

    def __init__(self) -> None:
        self.options: dict = {}

    def session(self):
        return contextlib.nullcontext()

    def scan(self, run: "ShrinkRun") -> tuple[list[Path], ScanResult]:
        return scan_local(run)

    def write(self, run: "ShrinkRun", sink, model: CompactModel, schema: pa.Schema,
              codes_column: str | None) -> int:
        """Append the encoded rows (scan spill + ``encode/reduced`` + ``encode/codes.u8``) to
        ``sink`` batch by batch; returns the rows written. Memory: one batch."""
        root = run.work.root
        reduced = VectorStore.open(root / "encode" / "reduced")
        codes_path = root / "encode" / "codes.u8"
        pos = 0
        with pa.OSFile(str(root / "scan" / "rows.arrow"), "rb") as f:
            spill = pa.ipc.open_file(f)
            for i in range(spill.num_record_batches):
                b = spill.get_batch(i)
                m = b.num_rows
                codes = read_rows(codes_path, pos, pos + m, run.code_bytes) if run.code_bytes \
                    else None
                sink.append(assemble_batch(b, reduced.read(pos, pos + m), codes, schema,
                                           vector_column=run.src.vector_column,
                                           codes_column=CODES_COLUMN))
                pos += m
                run.progress.update("write", pos)
        return pos


class RayEngine:
    """The scan (unless ``scan_on_ray`` is False: a selection measures against every row here)
    and encode + write of every row as Ray jobs; ``options``: ``workers``, ``shard_rows``,
    ``num_cpus``."""

    name = "ray"
    encodes_in_write = True

    def __init__(self, options: dict, scan_on_ray: bool = True) -> None:
        self.options, self.scan_on_ray = dict(options), scan_on_ray

    def session(self):
        from .ray_engine import RaySession, require_ray

        return RaySession(require_ray(), self.options.get("num_cpus"))

    def scan(self, run: "ShrinkRun") -> tuple[list[Path], ScanResult]:
        """The scan as Ray tasks; this node keeps only the training sample (``scan/sample``),
        not a copy of every row."""
        if not self.scan_on_ray:
            return scan_local(run)
        from .ray_scan import scan_with_ray

        out = run.work.stage_dir("scan", clear=True)
        run.progress.begin("scan", run.src.count(), "rows")
        info = scan_with_ray(run.src, out / "sample", sample=run.sample, seed=run.seed,
                             batch_rows=run.batch_rows, skip_invalid=run.skip_invalid,
                             progress=lambda done: run.progress.update("scan", done),
                             **self.options)
        store = VectorStore.open(out / "sample")
        return [store.path, store.root / VectorStore.META], ScanResult.from_json(info)

    def write(self, run: "ShrinkRun", sink, model: CompactModel, schema: pa.Schema,
              codes_column: str | None) -> int:
        from .ray_engine import write_with_ray

        return write_with_ray(run.src, sink, model, schema, codes_column=codes_column,
                              batch_rows=run.batch_rows, skip_invalid=run.skip_invalid,
                              progress=lambda done: run.progress.update("write", done),
                              **self.options)

    @property
    def map_pieces(self) -> Callable:
        """Read the staged files back in Ray tasks, digests merged here."""
        from .ray_engine import ray_map

        return ray_map


Engine = LocalEngine | RayEngine


def make_engine(name: str, options: dict | None = None, scan_on_ray: bool = True) -> Engine:
    """The engine called ``name`` ("local" or "ray", as checked by the plan)."""
    if name == "ray":
        return RayEngine(options or {}, scan_on_ray=scan_on_ray)
    return LocalEngine()
