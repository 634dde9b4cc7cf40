"""What a shrink did: :class:`ShrinkReport` (sizes in bytes, recall, stage times)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ShrinkReport:
    """What a shrink did. Sizes in bytes; ``None`` where a store cannot tell (remote Qdrant)."""

    source: str
    target: str
    method: str
    metric: str
    rows: int
    source_dim: int
    dim: int
    code_bytes: int                   # codes per row (0: none), by ``codec``
    vector_dtype: str
    source_disk_bytes: int | None
    target_disk_bytes: int | None
    graph_recall: float | None
    recall_at_10: float | None
    recall_at_10_rescored: float | None
    eval_queries: int
    shortlist: int
    stage_seconds: dict = field(default_factory=dict)
    skipped_stages: list = field(default_factory=list)
    wall_seconds: float = 0.0
    work_dir: str = ""
    resumed: bool = False
    skipped_invalid: int = 0          # rows dropped by skip_invalid (NaN/inf, zero under cosine)
    first_invalid_id: object = None
    selection: dict | None = None    # method="auto" / target_recall: candidates and the choice
    codec: str | None = None         # "pq", "opq", "rq", "rabitq" (None: no codes)
    #: the quantization-aware fine-tuning (:class:`tldr_index.shrink.results.TrainResult.qat`),
    #: None when the map was not fine-tuned through its codes
    qat: dict | None = None
    #: per stage run (not from a checkpoint): ``{"cpu_s": CPU seconds of every thread,
    #: "peak_rss_mb": the process's peak RSS after the stage}``, and ``encode_phases``: wall
    #: seconds of the encode stage's parts (codec_train, rows, recall_estimate, code_index)
    stage_usage: dict = field(default_factory=dict)

    @property
    def pq_bytes(self) -> int:
        """Old name of :attr:`code_bytes` (kept for compatibility, whatever the codec)."""
        return self.code_bytes

    @property
    def source_vector_bytes(self) -> int:
        """The source vectors as float32: ``rows x D x 4``."""
        return self.rows * self.source_dim * 4

    @property
    def codes_bytes(self) -> int:
        return self.rows * self.code_bytes

    @property
    def search_compression(self) -> float | None:
        """float32 source vector / code, per row (the in-memory search structure)."""
        return self.source_dim * 4 / self.code_bytes if self.code_bytes else None

    @property
    def disk_compression(self) -> float | None:
        if self.source_disk_bytes and self.target_disk_bytes:
            return self.source_disk_bytes / self.target_disk_bytes
        return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(pq_bytes=self.code_bytes, source_vector_bytes=self.source_vector_bytes,
                   codes_bytes=self.codes_bytes,
                   search_compression=self.search_compression,
                   disk_compression=self.disk_compression)
        return out
