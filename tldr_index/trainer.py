"""The mini-batch trainer: kNN pairs -> encoder updates, with epoch checkpoints and validation.

Memory: a batch of ``2 * batch_size`` rows plus the model; the data are gathered by index from a
:class:`~tldr_index.vectors.Vectors` source one batch ahead (a background thread), so nothing grows
with the number of rows. Time per epoch: ``n_train / batch_size`` steps of O(B^2 (D + d)) for the
ranking objective, O(B (d H + H^2 L) + B H^2) for Barlow Twins with an ``mlp-L-H`` projector.

On CUDA the training rows are copied to the GPU once when they fit (see ``RESIDENT_FRACTION``;
the trainer only ever sees the bounded training sample) and each batch is gathered there from int64
positions; otherwise rows are read on the host one batch ahead into pinned memory and copied
asynchronously. The loss is summed on the device, so a step never waits for the GPU.

All randomness of epoch ``e`` comes from ``np.random.default_rng([seed, e])``, so a run resumed
from the checkpoint of epoch ``e - 1`` replays exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifact import atomic_write_bytes
from .errors import CheckpointError
from .losses import barlow_twins_loss, cross_similarity, ranking_loss, similarity_logits
from .optim import LARS, lr_factor, split_decay
from .vectors import Vectors

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
#: On CUDA the training rows are copied to the GPU once when they take at most this fraction of
#: the free GPU memory (200k x 768 float32 = 614 MB); batches are then gathered there by index.
RESIDENT_FRACTION = 0.25
RESIDENT_BLOCK_ROWS = 65_536
#: On CUDA, with resident rows, kNN pairs and AdamW, one optimisation step (gather, loss, backward,
#: optimizer) is captured once as a CUDA graph and replayed: one launch per step instead of ~100
#: small ones, which left the GPU idle most of the time (benchmarks/results/gpu.md).
CUDA_GRAPHS = True


def _pinned(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """``t`` in page-locked memory when ``pin`` (for asynchronous host-to-device copies)."""
    return t.pin_memory() if pin else t


@dataclass
class TrainConfig:
    objective: str            # "barlow" | "ranking" | "ranking+barlow"
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str            # "lars" | "adamw"
    weight_decay: float
    warmup_epochs: float
    lambd: float
    loss_scale: float
    teacher_temperature: float
    barlow_weight: float
    pairs: str                # "knn" | "gaussian"
    noise_std: float
    metric: str
    seed: int
    device: str
    #: stop when the validation recall has not risen by ``min_delta`` over the best so far for
    #: this many epochs in a row (None: run every epoch); needs a validator
    patience: int | None = None
    min_delta: float = 0.0
    #: distinct kNN neighbours of each anchor in a step's batch (ranking objectives): a step
    #: holds ``batch_size`` anchors and ``batch_size * neighbors_per_anchor`` neighbours
    neighbors_per_anchor: int = 1
    #: reduced-space hard negatives of each anchor in a step's batch (ranking objective, kNN
    #: pairs): at the start of every epoch the current map's top ``hard_pool`` neighbours of each
    #: training row are searched (exact, in the reduced space), those not in the row's kNN graph
    #: kept, and ``hard_negatives`` of them drawn per anchor (a random anchor fills a row with too
    #: few); a step then holds ``batch_size * (1 + neighbors_per_anchor + hard_negatives)`` rows
    hard_negatives: int = 0
    hard_pool: int = 10
    #: weight averaging: after every step an exponential moving average of the model's tensors
    #: (decay ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``) is updated; validation, the
    #: best state and the final model are the average's (0: off, the raw weights). Cost: one
    #: multiply-add per parameter per step
    ema_decay: float = 0.0


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0                 # 0 = the initial map (e.g. PCA) was never beaten
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stopped_epoch: int | None = None    # the epoch after which early stopping ended the run


def stale_epochs(history: list[dict], min_delta: float) -> int:
    """Epochs at the end of ``history`` (records with ``val_recall``; the first is the initial
    map) whose recall did not beat the best before them by ``min_delta``. A pure function of the
    history, so a resumed run stops where an uninterrupted one would."""
    scores = [h["val_recall"] for h in history if h.get("val_recall") is not None]
    if not scores:
        return 0
    best, stale = scores[0], 0
    for r in scores[1:]:
        stale = 0 if r >= best + min_delta else stale + 1
        best = max(best, r)
    return stale


class Validator:
    """Recall@``k`` of a map on held-out queries against a validation database (in memory).

    Ground truth is exact in the original space; the map's neighbours are searched in the reduced
    space with the same metric. Cost per call: encoding ``n_db`` rows + ``n_q x n_db`` dot products.
    """

    def __init__(self, db: np.ndarray, query_pos: np.ndarray, metric: str, k: int = 10):
        self.db, self.query_pos, self.metric = db, np.asarray(query_pos), metric
        self.k = min(k, len(db) - 1)
        self.truth = self._topk(db, db[self.query_pos])

    def _topk(self, base: np.ndarray, q: np.ndarray) -> np.ndarray:
        s = cross_similarity(torch.from_numpy(q), torch.from_numpy(base), self.metric)
        s[torch.arange(len(q)), torch.from_numpy(self.query_pos)] = -torch.inf  # not its own
        # torch.topk: ~10x faster than a numpy argpartition of the (n_q, n_db) matrix (measured)
        return torch.topk(s, self.k, dim=1).indices.numpy()

    def score(self, encode: Callable[[np.ndarray], np.ndarray]) -> float:
        z = encode(self.db)
        found = self._topk(z, z[self.query_pos])
        hits = (found[:, :, None] == self.truth[:, None, :]).any(2).sum()
        return float(hits) / (len(found) * self.k)


def _fingerprint(cfg: TrainConfig, rows: np.ndarray, neighbors: np.ndarray, extra: dict) -> str:
    h = hashlib.sha256(json.dumps({**asdict(cfg), **extra}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(neighbors, dtype=np.int64).tobytes())
    return h.hexdigest()


class Trainer:
    """Trains ``encoder`` (and ``projector`` for Barlow Twins) on kNN pairs of ``vectors``.

    ``neighbors[i]`` holds positions (into ``vectors``) of the neighbours of row ``i``; ``-1`` pads
    rows with fewer neighbours. ``anchors`` are the rows that start pairs (validation queries are
    left out of it by the caller).
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module | None, cfg: TrainConfig,
                 device: torch.device, teacher_scale: float = 1.0, noise_scale: float = 0.0):
        self.cfg, self.device = cfg, device
        self.encoder = encoder.to(device)
        self.projector = projector.to(device) if projector is not None else None
        self.teacher_scale = teacher_scale
        self.noise_scale = noise_scale
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(teacher_scale / cfg.teacher_temperature)),
                                                   device=device))
        self.optimizer = self._make_optimizer()
        self._ema_state: dict[str, torch.Tensor] | None = None  # set by a resumed checkpoint

    # ----------------------------------------------------------------------------------------
    def _modules(self) -> nn.ModuleList:
        return nn.ModuleList([m for m in (self.encoder, self.projector) if m is not None])

    def _make_optimizer(self, capturable: bool = False) -> torch.optim.Optimizer:
        """LARS or AdamW. ``capturable``: AdamW with its step counts and learning rates as device
        tensors, so a CUDA graph can replay ``step()`` (:meth:`_set_lr` fills the rates)."""
        cfg = self.cfg
        decay, no_decay = split_decay(self._modules())
        no_decay = no_decay + ([self.log_scale] if "ranking" in cfg.objective else [])
        if cfg.optimizer == "lars":
            return LARS([{"params": decay, "lars": True, "base_lr": cfg.learning_rate},
                         {"params": no_decay, "lars": False, "weight_decay": 0.0,
                          "base_lr": cfg.learning_rate * 0.024}],
                        lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if capturable:
            lr = [torch.tensor(cfg.learning_rate, device=self.device) for _ in range(2)]
            return torch.optim.AdamW([{"params": decay, "base_lr": cfg.learning_rate, "lr": lr[0]},
                                      {"params": no_decay, "weight_decay": 0.0,
                                       "base_lr": cfg.learning_rate, "lr": lr[1]}],
                                     lr=lr[0], weight_decay=cfg.weight_decay, capturable=True,
                                     foreach=True)
        return torch.optim.AdamW([{"params": decay, "base_lr": cfg.learning_rate},
                                  {"params": no_decay, "weight_decay": 0.0,
                                   "base_lr": cfg.learning_rate}],
                                 lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def _set_lr(self, factor: float) -> None:
        for g in self.optimizer.param_groups:
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(g["base_lr"] * factor)  # in place: a captured step reads it
            else:
                g["lr"] = g["base_lr"] * factor

    def _graphable(self, resident: torch.Tensor | None) -> bool:
        return (CUDA_GRAPHS and resident is not None and self.device.type == "cuda"
                and self.cfg.pairs == "knn" and self.cfg.optimizer == "adamw")

    def _capture(self, resident: torch.Tensor) -> tuple | None:
        """Capture one optimisation step as a CUDA graph; returns ``(graph, a, b, loss)`` (the
        static index inputs and the static loss) or None when capture fails (then the eager loop
        runs). Three warm-up steps on a side stream (needed before capture) move the weights and
        the optimizer state; both are put back in place afterwards, so the run is the same run."""
        dev, B = self.device, self.cfg.batch_size
        a = torch.arange(B, device=dev) % resident.shape[0]
        b = torch.arange(B * (self.cfg.neighbors_per_anchor + self.cfg.hard_negatives),
                         device=dev) % resident.shape[0]
        model = self.state_tensors()
        opt = {p: {k: v.clone() for k, v in st.items()} for p, st in self.optimizer.state.items()}

        def step() -> torch.Tensor:
            loss = self._step_loss(resident.index_select(0, a), resident.index_select(0, b))
            loss.backward()
            self.optimizer.step()
            return loss.detach()

        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.optimizer.zero_grad(set_to_none=True)
                    step()
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                loss = step()
            out = (graph, a, b, loss)
        except Exception as exc:  # pragma: no cover - depends on the GPU stack
            log.warning("CUDA graph capture failed (%s); training step by step instead.", exc)
            out = None
        with torch.no_grad():  # back to the state before the warm-up, in place
            self.load_state_tensors(model)
            for p, st in self.optimizer.state.items():
                for k, v in st.items():
                    if not torch.is_tensor(v):
                        continue
                    if p in opt:
                        v.copy_(opt[p][k])
                    else:  # a fresh run: AdamW's lazily created state starts at zero
                        v.zero_()
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Model parameters and buffers (encoder, projector, reduced-space temperature): copies of
        :meth:`_live_tensors`."""
        return {k: v.detach().clone() for k, v in self._live_tensors().items()}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
        if self.projector is not None:
            self.projector.load_state_dict(
                {k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        with torch.no_grad():
            self.log_scale.copy_(state["log_scale"])

    def _live_tensors(self) -> dict[str, torch.Tensor]:
        """The model's tensors of :meth:`state_tensors`, not copied (views of the live ones)."""
        out = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        if self.projector is not None:
            out.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        out["log_scale"] = self.log_scale.detach()
        return out

    @torch.no_grad()
    def _update_ema(self, ema: dict[str, torch.Tensor], live: dict[str, torch.Tensor],
                    step: int) -> None:
        """``ema <- decay * ema + (1 - decay) * live`` for floating tensors (others copied), with
        ``decay = min(ema_decay, (1 + step) / (10 + step))``."""
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        for k, v in live.items():
            if v.is_floating_point():
                ema[k].mul_(decay).add_(v, alpha=1 - decay)
            else:
                ema[k].copy_(v)

    # ----------------------------------------------------------------------------------------
    def _epoch_pairs(self, anchors: np.ndarray, neighbors: np.ndarray,
                     rng: np.random.Generator, hard: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Row positions ``(a, b)`` of every pair of one epoch: ``a`` is ``(n_steps, batch_size)``
        (last incomplete batch dropped), ``b`` ``(n_steps, batch_size * m)`` with ``m =
        neighbors_per_anchor`` (anchor-major: the ``m`` neighbours of ``a[s, i]`` are
        ``b[s, i*m:(i+1)*m]``); ``b`` is None for ``pairs="gaussian"``.

        Vectorised: one permutation and one uniform draw per anchor for the whole epoch (the same
        random stream, in the same order, as one draw per step). With ``m > 1`` the ``m``
        neighbours are drawn without replacement from the row's valid ones (a row with fewer
        than ``m`` fills the rest with itself). With ``hard`` (the ``(n_rows, pool)`` table of
        :meth:`mine_hard`, ``-1`` padded) and ``hard_negatives = h > 0``, ``h`` of the anchor's
        hard negatives (without replacement; a random anchor where it has fewer) follow the
        neighbours: ``b`` is then ``(n_steps, batch_size * (m + h))``, the ``B * m`` neighbours
        first. Those draws come after every other draw of the epoch, so ``h = 0`` and ``h > 0``
        pick the same anchors and neighbours.
        """
        B, m = self.cfg.batch_size, self.cfg.neighbors_per_anchor
        perm = anchors[rng.permutation(len(anchors))]
        n_steps = len(perm) // B
        a = perm[:n_steps * B].reshape(n_steps, B)
        if self.cfg.pairs == "gaussian":
            return a, None
        nb = neighbors[a]                                   # (n_steps, B, k)
        valid = (nb >= 0).sum(2)
        if m == 1:
            pick = np.floor(rng.random(a.shape) * np.maximum(valid, 1)).astype(np.int64)
            b = np.take_along_axis(nb, pick[..., None], 2)[..., 0]
            b = np.where(valid > 0, b, a)  # a row with no neighbour pairs with itself
        else:
            b = self._draw(nb, m, rng)                          # (n_steps, B, m)
            b = np.where(b >= 0, b, a[..., None]).reshape(n_steps, B * m)
        h = self.cfg.hard_negatives
        if h == 0 or hard is None:
            return a, b
        hn = self._draw(hard[a], h, rng)                        # (n_steps, B, h)
        fill = anchors[rng.integers(0, len(anchors), hn.shape)]
        hn = np.where(hn >= 0, hn, fill)
        return a, np.concatenate([b.reshape(n_steps, -1), hn.reshape(n_steps, B * h)], axis=1)

    @staticmethod
    def _draw(cand: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` of the valid (``>= 0``) entries of each row of ``cand`` (last axis) without
        replacement, uniformly; ``-1`` where a row has fewer than ``n``."""
        keys = np.where(cand >= 0, rng.random(cand.shape), np.inf)
        pick = np.argsort(keys, axis=-1)[..., :n]
        out = np.take_along_axis(cand, pick, -1)
        return np.where(np.take_along_axis(keys, pick, -1) < np.inf, out, -1)

    def mine_hard(self, vectors: Vectors, neighbors: np.ndarray,
                  chunk_rows: int = 16_384) -> np.ndarray:
        """The current map's false neighbours: ``(n_rows, hard_pool)`` positions of each row's
        top ``hard_pool`` rows in the reduced space (exact search, the trainer's metric, own row
        excluded) that are not in its kNN graph row ``neighbors[i]``, ``-1`` in their place.

        Cost: one encoding pass over the rows (``n_rows x D x d`` multiply-adds, streamed in
        blocks of ``chunk_rows``) plus an exact ``n_rows x n_rows x d / 2`` search in the
        reduced space (39,000 random rows at d=64, ``knn_graph(method="exact")``, one thread:
        6.8 CPU s, measured at load 11 on the shared 2-core machine).
        """
        from .knn import knn_graph

        self.encoder.eval()
        parts = []
        with torch.no_grad():
            for _, block in vectors.iter_chunks(chunk_rows):
                parts.append(self.encoder(torch.from_numpy(block).to(self.device)).cpu().numpy())
        self.encoder.train()
        z = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        pool = min(self.cfg.hard_pool, vectors.n_rows - 1)
        found = np.asarray(knn_graph(z, pool, method="exact", metric=self.cfg.metric,
                                     device=self.device.type).neighbors, dtype=np.int64)
        true = (found[:, :, None] == neighbors[:, None, :]).any(2)
        return np.where(true, -1, found)

    def _host_batches(self, vectors: Vectors, a: np.ndarray, b: np.ndarray | None,
                      rng: np.random.Generator):
        """Yield ``(x, y)`` float32 tensors read on the host (run one batch ahead in a thread);
        in pinned memory on CUDA, so the copy to the device is asynchronous."""
        pin = self.device.type == "cuda"
        for s in range(len(a)):
            if b is None:
                x = vectors.take(a[s])
                noise = rng.standard_normal(x.shape, dtype=np.float32) * self.noise_scale
                yield _pinned(torch.from_numpy(x), pin), _pinned(torch.from_numpy(x + noise), pin)
            else:
                both = torch.from_numpy(vectors.take(np.concatenate([a[s], b[s]])))
                yield _pinned(both[:len(a[s])], pin), _pinned(both[len(a[s]):], pin)

    def _resident_batches(self, resident: torch.Tensor, a: np.ndarray, b: np.ndarray | None,
                          rng: np.random.Generator):
        """Yield ``(x, y)`` gathered on the GPU: the epoch's positions go over once, then each
        step is two ``index_select`` calls with no host work (gaussian noise is drawn on the host,
        as on the CPU path, so both paths see the same pairs)."""
        dev = self.device
        at = torch.from_numpy(a).to(dev)
        bt = None if b is None else torch.from_numpy(b).to(dev)
        for s in range(len(a)):
            x = resident.index_select(0, at[s])
            if bt is None:
                noise = rng.standard_normal(tuple(x.shape), dtype=np.float32) * self.noise_scale
                yield x, x + torch.from_numpy(noise).to(dev, non_blocking=True)
            else:
                yield x, resident.index_select(0, bt[s])

    def _resident(self, vectors: Vectors) -> torch.Tensor | None:
        """The training rows as one CUDA tensor when they fit in ``RESIDENT_FRACTION`` of the free
        GPU memory (read in blocks of ``RESIDENT_BLOCK_ROWS``); ``None`` on CPU or when too big."""
        if self.device.type != "cuda":
            return None
        need = vectors.n_rows * vectors.dim * 4
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > RESIDENT_FRACTION * free:
            log.info("training rows (%.0f MiB) stay on the host: more than %.0f%% of the free GPU "
                     "memory", need / 2**20, 100 * RESIDENT_FRACTION)
            return None
        out = torch.empty((vectors.n_rows, vectors.dim), dtype=torch.float32, device=self.device)
        for start, block in vectors.iter_chunks(RESIDENT_BLOCK_ROWS):
            out[start:start + len(block)].copy_(torch.from_numpy(block))
        log.info("training rows resident on %s (%.0f MiB)", self.device, need / 2**20)
        return out

    def _step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.objective == "barlow":
            za = self.projector(self.encoder(x))
            zb = self.projector(self.encoder(y))
            return barlow_twins_loss(za, zb, cfg.lambd, cfg.loss_scale)
        xy = torch.cat([x, y])
        z = self.encoder(xy)
        loss = ranking_loss(xy, z, self.log_scale, teacher_temperature=cfg.teacher_temperature,
                            metric=cfg.metric, teacher_scale=self.teacher_scale)
        if cfg.objective == "ranking+barlow":
            B = len(x)
            p = self.projector(z)
            loss = loss + cfg.barlow_weight * barlow_twins_loss(p[:B], p[B:], cfg.lambd,
                                                                 cfg.loss_scale)
        return loss

    # ----------------------------------------------------------------------------------------
    def fit(self, vectors: Vectors, anchors: np.ndarray, neighbors: np.ndarray, *,
            validator: Validator | None = None, encode: Callable | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            fingerprint_extra: dict | None = None,
            progress: Callable[[int, int, dict], None] | None = None) -> TrainResult:
        """Run all epochs; returns the history and the best state on the validator.

        With ``checkpoint_dir`` the state is written atomically after every epoch; ``resume``
        continues from it (and raises :class:`CheckpointError` if it belongs to another run).
        """
        cfg = self.cfg
        steps_per_epoch = len(anchors) // cfg.batch_size
        total = steps_per_epoch * cfg.epochs
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        fp = _fingerprint(cfg, anchors, neighbors, fingerprint_extra or {})
        result = TrainResult()
        start_epoch = 0
        if validator is not None:
            result.best_score = validator.score(encode)
            result.best_state = self.state_tensors()
            result.history.append({"epoch": 0, "val_recall": result.best_score})
            log.info("epoch 0 (initial map): validation recall@%d %.4f", validator.k,
                     result.best_score)
        resident = self._resident(vectors)
        if self._graphable(resident):
            self.optimizer = self._make_optimizer(capturable=True)
        ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
        if resume and ckpt is not None and ckpt.exists():
            start_epoch = self._load_checkpoint(ckpt, fp, result)
            log.info("resumed from %s after epoch %d", ckpt, start_epoch)
            if start_epoch and self._should_stop(result, start_epoch):
                start_epoch = cfg.epochs  # the interrupted run had already stopped early
        ema = live = None
        if cfg.ema_decay > 0:
            ema = self._ema_state if self._ema_state is not None else self.state_tensors()
            live = self._live_tensors()
        graphed = self._capture(resident) if self._graphable(resident) and \
            start_epoch < cfg.epochs else None
        executor = ThreadPoolExecutor(max_workers=1)
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                self._modules().train()
                rng = np.random.default_rng([cfg.seed, epoch])
                hard = None
                if cfg.hard_negatives and cfg.pairs == "knn":
                    th = time.perf_counter()
                    hard = self.mine_hard(vectors, neighbors)
                    log.info("epoch %d: %.1f hard negatives per row mined in %.1f s", epoch + 1,
                             float((hard >= 0).sum(1).mean()), time.perf_counter() - th)
                pos_a, pos_b = self._epoch_pairs(anchors, neighbors, rng, hard)
                if graphed is not None:
                    it = zip(torch.from_numpy(pos_a).to(self.device),
                             torch.from_numpy(pos_b).to(self.device))
                    fut = None
                elif resident is not None:
                    it = self._resident_batches(resident, pos_a, pos_b, rng)
                    fut = None
                else:
                    it = self._host_batches(vectors, pos_a, pos_b, rng)
                    fut = executor.submit(next, it, None)
                # the loss stays on the device (one sync per epoch, not per step)
                loss_sum = torch.zeros((), device=self.device)
                for s in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + s
                    if graphed is not None:  # copy the pair positions in, replay the step
                        graph, sa, sb, sloss = graphed
                        ia, ib = next(it)
                        sa.copy_(ia)
                        sb.copy_(ib)
                        self._set_lr(lr_factor(step, total, warmup))
                        graph.replay()
                        loss_sum += sloss
                        if ema is not None:
                            self._update_ema(ema, live, step)
                        if progress is not None:
                            progress(step + 1, total, {"epoch": epoch + 1})
                        continue
                    if fut is None:
                        x, y = next(it)
                    else:
                        x, y = fut.result()
                        fut = executor.submit(next, it, None)
                        x = x.to(self.device, non_blocking=True)
                        y = y.to(self.device, non_blocking=True)
                    self._set_lr(lr_factor(step, total, warmup))
                    loss = self._step_loss(x, y)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    loss_sum += loss.detach()
                    if ema is not None:
                        self._update_ema(ema, live, step)
                    if progress is not None:
                        progress(step + 1, total, {"epoch": epoch + 1})
                if fut is not None:
                    fut.result()
                mean_loss = float(loss_sum) / steps_per_epoch if steps_per_epoch else None
                rec = {"epoch": epoch + 1, "loss": mean_loss,
                       "seconds": time.perf_counter() - t0}
                if not np.isfinite(rec["loss"] or 0.0):
                    raise FloatingPointError(
                        f"Training diverged at epoch {epoch + 1} (loss {rec['loss']}); lower "
                        f"'learning_rate' (now {cfg.learning_rate}).")
                if validator is not None:
                    self._modules().eval()
                    raw = None
                    if ema is not None:  # validate (and keep) the average, then train on
                        raw = self.state_tensors()
                        self.load_state_tensors(ema)
                    rec["val_recall"] = validator.score(encode)
                    if rec["val_recall"] > result.best_score:
                        result.best_score, result.best_epoch = rec["val_recall"], epoch + 1
                        result.best_state = self.state_tensors()
                    if raw is not None:
                        self.load_state_tensors(raw)
                result.history.append(rec)
                log.info("epoch %d/%d: loss %.5f%s (%.1f s)", epoch + 1, cfg.epochs, rec["loss"],
                         f", validation recall {rec['val_recall']:.4f}" if "val_recall" in rec else "",
                         rec["seconds"])
                if ckpt is not None:
                    self._save_checkpoint(ckpt, fp, epoch + 1, result, ema)
                if self._should_stop(result, epoch + 1):
                    break
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        if ema is not None:  # the final model is the average
            self.load_state_tensors(ema)
        self._modules().eval()
        return result

    def _should_stop(self, result: TrainResult, epoch: int) -> bool:
        """True (and ``result.stopped_epoch`` set) when early stopping ends the run after
        ``epoch``: ``patience`` epochs in a row without a gain of ``min_delta``."""
        cfg = self.cfg
        if cfg.patience is None or epoch >= cfg.epochs or len(result.history) < 2:
            return False
        if stale_epochs(result.history, cfg.min_delta) < cfg.patience:
            return False
        result.stopped_epoch = epoch
        log.info("early stopping after epoch %d/%d: validation recall did not gain %.4f over "
                 "%.4f for %d epoch(s)", epoch, cfg.epochs, cfg.min_delta, result.best_score,
                 cfg.patience)
        return True

    # ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, fp: str, epoch: int, result: TrainResult,
                         ema: dict[str, torch.Tensor] | None = None) -> None:
        from safetensors.torch import save

        tensors = {f"model.{k}": v.cpu().contiguous() for k, v in self.state_tensors().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()})
        if result.best_state is not None:
            tensors.update({f"best.{k}": v.cpu().contiguous() for k, v in result.best_state.items()})
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"opt.{pid}.{key}"] = val.cpu().contiguous()
        groups = [{k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()}
                  for g in opt["param_groups"]]
        meta = {"fingerprint": fp, "epoch": epoch, "history": result.history,
                "best_epoch": result.best_epoch, "best_score": result.best_score,
                "param_groups": groups}
        atomic_write_bytes(path, save(tensors, metadata={"json": json.dumps(meta)}))

    def _load_checkpoint(self, path: Path, fp: str, result: TrainResult) -> int:
        from safetensors import safe_open

        capturable = bool(self.optimizer.param_groups[0].get("capturable", False))

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["json"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise CheckpointError(f"Checkpoint '{path}' cannot be read ({exc}); delete it or run "
                                  f"without resume=True.") from None
        if meta["fingerprint"] != fp:
            raise CheckpointError(
                f"Checkpoint '{path}' belongs to another run (different data, graph or "
                f"parameters); delete it or run without resume=True.")
        self.load_state_tensors({k[6:]: v.to(self.device) for k, v in tensors.items()
                                 if k.startswith("model.")})
        best = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
        self._ema_state = {k[4:]: v.to(self.device) for k, v in tensors.items()
                           if k.startswith("ema.")} or None
        result.best_state = best or result.best_state
        result.best_epoch, result.best_score = meta["best_epoch"], meta["best_score"]
        result.history = meta["history"]
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                on_device = key != "step" or capturable  # capturable steps live on the GPU
                state.setdefault(int(pid), {})[key] = v.to(self.device) if on_device else v
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        for g in self.optimizer.param_groups:
            if "capturable" in g:
                g["capturable"] = capturable
            if capturable:  # the rates a captured step reads, as device tensors again
                g["lr"] = torch.tensor(float(g["lr"]), device=self.device)
        return int(meta["epoch"])


def noise_scale_for(vectors: Vectors, rows: np.ndarray, noise_std: float) -> float:
    """Gaussian-pair noise: ``noise_std`` times the average per-dimension std of the data."""
    x = vectors.take(rows)
    return float(noise_std * np.sqrt(x.var(0).mean()))


def teacher_scale_for(vectors: Vectors, rows: np.ndarray, metric: str) -> float:
    """Scale that makes L2/inner-product teacher similarities unit-free (1 for cosine)."""
    if metric == "cosine":
        return 1.0
    x = torch.from_numpy(vectors.take(rows))
    s = -similarity_logits(x, "l2") if metric == "l2" else (x * x).sum(1)
    n = len(x)
    mean = float(s.sum() / (n * (n - 1))) if metric == "l2" else float(s.mean())
    return 1.0 / max(mean, 1e-12)


def encode_with(encoder: nn.Module, device: torch.device, metric: str,
                chunk_rows: int = 8192) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy encoding function in eval mode (used for validation)."""
    def encode(x: np.ndarray) -> np.ndarray:
        encoder.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(x), chunk_rows):
                outs.append(encoder(torch.from_numpy(x[s:s + chunk_rows]).to(device)).cpu())
        return torch.cat(outs).numpy()
    return encode


