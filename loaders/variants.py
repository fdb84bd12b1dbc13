"""Variants of a registered version (int8 files, engine-optimised copies) and the agreement check
that guards their activation.

A variant is compared with its source version *in the engine*: both run on the same deterministic
sample tiles (synthetic scenes with ships and platforms, from ``models.scenes``; seeds fixed here),
detections at or above the score threshold are matched class-aware by IoU, and

  agreement        = matched pairs / max(source detections, variant detections)   (1.0 if both none)
  mean score delta = mean |score_source - score_variant| over the matched pairs

must reach the user's bounds (``--agree``, ``--max-score-delta``) before the loader activates it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from groundwatch import keys
from groundwatch.ai import Engine, EngineError
from groundwatch.boxes import iou_matrix
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError
from loaders.registry import Registry, VersionRecord

SAMPLE_SEED_BASE = 700_000  # neither training (1,000,000+) nor the evaluation seeds (1..)
SAMPLE_BATCH = 4
MATCH_IOU = 0.5
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


def sample_tiles(meta: ModelMetadata, count: int) -> np.ndarray:
    """`count` deterministic tiles [N, C, S, S] of the model's dtype with 3 ships and 2 platforms each
    (synthetic SAR-like scenes); plain sea-like noise when the models package is not installed."""
    shape = (count, meta.bands, meta.tile_size, meta.tile_size)
    try:
        from models.scenes import SceneConfig, draw_scene
    except ImportError:  # pragma: no cover - the models package ships with groundwatch
        return np.random.default_rng(SAMPLE_SEED_BASE).integers(0, 2000, shape).astype(meta.dtype)
    out = np.empty(shape, dtype=np.dtype(meta.dtype))
    config = SceneConfig(
        width_px=meta.tile_size, height_px=meta.tile_size, bands=meta.bands, n_ships=3, n_platforms=2
    )
    for i in range(count):
        image, _, _ = draw_scene(SAMPLE_SEED_BASE + i, config)
        if meta.dtype == "uint8":
            image = np.clip(image, 0, 255)
        out[i] = image.astype(out.dtype)
    return out


def match_tile(source: np.ndarray, variant: np.ndarray, threshold: float) -> tuple[int, int, list[float]]:
    """Greedy class-aware matching of one tile's [K, 6] rows by score; (n_source, n_variant, |score
    deltas| of the matched pairs)."""
    a = source[source[:, 4] >= threshold].astype(np.float64)
    b = variant[variant[:, 4] >= threshold].astype(np.float64)
    deltas: list[float] = []
    if len(a) and len(b):
        iou = iou_matrix(a[:, :4], b[:, :4])
        iou[a[:, None, 5] != b[None, :, 5]] = 0.0
        used = np.zeros(len(b), dtype=bool)
        for i in np.argsort(-a[:, 4]):
            candidates = np.where(~used & (iou[i] >= MATCH_IOU), iou[i], -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] >= MATCH_IOU:
                used[j] = True
                deltas.append(abs(float(a[i, 4] - b[j, 4])))
    return len(a), len(b), deltas


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


def run_tiles(engine: Engine, model_key: str, route_key: str, tiles: np.ndarray) -> np.ndarray:
    outs = [
        engine.run(model_key, tiles[i : i + SAMPLE_BATCH], route_key)
        for i in range(0, len(tiles), SAMPLE_BATCH)
    ]
    return np.concatenate(outs)


def compare_in_engine(
    engine: Engine,
    source: VersionRecord,
    variant_feed: str,
    variant_version: int,
    meta: ModelMetadata,
    tiles: int,
) -> Agreement:
    """Both versions in the engine on the same sample tiles (the source on a feed of its own)."""
    feed = variant_feed if variant_feed in source.feeds else source.feeds[0]
    sample = sample_tiles(meta, tiles)
    try:
        out_source = run_tiles(
            engine, keys.model(feed, source.name, source.version), keys.dag_routing(feed), sample
        )
        out_variant = run_tiles(
            engine,
            keys.model(variant_feed, source.name, variant_version),
            keys.dag_routing(variant_feed),
            sample,
        )
    except EngineError as e:
        raise LoaderError(f"could not compare with the source version {source.label}: {e}") from e
    threshold = meta.score_threshold_hint if meta.score_threshold_hint is not None else 0.5
    return agreement(out_source, out_variant, threshold)


def parse_version_label(label: str, default_name: str) -> tuple[str, int]:
    """ "NAME:VERSION" or "VERSION" (the loaded model's name)."""
    name, _, version = label.rpartition(":")
    try:
        return (name or default_name), int(version)
    except ValueError:
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
        src_name, src_version = parse_version_label(variant_of, name)
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
