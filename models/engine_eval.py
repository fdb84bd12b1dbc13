"""Evaluating a detector *inside the engine*, the way the consumers run it: what an
engine-optimised version needs (its optimisation exists only in the engine), and how a registry
version is evaluated as it is served.

:func:`engine_runner` is a :data:`models.evaluate.TileRunner` that sends each tile as one
AI.DAGEXECUTE (TENSORSET |> MODELEXECUTE |> TENSORGET), all of a chunk at once on their own
connections so the engine batches them: :func:`groundwatch.ai.execute_dags`, the consumers' call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from groundwatch import ai, keys
from groundwatch.ai import Engine
from groundwatch.registry import ModelRef, RegistryError, RegistryReader
from models.errors import ModelsError
from models.evaluate import TileRunner


def engine_runner(client: redis.Redis, model_key: str, route_key: str, dtype: str = "uint16") -> TileRunner:
    """Tiles through a model stored in the engine, one DAG per tile, as the consumers send them."""
    wanted = np.dtype(dtype)

    def run(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = []
        for t in tiles:
            if wanted.kind == "u":
                t = np.clip(t, 0, np.iinfo(wanted).max)
            arrays.append(np.ascontiguousarray(t.astype(wanted, copy=False)))
        outs = ai.execute_dags(client, model_key, route_key, arrays)
        failed = [o for o in outs if isinstance(o, ai.DagError)]
        if failed:
            raise ModelsError(f"the engine refused a tile of {model_key}: {failed[0]}")
        return [o for o in outs if isinstance(o, np.ndarray)]

    return run


@contextmanager
def stored_in_engine(
    client: redis.Redis, blob: bytes, *, optimize: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stores a blob under a temporary key (deleted afterwards); yields (key, optimisation state)."""
    engine = Engine(client)
    key = keys.scratch_model(uuid.uuid4().hex)
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
    try:
        ref = ModelRef.parse(label)
        record = RegistryReader(client).get(ref.name, ref.version)
    except RegistryError as e:
        raise ModelsError(f"{label!r} is neither a model file nor a registered version: {e}") from e
    feed = record.feeds[0]
    key = record.ref.key(feed)
    blob = Engine(client).model_blob(key)
    return RegistryModel(record.label, key, key, blob, dict(record.provenance))  # routed by the copy itself
