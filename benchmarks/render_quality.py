"""Render benchmarks/results/quality.json as the compact table the README shows.

Usage: python benchmarks/render_quality.py   (prints Markdown)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quality.json"
ORDER = ["pca", "pca-whiten", "barlow-linear", "barlow-flinear", "ranking", "ranking+barlow"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__ + "Runs from a clone: it reads a results "
                                 "file, no corpus (benchmarks/quality.py --corpus writes one).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(RESULTS), metavar="PATH",
                    help="quality.json written by benchmarks/quality.py (default: the recorded one)")
    args = ap.parse_args(argv)
    rows = json.loads(Path(args.json).read_text())
    dims = sorted({r["d"] for r in rows if r["method"] in ORDER})
    cell = {(r["method"], r["d"]): r for r in rows}
    print("| recall@10 (20-NN acc.) | " + " | ".join(f"d={d}" for d in dims) + " |")
    print("|---|" + "---|" * len(dims))
    for m in ORDER:
        vals = [cell.get((m, d)) for d in dims]
        if any(vals):
            print(f"| {m} | " + " | ".join(
                f"{v['recall@10']:.3f} ({v['acc@20']:.3f})" if v else "" for v in vals) + " |")
    print()
    pq = sorted({k for r in rows for k in r if k.startswith("pq")})
    print("| after PQ: recall@10 | " + " | ".join(f"{m} d={d}" for m in ("pca", "pca-whiten", "ranking")
                                                  for d in (32, 64) if (m, d) in cell) + " | OPQ on 384-d |")
    print("|---|" + "---|" * (1 + sum((m, d) in cell for m in ("pca", "pca-whiten", "ranking") for d in (32, 64))))
    for key in pq:
        nb = key[2:].split("_")[0]
        opq = next((r[key] for r in rows if r["method"].startswith("opq") and key in r), None)
        vals = [cell[(m, d)].get(key) for m in ("pca", "pca-whiten", "ranking") for d in (32, 64)
                if (m, d) in cell]
        print(f"| {nb} bytes | " + " | ".join("" if v is None else f"{v:.3f}" for v in vals)
              + f" | {'' if opq is None else f'{opq:.3f}'} |")


if __name__ == "__main__":
    main()
