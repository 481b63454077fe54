"""Errors every layer may raise about a run's configuration."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key (and the fix)."""
