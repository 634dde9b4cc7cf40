"""Typed results of the shrink stages, as checkpointed in the work directory.

Each result is what a stage hands to the next ones and records in its ``done.json`` (the
``info`` of :meth:`tldr_index.shrink.workdir.WorkDir.mark_done`): :meth:`StageResult.to_json`
writes the same keys the pipeline always wrote (optional ones only when set) and
:meth:`StageResult.from_json` reads them back on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class StageResult:
    """Base of the stage results: JSON in and out; ``seconds`` is the stage's wall time."""

    #: fields left out of the JSON while None (the stage did not produce them)
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ScanResult(StageResult):
    """``rows`` valid rows read (``skipped_invalid`` more dropped), their id digest; ``dtype``
    of the local scan's store; ``sample_rows``/``pieces``/``engine`` of the Ray scan."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("dtype", "sample_rows", "pieces", "engine")
    rows: int
    ids_digest: str
    dtype: str | None = None
    skipped_invalid: int = 0
    first_invalid_id: Any = None
    sample_rows: int | None = None
    pieces: int | None = None
    engine: str | None = None
    seconds: float | None = None

    @property
    def rows_read(self) -> int:
        """Valid plus skipped rows: what the source held when it was read."""
        return self.rows + (self.skipped_invalid or 0)


@dataclass
class KnnResult(StageResult):
    """``n_train`` training rows and, unless PCA only, the kNN graph's method and recall."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("graph_method", "graph_recall", "graph_seconds")
    n_train: int
    graph_method: str | None = None
    graph_recall: float | None = None
    graph_seconds: float | None = None
    seconds: float | None = None


@dataclass
class SelectResult(StageResult):
    """The selection: ``chosen`` ``{"method", "dim", "codec", "code_bytes", "pq_bytes"}`` (plus
    ``"qat"``, the codec its map was fine-tuned through, for a ``+QAT`` candidate), why, and
    every candidate's figures (``candidates``, dicts of
    :class:`tldr_index.shrink.select.SweepConfig` with their ``label``). The chosen map is the
    stage's checkpoint file ``select/model.safetensors``."""

    chosen: dict
    reason: str
    criterion: str
    target_recall: float | None
    queries: int
    query_kind: str
    candidates: list = field(default_factory=list)
    seconds: float | None = None


@dataclass
class TrainResult(StageResult):
    OPTIONAL: ClassVar[tuple[str, ...]] = ("qat",)
    method: str
    best_epoch: int | None = None
    val_recall_initial: float | None = None
    val_recall_best: float | None = None
    #: the QAT phase (codec, code_bytes, epochs, best_epoch, quantized validation recall at the
    #: start and best, seconds); None when the map was not fine-tuned through its codes
    qat: dict | None = None
    seconds: float | None = None


@dataclass
class EncodeResult(StageResult):
    """The stored vectors' dtype and, on the local engine, the largest reduced value and the
    recall estimate (absent when skipped)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ("engine", "max_abs", "recall_at_10",
                                           "recall_at_10_rescored", "eval_queries", "shortlist",
                                           "eval_seconds")
    vector_dtype: str
    engine: str | None = None
    max_abs: float | None = None
    recall_at_10: float | None = None
    recall_at_10_rescored: float | None = None
    eval_queries: int | None = None
    shortlist: int | None = None
    eval_seconds: float | None = None
    seconds: float | None = None


@dataclass
class WriteResult(StageResult):
    rows: int
    seconds: float | None = None


@dataclass
class VerifyResult(StageResult):
    rows: int
    ids_digest: str
    seconds: float | None = None


@dataclass
class PublishResult(StageResult):
    seconds: float | None = None


RESULT_TYPES: dict[str, type[StageResult]] = {
    "scan": ScanResult, "knn": KnnResult, "select": SelectResult, "train": TrainResult,
    "encode": EncodeResult, "write": WriteResult, "verify": VerifyResult,
    "publish": PublishResult}


@dataclass
class StageResults:
    """The results of one run, by stage (None: not run yet)."""

    scan: ScanResult | None = None
    knn: KnnResult | None = None
    select: SelectResult | None = None
    train: TrainResult | None = None
    encode: EncodeResult | None = None
    write: WriteResult | None = None
    verify: VerifyResult | None = None
    publish: PublishResult | None = None

    def set(self, stage: str, result: StageResult) -> None:
        if not isinstance(result, RESULT_TYPES[stage]):
            raise TypeError(f"stage {stage!r} takes a {RESULT_TYPES[stage].__name__}")
        setattr(self, stage, result)

    def load(self, stage: str, info: dict) -> StageResult:
        """Set ``stage`` from its checkpointed JSON; returns the result."""
        result = RESULT_TYPES[stage].from_json(info)
        setattr(self, stage, result)
        return result
