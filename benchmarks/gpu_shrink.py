"""``shrink`` stage by stage on a GPU machine, against the same run on its CPU.

Made for the lent GPU machines (no LanceDB wheels there): the source is a Parquet dataset, the
target a Parquet dataset, both on the machine's local disk. Each configuration runs in a child
process (``--child``) that calls :func:`tldr_index.pipeline.shrink` with a progress recorder, so
the table gets per-stage wall times, the child's peak RSS and, on CUDA, the GPU utilisation
sampled through NVML every 0.1 s: averaged over each stage, and over the trainer's steady state
(from 10% to 90% of its optimisation steps, validation passes between epochs included).

Data (``--data``):
  corpus     the shared corpus (``--corpus``, 40k x 384 MiniLM rows) tiled with noise of std 0.03
             and re-normalised, like benchmarks/shrink.py (float32).
  synthetic  structured rows of low intrinsic dimension: 256 Gaussian clusters in a 64-d latent
             space, mapped linearly to D and L2-normalised, plus noise (float16, generated on the
             GPU when there is one; seeded).

Usage (on the GPU machine; ``--devices`` lists what to compare):
    python benchmarks/gpu_shrink.py --rows 1000000 --dim-in 384 --data corpus --devices cuda,cpu
    python benchmarks/gpu_shrink.py --rows 10000000 --dim-in 768 --data synthetic --devices cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._corpus import CORPUS_HELP, SAMPLE  # noqa: E402

STAGES = ("scan", "knn", "train", "encode", "write", "verify", "publish")


# ------------------------------------------------------------------------------------ data

def synthetic_blocks(rows: int, dim: int, seed: int = 0, block: int = 262_144):
    """Yield float16 blocks of structured unit-norm rows (see the module docstring)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)
    latent, clusters = 64, 256
    centers = torch.randn(clusters, latent, generator=g, device=dev) * 2.0
    A = torch.randn(latent, dim, generator=g, device=dev) / latent ** 0.5
    for s in range(0, rows, block):
        n = min(block, rows - s)
        lab = torch.randint(0, clusters, (n,), generator=g, device=dev)
        z = centers[lab] + torch.randn(n, latent, generator=g, device=dev)
        x = z @ A + 0.05 * torch.randn(n, dim, generator=g, device=dev)
        x = torch.nn.functional.normalize(x, dim=1)
        yield s, x.half().cpu().numpy()


def tiles(rows: int, X: np.ndarray, seed: int = 0, sigma: float = 0.03):
    """Yield ``(start, block)`` of the tiled corpus (copy 0 exact, later copies with Gaussian
    noise of std ``sigma``, re-normalised)."""
    rng = np.random.default_rng(seed)
    for s in range(0, rows, len(X)):
        b = X[:min(rows, s + len(X)) - s].copy()
        if s:
            b += sigma * rng.standard_normal(b.shape, dtype=np.float32)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
        yield s, b


def corpus_blocks(rows: int, corpus: Path):
    X = np.load(corpus)["X"].astype(np.float32)
    for s, b in tiles(rows, X):
        for o in range(0, len(b), 65_536):
            yield s + o, b[o:o + 65_536]


def make_source(path: Path, rows: int, dim: int, data: str, corpus: Path) -> float:
    """Write the Parquet source once (files of ~1M rows, no compression); returns seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors.arrow_utils import numpy_to_fsl

    done = path / "_complete.json"
    if done.exists() and json.loads(done.read_text()) == {"rows": rows, "dim": dim, "data": data}:
        return 0.0
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t0 = time.perf_counter()
    blocks = synthetic_blocks(rows, dim) if data == "synthetic" else corpus_blocks(rows, corpus)
    writer, part, in_part = None, 0, 0
    for s, b in blocks:
        vec = numpy_to_fsl(b)
        batch = pa.RecordBatch.from_arrays(
            [pa.array(np.arange(s, s + len(b), dtype=np.int64)), vec,
             pa.array((np.arange(s, s + len(b)) % 1000).astype(np.int32))],
            names=["id", "vector", "label"])
        if writer is None:
            writer = pq.ParquetWriter(path / f"part-{part:05d}.parquet", batch.schema,
                                      compression="none")
        writer.write_batch(batch, row_group_size=65_536)
        in_part += len(b)
        if in_part >= 1_000_000:
            writer.close()
            writer, part, in_part = None, part + 1, 0
    if writer is not None:
        writer.close()
    done.write_text(json.dumps({"rows": rows, "dim": dim, "data": data}))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ child

class Sampler(threading.Thread):
    """GPU utilisation (percent of time a kernel ran, NVML) every ``period`` seconds."""

    def __init__(self, period: float = 0.1):
        super().__init__(daemon=True)
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            u = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            self.samples.append((time.perf_counter(), u.gpu))
            time.sleep(self.period)

    def mean(self, t0: float, t1: float) -> float | None:
        v = [u for t, u in self.samples if t0 <= t <= t1]
        return float(np.mean(v)) if v else None


def child(spec: dict) -> dict:
    from tldr_index.pipeline import shrink
    from tldr_index.progress import Progress

    class Recorder(Progress):
        def __init__(self):
            self.begin_t, self.end_t, self.steps = {}, {}, []

        def begin(self, stage, total=None, unit="rows"):
            self.begin_t.setdefault(stage, time.perf_counter())

        def update(self, stage, completed, total=None):
            if stage == "train" and total:
                self.steps.append((time.perf_counter(), completed, total))

        def end(self, stage, seconds, note=""):
            self.end_t[stage] = time.perf_counter()

    rec = Recorder()
    sampler = None
    if spec["device"] == "cuda":
        sampler = Sampler()
        sampler.start()
    t0 = time.perf_counter()
    rep = shrink(spec["source"], spec["target"], dim=spec["dim"], pq_bytes=spec["pq_bytes"],
                 sample=spec["sample"], device=spec["device"], work_dir=spec["work"],
                 overwrite=True, random_state=0, progress=rec)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "report": rep.to_dict(),
           "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if sampler is not None:
        sampler.stop.set()
        gpu = {s: sampler.mean(rec.begin_t[s], rec.end_t[s]) for s in STAGES
               if s in rec.begin_t and s in rec.end_t}
        steady = None
        if rec.steps:
            total = rec.steps[-1][2]
            ts = [t for t, done, _ in rec.steps if 0.1 * total <= done <= 0.9 * total]
            if len(ts) > 1:
                steady = sampler.mean(ts[0], ts[-1])
        import torch
        out.update(gpu_util=gpu, train_steady_gpu_util=steady,
                   gpu_name=torch.cuda.get_device_name(0))
    return out


def run_child(spec: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ report

def markdown(results: list[dict], args, command: str, machine: str, build_s: dict) -> str:
    lines = ["# shrink on a GPU machine: Parquet source -> compact Parquet target", "",
             f"Command: `{command}`  ", f"Date: {dt.datetime.now().isoformat(timespec='minutes')}  ",
             f"Machine: {machine}  ",
             f"Settings: d={args.dim}, {args.pq_bytes}-byte PQ, training sample {args.sample:,} "
             "rows, TLDR defaults (ranking objective, 8 epochs, batch 256), shrink's own recall "
             "estimate on its evaluation queries; source and target on the machine's local "
             "disk.", "",
             "| rows x D | data | device | wall | rows/s | peak RSS | "
             + " | ".join(STAGES) + " | recall@10 (rescored) | GPU busy: knn / train / train "
             "steady state / encode |",
             "|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|"]
    for r in results:
        rep, st = r["report"], r["report"]["stage_seconds"]
        g = r.get("gpu_util") or {}
        pct = (lambda v: "-" if v is None else f"{v:.0f}%")
        busy = (" / ".join(pct(g.get(s)) for s in ("knn", "train")) + " / "
                + pct(r.get("train_steady_gpu_util")) + " / " + pct(g.get("encode"))
                if r["device"] == "cuda" else "-")
        lines.append(
            f"| {r['rows']:,} x {r['dim_in']} | {r['data']} | {r['device']} | "
            f"{r['wall_s'] / 60:.1f} min | {r['rows'] / r['wall_s']:,.0f} | {r['rss_gb']:.1f} GB | "
            + " | ".join(f"{st.get(s, 0):.0f} s" for s in STAGES)
            + f" | {rep['recall_at_10']:.3f} ({rep['recall_at_10_rescored']:.3f}) | {busy} |")
    lines += ["", "Source build times (not part of shrink): "
              + ", ".join(f"{k}: {v:.0f} s" for k, v in build_s.items()), ""]
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
            f" GiB RAM, {gpu}, torch {torch.__version__}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim-in", type=int, default=384)
    ap.add_argument("--data", choices=["corpus", "synthetic"], default="corpus")
    ap.add_argument("--corpus", default=str(SAMPLE), metavar="PATH", help=CORPUS_HELP)
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pq-bytes", type=int, default=16)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--root", default="/tmp/tldr_gpu_bench")
    ap.add_argument("--out", default=None, help="Markdown file (default: print only)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    command = "python benchmarks/gpu_shrink.py " + shlex.join(argv if argv is not None
                                                              else sys.argv[1:])
    root = Path(args.root)
    src_dir = root / f"src_{args.data}_{args.rows}_{args.dim_in}"
    build = make_source(src_dir, args.rows, args.dim_in, args.data, Path(args.corpus))
    print(f"source {src_dir} ready ({build:.0f} s)", flush=True)
    results = []
    for device in args.devices.split(","):
        spec = {"source": f"parquet://{src_dir}", "target": f"parquet://{root}/target_{device}",
                "work": str(root / f"work_{device}"), "dim": args.dim,
                "pq_bytes": args.pq_bytes, "sample": args.sample, "device": device}
        r = run_child(spec)
        r.update(rows=args.rows, dim_in=args.dim_in, data=args.data, device=device)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "report"}), flush=True)
        print(f"stage seconds: {r['report']['stage_seconds']}", flush=True)
        md = markdown(results, args, command, machine_line(), {src_dir.name: build})
        if args.out:
            Path(args.out).write_text(md)
        shutil.rmtree(root / f"work_{device}", ignore_errors=True)
        shutil.rmtree(root / f"target_{device}", ignore_errors=True)
    print(md)


if __name__ == "__main__":
    main()
