"""Exceptions whose message is the one line a user needs: what was received, which rule broke, what to change.

CLIs catch `IloraError`, print `error: <message>` and exit with status 2 (no traceback wall).
"""


class IloraError(Exception):
    """Base class for user-facing errors (bad input, impossible config, corrupt files)."""


class DataError(IloraError):
    """A dataset file is missing or malformed (names the file and the problem)."""


class ConfigError(IloraError):
    """An impossible or inconsistent configuration (names the config key to change)."""


class CheckpointError(IloraError):
    """A checkpoint is missing, truncated or does not fit the model."""
