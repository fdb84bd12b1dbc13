"""Registering, activating, rolling back and removing model versions.

The order of `load` is what makes a switch safe: store the new version in every feed, warm it
up there, record it, and only then move the feeds' pointers. Consumers keep running the old
version until the pointer moves, and the old version stays stored until it is removed, so no
frame fails during a switch. A version that fails its warm-up is deleted again and never
becomes active.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

from groundwatch import keys
from groundwatch.ai import Engine, EngineError
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError
from loaders.archive import ModelFile, read_model_file
from loaders.registry import Registry, VersionRecord

log = logging.getLogger(__name__)

WARMUP_BATCH = 2


@dataclass(frozen=True)
class LoadOptions:
    name: str
    feeds: tuple[str, ...]
    version: int | None = None
    device: str = "CPU"
    batch: int | None = None
    min_batch: int | None = None
    min_batch_timeout_ms: int | None = None
    activate: bool = True
    provenance: dict[str, Any] | None = None


def warmup_input(meta: ModelMetadata, batch: int = WARMUP_BATCH) -> np.ndarray:
    """A deterministic tile batch of the declared shape and dtype, with sea-like values."""
    rng = np.random.default_rng(0)
    shape = (batch, meta.bands, meta.tile_size, meta.tile_size)
    if meta.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if meta.dtype == "uint16":
        return rng.integers(0, 2000, shape, dtype=np.uint16)
    return rng.random(shape, dtype=np.float32)


def check_output(out: np.ndarray, meta: ModelMetadata, batch: int) -> None:
    """The model contract on one output (docs/models.md); LoaderError says what is off."""
    if out.dtype != np.float32 or out.ndim != 3 or out.shape[0] != batch or out.shape[2] != 6:
        raise LoaderError(
            f"the model returned {out.dtype} {list(out.shape)} for a batch of {batch}; the contract is "
            f"float32 [B, K, 6] (x1, y1, x2, y2, score, class) with B = {batch}"
        )
    scores, classes = out[..., 4], out[..., 5]
    if not np.all(np.isfinite(out)):
        raise LoaderError("the model returned NaN or infinite values on the warm-up tiles")
    if np.any(scores < 0) or np.any(scores > 1):
        raise LoaderError("the model returned scores outside [0, 1]; apply a sigmoid inside the model")
    if np.any(np.diff(scores, axis=1) > 1e-6):
        raise LoaderError("the model's detections are not sorted by score (descending) as the contract says")
    live = scores > 0
    if np.any((classes[live] < 0) | (classes[live] >= len(meta.classes))):
        raise LoaderError(
            f"the model returned class ids outside 0..{len(meta.classes) - 1} (it declares {len(meta.classes)} classes)"
        )


def warm_up(engine: Engine, model_key: str, route_key: str, meta: ModelMetadata) -> None:
    for batch in (1, WARMUP_BATCH):
        try:
            out = engine.run(model_key, warmup_input(meta, batch), route_key)
        except EngineError as e:
            raise LoaderError(
                f"warm-up failed: the engine could not run the model on a {meta.dtype} "
                f"[{batch}, {meta.bands}, {meta.tile_size}, {meta.tile_size}] tile batch: {e}"
            ) from e
        check_output(out, meta, batch)


def load(client: redis.Redis, source: str | Path | ModelFile, opts: LoadOptions) -> VersionRecord:
    """Store, warm up, record and (by default) activate one new version. Returns its record."""
    model = source if isinstance(source, ModelFile) else read_model_file(source)
    keys.check_name("model", opts.name)
    for feed in opts.feeds:
        keys.check_name("feed", feed)
    if not opts.feeds:
        raise LoaderError("give at least one feed to serve (--feeds a,b)")
    registry = Registry(client)
    if opts.version is not None:
        if registry.exists(opts.name, opts.version):
            raise LoaderError(
                f"model {opts.name} already has version {opts.version}; versions are immutable, "
                "leave --version out to get the next number"
            )
        registry.reserve(opts.name, opts.version)
        version = opts.version
    else:
        version = registry.next_version(opts.name)
    engine = Engine(client)
    stored: list[str] = []
    try:
        for feed in opts.feeds:
            key = keys.model(feed, opts.name, version)
            engine.model_store(
                key,
                model.blob,
                device=opts.device,
                tag=str(version),
                batch=opts.batch,
                min_batch=opts.min_batch,
                min_batch_timeout_ms=opts.min_batch_timeout_ms,
            )
            stored.append(key)
            warm_up(engine, key, keys.dag_routing(feed), model.metadata)
    except (EngineError, LoaderError) as e:
        for key in stored:
            client.delete(key)
        raise LoaderError(f"{opts.name} version {version} from {model.path} was not activated: {e}") from e
    record = VersionRecord(
        name=opts.name,
        version=version,
        sha256=model.sha256,
        source_file=str(model.path),
        classes=list(model.metadata.classes),
        bands=model.metadata.bands,
        dtype=model.metadata.dtype,
        tile_size=model.metadata.tile_size,
        device=opts.device.upper(),
        feeds=list(opts.feeds),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        batch=opts.batch,
        min_batch=opts.min_batch,
        min_batch_timeout_ms=opts.min_batch_timeout_ms,
        provenance=dict(opts.provenance or {}),
    )
    registry.record(record)
    if opts.activate:
        registry.activate(record)
    log.info(
        "loaded %s into feeds %s%s", record.label, ", ".join(opts.feeds), " (active)" if opts.activate else ""
    )
    return record


def activate(client: redis.Redis, name: str, version: int) -> VersionRecord:
    """Make an existing version active on its feeds (e.g. to roll forward again)."""
    registry = Registry(client)
    record = registry.get(name, version)
    missing = [k for k in (keys.model(f, name, version) for f in record.feeds) if not client.exists(k)]
    if missing:
        raise LoaderError(
            f"{record.label} is registered but its copies {', '.join(missing)} are gone; load it again"
        )
    registry.activate(record)
    return record


def rollback(client: redis.Redis, name: str) -> VersionRecord:
    """Activate the version that was active before the current one."""
    registry = Registry(client)
    previous = registry.previous_active(name)
    if previous is None:
        raise LoaderError(f"model {name} has no earlier active version to roll back to")
    registry.activate(previous)
    return previous


def remove(client: redis.Redis, name: str, version: int) -> VersionRecord:
    """Delete a version that no feed runs; the active version cannot be removed."""
    registry = Registry(client)
    record = registry.get(name, version)
    busy = [f for f in record.feeds if _text(client.get(keys.active_model(f))) == record.label]
    if registry.active(name) == version or busy:
        raise LoaderError(
            f"{record.label} is active (feeds: {', '.join(busy) or ', '.join(record.feeds)}); activate another "
            f"version first (`groundwatch model rollback {name}` or `groundwatch load ...`)"
        )
    client.delete(*(keys.model(f, name, version) for f in record.feeds))
    registry.forget(record)
    return record


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class VersionStats:
    record: VersionRecord
    active: bool
    calls: int
    samples: int
    errors: int
    mean_ms: float


def stats(client: redis.Redis, names: Sequence[str] | None = None) -> list[VersionStats]:
    """Every registered version with the engine's AI.INFO figures summed over its feed copies."""
    registry = Registry(client)
    engine = Engine(client)
    out = []
    for name in names or registry.names():
        active = registry.active(name)
        for rec in registry.versions(name):
            calls = samples = errors = duration = 0
            for feed in rec.feeds:
                try:
                    info = engine.model_info(keys.model(feed, name, rec.version))
                except EngineError:
                    continue
                calls, samples = calls + info.calls, samples + info.samples
                errors, duration = errors + info.errors, duration + info.duration_us
            mean_ms = duration / calls / 1000 if calls else 0.0
            out.append(VersionStats(rec, rec.version == active, calls, samples, errors, mean_ms))
    return out
