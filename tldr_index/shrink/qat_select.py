"""Which candidates of a selection (``sweep``, ``shrink --method auto`` / ``--target-recall``) are
fitted with quantization-aware training (QAT), from the run's ``qat`` fit option.

Each TLDR candidate with codes gets exactly what a fixed shrink of that candidate would get:
:func:`tldr_index.shrink.qat_rule.qat_codec` decides (``auto``: RQ with ``d >= 8 x bytes``, PQ
with ``d >= 4 x bytes``, and whatever codecs that rule covers later; ``on``: every TLDR candidate,
an error naming the rule where one cannot; ``off``: none). PCA and the identity map are never
fine-tuned (QAT is a TLDR fine-tune) and are measured as they are. A QAT candidate is measured
with the codebooks QAT trained (:func:`tldr_index.qat.trained_codec`), exactly what the encode
stage writes. With ``auto`` the plain map is kept as a separate candidate beside each QAT one
(``plain``): it is the ranking fit QAT starts from, taken before the fine-tune, so it costs no
extra fit; with ``on`` only the QAT version is a candidate.

Cost: none here (rule checks); a QAT candidate costs its fine-tune in the selection
(``benchmarks/results/qat.md``: the QAT phase of a d=128, RQ 8 B fit on 40,000 rows took about 81
s wall on 2 shared cores), and each QAT candidate after the first at the same d its ranking fit
again.
"""

from __future__ import annotations

from collections.abc import Sequence

from .qat_rule import qat_codec

#: what a QAT candidate's name ends with (``tldr d=128 RQ 8 B +QAT``)
QAT_LABEL = "+QAT"


def selection_qat(candidates: Sequence[Sequence], mode: str, n_train: int, *,
                  codecs: Sequence[str], owner: str) -> dict:
    """``{"mode", "fits": [[d, codec, code_bytes, qat_codec], ...], "plain"}`` (JSON-able, part
    of the run's identity) for the ``[method, d, codec, code_bytes]`` ``candidates`` of
    :func:`tldr_index.shrink.plan.selection_plan`: the TLDR candidates fitted through their codes
    and whether their plain version stays a candidate. Raises
    :class:`~tldr_index.errors.InvalidParameterError` (qat_codec's message) for ``mode="on"``
    when a TLDR candidate cannot run it, or when no candidate is a TLDR map. ``codecs``: the
    requested ones (a float-only candidate, no codec, is checked as the first with 0 bytes)."""
    fits = []
    tldr = [c for c in candidates if c[0] == "tldr"]
    if mode == "on" and not tldr and candidates:
        m, d, codec, size = candidates[0]
        qat_codec(mode, method=m, codec=codec or codecs[0], dim=d, code_bytes=size,
                  n_train=n_train, selection=False, owner=owner)  # raises: method='tldr' only
    for _, d, codec, size in tldr:
        q = qat_codec(mode, method="tldr", codec=codec or codecs[0], dim=d, code_bytes=size,
                      n_train=n_train, selection=False, owner=owner)
        if q is not None:
            fits.append([d, codec, size, q])
    return {"mode": mode, "fits": fits, "plain": mode != "on"}


def measured_candidates(select: dict) -> list[tuple[str, int, str | None, int, str | None]]:
    """Every candidate a selection measures, ``(method, d, codec, code_bytes, qat)``: those of
    ``select["candidates"]``, a QAT one (``qat`` the codec QAT fine-tunes through) for each
    TLDR candidate of ``select["qat"]["fits"]``, with (``plain``) or instead of its plain one
    (``qat`` None). A plan without a ``"qat"`` entry has no QAT candidates."""
    qat = select.get("qat") or {"fits": [], "plain": True}
    fits = {(d, codec, size): q for d, codec, size, q in qat["fits"]}
    out = []
    for m, d, codec, size in select["candidates"]:
        q = fits.get((d, codec, size)) if m == "tldr" else None
        if q is None or qat["plain"]:
            out.append((m, d, codec, size, None))
        if q is not None:
            out.append((m, d, codec, size, q))
    return out


def qat_label(qat: str | None) -> str:
    """`` +QAT`` for a candidate fitted through its codes, else ``""``."""
    return f" {QAT_LABEL}" if qat else ""
