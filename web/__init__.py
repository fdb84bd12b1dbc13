"""The web role: `groundwatch web`, a live view of the feeds in the browser (docs/monitoring.md)."""

from groundwatch.errors import GroundwatchError


class WebError(GroundwatchError):
    """The live view could not start; the message says what and how to fix it."""
