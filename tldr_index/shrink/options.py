"""Typed training options of a shrink plan: how the kNN graph of the training sample is built
(:class:`GraphOptions`, passed to :func:`tldr_index.knn.knn_graph`) and how TLDR is fitted on
it (:class:`FitOptions`, passed to :class:`tldr_index.reducer.TLDR`).

Every field's default is the library's own default, so ``GraphOptions()`` / ``FitOptions()``
change nothing; a plan records only the fields that differ (:meth:`GraphOptions.changed`), so
the parameters of a run with default options are the same as before the options existed.

>>> FitOptions.coerce({"learning_rate": 3e-3, "patience": None}).changed()
{'learning_rate': 0.003, 'patience': None}

Cost: none (checks of a few values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import InvalidParameterError
from ..validation import check_choice, check_float, check_int
from .qat_rule import QAT_MODES

GRAPH_METHODS = ("auto", "exact", "opq")
#: TLDR's early-stopping patience (``tldr_index.reducer.PATIENCE``; a test keeps them equal)
DEFAULT_PATIENCE = 2

T = TypeVar("T", bound="_Options")


class _Options:
    """Shared behaviour of the option dataclasses (``name`` is the parameter they come from)."""

    name = "options"

    def changed(self) -> dict:
        """The fields that differ from their defaults, as ``{name: value}`` (JSON-ready)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v != f.default:
                out[f.name] = v
        return out

    @classmethod
    def coerce(cls: type[T], value: Any, owner: str = "shrink") -> T:
        """``value`` (None, an instance, or a mapping of field names) as a checked instance."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value.checked(owner)
        if not isinstance(value, Mapping):
            raise InvalidParameterError(
                f"The '{cls.name}' parameter of {owner} must be a {cls.__name__}, a dict or "
                f"None. Got {value!r} instead.")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise InvalidParameterError(
                f"The '{cls.name}' parameter of {owner} takes the keys {', '.join(names)}. "
                f"Got unknown key(s) {', '.join(map(repr, unknown))}.")
        return cls(**dict(value)).checked(owner)

    def checked(self: T, owner: str) -> T:  # pragma: no cover - overridden
        return self


@dataclass(frozen=True)
class GraphOptions(_Options):
    """How the kNN graph of the training sample is built (``None``: knn_graph's default).

    ``method``: "auto" (exact up to 30,000 rows, else the OPQ pass), "exact" or "opq";
    ``train_rows``, ``nprobe``, ``refine``: the OPQ pass's training rows, lists probed and
    candidates re-ranked exactly (see :func:`tldr_index.knn.knn_graph`)."""

    name = "graph_options"

    method: str = "auto"
    train_rows: int | None = None
    nprobe: int | None = None
    refine: int | None = None

    def checked(self, owner: str) -> "GraphOptions":
        p = f"{self.name}.%s"
        check_choice(self.method, p % "method", GRAPH_METHODS, owner=owner)
        check_int(self.train_rows, p % "train_rows", low=256, owner=owner, allow_none=True)
        check_int(self.nprobe, p % "nprobe", low=1, owner=owner, allow_none=True)
        check_int(self.refine, p % "refine", low=0, owner=owner, allow_none=True)
        return self

    def kwargs(self) -> dict:
        """Keyword arguments for :func:`tldr_index.knn.knn_graph` (only the changed ones)."""
        return self.changed()


@dataclass(frozen=True)
class FitOptions(_Options):
    """How TLDR is fitted on the sample (``None``: the objective's default).

    ``learning_rate``, ``batch_size`` (anchors per step), ``patience`` (epochs without a
    validation gain before the fit stops; None: run every epoch, keep the best),
    ``validation_rows`` (held-out queries of the per-epoch validation recall) and ``qat``
    ("auto", "on", "off": fine-tune the map through the run's own codes after the ranking fit,
    :mod:`tldr_index.shrink.qat_rule`)."""

    name = "fit_options"

    learning_rate: float | None = None
    batch_size: int | None = None
    patience: int | None = DEFAULT_PATIENCE
    validation_rows: int | None = None
    qat: str = "auto"

    def checked(self, owner: str) -> "FitOptions":
        p = f"{self.name}.%s"
        if self.learning_rate is not None:
            check_float(self.learning_rate, p % "learning_rate", low=0.0, low_inclusive=False,
                        owner=owner)
        check_int(self.batch_size, p % "batch_size", low=2, owner=owner, allow_none=True)
        check_int(self.patience, p % "patience", low=1, owner=owner, allow_none=True)
        check_int(self.validation_rows, p % "validation_rows", low=1, owner=owner,
                  allow_none=True)
        check_choice(self.qat, p % "qat", QAT_MODES, owner=owner)
        return self

    def kwargs(self) -> dict:
        """Keyword arguments for :class:`tldr_index.reducer.TLDR` (only the changed ones; ``qat``
        is resolved per run by :func:`tldr_index.shrink.qat_rule.qat_codec`)."""
        return {k: v for k, v in self.changed().items() if k != "qat"}


def parse_option_pairs(pairs: tuple[str, ...] | list[str], cls: type[T],
                       flag: str) -> T | None:
    """``KEY=VALUE`` strings (a CLI flag given several times) as ``cls`` options; VALUE is
    ``none``, an int, a float or a word. None when no pair is given."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidParameterError(
                f"The '{flag}' option takes KEY=VALUE. Got {pair!r} instead.")
        out[key.strip()] = parse_value(raw.strip())
    return cls.coerce(out, owner=f"shrink ({flag})")


def parse_value(raw: str) -> Any:
    """``none`` -> None, then int, then float, else the string."""
    if raw.lower() == "none":
        return None
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw
