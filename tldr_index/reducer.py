"""The TLDR estimator: a learned (by default linear) map D -> d that keeps neighbourhoods."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state

from .validation import check_bool, check_choice, check_float, check_int
from .artifact import atomic_write_bytes
from .base import METRICS, BaseReducer
from .errors import InvalidInputError, InvalidParameterError
from .model import (build_encoder, build_projector, fold_linear, init_linear_from, parse_encoder,
                    parse_projector)
from .pca import moments, pca_map
from .qat import check_params as check_qat
from .qat import fine_tune as qat_fine_tune
from .qat import model_tensors as qat_tensors
from .qat import restore as qat_restore
from .trainer import (TrainConfig, Trainer, Validator, encode_with, noise_scale_for,
                      teacher_scale_for)
from .vectors import SubsetVectors, as_vectors

log = logging.getLogger(__name__)

OBJECTIVES = ("ranking", "barlow", "ranking+barlow")
#: early stopping: epochs in a row without a validation gain of ``MIN_DELTA`` before the fit stops
PATIENCE = 2
MIN_DELTA = 1e-3
#: held-out validation queries (issue 17: 2,000 instead of 500; with 500 the best-epoch pick was
#: noisy enough to keep an earlier, worse epoch)
VALIDATION_ROWS = 2000

# per-objective defaults for the parameters left at None (see the class docstring)
_DEFAULTS = {
    # issue 17: 6 epochs at 4e-3 instead of 8 at 3e-3 (-25% steps); on the dev corpus (exact graph,
    # 2,000 validation rows) recall@10 at d=64 was 0.669 vs 0.673, 5 epochs at 5e-3 0.668
    "ranking": dict(epochs=6, batch_size=256, learning_rate=4e-3, optimizer="adamw",
                    weight_decay=0.0, warmup_epochs=0.0),
    "ranking+barlow": dict(epochs=8, batch_size=256, learning_rate=3e-3, optimizer="adamw",
                           weight_decay=0.0, warmup_epochs=0.0),
    # the paper: LARS, base lr 0.2 x B/256, 10 warm-up epochs of 100, weight decay 1e-6
    "barlow": dict(epochs=20, batch_size=1024, learning_rate=None, optimizer="lars",
                   weight_decay=1e-6, warmup_epochs=None),
}


def resolve_device(device: str, owner: str = "TLDR") -> torch.device:
    """``"auto"`` -> CUDA when torch sees a GPU, else CPU; ``"cuda"`` without one is an error."""
    check_choice(device, "device", ("auto", "cpu", "cuda"), owner=owner)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(
            f"The 'device' parameter of {owner} is 'cuda' but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='auto' or 'cpu'.")
    return torch.device(device)


def resolve_n_jobs(n_jobs: Any, owner: str = "TLDR") -> int | None:
    """``n_jobs`` as the ``threads`` of :func:`tldr_index.threads.thread_limit`: None (idle
    cores / the enclosing limit), -1 (every core) or an int >= 1."""
    if n_jobs is None:
        return None
    if isinstance(n_jobs, (int, np.integer)) and not isinstance(n_jobs, bool) and \
            (n_jobs == -1 or n_jobs >= 1):
        import os

        return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    raise InvalidParameterError(
        f"The 'n_jobs' parameter of {owner} must be None, -1 or an int in the range [1, inf). "
        f"Got {n_jobs!r} instead.")


class EpochBars:
    """A ``progress(done_steps, total_steps, info)`` for :meth:`Trainer.fit` that shows one bar
    per epoch (``epoch 3/8``, steps, rate, ETA) on a :class:`tldr_index.progress.Progress` and
    passes every call on to ``then``."""

    def __init__(self, bars: Any, epochs: int,
                 then: Callable[[int, int, dict], None] | None = None):
        self.bars, self.epochs, self.then = bars, epochs, then
        self.epoch = 0

    def _stage(self, epoch: int) -> str:
        return f"epoch {epoch}/{self.epochs}"

    def __call__(self, done: int, total: int, info: dict) -> None:
        if self.then is not None:
            self.then(done, total, info)
        epoch = int(info.get("epoch", 1))
        per = max(1, total // self.epochs)
        if epoch != self.epoch:
            if self.epoch:
                self.bars.end(self._stage(self.epoch), 0.0)
            self.bars.begin(self._stage(epoch), per, "steps")
            self.epoch = epoch
        self.bars.update(self._stage(epoch), done - (epoch - 1) * per)


class TLDR(BaseReducer):
    """Twin Learning for Dimensionality Reduction, with a ranking-preserving objective.

    Learns ``f: R^D -> R^d`` from pairs (a row, one of its ``n_neighbors`` nearest neighbours):

    * ``objective="ranking"`` (default): within each batch of anchors and one neighbour each, the
      softmax of the reduced similarities is fitted (KL divergence) to the softmax of the original
      similarities (temperature ``teacher_temperature``; the reduced temperature is learnt). The
      linear map starts from PCA (``init="pca"``). No projector.
    * ``objective="barlow"``: the paper's TLDR, the Barlow Twins loss on ``projector(f(x))`` and
      ``projector(f(y))``, LARS with warm-up and cosine decay.
    * ``objective="ranking+barlow"``: the sum, the Barlow Twins term weighted by ``barlow_weight``.

    After training, ``linear``/``flinear`` encoders are folded into ``components_`` (d x D) and
    ``bias_``: encoding costs the same as PCA. With ``early_stopping`` the epoch (0 = the initial
    PCA map) with the best recall@10 on held-out validation rows is kept, and the fit stops once
    the recall has stopped improving (``patience``).

    Parameters
    ----------
    n_components : int
        Output dimension d (1 <= d < D).
    n_neighbors : int, default 3
        k of the kNN graph; each step pairs a row with one of its k neighbours, drawn uniformly.
    neighbors_per_anchor : int, default 1
        m distinct neighbours of each anchor (drawn uniformly from its k) in a step's batch:
        ``batch_size`` anchors plus ``batch_size * m`` neighbours, so a step costs
        O((batch_size (1 + m))^2 (D + d)). ``objective="ranking"`` with kNN pairs only.
        Measured on the dev corpus (benchmarks/results/fit_probe_own.md, seeds 0 and 1): k=10,
        m=3, 128 anchors gained 0.9-1.1 recall@10 points over the default (k=3, m=1, 256
        anchors) at d=64, 0.2-0.3 at d=32, 0.4 at d=128, for ~1.4x the fit's CPU seconds.
    hard_negatives : int, default 0
        h reduced-space false neighbours of each anchor in a step's batch (``objective="ranking"``
        with kNN pairs): at the start of every epoch the current map's exact top ``hard_pool``
        neighbours of every training row are searched in the reduced space, those in the row's
        kNN graph dropped, and h of the rest drawn per anchor (a random anchor where fewer are
        left). A step then holds ``batch_size * (1 + m + h)`` rows; each epoch adds one encoding
        pass and an exact ``n_train^2 x d / 2`` search (see :meth:`Trainer.mine_hard
        <tldr_index.trainer.Trainer.mine_hard>`).
    hard_pool : int, default 10
        Reduced-space neighbours searched per row for ``hard_negatives``.
    ema_decay : float in [0, 1), default 0 (off)
        Weight averaging: an exponential moving average of the map (decay ``min(ema_decay,
        (1 + t) / (10 + t))`` at step t) is what validation scores, early stopping keeps and the
        fit returns. Cost: one multiply-add per parameter per step.
    encoder : str, default "linear"
        "linear", "flinear-L-H" or "mlp-L-H".
    projector : str, default "mlp-2-2048"
        Barlow Twins projector ("mlp-L-H" or "linear-H"); unused by ``objective="ranking"``.
    objective : {"ranking", "barlow", "ranking+barlow"}, default "ranking"
    metric : {"cosine", "ip", "l2"}, default "cosine"
        Similarity of the original vectors (kNN graph, ranking teacher, validation).
    pairs : {"knn", "gaussian"}, default "knn"
        "gaussian" is the TLDR_G baseline: y = x + noise (``noise_std`` x the data's mean std).
    init : {"pca", "random"}, default "pca" for linear encoders
    epochs, batch_size, learning_rate, optimizer, weight_decay, warmup_epochs : None = per objective
        ranking: 6 epochs, 256 anchors (+256 neighbours), AdamW 4e-3, no decay, no warm-up;
        barlow: 20 epochs, 1024, LARS 0.2 x B/256, decay 1e-6, warm-up 10% of epochs.
        A cosine decay to 0.1% follows the warm-up in both.
    lambd, loss_scale : Barlow Twins off-diagonal weight (3.9e-3) and loss scale (1/32).
    teacher_temperature : float, default 0.05
    barlow_weight : float, default 1.0 (``ranking+barlow`` only)
    max_train_rows : int, default 200_000
        Rows beyond this are sub-sampled (uniformly, without replacement) for the graph and training.
    early_stopping : bool, default True
    patience : int or None, default 2
        With ``early_stopping``: stop when ``patience`` epochs in a row did not raise the
        validation recall@10 by ``min_delta`` over the best so far (None: run every epoch).
    min_delta : float, default 1e-3
    validation_rows : int, default 2000 queries (at most a tenth of the training rows; against a
        database of up to 20,000 training rows)
    knn_method : {"auto", "exact", "opq"}, default "auto"; knn_params : dict of knn_graph options.
    device : {"auto", "cpu", "cuda"}
    random_state : int, RandomState instance or None
    chunk_rows : int, default 16384 rows per streamed block.
    n_jobs : int or None, default None
        CPU threads for torch and FAISS during ``fit`` (restored afterwards), the CLI's
        ``--threads`` policy: None picks the cores that look idle (``cpu_count - 1-minute load
        average``, at least 1; inside a tldr-index command, its ``--threads``), -1 every core.
        On a shared machine, threads beyond the idle cores spin-wait: see
        :mod:`tldr_index.threads`.
    verbose : bool or int, default False
        Rich progress bars on stderr during ``fit``: the kNN graph (rows) and each epoch (steps),
        with rate and ETA.
    qat : {None, "pq", "opq", "rq", "rabitq"}, default None
        Quantization-aware fine-tuning after the ranking fit (see :mod:`tldr_index.qat`): the
        ranking loss with the database side quantized at ``qat_bytes`` bytes, for ``qat_epochs``
        epochs: ``"pq"`` product-quantized (a seeded random rotation folded into
        ``components_``, the codebook learned; ``qat_bytes`` divides ``n_components``), ``"opq"``
        (the product's OPQ codec as the start, its rotation kept, its PQ codebooks learned;
        ``qat_bytes`` divides ``n_components``), ``"rq"`` residual-quantized (the product's RQ
        codec as the start, its codebooks learned; ``qat_bytes`` at most ``n_components``),
        ``"rabitq"`` (straight-through the product's RaBitQ codec, its centre refitted each
        epoch; ``qat_bytes`` the RaBitQ code size ``n_components x bits / 8 + 4``, bits 1, 2,
        4). Sets ``qat_codebook_`` (the codec's learned array; the product's codec holding it:
        :func:`tldr_index.qat.codec_for`) and ``qat_rotation_`` (PQ: already folded in; RQ: the
        identity; OPQ, RaBitQ: the codec's rotation). Linear encoders only.

    Memory: O(batch_size x D + D^2 + max_train_rows x n_neighbors) -- independent of N for
    file-backed inputs. Time: one streamed pass (PCA init), the kNN graph, then
    ``epochs x n_train / batch_size`` steps.
    """

    method = "tldr"

    def __init__(self, n_components: int = 64, *, n_neighbors: int = 3,
                 neighbors_per_anchor: int = 1, hard_negatives: int = 0, hard_pool: int = 10,
                 ema_decay: float = 0.0, encoder: str = "linear",
                 projector: str = "mlp-2-2048", objective: str = "ranking", metric: str = "cosine",
                 pairs: str = "knn", noise_std: float = 0.1, init: str = "auto",
                 epochs: int | None = None, batch_size: int | None = None,
                 learning_rate: float | None = None, optimizer: str | None = None,
                 weight_decay: float | None = None, warmup_epochs: float | None = None,
                 lambd: float = 3.9e-3, loss_scale: float = 1 / 32,
                 teacher_temperature: float = 0.05, barlow_weight: float = 1.0,
                 qat: str | None = None, qat_bytes: int = 16, qat_epochs: int = 4,
                 max_train_rows: int = 200_000, early_stopping: bool = True,
                 patience: int | None = PATIENCE, min_delta: float = MIN_DELTA,
                 validation_rows: int = VALIDATION_ROWS, knn_method: str = "auto",
                 knn_params: dict | None = None, device: str = "auto",
                 random_state: Any = None, chunk_rows: int = 16_384, n_jobs: int | None = None,
                 verbose: bool | int = False):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.neighbors_per_anchor = neighbors_per_anchor
        self.hard_negatives = hard_negatives
        self.hard_pool = hard_pool
        self.ema_decay = ema_decay
        self.encoder = encoder
        self.projector = projector
        self.objective = objective
        self.metric = metric
        self.pairs = pairs
        self.noise_std = noise_std
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.lambd = lambd
        self.loss_scale = loss_scale
        self.teacher_temperature = teacher_temperature
        self.barlow_weight = barlow_weight
        self.qat, self.qat_bytes, self.qat_epochs = qat, qat_bytes, qat_epochs
        self.max_train_rows = max_train_rows
        self.early_stopping = early_stopping
        self.patience = patience
        self.min_delta = min_delta
        self.validation_rows = validation_rows
        self.knn_method = knn_method
        self.knn_params = knn_params
        self.device = device
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------
    def _resolved(self) -> dict[str, Any]:
        """Validate parameters and fill the per-objective defaults (does not mutate self)."""
        o = "TLDR"
        check_int(self.n_components, "n_components", low=1, owner=o)
        check_int(self.n_neighbors, "n_neighbors", low=1, owner=o)
        enc = parse_encoder(self.encoder, o)
        check_choice(self.objective, "objective", OBJECTIVES, owner=o)
        proj = parse_projector(self.projector, o) if "barlow" in self.objective else None
        check_choice(self.metric, "metric", METRICS, owner=o)
        check_choice(self.pairs, "pairs", ("knn", "gaussian"), owner=o)
        check_int(self.neighbors_per_anchor, "neighbors_per_anchor", low=1, owner=o)
        self._check_batch_extra("neighbors_per_anchor", 1, "n_neighbors", self.n_neighbors)
        check_int(self.hard_negatives, "hard_negatives", low=0, owner=o)
        check_int(self.hard_pool, "hard_pool", low=1, owner=o)
        self._check_batch_extra("hard_negatives", 0, "hard_pool", self.hard_pool)
        if check_float(self.ema_decay, "ema_decay", low=0, high=1, owner=o) == 1:
            raise InvalidParameterError(
                "The 'ema_decay' parameter of TLDR must be a float in the range [0, 1) (0: no "
                "weight averaging). Got 1 instead.")
        check_float(self.noise_std, "noise_std", low=0, low_inclusive=False, owner=o)
        check_choice(self.init, "init", ("auto", "pca", "random"), owner=o)
        if self.init == "pca" and enc.kind != "linear":
            raise InvalidParameterError(
                f"The 'init' parameter of TLDR can be 'pca' only with encoder='linear'. Got "
                f"init='pca' with encoder={self.encoder!r} instead.")
        r = dict(_DEFAULTS[self.objective])
        for name in ("epochs", "batch_size", "learning_rate", "optimizer", "weight_decay",
                     "warmup_epochs"):
            if getattr(self, name) is not None:
                r[name] = getattr(self, name)
        check_int(r["epochs"], "epochs", low=1, owner=o)
        check_int(r["batch_size"], "batch_size", low=2, owner=o)
        check_choice(r["optimizer"], "optimizer", ("adamw", "lars"), owner=o)
        if r["learning_rate"] is None:
            r["learning_rate"] = 0.2 * r["batch_size"] / 256
        check_float(r["learning_rate"], "learning_rate", low=0, low_inclusive=False, owner=o)
        check_float(r["weight_decay"], "weight_decay", low=0, owner=o)
        if r["warmup_epochs"] is None:
            r["warmup_epochs"] = 0.1 * r["epochs"]
        check_float(r["warmup_epochs"], "warmup_epochs", low=0, high=r["epochs"], owner=o)
        check_float(self.lambd, "lambd", low=0, owner=o)
        check_float(self.loss_scale, "loss_scale", low=0, low_inclusive=False, owner=o)
        check_float(self.teacher_temperature, "teacher_temperature", low=0, low_inclusive=False,
                    owner=o)
        check_float(self.barlow_weight, "barlow_weight", low=0, owner=o)
        check_int(self.max_train_rows, "max_train_rows", low=2, owner=o)
        check_bool(self.early_stopping, "early_stopping", owner=o)
        check_int(self.patience, "patience", low=1, owner=o, allow_none=True)
        check_float(self.min_delta, "min_delta", low=0, owner=o)
        check_int(self.validation_rows, "validation_rows", low=1, owner=o)
        check_choice(self.knn_method, "knn_method", ("auto", "exact", "opq"), owner=o)
        if self.knn_params is not None and not isinstance(self.knn_params, dict):
            raise InvalidParameterError(f"The 'knn_params' parameter of TLDR must be a dict or "
                                        f"None. Got {self.knn_params!r} instead.")
        check_int(self.chunk_rows, "chunk_rows", low=1, owner=o)
        r["threads"] = resolve_n_jobs(self.n_jobs, owner=o)
        if isinstance(self.verbose, bool) or (isinstance(self.verbose, (int, np.integer))
                                              and self.verbose >= 0):
            pass
        else:
            raise InvalidParameterError(
                f"The 'verbose' parameter of TLDR must be a bool or an int >= 0. Got "
                f"{self.verbose!r} instead.")
        r["encoder"], r["projector"] = enc, proj
        r["init"] = ("pca" if enc.kind == "linear" else "random") if self.init == "auto" else self.init
        return r

    def _check_batch_extra(self, name: str, base: int, bound_name: str, bound: int) -> None:
        """``name`` (rows added to each anchor's batch) is at most ``bound`` and above ``base``
        only with the ranking objective on kNN pairs."""
        value = getattr(self, name)
        if value > bound:
            raise InvalidParameterError(
                f"The {name!r} parameter of TLDR must be at most {bound_name} ({bound}). Got "
                f"{value} instead.")
        if value > base and (self.objective != "ranking" or self.pairs != "knn"):
            raise InvalidParameterError(
                f"The {name!r} parameter of TLDR can exceed {base} only with "
                f"objective='ranking' and pairs='knn'. Got {value} with "
                f"objective={self.objective!r}, pairs={self.pairs!r} instead.")

    def fit(self, X: Any, y: Any = None, *, graph: Any = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: Callable[[int, int, dict], None] | None = None) -> "TLDR":
        """Learn the map from ``X`` (float array, ``np.memmap``, vector store path or Vectors).

        Parameters
        ----------
        graph : KnnGraph or (n_train, >=k) int array, optional
            A precomputed neighbour graph over the training rows (reuse across several fits).
        checkpoint_dir : path, optional
            Where the kNN graph and a per-epoch checkpoint are written (atomically).
        resume : bool
            Continue from ``checkpoint_dir`` if a checkpoint of this same run exists.
        progress : callable(done_steps, total_steps, info), optional

        Runs with ``n_jobs`` torch / FAISS threads (see the class docstring), shows bars on
        stderr with ``verbose``.
        """
        from .threads import thread_limit
        from .progress import RichProgress

        r = self._resolved()
        bars = RichProgress() if self.verbose else None
        try:
            with thread_limit(r["threads"], owner="TLDR"):
                return self._fit(X, r, graph, checkpoint_dir, resume, progress, bars)
        finally:
            if bars is not None:
                bars.close()

    def _fit(self, X: Any, r: dict, graph: Any, checkpoint_dir: str | Path | None, resume: bool,
             progress: Callable[[int, int, dict], None] | None, bars: Any) -> "TLDR":
        t_start = time.perf_counter()
        v = as_vectors(X)
        N, D = v.shape
        d, k = self.n_components, self.n_neighbors
        if d >= D:
            raise InvalidParameterError(
                f"The 'n_components' parameter of TLDR must be an int in the range [1, {D - 1}] "
                f"(smaller than the input dimension D={D}). Got {d} instead.")
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        rng = np.random.default_rng([seed, 0x5A3])
        n_train = min(N, self.max_train_rows)
        rows = np.sort(rng.choice(N, n_train, replace=False)) if n_train < N else None
        train = SubsetVectors(v, rows) if rows is not None else v
        if k >= n_train:
            raise InvalidParameterError(
                f"The 'n_neighbors' parameter of TLDR must be an int in the range "
                f"[1, {n_train - 1}] (fewer than the {n_train} training rows). Got {k} instead.")
        check_qat(self.qat, self.qat_bytes, self.qat_epochs, n_components=d, n_train=n_train,
                  foldable=r["encoder"].foldable, encoder=self.encoder)
        # validation queries (held out from the anchors) and their database
        n_val = min(self.validation_rows, n_train // 10) if self.early_stopping else 0
        n_anchor = n_train - n_val
        if r["batch_size"] > n_anchor:
            raise InvalidParameterError(
                f"The 'batch_size' parameter of TLDR must be at most the number of training rows "
                f"({n_anchor}{f' after holding out {n_val} validation rows' if n_val else ''}). "
                f"Got {r['batch_size']} instead; lower batch_size or pass more rows.")
        device = resolve_device(self.device)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

        # 1. one streamed pass: moments (PCA init) + NaN/inf check of file-backed inputs
        t0 = time.perf_counter()
        mean, evals, evecs = moments(train, self.chunk_rows)
        t_pca = time.perf_counter() - t0

        # 2. the kNN graph over the training rows
        t0 = time.perf_counter()
        if bars is not None:
            bars.begin("knn", n_train, "rows")
        neighbors, graph_info = self._graph(
            train, graph, k, seed, ckpt_dir, resume,
            None if bars is None else (lambda done, total: bars.update("knn", done, total)))
        t_knn = time.perf_counter() - t0
        if bars is not None:
            bars.end("knn", t_knn)

        # 3. model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_encoder(r["encoder"], D, d)
            projector = build_projector(r["projector"], d) if r["projector"] else None
        if r["init"] == "pca":
            init_linear_from(encoder, *pca_map(mean, evals, evecs, d))
        val_rng = np.random.default_rng([seed, 0xA11])
        perm = val_rng.permutation(n_train)
        val_q = np.sort(perm[:n_val])
        anchors = np.sort(perm[n_val:])
        validator = None
        if n_val:
            db_rows = np.sort(np.union1d(val_q, perm[n_val:n_val + max(0, 20_000 - n_val)]))
            validator = Validator(train.take(db_rows), np.searchsorted(db_rows, val_q), self.metric)
        sample = np.sort(rng.choice(n_train, min(n_train, 2048), replace=False))
        cfg = TrainConfig(objective=self.objective, epochs=r["epochs"], batch_size=r["batch_size"],
                          learning_rate=r["learning_rate"], optimizer=r["optimizer"],
                          weight_decay=r["weight_decay"], warmup_epochs=r["warmup_epochs"],
                          lambd=self.lambd, loss_scale=self.loss_scale,
                          teacher_temperature=self.teacher_temperature,
                          barlow_weight=self.barlow_weight, pairs=self.pairs,
                          noise_std=self.noise_std, metric=self.metric, seed=seed,
                          device=device.type,
                          patience=self.patience if validator is not None else None,
                          min_delta=float(self.min_delta),
                          neighbors_per_anchor=self.neighbors_per_anchor,
                          hard_negatives=self.hard_negatives, hard_pool=self.hard_pool,
                          ema_decay=float(self.ema_decay))
        trainer = Trainer(encoder, projector, cfg, device,
                          teacher_scale=teacher_scale_for(train, sample, self.metric),
                          noise_scale=noise_scale_for(train, sample, self.noise_std))

        # 4. train
        t0 = time.perf_counter()
        result = trainer.fit(train, anchors, neighbors, validator=validator,
                             encode=encode_with(trainer.encoder, device, self.metric),
                             checkpoint_dir=ckpt_dir, resume=resume,
                             fingerprint_extra={"encoder": self.encoder, "n_components": d,
                                                "init": r["init"], "N": N, "D": D,
                                                "projector": self.projector},
                             progress=progress if bars is None else
                             EpochBars(bars, r["epochs"], progress))
        t_train = time.perf_counter() - t0
        if bars is not None:
            bars.close()
        if result.best_state is not None and self.early_stopping:
            trainer.load_state_tensors(result.best_state)
        encoder = trainer.encoder.cpu().eval()

        # 5. export
        self.n_features_in_, self.n_components_ = D, d
        self.seed_ = seed
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch if validator is not None else r["epochs"]
        if r["encoder"].foldable:
            self.components_, self.bias_ = fold_linear(encoder, D)
            self.encoder_ = None
        else:
            self.encoder_ = encoder
        self.fit_info_ = {
            "n_rows": N, "n_train": n_train, "n_validation": n_val, "seed": seed,
            "resolved": {k_: (v_ if not hasattr(v_, "kind") else repr(v_)) for k_, v_ in r.items()
                         if k_ != "threads"},
            "graph": graph_info, "best_epoch": self.best_epoch_,
            "stopped_epoch": result.stopped_epoch,
            "val_recall_initial": result.history[0].get("val_recall") if validator else None,
            "val_recall_best": result.best_score,
            "seconds": {"moments": t_pca, "knn": t_knn, "train": t_train,
                        "total": time.perf_counter() - t_start},
        }
        self.qat_codebook_ = self.qat_rotation_ = None
        if self.qat is not None:  # 6. quantization-aware fine-tuning of the folded map
            q = qat_fine_tune(self.components_, self.bias_, train, anchors, neighbors,
                              codec=self.qat, n_bytes=self.qat_bytes, epochs=self.qat_epochs,
                              batch_size=r["batch_size"], metric=self.metric,
                              teacher_temperature=self.teacher_temperature,
                              teacher_scale=trainer.teacher_scale,
                              log_scale=float(trainer.log_scale.detach()), seed=seed, device=device,
                              validator=validator, progress=progress if bars is None else None)
            self.components_, self.bias_ = q.components, q.bias
            self.qat_codebook_, self.qat_rotation_ = q.codebook, q.rotation
            self.fit_info_["qat"] = q.info
            self.fit_info_["seconds"]["total"] = time.perf_counter() - t_start
        return self

    # ------------------------------------------------------------------------------------------
    def _graph(self, train, graph, k, seed, ckpt_dir, resume, progress=None):
        if graph is not None:
            is_graph = hasattr(graph, "neighbors")
            nb = graph.neighbors if is_graph else np.asarray(graph)
            if nb.ndim != 2 or nb.shape[0] != train.n_rows or nb.shape[1] < k:
                raise InvalidInputError(
                    f"Input 'graph' must have shape ({train.n_rows}, >= {k}) (one row of neighbour "
                    f"positions per training row). Got {nb.shape} instead.")
            info = dict(graph.params, method=graph.method) if is_graph else {"method": "given"}
            return np.ascontiguousarray(nb[:, :k], dtype=np.int64), info
        path = ckpt_dir / "graph.npy" if ckpt_dir is not None else None
        if path is not None and resume and path.exists():
            nb = np.load(path, mmap_mode="r")
            if nb.shape == (train.n_rows, k):
                log.info("reusing kNN graph from %s", path)
                return np.asarray(nb), {"method": "checkpoint"}
        from .knn import knn_graph

        kw = dict(self.knn_params or {})
        # GPU FAISS when present, unless the estimator was pinned to the CPU
        kw.setdefault("device", "cpu" if self.device == "cpu" else "auto")
        if progress is not None:
            kw.setdefault("progress", progress)
        g = knn_graph(train, k, method=self.knn_method, metric=self.metric, random_state=seed, **kw)
        nb = np.asarray(g.neighbors, dtype=np.int64)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, nb)
            atomic_write_bytes(path, buf.getvalue())
        return nb, {"method": g.method, "seconds": g.seconds, "n_incomplete": g.n_incomplete,
                    **g.params}

    def _encode_block(self, block: np.ndarray) -> np.ndarray:
        if self.encoder_ is None:
            return super()._encode_block(block)  # float64 accumulation: batch-independent
        with torch.no_grad():
            return self.encoder_(torch.from_numpy(block)).numpy()

    def _model_tensors(self) -> dict[str, np.ndarray]:
        if self.encoder_ is None:
            return {**super()._model_tensors(), **qat_tensors(self)}
        return {f"encoder.{k}": v.cpu().numpy() for k, v in self.encoder_.state_dict().items()}

    def _model_info(self) -> dict[str, Any]:
        info = super()._model_info()
        info["foldable"] = self.encoder_ is None
        info["objective"] = self.objective
        return info

    def _restore(self, tensors: dict, info: dict) -> None:
        self.n_features_in_ = int(info["input_dim"])
        self.n_components_ = int(info["output_dim"])
        self.fit_info_ = info.get("fit_info", {})
        if info.get("foldable", True):
            super()._restore(tensors, info)
            qat_restore(self, tensors)
            self.encoder_ = None
            return
        enc = build_encoder(parse_encoder(self.encoder), self.n_features_in_, self.n_components_)
        try:
            enc.load_state_dict({k[8:]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                                 if k.startswith("encoder.")})
        except RuntimeError as exc:
            from .errors import ModelFormatError
            raise ModelFormatError(f"Model tensors do not match encoder {self.encoder!r}: "
                                   f"{str(exc).splitlines()[0]}") from None
        self.encoder_ = enc.eval()
