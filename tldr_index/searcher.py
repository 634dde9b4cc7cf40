"""What :func:`tldr_index.search.search` holds in memory for a target with codes: the code index
where the target stores one (Lance, Parquet targets of at least ``index_min_rows`` rows, see
:mod:`tldr_index.code_index`), else the codes (an indexed target's codes are read again only for
an exhaustive scan), and the ids (:class:`~tldr_index.row_ids.RowIds`: memory-mapped int ids).

:class:`CodeSearcher` is built once per opened collection (:func:`tldr_index.open` keeps one and
reuses it until the target changes) and is safe from many threads: :meth:`CodeSearcher.topk`
changes nothing, :meth:`CodeSearcher.extended` returns a new searcher.

Which scan a search runs: ``exhaustive=True`` every code; else, with an index, the lists and
shortlist its stored recall table (:mod:`tldr_index.recall_table`) gives: ``nprobe`` (given) or
the cheapest stored ``(nprobe, shortlist)`` whose recall@10 reaches ``target_recall``; by
default (:meth:`tldr_index.recall_table.RecallTable.rescored_choice`) a saturated nprobe and a
shortlist of at least :func:`default_shortlist` rows, the shortlist of the exhaustive scan, so
that the default indexed search keeps the recall of the scan it replaces. A format-1 table
(older targets) picks nprobe only, against the exhaustive scan. Without an index every code is
scanned (``nprobe`` / ``target_recall`` are then refused).

Cost to build: one read of the id and code columns (``N x code_bytes`` bytes), and with an index
a SHA-256 of the codes (~1 GB/s) and one pass to fill its lists.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from .code_index import ARTIFACT_NAME, CodeIndex
from .compact import CompactModel
from .errors import InvalidParameterError, ModelFormatError
from .recall_table import scaled_shortlist
from .row_ids import RowIds, ids_to_numpy  # noqa: F401 (ids_to_numpy re-exported)
from .validation import check_bool, check_float

log = logging.getLogger(__name__)

#: rescored recall@10 the default (nprobe, shortlist) reaches in the stored table (format 1:
#: recall@10 against the exhaustive scan that the default nprobe reaches)
DEFAULT_RECALL = 0.95
#: Default rows re-ranked per query with ``rescore`` where no recall table says:
#: ``max(SHORTLIST_FACTOR * k, MIN_SHORTLIST)``.
SHORTLIST_FACTOR = 20
MIN_SHORTLIST = 200


def default_shortlist(k: int) -> int:
    """``max(20 k, 200)``: the shortlist of a rescored search without a format-2 table."""
    return max(SHORTLIST_FACTOR * k, MIN_SHORTLIST)


def read_codes(target, id_column: str, codes_column: str) -> tuple[pa.Array, np.ndarray] | None:
    """``(ids, codes (N, M) uint8)`` of a target that can read columns, else None."""
    try:
        batches = list(target.iter_columns([id_column, codes_column]))
    except NotImplementedError:
        return None
    if not batches:
        return pa.array([], type=pa.int64()), np.empty((0, 0), dtype=np.uint8)
    ids = pa.concat_arrays([b.column(0) for b in batches])
    m = batches[0].schema.field(1).type.list_size
    codes = np.empty((len(ids), m), dtype=np.uint8)
    pos = 0
    for b in batches:
        col = b.column(1)
        flat = col.values.slice(col.offset * m, len(col) * m).to_numpy(zero_copy_only=False)
        codes[pos:pos + len(col)] = flat.reshape(len(col), m)
        pos += len(col)
    return ids, codes


class CodeSearcher:
    """The ids, codes and code index (or None) of one opened target; see the module docstring.

    What stays in RAM: with a code index that serves the searches, the index alone; the
    collection's codes are read once at open (the index is checked against their SHA-256),
    then dropped, and read again from the target (checked against the same hash) only when a
    search needs them (``exhaustive=True``, or a query whose probed lists hold fewer rows than
    the candidates asked: ``k``, or the shortlist with rescore): :attr:`codes_loaded` says whether they are held. Without an index the codes are what
    is searched and stay. The ids are a :class:`~tldr_index.row_ids.RowIds` (consecutive
    integer ids: none held; other int64 ids: a memory-mapped temporary file; string ids: RAM).

    ``index_fallback``: a stored index that does not match the codes (row count or SHA-256) is
    logged and replaced by the exhaustive scan; without it, such an index makes every
    non-exhaustive search raise :class:`ModelFormatError`."""

    def __init__(self, target, model: CompactModel, ids: pa.Array | RowIds,
                 codes: np.ndarray | None, index: CodeIndex | None,
                 index_error: ModelFormatError | None = None, *, load_codes: Any = None,
                 keep_codes: bool = False):
        """``codes``: the ``(len(ids), model.code_bytes)`` codes, or None with an index (read
        by ``load_codes()`` when needed; default: from ``target``, checked against the index's
        hash; ``keep_codes``: hold the codes given even with an index, e.g. for a one-off
        exhaustive search)."""
        self.target, self.model = target, model
        self.row_ids = ids if isinstance(ids, RowIds) else RowIds.of(ids)
        self.index = index
        self.index_error = index_error
        self._caches: dict[tuple[str, bool], Any] = {}
        self._codes_lock = threading.Lock()
        self._load_codes = load_codes or self._read_codes
        self._n_codes, self._code_size = len(self.row_ids), model.code_bytes
        #: the codes, or None while dropped (an index serves the searches)
        self._codes: np.ndarray | None = None if index is not None and not keep_codes \
            else codes

    @property
    def codes(self) -> np.ndarray:
        """The collection's ``(N, code_bytes)`` codes, read again from the target if dropped
        (then held until this searcher goes). Cost of a re-read: one read of the code column
        and a SHA-256 of it (~1 GB/s). Thread-safe."""
        got = self._codes
        if got is not None:
            return got
        with self._codes_lock:
            if self._codes is None:
                log.info("search: reading the codes of '%s' (exhaustive scan)", self.target.uri)
                self._codes = self._load_codes()
            return self._codes

    @property
    def codes_loaded(self) -> bool:
        """Whether the codes are held in RAM now (see the class docstring)."""
        return self._codes is not None

    def _read_codes(self) -> np.ndarray:
        lay = self.target.layout
        loaded = read_codes(self.target, lay.id_column, lay.codes_column)
        codes = loaded[1] if loaded is not None else None
        if codes is None or codes.shape != (self._n_codes, self._code_size) or (
                self.index is not None and not self.index.matches(codes)):
            raise ModelFormatError(
                f"The codes of target '{self.target.uri}' changed while it was open (read "
                f"again for an exhaustive scan, they no longer match its code index); "
                f"tldr_index.open('{self.target.uri}') again.")
        return codes

    @property
    def ids(self) -> pa.Array:
        """Every id as an Arrow array (int64 ids: built from :attr:`row_ids`, ``8 N`` bytes:
        for a one-off use such as a rescore cache's check, not kept)."""
        return self.row_ids.arrow()

    def cached(self, key: Any, make: Any) -> Any:
        """``make()`` once per ``key`` for this searcher (e.g. an opened rescore cache checked
        against these rows), then the same object."""
        if key not in self._caches:
            self._caches[key] = make()
        return self._caches[key]

    @classmethod
    def open(cls, target, model: CompactModel, *, index_fallback: bool = False,
             keep_codes: bool = False) -> "CodeSearcher | None":
        """The searcher of ``target`` (None when it has no readable codes: Qdrant);
        ``keep_codes``: see :meth:`__init__`."""
        index_fallback = check_bool(index_fallback, "index_fallback", owner="search")
        lay = target.layout
        if not (lay.codes_column and model.code_bytes):
            return None
        loaded = read_codes(target, lay.id_column, lay.codes_column)
        if loaded is None:
            return None
        ids, codes = loaded
        data = target.artifact(ARTIFACT_NAME)
        index = err = None
        if data is not None:
            try:
                index = CodeIndex.from_bytes(
                    data, codes, model.require_codec(), where=f"of target '{target.uri}'",
                    owner="search", fallback_hint="pass index_fallback=True (--index-fallback)")
            except ModelFormatError as exc:
                if not index_fallback:
                    err = exc
                else:
                    log.warning("%s Searching every code instead (index_fallback).", exc)
        return cls(target, model, ids, codes, index, err, keep_codes=keep_codes)

    @property
    def n_rows(self) -> int:
        return len(self.row_ids)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The ids (int64 or str numpy array, same shape) of row ``positions``. Cost: a gather
        of ``len(positions)`` ids (:meth:`RowIds.at`)."""
        return self.row_ids.at(positions)

    def resident(self) -> dict[str, int]:
        """Bytes this searcher holds, by part: ``index`` (lists and fixed arrays,
        :meth:`CodeIndex.bytes_per_vector` times its rows), ``codes`` (0 while dropped),
        ``ids`` (heap: string ids only) and ``ids_mapped`` (the memory-mapped id file: page
        cache, not heap). Not counted anywhere: a rescore cache (memory-mapped too) and the
        model."""
        index = self.index.bytes_per_vector() * self.index.n if self.index is not None else 0
        codes = self._codes
        return {"index": int(round(index)), "codes": 0 if codes is None else int(codes.nbytes),
                "ids": self.row_ids.heap_bytes, "ids_mapped": self.row_ids.mapped_bytes}

    def ram_bytes(self) -> int:
        """Bytes this searcher holds in the process's heap now: :meth:`resident` less the
        memory-mapped ids (index + codes if held + string ids)."""
        r = self.resident()
        return r["index"] + r["codes"] + r["ids"]

    def bytes_per_vector(self) -> float:
        """:meth:`ram_bytes` per row: what an open collection's searcher holds per vector
        (with the default fast-scan index over 16-byte codes and int64 ids: ~21 B, the index;
        after an exhaustive search, +16 B of codes)."""
        return self.ram_bytes() / max(self.n_rows, 1)

    def choose_nprobe(self, nprobe: Any = None, target_recall: Any = None,
                      exhaustive: bool = False) -> int | None:
        """The nprobe a search without rescoring runs with (None: the exhaustive scan)."""
        return self.choose(nprobe, target_recall, exhaustive)[0]

    def choose(self, nprobe: Any = None, target_recall: Any = None, exhaustive: bool = False,
               *, k: int = 10, rescore: bool = False, shortlist: int | None = None
               ) -> tuple[int | None, int]:
        """``(nprobe or None for the exhaustive scan, candidates per query)`` of a search for
        ``k`` neighbours, or one clear error; see the module docstring for the rules."""
        o = "search"
        exhaustive = check_bool(exhaustive, "exhaustive", owner=o)
        fixed = max(k, shortlist) if shortlist is not None else None
        if nprobe is not None and target_recall is not None:
            raise InvalidParameterError(
                f"The 'nprobe' and 'target_recall' parameters of {o} are exclusive: pass one. Got "
                f"nprobe={nprobe!r} and target_recall={target_recall!r}.")
        plain = (fixed or default_shortlist(k)) if rescore else k
        if exhaustive:
            if nprobe is not None or target_recall is not None:
                which = "nprobe" if nprobe is not None else "target_recall"
                raise InvalidParameterError(
                    f"The '{which}' parameter of {o} has no meaning with exhaustive=True (every "
                    f"code is scanned). Got {which}={nprobe if nprobe is not None else target_recall!r}.")
            return None, plain
        if self.index_error is not None:
            raise self.index_error
        index = self.index
        if index is None:
            if nprobe is not None or target_recall is not None:
                which = "nprobe" if nprobe is not None else "target_recall"
                raise InvalidParameterError(
                    f"The '{which}' parameter of {o} needs a code index and target "
                    f"'{self.target.uri}' has none (fewer than index_min_rows rows when it was "
                    f"written, or its rows changed since): every code is scanned. Got "
                    f"{which}={nprobe if nprobe is not None else target_recall!r}.")
            return None, plain
        if nprobe is not None:
            nprobe = index.check_nprobe(nprobe, owner=o)
        table = index.recall_table
        if not table.has_rescored:  # a format-1 table (or none): nprobe only
            return self._choose_v1(nprobe, target_recall), plain
        if target_recall is not None:
            target_recall = check_float(target_recall, "target_recall", low=0.0, high=1.0,
                                        owner=o)
        if not rescore:
            if nprobe is not None:
                return nprobe, k
            return table.raw_nprobe(target_recall, o), k
        p, s = table.rescored_choice(target_recall, o, rows_per_list=index.n / index.nlist,
                                     nprobe=nprobe, shortlist=fixed,
                                     min_shortlist=default_shortlist(table.k))
        return p, (fixed if fixed is not None else scaled_shortlist(s, k, table.k))

    def _choose_v1(self, nprobe: int | None, target_recall: Any) -> int:
        """The rules of a format-1 table: ``target_recall`` against exact reduced search (else
        the exhaustive scan), default the smallest nprobe reaching 0.95 of the exhaustive."""
        o = "search"
        if nprobe is not None:
            return nprobe
        if target_recall is not None:
            target_recall = check_float(target_recall, "target_recall", low=0.0, high=1.0,
                                        owner=o)
            against = "exact" if self.index.recall_table.vs_exact is not None else "exhaustive"
            return self.index.nprobe_for(target_recall, against, owner=o)
        table = self.index.recall_table
        ok = [p for p, r in zip(table.nprobe, table.vs_exhaustive)
              if r >= DEFAULT_RECALL and p <= self.index.nlist]
        return min(ok) if ok else self.index.nlist

    def topk(self, Y: np.ndarray, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances lower-is-better, row positions)`` ``(n, k)`` of reduced queries ``Y``
        (not yet prepared): the exhaustive scan (``nprobe`` None) or the index's ``nprobe``
        lists. A query whose probed lists hold fewer than ``k`` rows is answered by the
        exhaustive scan. Cost: see :meth:`CodeIndex.search` and :meth:`CompactModel.topk`."""
        if nprobe is None or self.index is None:
            return self.model.topk(self.codes, Y, k)
        S, P = self.index.search(self.model.prepare(Y), k, nprobe=nprobe)
        D = _lower_better(S, self.model.metric)
        short = np.flatnonzero((P < 0).any(axis=1))
        if len(short):
            D[short], P[short] = self.model.topk(self.codes, Y[short], k)
        return D.astype(np.float32), P

    def extended(self, ids: pa.Array, codes: np.ndarray, Y: np.ndarray) -> "CodeSearcher":
        """A new searcher with rows ``ids`` / ``codes`` (reduced vectors ``Y``) appended at the
        end of the code array (the index, if any, gets them in its lists: a row added is found
        by indexed search). Cost: the index's :meth:`CodeIndex.add` (and, with no index, a copy
        of the codes; with one, the codes are joined only if a search needs them)."""
        index = self.index
        if index is not None:
            index = index.copy()
            index.add(codes, self.model.prepare(Y))
        base = self.row_ids.arrow()
        all_ids = pa.concat_arrays([base, ids.cast(base.type)])
        if index is None:
            return CodeSearcher(self.target, self.model, all_ids,
                                np.concatenate([self.codes, codes]), None, self.index_error)
        return CodeSearcher(self.target, self.model, all_ids, None, index, self.index_error,
                            load_codes=lambda: np.concatenate([self.codes, codes]))


def build_target_index(target, model: CompactModel, *, seed: int = 0,
                       store: bool = True) -> CodeIndex:
    """Build a code index over the live rows of ``target`` (its codes and stored reduced
    vectors, read once) and, with ``store``, store it in the target
    (:meth:`connectors.Target.store_artifact`: one switch of the record). What ``reindex`` does
    after a delta on a target that had an index. Cost: the column reads plus
    :meth:`CodeIndex.build`; memory: the reduced vectors as float32 and the codes."""
    from connectors.arrow_utils import vectors_to_numpy

    lay = target.layout
    _, codes = read_codes(target, lay.id_column, lay.codes_column)
    parts = [vectors_to_numpy(b.column(0)).astype(np.float32)
             for b in target.iter_columns([lay.vector_column])]
    Z = np.concatenate(parts) if parts else np.empty((0, model.output_dim), np.float32)
    index = CodeIndex.build(Z, codes, model.require_codec(), metric=model.metric, seed=seed)
    if store:
        target.store_artifact(ARTIFACT_NAME, index.to_bytes())
    return index


def _lower_better(S: np.ndarray, metric: str) -> np.ndarray:
    """CodeIndex scores (higher is better; l2: ``-||q - x||^2``) -> search distances."""
    if metric == "l2":
        return -S
    return (1.0 - S) if metric == "cosine" else -S
