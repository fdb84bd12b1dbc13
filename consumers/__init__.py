"""Consumers: frames in, in-Redis inference, georeferenced detections out (issue 6).

`groundwatch consume --feed NAME` runs a :class:`consumers.worker.Consumer`, the loop over:
:mod:`consumers.reading` (XREADGROUP, own pending entries, XAUTOCLAIM),
:mod:`consumers.inference` (the active model, the DAGs, decoding and georeferencing),
:mod:`consumers.commit` (publish, dead letters and XACK; a second MULTI/EXEC for a completed
scene) and
:mod:`consumers.scenes` (scene completion). Georeferencing is :mod:`consumers.geo`; decoding
the model's rows, placing them in the scene and the overlap merge are the core's
(:mod:`groundwatch.geometry`, the same functions evaluation uses); the wire format of results
is :mod:`groundwatch.detections`.
"""

from groundwatch.errors import GroundwatchError


class ConsumerError(GroundwatchError):
    """A consumer cannot go on (no model for a burst run, a model that breaks its contract...)."""
