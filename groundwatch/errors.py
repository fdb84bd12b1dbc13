"""The root of every error groundwatch raises on purpose.

Each role derives its own root from :class:`GroundwatchError`, so a caller can catch one role's
failures, or all of them, without catching programming errors.
"""


class GroundwatchError(Exception):
    """Something an operator can fix; the message says what was wrong and how to fix it."""


class ConfigError(GroundwatchError):
    """A flag or environment variable has a value groundwatch cannot use."""


class ServerError(GroundwatchError):
    """The embedded redis-server could not be started or reached."""
