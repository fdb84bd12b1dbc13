"""The monitor role: drift of what flows through each feed, and alerts (docs/monitoring.md)."""

from groundwatch.errors import GroundwatchError


class MonitorError(GroundwatchError):
    """The monitor could not do what was asked; the message says what and how to fix it."""
