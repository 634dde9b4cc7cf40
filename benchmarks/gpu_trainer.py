"""The trainer alone on a CUDA GPU: seconds per epoch, ms per step and NVML GPU utilisation for a
few batch sizes (TLDR defaults otherwise: ranking objective, 8 epochs, d=64).

Data: 100,000 x 384 structured rows (tests/conftest.py ``make_structured``, 64 clusters in a
32-d latent space, seed 0). Needs a CUDA GPU and ``pynvml`` (nvidia-ml-py).

Usage: python benchmarks/gpu_trainer.py [--batch-sizes 256,1024,4096] [--graphs on,off]
(``--graphs off`` sets ``tldr_index.trainer.CUDA_GRAPHS = False``: eager steps.)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__ + "\nNo corpus needed: the rows are "
                                 "generated, so it runs from a clone (on a CUDA machine).",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--graphs", default="on,off")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("Error: benchmarks/gpu_trainer.py needs a CUDA GPU; torch sees none.")
    import pynvml
    from conftest import make_structured

    from tldr_index import TLDR
    from tldr_index import trainer as trainer_mod

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    X = make_structured(100_000, 384, latent=32, clusters=64, seed=0)
    for bs, graphs in [(b, g) for b in map(int, args.batch_sizes.split(","))
                       for g in args.graphs.split(",")]:
        trainer_mod.CUDA_GRAPHS = graphs == "on"
        samples: list[tuple[float, int]] = []
        steps_seen: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(),
                                pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                time.sleep(0.05)

        def progress(done: int, total: int, info: dict) -> None:
            steps_seen.append((time.perf_counter(), done, total))

        model = TLDR(64, batch_size=bs, random_state=0, device="cuda")
        t = threading.Thread(target=sample)
        t.start()
        t0 = time.perf_counter()
        model.fit(X, progress=progress)
        wall = time.perf_counter() - t0
        stop.set()
        t.join()
        epochs = [r["seconds"] for r in model.history_ if "seconds" in r]
        total = steps_seen[-1][2]
        ts = [t for t, done, _ in steps_seen if 0.1 * total <= done <= 0.9 * total]
        steady = np.mean([u for t, u in samples if ts[0] <= t <= ts[-1]] or [np.nan])
        per = total // len(epochs)  # steps only: from each epoch's first to its last step
        spans = [(steps_seen[e * per][0], steps_seen[(e + 1) * per - 1][0])
                 for e in range(1, len(epochs))]
        in_steps = np.mean([u for t, u in samples if any(a <= t <= b for a, b in spans)]
                           or [np.nan])
        steps = (len(X) - 500) // bs
        print(f"batch {bs}, CUDA graphs {graphs}: fit {wall:.1f} s, epoch seconds "
              f"{[round(e, 2) for e in epochs]}, ms/step {1000 * np.mean(epochs) / steps:.2f}, GPU utilisation over the fit "
              f"{np.mean([u for _, u in samples]):.0f}%, steady state (10-90% of the steps, "
              f"validation between epochs included) {steady:.0f}%, inside the step loops of epochs 2+ "
              f"{in_steps:.0f}%, validation recall@10 "
              f"{model.fit_info_['val_recall_best']:.4f}"
              f" (best epoch {model.best_epoch_})", flush=True)


if __name__ == "__main__":
    main()
