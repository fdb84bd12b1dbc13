"""Errors of the ingest role."""

from __future__ import annotations

from groundwatch.errors import GroundwatchError


class IngestError(GroundwatchError):
    """Ingest could not publish something; the message says what and how to fix it."""


class InputError(IngestError):
    """The input itself is bad (unreadable, not georeferenced, wrong bands, partly written).

    A drop folder moves such a file to failed/; nothing of it is on the stream.
    """


class BackpressureError(IngestError):
    """Consumers stayed too far behind for longer than the backpressure timeout."""
