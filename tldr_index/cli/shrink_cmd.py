"""``tldr-index shrink``: parse the options, call :func:`tldr_index.pipeline.shrink`, print its
summary (or ``--json``)."""

from __future__ import annotations

import dataclasses

import click

from ..tables import fmt_float
from .options import (api_key_opt, db_opt, int_list, is_uri, json_opt, library_errors,
                      quiet_opt, setup, sibling_uri, source_uri, store_options)
from .output import echo_json, mb


def shrink_summary(report) -> list[str]:
    r = report
    lines = [
        f"Shrunk {r.source} -> {r.target} ({r.method}, {r.metric})",
        f"  rows           {r.rows:,}" + (f" ({r.skipped_invalid:,} invalid row(s) skipped, "
                                             f"first id {r.first_invalid_id!r})"
                                             if r.skipped_invalid else ""),
        f"  vectors        {r.source_dim}-d -> {r.dim}-d {r.vector_dtype}"
        + (f" + {r.code_bytes}-byte {(r.codec or 'pq').upper()} codes" if r.code_bytes
           else ""),
        f"  bytes on disk  {mb(r.source_disk_bytes)} -> {mb(r.target_disk_bytes)}"
        + (f" ({r.disk_compression:.1f}x smaller)" if r.disk_compression else ""),
    ]
    if r.code_bytes:
        lines.append(f"  search memory  {4 * r.source_dim:,} B (float32) -> {r.code_bytes} B "
                     f"({(r.codec or 'pq').upper()}) per vector ({r.search_compression:.0f}x "
                     f"smaller)")
    if r.graph_recall is not None:
        lines.append(f"  graph recall   {fmt_float(r.graph_recall)} "
                     f"(kNN graph of the training sample)")
    if r.recall_at_10 is not None:
        lines.append(f"  recall@10      {fmt_float(r.recall_at_10)} compact search, "
                     f"{fmt_float(r.recall_at_10_rescored)} with --rescore "
                     f"(shortlist {r.shortlist}); "
                     f"{r.eval_queries} rows vs exact search on the original vectors")
    if r.selection:
        lines.append(f"  selection      {r.selection['reason']}")
    if r.qat:
        q = r.qat
        lines.append(f"  QAT            map fine-tuned through its {q['codec'].upper()} "
                     f"{q['code_bytes']} B codes: quantized validation recall@10 "
                     f"{fmt_float(q.get('val_recall_start'))} -> "
                     f"{fmt_float(q.get('val_recall_best'))} (best epoch {q.get('best_epoch')})")
    stages = " | ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items())
    if r.skipped_stages:
        stages += f" | from checkpoint: {', '.join(r.skipped_stages)}"
    lines += [f"  stage times    {stages}", f"  wall time      {r.wall_seconds:.1f} s"]
    return lines


# ------------------------------------------------------------------------------------------ CLI



@click.command()
@click.option("--source", default=None, metavar="URI",
              help="Source URI: lancedb://db/table, lance://x.lance, parquet://data/*.parquet, "
                   "qdrant://host:6333/coll, qdrant+path:///dir/coll.")
@db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--target", default=None, metavar="URI|NAME",
              help="Target URI, or a name in the source's store [default: "
                   "<collection>_tldr<dim>].")
@click.option("--dim", type=click.IntRange(min=1), default=None,
              help="Reduced dimension (required unless --target-recall or --method none/auto; "
                   "auto without it tries --dims).")
@click.option("--method", type=click.Choice(["tldr", "pca", "none", "auto"]), default="tldr",
              show_default=True,
              help="tldr, the pca baseline through the same pipeline, none (the identity map: "
                   "the codec on the original vectors), or auto: TLDR, PCA and the identity map "
                   "with every codec meeting --bytes, the best on held-out rows kept.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Pick the smallest d (and PQ size) whose compact search reaches this "
                   "recall@10 on held-out rows (candidates: --dims).")
@click.option("--dims", default=None, metavar="D,D,...",
              help="Candidate dims for --target-recall [default: 16,32,64,128].")
@click.option("--vector-column", default=None, help="Vector column (Qdrant: named vector).")
@click.option("--id-column", default=None, help="Id column.")
@click.option("--codec", type=click.Choice(["rq", "pq", "opq", "rabitq"]), default="rq",
              show_default=True,
              help="How rows are encoded: rq (the default: residual quantization, the most "
                   "recall per byte; its beam search encodes 1M rows at d=64, 16 B in about 60 "
                   "CPU s), pq (product quantization: several times faster to encode), opq "
                   "(rotation + PQ), rabitq.")
@click.option("--bits", type=int, default=None,
              help="rabitq: bits per dimension, 1, 2 or 4 [default: 1 unless --bytes].")
@click.option("--bytes", "--pq-bytes", "code_bytes", type=click.IntRange(min=0), default=None,
              help="Code bytes per row (--pq-bytes: its old name); pq/opq: a divisor of --dim, "
                   "rq: at most --dim, rabitq: dim x bits / 8 + 4; 0 for none [default: 16].")
@click.option("--neighbors", type=click.IntRange(min=1), default=3, show_default=True,
              help="k of the kNN graph TLDR learns from.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: 6; TLDR stops earlier once validation "
                   "recall stops improving].")
@click.option("--sample", type=click.IntRange(min=2), default=None,
              help="Training rows (a seeded random sample) [default: rows / 5 within "
                   "50,000..100,000, tldr_index.shrink.plan.default_sample].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True,
              help="Where the kNN graph, training and the recall estimate run (auto: the GPU "
                   "when one is seen; cuda without a GPU is an error).")
@click.option("--work-dir", default=None, metavar="DIR",
              help="Checkpoints [default: $TLDR_INDEX_WORK or ./tldr-work, /<target>-<hash>].")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its checkpoints (a plain rerun does too when "
                   "source and parameters are unchanged); refuse when they changed.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing target (and a work dir that cannot be resumed).")
@click.option("--distance", type=click.Choice(["cosine", "l2", "ip"]), default=None,
              help="Distance of the source vectors [default: Lance/Parquet: the vector index's "
                   "metric, else l2; Qdrant: the collection's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of every random choice: equal seeds give equal targets.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training and FAISS [default: the cores that look idle].")
@click.option("--keep-work", is_flag=True, help="Keep the work directory after publishing.")
@click.option("--index-min-rows", type=click.IntRange(min=1), default=None,
              help="Rows from which a Lance or Parquet target gets a code index (IVF over the "
                   "codes, used by search --nprobe/--target-recall); smaller ones are searched "
                   "by the exhaustive scan [default: 20,000, tldr_index.code_index."
                   "INDEX_MIN_ROWS].")
@click.option("--graph-option", "graph_option", multiple=True, metavar="KEY=VALUE",
              help="kNN graph of the sample (repeatable): method=auto|exact|opq, train_rows, "
                   "nprobe, refine (tldr_index.shrink.options.GraphOptions).")
@click.option("--fit-option", "fit_option", multiple=True, metavar="KEY=VALUE",
              help="TLDR fit (repeatable): learning_rate, batch_size, patience (none: no "
                   "early stop), validation_rows (tldr_index.shrink.options.FitOptions).")
@click.option("--qat", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Fine-tune the map through its own codes after the ranking fit "
                   "(quantization-aware training; TLDR with --codec rq or pq). auto: on where it "
                   "measured a gain: rq with dim >= 8 x bytes, pq with dim >= 4 x bytes (so not "
                   "for the default dim 64, 16 B); it adds a fine-tuning phase (about a minute "
                   "on 40k rows). With --method auto or --target-recall each TLDR candidate the "
                   "rule names is fitted and measured with it (auto: beside its plain version, "
                   "labelled +QAT), and the chosen map is written as measured [default: auto].")
@click.option("--skip-invalid", is_flag=True,
              help="Drop rows whose vector has NaN/inf (or is zero, under cosine) and report "
                   "them, instead of failing.")
@api_key_opt
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: scan (validation, id digest, sample) and encode + write every row as "
                   "Ray jobs (Lance/Parquet; needs pip install 'tldr-index[ray]'); kNN and "
                   "training stay on this node, on the sample.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--engine ray: Ray tasks in flight [default: the cluster's CPUs].")
@click.option("--shard-rows", type=click.IntRange(min=1), default=None,
              help="--engine ray: rows per Ray task and per written shard [default: 262144].")
@quiet_opt
@json_opt
@library_errors
def shrink(source, db, collection, target, dim, method, target_recall, dims, vector_column,
           id_column, codec, bits, code_bytes,
           neighbors, epochs, sample, device, work_dir, resume, overwrite, distance, seed,
           threads, keep_work, index_min_rows, graph_option, fit_option, qat, skip_invalid,
           api_key, engine, workers, shard_rows, quiet, json_out):
    """Shrink a collection into a new compact one (reduced vectors + codes + model).

    \b
    Examples:
      tldr-index shrink --collection docs --dim 64
      tldr-index shrink --db ./lancedb --collection docs --dim 64 --target docs_small
      tldr-index shrink --source parquet://data/*.parquet --target parquet://out/ --dim 64
      tldr-index shrink --source qdrant://localhost:6333/docs --dim 64
      tldr-index shrink --collection docs --target-recall 0.9 --method auto
      tldr-index shrink --collection docs --dim 64 --codec rq --bytes 16
      tldr-index shrink --collection docs --method auto --bytes 56
      tldr-index shrink --collection docs --dim 64 --index-min-rows 1000
      tldr-index shrink --collection docs --dim 128 --bytes 8 --qat on
    """
    from ..errors import InvalidParameterError
    from ..shrink import shrink as run_shrink
    from ..shrink.options import FitOptions, GraphOptions, parse_option_pairs
    from ..shrink.plan import check_engine_options, default_target

    if dim is None and target_recall is None and method not in ("none", "auto"):
        raise click.UsageError("Missing option '--dim'.")  # or --target-recall
    engine_options = {k: v for k, v in (("workers", workers), ("shard_rows", shard_rows))
                      if v is not None}
    try:  # the library's rule (tldr_index.shrink.plan), with the CLI's words
        check_engine_options(engine, engine_options)
    except InvalidParameterError:
        raise click.UsageError("--workers and --shard-rows apply to --engine ray only.") from None

    src = source_uri(source, db, collection)
    tgt = None
    if target is not None:
        tgt = target if is_uri(target) else sibling_uri(src, target)
    graph_options = parse_option_pairs(graph_option, GraphOptions, "--graph-option")
    fit_options = parse_option_pairs(fit_option, FitOptions, "--fit-option")
    if qat is not None:
        if fit_options is not None and fit_options.qat not in ("auto", qat):
            raise click.UsageError(f"--qat {qat} and --fit-option qat={fit_options.qat} disagree; "
                                   "pass one of them.")
        fit_options = dataclasses.replace(fit_options or FitOptions(), qat=qat)
    progress = setup(quiet, json_out)
    report = run_shrink(src, tgt, dim=dim, method=method, target_recall=target_recall,
                        dims=int_list(dims, "--dims"), codec=codec, bits=bits,
                        bytes=code_bytes,
                        neighbors=neighbors, epochs=epochs,
                        sample=sample, device=device,
                        work_dir=work_dir, resume=resume, overwrite=overwrite,
                        random_state=seed, progress=progress, vector_column=vector_column,
                        id_column=id_column, keep_work=keep_work, threads=threads,
                        source_options=store_options(src, api_key, distance=distance),
                        sink_options=store_options(
                            tgt or default_target(src, dim),
                            api_key),
                        skip_invalid=skip_invalid, engine=engine,
                        engine_options=engine_options or None,
                        graph_options=graph_options, fit_options=fit_options,
                        **({} if index_min_rows is None else {"index_min_rows": index_min_rows}))
    if json_out:
        echo_json(report.to_dict())
    elif not quiet:
        click.echo("\n".join(shrink_summary(report)))
