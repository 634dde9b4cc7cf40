"""Whether a shrink fine-tunes its map through its own codes (quantization-aware training,
:mod:`tldr_index.qat`), from the ``qat`` fit option (:class:`tldr_index.shrink.options.FitOptions`):

* ``"off"``: never;
* ``"on"``: always; an error when the run cannot (not a TLDR map at a fixed d, a codec other
  than PQ/OPQ/RQ/RaBitQ, no codes, fewer than 256 training rows);
* ``"auto"`` (the default): on where ``benchmarks/results/qat.md`` measured a gain (raw recall@10
  of QAT over its start, the same map then the same codec fit) larger than the codec-seed spread
  (three plain fits: the start's seed and seeds 0, 1) on the dev corpus, i.e. a TLDR map with

  - RQ codes and ``d >= 8 x bytes`` (d=128: 8 B +0.029 raw recall@10, 16 B +0.020; d=64: 8 B
    +0.023; no gain at d=64, 16 B: +0.008 within a 0.011 spread);
  - PQ codes and ``d >= 4 x bytes`` (d=64: 16 B +0.035, 8 B +0.048; no change at 32 B);
  - OPQ codes and ``d >= 8 x bytes`` (d=128: 8 B +0.067 over the start, spread 0.004; 16 B +0.038,
    spread 0.007; d=64: 8 B +0.040, spread 0.004; no gain at d=64, 16 B: +0.008 within a 0.010
    spread);
  - RaBitQ codes at 1 bit per dimension and ``d >= 128`` (d=128, 20 B: +0.019, spread 0.011;
    d=256, 36 B: +0.012, spread 0.006). Never at 2 bits: d=128 (36 B) +0.003 within 0.005,
    d=256 (68 B) +0.003 within 0.004.

  The default shrink (d=64, RQ 16 B) therefore does not run it.

Cost: QAT adds a fine-tuning phase after the ranking fit: 4 epochs of a beam-5 encode of each
batch (RQ), a nearest-centroid search (PQ, OPQ) or the RaBitQ encode (numpy); on 39,000 rows of
the dev corpus, 37-96 s wall on 2 shared cores for RQ (load 1.7-6.3); at d=128, 82 s (8 B) and
148 s (16 B) for OPQ (its start's OPQ fit included) and 284 s (1 bit) / 254 s (2 bits) for RaBitQ,
on a machine at load 10-20 where the ranking fit itself took 47-215 s (benchmarks/results/qat.md).
The codec the encode stage then uses is the one QAT trained (no codec training there).
"""

from __future__ import annotations

from ..codecs.rabitq import FACTOR_BYTES
from ..errors import InvalidParameterError

QAT_MODES = ("auto", "on", "off")
#: ``auto``: the smallest d / code bytes at which QAT is on, per codec (see the module docstring)
AUTO_MIN_DIMS_PER_BYTE = {"rq": 8, "pq": 4, "opq": 8}
#: ``auto`` for RaBitQ: bits per dimension -> the smallest d at which QAT is on (absent: never)
AUTO_RABITQ: dict[int, int] = {1: 128}
#: the codecs QAT can fine-tune through (:data:`tldr_index.qat.CODECS`)
QAT_CODECS = ("rq", "pq", "opq", "rabitq")
#: QAT's k-means / codebooks need this many training rows (256 entries per codebook)
MIN_TRAIN_ROWS = 256


def qat_codec(mode: str, *, method: str, codec: str, dim: int | None, code_bytes: int | None,
              n_train: int, selection: bool, owner: str = "shrink") -> str | None:
    """The codec to fine-tune through (one of :data:`QAT_CODECS`) or None. ``selection``: the
    caller is a run whose d and codec are not fixed yet (the selection itself passes False for
    each candidate, :mod:`tldr_index.shrink.qat_select`). Raises :class:`InvalidParameterError`
    for ``mode="on"`` on a run that cannot use it."""
    if mode == "off":
        return None
    why = None
    if selection:
        why = "a fixed dim and codec (not method='auto' or target_recall)"
    elif method != "tldr":
        why = f"method='tldr' (got method={method!r})"
    elif codec not in QAT_CODECS:
        why = f"codec 'rq', 'pq', 'opq' or 'rabitq' (got codec={codec!r})"
    elif not code_bytes:
        why = "codes (got bytes=0)"
    elif n_train < MIN_TRAIN_ROWS:
        why = f"at least {MIN_TRAIN_ROWS} training rows (got {n_train})"
    if why is not None:
        if mode == "on":
            raise InvalidParameterError(
                f"The 'fit_options.qat' parameter of {owner} (--qat) can be 'on' only with {why}. "
                f"Got qat='on' instead; pass 'auto' or 'off'.")
        return None
    if mode == "on" or auto_gain(codec, dim, code_bytes):
        return codec
    return None


def auto_gain(codec: str, dim: int, code_bytes: int) -> bool:
    """Whether ``auto`` turns QAT on for ``codec`` at ``dim`` and ``code_bytes`` (the measured
    rule of the module docstring)."""
    if codec in AUTO_MIN_DIMS_PER_BYTE:
        return dim >= AUTO_MIN_DIMS_PER_BYTE[codec] * code_bytes
    if codec == "rabitq":
        bits = (code_bytes - FACTOR_BYTES) * 8 // dim
        return bits in AUTO_RABITQ and dim >= AUTO_RABITQ[bits]
    return False
