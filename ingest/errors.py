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


class DurabilityError(IngestError):
    """Published frames were not confirmed durable (replicas or the AOF) in time.

    Not the file's fault: a drop folder leaves the file for a later poll, and ingesting it again
    is a no-op on the stream that waits for durability again.
    """
