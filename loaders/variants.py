"""Variants of a registered version (int8 files, engine-optimised copies) and the agreement check
that guards their activation.

A variant is compared with its source version *in the engine*: both run on the same sample tiles
(given by the caller, e.g. ``groundwatch load --compare-samples FILE.npy``; else the most recent
frames on the variant's feed, the tiles that feed really sees), the rows the consumers would
keep (:func:`groundwatch.geometry.decode_rows` at the served threshold) are paired by the one
matcher (:func:`groundwatch.geometry.match`, class-aware, IoU >= 0.5), and

  agreement        = matched pairs / max(source detections, variant detections)   (1.0 if both none)
  mean score delta = mean |score_source - score_variant| over the matched pairs

must reach the user's bounds (``--agree``, ``--max-score-delta``) before the loader activates it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import redis

from groundwatch import frames, geometry, keys, modelmeta
from groundwatch.ai import Engine, EngineError
from groundwatch.modelmeta import ModelMetadata
from groundwatch.registry import ModelRef, RegistryError
from loaders import LoaderError
from loaders.registry import Registry, VersionRecord

SAMPLE_BATCH = 4
MATCH_IOU = geometry.MATCH_IOU
OPTIMIZE_METHOD = "engine OPTIMIZE (torch.jit.freeze + optimize_for_inference at store time)"


@dataclass(frozen=True)
class Agreement:
    tiles: int
    threshold: float
    source_detections: int
    variant_detections: int
    matched: int
    fraction: float
    mean_score_delta: float
    max_score_delta: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (
            f"agreement {self.fraction:.3f} ({self.matched} of {self.source_detections} source / "
            f"{self.variant_detections} variant detections matched at IoU {MATCH_IOU}, score >= "
            f"{self.threshold:g}, {self.tiles} tiles), mean score delta {self.mean_score_delta:.4f} "
            f"(max {self.max_score_delta:.4f})"
        )


def check_samples(samples: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """Sample tiles [N, C, S, S] in the model's dtype; LoaderError when they cannot be its input."""
    arr = np.asarray(samples)
    want = (meta.bands, meta.tile_size, meta.tile_size)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != want or len(arr) < 1:
        raise LoaderError(
            f"sample tiles of shape {list(arr.shape)} do not fit the model: it takes [N, {want[0]}, "
            f"{want[1]}, {want[2]}] tiles of {meta.dtype}"
        )
    return np.ascontiguousarray(arr.astype(np.dtype(meta.dtype), copy=False))


def feed_samples(client: redis.Redis, feed: str, meta: ModelMetadata, count: int) -> np.ndarray | None:
    """Up to `count` of the most recent frames on `feed` that fit the model; None if there are none."""
    tiles: list[np.ndarray] = []
    want = (meta.bands, meta.tile_size, meta.tile_size)
    for _id, fields in client.xrevrange(keys.frames(feed), count=count * 4):
        try:
            frame = frames.decode(fields)
        except frames.FrameError:
            continue
        tile = frame.array()
        if tuple(tile.shape) == want and tile.dtype == np.dtype(meta.dtype):
            tiles.append(tile)
        if len(tiles) == count:
            break
    return np.stack(tiles) if tiles else None


def match_tile(source: np.ndarray, variant: np.ndarray, threshold: float) -> tuple[int, int, list[float]]:
    """One tile's [K, 6] outputs: the rows served at `threshold`, paired by the matcher; (n_source,
    n_variant, |score deltas| of the matched pairs)."""
    a = geometry.decode_rows(source, threshold)
    b = geometry.decode_rows(variant, threshold)
    pairs = geometry.match(a[:, :4], a[:, 4], a[:, 5], b[:, :4], b[:, 5], MATCH_IOU)
    return len(a), len(b), [abs(float(a[i, 4] - b[j, 4])) for i, j in pairs]


def agreement(source: np.ndarray, variant: np.ndarray, threshold: float) -> Agreement:
    """Agreement of two [N, K, 6] outputs on the same tiles."""
    n_a = n_b = 0
    deltas: list[float] = []
    for s, v in zip(source, variant, strict=True):
        a, b, d = match_tile(s, v, threshold)
        n_a, n_b, deltas = n_a + a, n_b + b, deltas + d
    top = max(n_a, n_b)
    return Agreement(
        tiles=len(source),
        threshold=threshold,
        source_detections=n_a,
        variant_detections=n_b,
        matched=len(deltas),
        fraction=len(deltas) / top if top else 1.0,
        mean_score_delta=float(np.mean(deltas)) if deltas else 0.0,
        max_score_delta=float(np.max(deltas)) if deltas else 0.0,
    )


def run_tiles(engine: Engine, model_key: str, tiles: np.ndarray) -> np.ndarray:
    # routed by the model copy, a key that exists (see loader.warm_up)
    outs = [
        engine.run(model_key, tiles[i : i + SAMPLE_BATCH], model_key)
        for i in range(0, len(tiles), SAMPLE_BATCH)
    ]
    return np.concatenate(outs)


def compare_in_engine(
    engine: Engine,
    source: VersionRecord,
    variant_feed: str,
    variant_version: int,
    meta: ModelMetadata,
    samples: np.ndarray,
) -> Agreement:
    """Both versions in the engine on the same sample tiles (the source on a feed of its own)."""
    feed = variant_feed if variant_feed in source.feeds else source.feeds[0]
    sample = check_samples(samples, meta)
    try:
        out_source = run_tiles(engine, source.ref.key(feed), sample)
        out_variant = run_tiles(engine, ModelRef(source.name, variant_version).key(variant_feed), sample)
    except EngineError as e:
        raise LoaderError(f"could not compare with the source version {source.label}: {e}") from e
    return agreement(out_source, out_variant, modelmeta.score_threshold(None, meta.score_threshold_hint))


def parse_version_label(label: str, default_name: str) -> ModelRef:
    """ "NAME:VERSION" or "VERSION" (the loaded model's name)."""
    try:
        return ModelRef.parse(label, default_name)
    except RegistryError:
        raise LoaderError(f"--variant-of wants NAME:VERSION (e.g. ship:1), got {label!r}") from None


def find_source(
    registry: Registry,
    name: str,
    *,
    variant_of: str | None,
    file_provenance: Any,
    sha256: str,
    optimize: bool,
    activate: bool,
) -> VersionRecord | None:
    """The version a new load is a variant of, or None for an ordinary load.

    Explicit (``variant_of``); or the file's ``provenance.source_sha256`` names a registered version
    of the same model (an int8 file from ``groundwatch quantize``); or, with ``optimize``, a
    registered unoptimised version of the very same file.
    """
    if variant_of:
        ref = parse_version_label(variant_of, name)
        src_name, src_version = ref.name, ref.version
        if src_name != name:
            raise LoaderError(
                f"a variant is a version of the same model: --variant-of {variant_of} names {src_name}, "
                f"not {name}"
            )
        return registry.get(src_name, src_version)
    versions = registry.versions(name)
    if isinstance(file_provenance, dict) and file_provenance.get("source_sha256"):
        wanted = str(file_provenance["source_sha256"])
        found = [v for v in versions if v.sha256 == wanted]
        if found:
            return max(found, key=lambda v: v.version)
        if activate:
            raise LoaderError(
                f"this file is a variant ({file_provenance.get('method', 'unknown method')}) of a model with "
                f"sha256 {wanted[:12]} that is not registered as {name}: load that model first, name the "
                "version to compare with (--variant-of NAME:VERSION), or load with --no-activate"
            )
        return None
    if optimize:
        found = [v for v in versions if v.sha256 == sha256 and not v.provenance.get("optimized")]
        if found:
            return max(found, key=lambda v: v.version)
    return None
