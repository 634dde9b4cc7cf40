"""The trainer alone on a CUDA GPU: seconds per epoch, ms per step and NVML GPU utilisation for a
few batch sizes (TLDR defaults otherwise: ranking objective, 8 epochs, d=64).

Data: 100,000 x 384 structured rows (tests/conftest.py ``make_structured``, 64 clusters in a
32-d latent space, seed 0). Needs a CUDA GPU and ``pynvml`` (nvidia-ml-py).

Usage: python benchmarks/gpu_trainer.py [--batch-sizes 256,1024,4096]
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
    import pynvml
    from conftest import make_structured

    from tldr_index import TLDR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    args = ap.parse_args(argv)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    X = make_structured(100_000, 384, latent=32, clusters=64, seed=0)
    for bs in map(int, args.batch_sizes.split(",")):
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                time.sleep(0.05)

        model = TLDR(64, batch_size=bs, random_state=0, device="cuda")
        t = threading.Thread(target=sample)
        t.start()
        t0 = time.perf_counter()
        model.fit(X)
        wall = time.perf_counter() - t0
        stop.set()
        t.join()
        epochs = [r["seconds"] for r in model.history_ if "seconds" in r]
        steps = (len(X) - 500) // bs
        print(f"batch {bs}: fit {wall:.1f} s, epoch seconds {[round(e, 2) for e in epochs]}, "
              f"ms/step {1000 * np.mean(epochs) / steps:.2f}, GPU utilisation over the fit "
              f"{np.mean(samples):.0f}%, validation recall@10 {model.fit_info_['val_recall_best']:.4f}"
              f" (best epoch {model.best_epoch_})", flush=True)


if __name__ == "__main__":
    main()
