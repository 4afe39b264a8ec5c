"""Private argument checks shared by the ``nvflare_gia.data`` modules."""

from __future__ import annotations

import numpy as np

from nvflare_gia.errors import ConfigError

__all__ = ["check_int"]


def check_int(owner: str, arg: str, value: object, minimum: int, allow_none: bool = False) -> int | None:
    """Return ``value`` as an int after checking it is an int >= ``minimum`` (or None when allowed).

    Args:
        owner: class or function name used in the message.
        arg: argument name used in the message.
        value: the value to check; ``bool`` is rejected.
        minimum: smallest allowed value.
        allow_none: whether ``None`` is allowed (and returned unchanged).

    Returns:
        ``int(value)``, or ``None``.

    Raises:
        TypeError: if ``value`` is not an int (nor an allowed None).
        ConfigError: if ``value`` < ``minimum``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"{owner}: {arg} must be {kind}, got {value!r}.")
    if value < minimum:
        suffix = " or None" if allow_none else ""
        raise ConfigError(f"{owner}: {arg} must be >= {minimum}{suffix}, got {value!r}.")
    return int(value)
