"""The vector index of a Lance target, built one fragment at a time.

``ds.create_index`` of an ``IVF_FLAT`` index shuffles every row of the column through memory at
once: on a 1M x 64 float16 target (benchmarks/shrink.py, 4 fragments of 262,144 rows) it raised
a fresh process's peak RSS by about 550 MB, i.e. the peak grows with ``N``. Here the IVF centroids
are trained first (``IndicesBuilder.train_ivf``: the same sampled k-means ``create_index`` runs,
``sample_rate`` rows per partition), then each fragment becomes one uncommitted segment that uses
those centroids (``create_index_uncommitted(fragment_ids=[f])``), the segments (same model) are
merged into one physical segment and committed as one index: the same index as ``create_index``
builds, at a peak of one fragment's shuffle (+220 MB on the same target, measured the same way;
fragments hold at most the sink's ``flush_rows`` rows, so it stays flat in ``N``).

Other index types (``IVF_PQ`` through ``index_options``, which would need a shared PQ codebook
as well) and one-partition indexes (small targets) are built by ``create_index`` as before.
"""

from __future__ import annotations

import logging

import lance
from lance.indices import IndicesBuilder

log = logging.getLogger(__name__)

#: keys of :meth:`connectors.lance_store.LanceSink.index_options_for` that only the k-means reads
KMEANS_KEYS = ("num_partitions", "sample_rate", "max_iters")


def segmented(opts: dict, fragments: int) -> bool:
    """Whether :func:`build_vector_index` builds ``opts`` fragment by fragment: a multi-partition
    ``IVF_FLAT`` on more than one fragment, without options only ``create_index`` understands
    (anything but the index type, metric, k-means keys and ``ivf_centroids``)."""
    plain = set(opts) - {"index_type", "metric", "ivf_centroids", *KMEANS_KEYS}
    parts = opts.get("num_partitions") or 0
    return (opts.get("index_type") == "IVF_FLAT" and fragments > 1 and not plain
            and (parts > 1 or opts.get("ivf_centroids") is not None))


def build_vector_index(ds: lance.LanceDataset, column: str, opts: dict) -> str:
    """Build and commit the vector index ``opts`` (``create_index`` keywords) on ``column`` of
    ``ds`` as one new version; returns how ("segmented" or "create_index").

    Cost (segmented): the k-means on ``num_partitions x sample_rate`` sampled rows, then one read
    of every row and one merge of the segments (``n x d x itemsize`` bytes written twice); memory
    one fragment's rows at a time. Any Lance error propagates (the caller decides what an
    unindexed target means).
    """
    frags = [f.fragment_id for f in ds.get_fragments()]
    if not segmented(opts, len(frags)):
        ds.create_index(column, **opts)
        return "create_index"
    metric = opts.get("metric", "l2")
    centroids = opts.get("ivf_centroids")
    if centroids is None:
        centroids = IndicesBuilder(ds, column).train_ivf(
            opts["num_partitions"], distance_type=metric,
            **{k: opts[k] for k in ("sample_rate", "max_iters") if k in opts}).centroids
    segments = [ds.create_index_uncommitted(column, opts["index_type"], metric=metric,
                                            ivf_centroids=centroids, fragment_ids=[fid])
                for fid in frags]
    merged = ds.merge_existing_index_segments(segments)
    ds.commit_existing_index_segments(f"{column}_idx", column, [merged])
    log.info("Built the %s index of %s from %d fragment segments (merged into one).",
             opts["index_type"], column, len(frags))
    return "segmented"
