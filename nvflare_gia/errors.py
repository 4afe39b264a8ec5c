"""One small hierarchy of errors for nvflare_gia (all are ``ValueError`` subclasses)."""

__all__ = ["GIAError", "DataError", "ConfigError"]


class GIAError(ValueError):
    """Base class of every error raised on purpose by nvflare_gia."""


class DataError(GIAError):
    """Input data is missing, malformed, or does not fit the requested partition."""


class ConfigError(GIAError):
    """An argument or a configuration value is outside what is allowed."""
