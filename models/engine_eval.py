"""Evaluating a detector *inside the engine*: what an engine-optimised version needs (its
optimisation exists only in the engine), and how a registry version is evaluated as it is served.

:class:`EngineDetector` is a batch callable for :func:`models.evaluate.evaluate_model` that sends
each batch as one AI.DAGEXECUTE (TENSORSET |> MODELEXECUTE |> TENSORGET, built by groundwatch.ai).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from groundwatch.ai import Engine
from models.errors import ModelsError

VERSION_LABEL = re.compile(r"^([A-Za-z0-9_.-]+):(\d+)$")


class EngineDetector:
    """Runs [B, C, H, W] batches through a model stored in the engine; returns [B, K, 6] arrays."""

    def __init__(self, engine: Engine, model_key: str, route_key: str, dtype: str = "uint16") -> None:
        self.engine = engine
        self.model_key = model_key
        self.route_key = route_key
        self.dtype = np.dtype(dtype)

    def __call__(self, batch: Any) -> np.ndarray:
        array = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        if self.dtype.kind == "u":
            array = np.clip(array, 0, np.iinfo(self.dtype).max)
        return self.engine.run(self.model_key, np.ascontiguousarray(array.astype(self.dtype)), self.route_key)


@contextmanager
def stored_in_engine(
    client: redis.Redis, blob: bytes, *, optimize: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stores a blob under a temporary key (deleted afterwards); yields (key, optimisation state)."""
    engine = Engine(client)
    key = f"groundwatch:evaluate:{uuid.uuid4().hex}"
    engine.model_store(key, blob, tag="evaluate", optimize=optimize)
    try:
        state = engine.optimize_state(key)
        yield key, {"optimized": bool(state and state[0]), "optimize_status": state[1] if state else None}
    finally:
        client.delete(key)


@dataclass(frozen=True)
class RegistryModel:
    label: str
    model_key: str
    route_key: str
    blob: bytes
    provenance: dict[str, Any]


def registry_model(client: redis.Redis, label: str) -> RegistryModel:
    """A registered version (`name:version`): its first feed copy's key and the blob the engine
    returns for it (AI.MODELGET BLOB: the original file, also for an optimised version)."""
    from groundwatch import keys
    from loaders import LoaderError
    from loaders.registry import Registry

    m = VERSION_LABEL.match(label)
    if not m:
        raise ModelsError(f"{label!r} is neither a model file nor a registry version NAME:VERSION")
    try:
        record = Registry(client).get(m.group(1), int(m.group(2)))
    except LoaderError as e:
        raise ModelsError(str(e)) from e
    feed = record.feeds[0]
    key = keys.model(feed, record.name, record.version)
    blob = Engine(client).model_blob(key)
    return RegistryModel(record.label, key, keys.dag_routing(feed), blob, dict(record.provenance))
