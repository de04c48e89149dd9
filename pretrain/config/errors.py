"""The error a user's configuration mistake raises: one line, shown without a traceback by the launchers."""


class ConfigError(ValueError):
    """A wrong key, type or value in a config file or a `--set` override."""
