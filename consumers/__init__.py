"""Consumers: frames in, in-Redis inference, georeferenced detections out (issue 6).

`groundwatch consume --feed NAME` runs a :class:`consumers.worker.Consumer`. The pure parts
(model output decoding, georeferencing, overlap merging) live in :mod:`consumers.geo` and
:mod:`consumers.merge`; the wire format of results is :mod:`groundwatch.detections`.
"""

from groundwatch.errors import GroundwatchError


class ConsumerError(GroundwatchError):
    """A consumer cannot go on (no model for a burst run, a model that breaks its contract...)."""
