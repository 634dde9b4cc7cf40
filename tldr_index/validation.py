"""Small argument checks whose messages follow one pattern:

    The 'n_components' parameter of TLDR must be an int in the range [1, inf). Got 0 instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from .errors import InvalidParameterError


def _owner(owner: str | None) -> str:
    return f" of {owner}" if owner else ""


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
              owner: str | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` as int if it is an integer in ``[low, high]`` else raise."""
    if value is None and allow_none:
        return None
    lo = "-inf" if low is None else str(low)
    hi = "inf)" if high is None else f"{high}]"
    rule = f"an int in the range [{lo}, {hi}" + (" or None" if allow_none else "")
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        raise InvalidParameterError(
            f"The '{name}' parameter{_owner(owner)} must be {rule}. Got {value!r} instead.")
    return int(value)


def check_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, owner: str | None = None) -> float:
    """Return ``value`` as float if it is a finite real in the stated range else raise."""
    lb = "[" if low_inclusive else "("
    rule = f"a float in the range {lb}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            ok = False
        elif low is not None and (v < low or (v == low and not low_inclusive)):
            ok = False
        elif high is not None and v > high:
            ok = False
    if not ok:
        raise InvalidParameterError(
            f"The '{name}' parameter{_owner(owner)} must be {rule}. Got {value!r} instead.")
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[Any], *, owner: str | None = None) -> Any:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise InvalidParameterError(
            f"The '{name}' parameter{_owner(owner)} must be one of {opts}. Got {value!r} instead.")
    return value


def check_bool(value: Any, name: str, *, owner: str | None = None) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterError(
            f"The '{name}' parameter{_owner(owner)} must be a bool. Got {value!r} instead.")
    return value
