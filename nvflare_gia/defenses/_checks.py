"""Private argument checks shared by the defense configs (messages follow STYLE.md)."""

from __future__ import annotations

import difflib
import enum
import math
from typing import Any

import numpy as np

from nvflare_gia.errors import ConfigError

__all__ = ["check_number", "check_int", "check_bool", "check_seed", "look_up_option"]



def check_number(owner: str, name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> float:
    """Check a real number against [low, high] (ends optionally open); return it as float.

    Raises:
        TypeError: if ``value`` is not a real number (bool is rejected).
        ConfigError: if it is not finite or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}.")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{owner}: {name} must be finite, got {value!r}.")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ConfigError(f"{owner}: {name} must be in {left}{low:g}, {upper}{right}, got {value!r}.")
    return float(value)


def check_int(owner: str, name: str, value: Any, *, minimum: int, allow_none: bool = False) -> int | None:
    """Check an integer >= ``minimum`` (or None when allowed).

    Raises:
        TypeError: if ``value`` is not an int (bool is rejected).
        ConfigError: if it is below ``minimum``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{owner}: {name} must be {kind}, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Check a bool (ints are rejected: ``1`` in JSON is a typo for ``true``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {value!r}.")
    return bool(value)


def look_up_option(owner: str, name: str, value: Any, enum_cls: type[enum.Enum]) -> str:
    """Return the option string of ``enum_cls`` named by ``value``; list the choices and suggest the closest.

    Raises:
        ConfigError: for an unknown option.
    """
    choices = [member.value for member in enum_cls]
    key = value.value if isinstance(value, enum_cls) else value
    if isinstance(key, str) and key in choices:
        return key
    close = difflib.get_close_matches(str(key).lower(), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{owner}: {name} must be one of {choices}, got {value!r}.{hint}")


def check_seed(owner: str, value: Any) -> int | None:
    """A seed is None (fresh OS entropy every call) or an int >= 0."""
    return check_int(owner, "seed", value, minimum=0, allow_none=True)
