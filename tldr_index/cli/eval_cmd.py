"""``tldr-index eval`` and ``tldr-index sweep``: recall of a compact collection against exact
search (with baselines), and the recall/size frontier of several configurations."""

from __future__ import annotations

import click

from .options import (db_opt, int_list, is_uri, library_errors, quiet_opt, setup, sibling_uri,
                      source_uri, target_uri)
from .output import write_outputs


def eval_uris(source, db, collection, target) -> tuple[str | None, str]:
    """(source URI or None: the one recorded in the target, target URI) of eval."""
    src = source_uri(source, db, collection) if (source or collection) else None
    if is_uri(target):
        return src, target
    return src, (sibling_uri(src, target) if src else target_uri(target, db, None))


@click.command("eval")
@click.option("--source", default=None, metavar="URI",
              help="Original collection [default: the source recorded in the target].")
@db_opt
@click.option("--collection", default=None, help="Original table in --db (instead of --source).")
@click.option("--target", required=True, metavar="URI|NAME",
              help="Compact collection written by shrink (a URI or a name beside the source).")
@click.option("--queries", default="1000", show_default=True, metavar="N|FILE.npy",
              help="Held-out rows to draw as queries, or a .npy (n, D) file of query vectors.")
@click.option("--k", "ks", default="1,10,100", show_default=True, metavar="K,K,...",
              help="The k of recall@k.")
@click.option("--shortlist", "shortlists", default=None, metavar="S,S,...",
              help="Shortlist sizes for search --rescore [default: max(20 max(k), 200)].")
@click.option("--baselines", default="auto", show_default=True, metavar="auto|all|none|B,B,...",
              help="Side by side: pca, pca-whiten (at the target's d), and codecs of the "
                   "original vectors as stores offer them: pq, opq, rq (at the target's bytes), "
                   "rabitq (1, 2, 4 bits: rabitq1, rabitq2, rabitq4), sign, sq8, sq4 (at their "
                   "own sizes), raw and rescored. auto: pca, pca-whiten, pq, opq, rabitq1, sign; "
                   "all: every one (RQ trains for minutes on 384-d).")
@click.option("--store-quantizers", default="none", show_default=True, metavar="Q,Q,...|all",
              help="Qdrant source: Qdrant's own quantizers on the original vectors, measured on "
                   "Qdrant Edge, raw and rescored: bq1, bq1.5, bq2, sq8, tq1, tq2, tq4, pq "
                   "(at the target's bytes), all, or none.")
@click.option("--latency-queries", type=click.IntRange(min=0), default=50, show_default=True,
              help="Single-query search calls timed for p50/p99 (0: skip).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: recall@10 against bytes per vector, one line per method.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON ('-': stdout instead of the table).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the query draw and of the baselines' fits.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for FAISS [default: the cores that look idle].")
@quiet_opt
@library_errors
def eval_cmd(source, db, collection, target, queries, ks, shortlists, baselines,
             store_quantizers, latency_queries, plot, json_path, seed, threads, quiet):
    """Recall of a compact collection against exact search on the original vectors, with PCA,
    whitened PCA and what the store offers on the original vectors (PQ, OPQ, RQ, RaBitQ, sign
    bits, SQ) side by side.

    \b
    Example:
      tldr-index eval --db ./lancedb --collection docs --target docs_tldr64 \\
          --queries 1000 --k 1,10,100 --plot eval.png --json eval.json
    """
    from ..evaluate import evaluate
    from ..plots import require_matplotlib

    if plot:
        require_matplotlib("plot")
    src, tgt = eval_uris(source, db, collection, target)
    progress = setup(quiet, json_path == "-")
    q = int(queries) if queries.strip().isdigit() else queries
    report = evaluate(tgt, source=src, queries=q, k=int_list(ks, "--k"),
                      shortlists=int_list(shortlists, "--shortlist"), baselines=baselines,
                      latency_queries=latency_queries, random_state=seed, threads=threads,
                      progress=progress, store_quantizers=store_quantizers)
    write_outputs(report, report.results, plot, json_path, quiet,
                   title=f"{report.target} vs alternatives")


@click.command("sweep")
@click.option("--source", default=None, metavar="URI", help="Source URI (instead of --collection).")
@db_opt
@click.option("--collection", default=None, help="Source table in --db (instead of --source).")
@click.option("--dims", default=None, metavar="D,D,...",
              help="Candidate dims [default: 16,32,64,128 below the source's dimension].")
@click.option("--bytes", "--pq-bytes", "code_bytes", default=None, metavar="B,B,...",
              help="Code sizes per d (--pq-bytes: the old name; those the codec meets at d) "
                   "[default: 16 or the nearest size below].")
@click.option("--codec", "codecs", default="rq", show_default=True, metavar="C,C,...",
              help="Codecs per d: rq, pq, opq, rabitq (default rq, as shrink).")
@click.option("--bits", type=int, default=None, help="rabitq: bits per dimension (1, 2, 4).")
@click.option("--method", type=click.Choice(["tldr", "pca", "none", "auto"]), default="tldr",
              show_default=True,
              help="auto: TLDR and PCA side by side plus the identity map with every codec "
                   "meeting the budget; none: the identity map only; the best one chosen.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Name the smallest configuration whose compact search reaches this "
                   "recall@10; exit code 6 when none does.")
@click.option("--criterion", type=click.Choice(["pq", "rescored", "float"]), default="pq",
              show_default=True, help="Which recall@10 decides: PQ codes, --rescore, float.")
@click.option("--sample", type=click.IntRange(min=2), default=100_000, show_default=True,
              help="Training rows (a seeded random sample); the rest are query candidates.")
@click.option("--neighbors", type=click.IntRange(min=1), default=3, show_default=True,
              help="k of the kNN graph TLDR learns from.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="TLDR epochs per candidate [default: 8].")
@click.option("--queries", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out rows used as queries.")
@click.option("--qat", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="Quantization-aware training of the TLDR candidates, as shrink --qat: auto "
                   "fits those shrink --qat auto would fine-tune (rq with dim >= 8 x bytes, pq "
                   "with dim >= 4 x bytes; tldr_index.shrink.qat_rule) through their codes too "
                   "and measures them beside the plain map (labelled +QAT); on: "
                   "every TLDR candidate, refused where one cannot; off: none. Each QAT "
                   "candidate costs its fine-tune (about 81 s at dim 128, 8 B on 40k rows).")
@click.option("--work-dir", default=None, metavar="DIR",
              help="Keeps the scan and the kNN graph for later sweeps "
                   "[default: ./tldr-work/sweep-<name>-<hash>].")
@click.option("--distance", type=click.Choice(["cosine", "l2", "ip"]), default=None,
              help="Distance of the source vectors [default: Lance/Parquet: the vector index's "
                   "metric, else l2; Qdrant: the collection's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of every random choice (sample, graph, training, PQ, queries).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training and FAISS [default: the cores that look idle].")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of the recall/size frontier.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON ('-': stdout instead of the table).")
@quiet_opt
@library_errors
def sweep_cmd(source, db, collection, dims, code_bytes, codecs, bits, method, target_recall,
              criterion, sample,
              neighbors, epochs, queries, qat, work_dir, distance, seed, threads, plot,
              json_path, quiet):
    """Train several dims (and codecs, code sizes) from one kNN graph and print the recall/size
    frontier.

    \b
    Example:
      tldr-index sweep --db ./lancedb --collection docs --dims 16,32,64,128 \\
          --pq-bytes 8,16,32 --target-recall 0.9 --plot sweep.png
    """
    from ..plots import require_matplotlib
    from ..shrink.select import sweep

    if plot:
        require_matplotlib("plot")
    src = source_uri(source, db, collection)
    progress = setup(quiet, json_path == "-")
    result = sweep(src, dims=int_list(dims, "--dims"), bytes=int_list(code_bytes, "--bytes"),
                   codecs=[c.strip() for c in codecs.split(",") if c.strip()], bits=bits,
                   method=method, target_recall=target_recall, criterion=criterion,
                   neighbors=neighbors, epochs=epochs, sample=sample, eval_queries=queries,
                   work_dir=work_dir, random_state=seed, threads=threads, progress=progress,
                   source_options={"distance": distance} if distance else None,
                   fit_options={"qat": qat})
    write_outputs(result, result.results, plot, json_path, quiet,
                   title=f"sweep of {result.source}")
    if target_recall is not None and result.chosen is None:
        from ..shrink.select import EXIT_NOT_REACHED

        shown = not quiet and json_path != "-"  # the table's summary line holds the reason
        why = "; see above" if shown else ": " + result.reason.rstrip(".")
        click.echo(f"Error: --target-recall {target_recall} is not reached (exit code "
                   f"{EXIT_NOT_REACHED}){why}.", err=True)
        click.get_current_context().exit(EXIT_NOT_REACHED)
