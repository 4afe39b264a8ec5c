"""One small hierarchy of errors for nvflare_gia (all are ``ValueError`` subclasses)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["GIAError", "DataError", "ConfigError", "load_json_file"]


class GIAError(ValueError):
    """Base class of every error raised on purpose by nvflare_gia."""


class DataError(GIAError):
    """Input data is missing, malformed, or does not fit the requested partition."""


class ConfigError(GIAError):
    """An argument or a configuration value is outside what is allowed."""


def load_json_file(path: str | os.PathLike, owner: str, arg: str) -> Any:
    """Read and parse the JSON file ``path``.

    Args:
        path: the file.
        owner: who reads it; starts every error message.
        arg: the argument that named the file.

    Returns:
        The parsed content.

    Raises:
        DataError: naming ``owner``, ``arg`` and the path, if ``path`` is not a file or not UTF-8 JSON.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{owner}: {arg} must be an existing JSON file, got {str(file)!r}.")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{owner}: {arg} {str(file)!r} is not valid JSON: {exc}.") from exc
