"""Registering, activating, rolling back and removing model versions.

The order of `load` is what makes a switch safe: store the new version in every feed, warm it
up there, record it, and only then move the feeds' pointers. Consumers keep running the old
version until the pointer moves, and the old version stays stored until it is removed, so no
frame fails during a switch. A version that fails its warm-up is deleted again and never
becomes active.

Variants (an int8 file from `groundwatch quantize`, or `--optimize`, the engine's OPTIMIZE of a
registered file; see loaders/variants.py) are versions like any other whose provenance names the
source version and the method. Before a variant is activated its detections are compared with the
source version's in the engine on sample tiles; below the user's bound it is recorded but not
activated, and the error gives the measured agreement.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

from groundwatch import connection, keys, regions
from groundwatch.ai import Engine, EngineError
from groundwatch.geometry import OutputContractError
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError
from loaders.archive import ModelFile, is_onnx, read_model_file
from loaders.registry import Registry, VersionRecord
from loaders.variants import OPTIMIZE_METHOD, Agreement, compare_in_engine, feed_samples, find_source

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
    optimize: bool = False  # the engine's OPTIMIZE keyword (freeze + inference passes, CPU)
    variant_of: str | None = None  # "NAME:VERSION" to compare with; found from provenance otherwise
    agree: float = 0.9  # minimum matched fraction of detections for a variant to be activated
    max_score_delta: float = 0.05  # maximum mean |score difference| of matched detections
    compare_tiles: int = 8  # frames taken from the feed when compare_samples is None
    compare_samples: np.ndarray | None = None  # [N, C, S, S] tiles a variant is compared on
    # ONNX import (loaders/onnx_import.py): metadata for a file that carries none, and the largest
    # difference from ONNX Runtime accepted (None: onnx_import.DEFAULT_PARITY_TOLERANCE)
    metadata: dict[str, Any] | None = None
    parity_tolerance: float | None = None


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
    if meta.segmentation:  # contract 2: each sample's mask must decode as the consumers decode it
        if out.ndim != 4 or out.shape[0] != batch:
            raise LoaderError(
                f"the model returned {out.dtype} {list(out.shape)} for a batch of {batch}; contract 2 is "
                f"[B, K, H, W] class probabilities or [B, 1, H, W] class ids with B = {batch}"
            )
        for i in range(batch):
            try:
                regions.decode_mask(out[i : i + 1], meta, meta.tile_size, meta.tile_size)
            except OutputContractError as e:
                raise LoaderError(f"the model's output on warm-up tile {i}: {e}") from e
        return
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


def warm_up(engine: Engine, model_key: str, meta: ModelMetadata) -> None:
    # Routed by the model copy itself: a key that exists, so a DAG sent while the feed's slot
    # is migrated follows ASK to wherever the copy is (a second, absent key would get TRYAGAIN).
    for batch in (1, WARMUP_BATCH):
        try:
            out = engine.run(model_key, warmup_input(meta, batch), model_key)
        except EngineError as e:
            raise LoaderError(
                f"warm-up failed: the engine could not run the model on a {meta.dtype} "
                f"[{batch}, {meta.bands}, {meta.tile_size}, {meta.tile_size}] tile batch: {e}"
            ) from e
        check_output(out, meta, batch)


def load(client: redis.Redis, source: str | Path | ModelFile, opts: LoadOptions) -> VersionRecord:
    """Store, warm up, record and (by default) activate one new version. Returns its record.

    An ONNX file is converted to TorchScript first and its original bytes are kept with the record
    (loaders/onnx_import.py)."""
    if isinstance(source, ModelFile):
        model = source
    elif is_onnx(source):
        from loaders import onnx_import  # torch, onnx and onnx2torch: only for ONNX files

        model = onnx_import.read_onnx_file(
            source,
            tolerance=onnx_import.DEFAULT_PARITY_TOLERANCE
            if opts.parity_tolerance is None
            else opts.parity_tolerance,
            samples=opts.compare_samples,
            metadata=opts.metadata,
        )
    else:
        model = read_model_file(source)
    if model.conversion:
        opts = replace(opts, provenance={**model.conversion, **(opts.provenance or {})})
    keys.check_name("model", opts.name)
    for feed in opts.feeds:
        keys.check_name("feed", feed)
    if not opts.feeds:
        raise LoaderError("give at least one feed to serve (--feeds a,b)")
    registry = Registry(client)
    file_provenance = model.metadata.extra.get("provenance")
    origin = find_source(
        registry,
        opts.name,
        variant_of=opts.variant_of,
        file_provenance=file_provenance,
        sha256=model.sha256,
        optimize=opts.optimize,
        activate=opts.activate,
    )
    samples = opts.compare_samples
    if origin is not None and samples is None:
        samples = feed_samples(client, opts.feeds[0], model.metadata, opts.compare_tiles)
        if samples is None:
            raise LoaderError(
                f"this file is a variant of {origin.label}, and activating it needs sample tiles to "
                f"compare the two on: feed {opts.feeds[0]} has no frames the model takes. Pass "
                "--compare-samples FILE.npy ([N, bands, tile, tile] tiles of the model's dtype; "
                "`groundwatch generate --sample-tiles FILE.npy` writes some), publish frames to the "
                "feed first, or load with --no-activate"
            )
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
    optimize_state: tuple[bool, str] | None = None
    compared: Agreement | None = None
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
                optimize=opts.optimize,
            )
            stored.append(key)
            if opts.optimize and optimize_state is None:
                optimize_state = engine.optimize_state(key)
            warm_up(engine, key, model.metadata)
        if origin is not None:
            assert samples is not None
            compared = compare_in_engine(engine, origin, opts.feeds[0], version, model.metadata, samples)
    except (EngineError, LoaderError) as e:
        _delete_quietly(client, stored)
        raise LoaderError(f"{opts.name} version {version} from {model.path} was not activated: {e}") from e
    except BaseException:
        # Redis went away, Ctrl-C...: no unregistered copy stays behind in the feeds.
        _delete_quietly(client, stored)
        raise
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
        provenance=_provenance(opts, file_provenance, origin, optimize_state, compared),
    )
    if model.original is not None:
        registry.record_original(record, model.original)  # first: a record never lacks its original
    registry.record(record)
    if compared is not None and opts.activate and not _agrees(compared, opts):
        raise LoaderError(
            f"{record.label} is a variant of {origin.label if origin else '?'} that does not agree with it "
            f"closely enough: {compared.describe()}; the bound is agreement >= {opts.agree:g} and mean score "
            f"delta <= {opts.max_score_delta:g}. It is stored but not active (`groundwatch model activate "
            f"{opts.name} {version}` to use it anyway, or `groundwatch model remove {opts.name} {version}`)"
        )
    if opts.optimize and optimize_state is not None and not optimize_state[0]:
        log.warning("%s: the engine stored it unoptimised: %s", record.label, optimize_state[1])
    if opts.activate:
        registry.activate(record)
    log.info(
        "loaded %s into feeds %s%s", record.label, ", ".join(opts.feeds), " (active)" if opts.activate else ""
    )
    return record


def _agrees(a: Agreement, opts: LoadOptions) -> bool:
    return a.fraction >= opts.agree and a.mean_score_delta <= opts.max_score_delta


def _provenance(
    opts: LoadOptions,
    file_provenance: Any,
    source: VersionRecord | None,
    optimize_state: tuple[bool, str] | None,
    compared: Agreement | None,
) -> dict[str, Any]:
    """The record's provenance: the caller's, the file's (method, source sha256), the engine's
    optimisation outcome, the source version and the measured agreement."""
    out: dict[str, Any] = dict(opts.provenance or {})
    methods = []
    if isinstance(file_provenance, dict):
        for k in ("source_sha256", "calibration"):
            if k in file_provenance:
                out.setdefault(k, file_provenance[k])
        if file_provenance.get("method"):
            methods.append(str(file_provenance["method"]))
    out["optimized"] = bool(optimize_state and optimize_state[0])
    if opts.optimize:
        methods.append(OPTIMIZE_METHOD)
        out["optimize_status"] = optimize_state[1] if optimize_state else "not reported by the engine"
    if methods:
        out.setdefault("method", " + ".join(methods))
    if source is not None:
        out["source_version"] = source.label
    if compared is not None:
        out["agreement"] = {
            **compared.as_dict(),
            "bound": opts.agree,
            "max_score_delta_bound": opts.max_score_delta,
            "passed": _agrees(compared, opts),
        }
    return out


def _delete_quietly(client: redis.Redis, stored: list[str]) -> None:
    for key in stored:  # one by one: on a cluster each feed's copy is on its feed's shard
        with contextlib.suppress(redis.RedisError):
            connection.on_slot(client, key).delete(key)


def activate(client: redis.Redis, name: str, version: int) -> VersionRecord:
    """Make an existing version active on its feeds (e.g. to roll forward again)."""
    registry = Registry(client)
    record = registry.get(name, version)
    copies = [keys.model(f, name, version) for f in record.feeds]
    missing = [k for k in copies if not connection.on_slot(client, k).exists(k)]
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
    busy = [
        f
        for f in record.feeds
        if _text(connection.on_slot(client, keys.active_model(f)).get(keys.active_model(f))) == record.label
    ]
    if registry.active(name) == version or busy:
        raise LoaderError(
            f"{record.label} is active (feeds: {', '.join(busy) or ', '.join(record.feeds)}); activate another "
            f"version first (`groundwatch model rollback {name}` or `groundwatch load ...`)"
        )
    for key in (keys.model(f, name, version) for f in record.feeds):
        connection.on_slot(client, key).delete(key)
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
