"""Evaluate a segmentation model (contract 2) as the service serves it: IoU per class on held-out
synthetic scenes against their truth masks.

The scored polygons go through the service's own functions: the tile grid and padding ingest
publishes (:func:`groundwatch.geometry.tiles_of`), each tile's owned core
(:func:`groundwatch.geometry.core_window`), the consumers' decoding and vectorising
(:func:`groundwatch.regions.decode_mask`, :func:`~groundwatch.regions.vectorise`), the merge
across tiles with the served minimum region area and the simplification at the served tolerance
(:func:`~groundwatch.regions.merge`, :func:`groundwatch.modelmeta.region_minimum`,
:func:`~groundwatch.regions.simplify`). The published polygons are rasterised back onto the
scene's pixels (pixel centres inside) and compared with the truth mask pixel by pixel; a class's
IoU pools all scenes (intersection and union summed over them). The runner is any
:data:`models.evaluate.TileRunner`: in process, or the engine as the consumers call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groundwatch import geometry, regions
from groundwatch.modelmeta import ModelMetadata, region_minimum
from models.errors import ModelsError
from models.evaluate import TileRunner, no_results, run_scene, truth_files
from models.scenes import SEG_CLASSES, SceneConfig, generate_scene

HELD_OUT_SEED_BASE = 1  # training uses models.segmenter.TRAIN_SEED_BASE (2,000,000) and up


@dataclass(frozen=True)
class SegEvalConfig:
    scenes: int = 8
    size_px: int = 1024
    bands: int = 1
    seed_base: int = HELD_OUT_SEED_BASE
    tile_px: int = 512
    overlap_px: int = 64
    batch_size: int = 4
    simplify_px: float = 1.0  # the consumers' default tolerance (GROUNDWATCH_SIMPLIFY_PX)
    # None: the model's own min_region_px, as the consumers serve it (GROUNDWATCH_MIN_REGION_PX)
    min_region_px: int | None = None


def served_regions(
    outputs: Any,
    meta: ModelMetadata,
    width_px: int,
    height_px: int,
    tile_px: int,
    overlap_px: int,
    min_region_px: Sequence[int] = (),
) -> list[regions.Piece]:
    """What the consumers make of a scene's tile outputs: each tile's core vectorised, merged,
    the regions under `min_region_px` (per class id) dropped."""
    pieces: list[regions.Piece] = []
    for index, t in enumerate(outputs):
        out = t.output if t.output.ndim == 4 else t.output[None]
        ids, prob = regions.decode_mask(out, meta, t.tile_h, t.tile_w)
        core = geometry.core_window(t.window, width_px, height_px, tile_px, overlap_px)
        pieces.extend(regions.vectorise(ids, prob, t.window, core, meta.background, index))
    return regions.merge(pieces, min_region_px)


class IouTally:
    """Intersection and union per class pooled over scenes: the one home of the IoU that
    ``groundwatch evaluate SEGMENTER`` and ``groundwatch evaluate --feed`` report."""

    def __init__(self, classes: Sequence[str], background: int) -> None:
        self.classes = tuple(classes)
        self.background = background
        k = len(self.classes)
        self.inter = np.zeros(k, dtype=np.int64)
        self.union = np.zeros(k, dtype=np.int64)
        self.truth_px = np.zeros(k, dtype=np.int64)
        self.polygons = np.zeros(k, dtype=np.int64)

    def add(self, predicted: np.ndarray, truth: np.ndarray, class_ids: Iterable[int]) -> None:
        """One scene: its published polygons rasterised (`predicted`), its truth mask, and the class
        id of each published polygon."""
        if predicted.shape != truth.shape:
            raise ValueError(f"predicted mask {predicted.shape} and truth mask {truth.shape} differ in size")
        for c in range(len(self.classes)):
            a, b = predicted == c, truth == c
            self.inter[c] += int((a & b).sum())
            self.union[c] += int((a | b).sum())
            self.truth_px[c] += int(b.sum())
        for c in class_ids:
            self.polygons[c] += 1

    def per_class(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "iou": round(float(self.inter[c] / self.union[c]), 4) if self.union[c] else None,
                "truth_pixels": int(self.truth_px[c]),
                "polygons": int(self.polygons[c]),
            }
            for c, name in enumerate(self.classes)
        }

    def mean_foreground(self) -> float | None:
        """Mean IoU of the classes other than the background that occur (truth or published)."""
        fg = [
            float(self.inter[c] / self.union[c])
            for c in range(len(self.classes))
            if c != self.background and self.union[c]
        ]
        return round(float(np.mean([round(v, 4) for v in fg])), 4) if fg else None


def evaluate_segmenter(
    run: TileRunner, meta: ModelMetadata, config: SegEvalConfig | None = None
) -> dict[str, Any]:
    """IoU per class (pooled over the held-out scenes), with the counts behind it."""
    config = config or SegEvalConfig()
    if tuple(meta.classes) != SEG_CLASSES:
        raise ModelsError(
            f"the synthetic scenes' segmentation truth has classes {list(SEG_CLASSES)}; the model declares "
            f"{list(meta.classes)}, so they cannot be compared"
        )
    tally = IouTally(SEG_CLASSES, meta.background)
    minimum = region_minimum(config.min_region_px, meta)
    t0 = time.monotonic()
    tiles = 0
    for i in range(config.scenes):
        seed = config.seed_base + i
        scene = generate_scene(
            seed, SceneConfig(width_px=config.size_px, height_px=config.size_px, bands=config.bands)
        )
        assert scene.mask is not None
        outputs = run_scene(run, scene.image, config.tile_px, config.overlap_px, None, config.batch_size)
        tiles += len(outputs)
        merged = served_regions(
            outputs, meta, config.size_px, config.size_px, config.tile_px, config.overlap_px, minimum
        )
        shapes = [(p.class_id, regions.simplify(p.rings_px, config.simplify_px)) for p in merged]
        predicted = regions.rasterize(shapes, config.size_px, config.size_px, fill=meta.background)
        tally.add(predicted, scene.mask, (p.class_id for p in merged))
    return {
        "per_class": tally.per_class(),
        "mean_iou_foreground": tally.mean_foreground(),
        "scenes": config.scenes,
        "size_px": config.size_px,
        "seeds": [config.seed_base, config.seed_base + config.scenes - 1],
        "tiles": tiles,
        "simplify_px": config.simplify_px,
        "min_region_px": {name: minimum[c] if minimum else 0 for c, name in enumerate(SEG_CLASSES)},
        "seconds": round(time.monotonic() - t0, 1),
    }


def truth_mask(scene_id: str, doc: dict[str, Any]) -> tuple[np.ndarray, Any, str]:
    """(truth mask [H, W], the scene's affine transform, its CRS) of a truth file of
    ``groundwatch generate``: the file names its seed and size, so the scene (and its mask, which
    the file does not hold) is drawn again, and checked against the file's objects."""
    from rasterio.transform import Affine

    header = doc.get("groundwatch", {})
    try:
        seed, width, height = int(header["seed"]), int(header["width_px"]), int(header["height_px"])
        bands = int(header.get("bands", 1))
        transform = Affine(*[float(v) for v in header["transform"][:6]])
        crs = str(header["crs"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelsError(
            f"the truth file of scene {scene_id} has no seed, size, transform or crs in its 'groundwatch' "
            f"header ({e!r}): only scenes written by `groundwatch generate` can be scored against a mask"
        ) from e
    scene = generate_scene(seed, SceneConfig(width_px=width, height_px=height, bands=bands))
    boxes = [list(map(int, f["properties"]["pixel_box"])) for f in doc.get("features", [])]
    if scene.mask is None or boxes != [list(o.box_px) for o in scene.objects]:
        raise ModelsError(
            f"the truth file of scene {scene_id} (seed {seed}, {width}x{height} px) does not match the scene "
            "this groundwatch draws for that seed (drawn by another version, or with other counts than "
            "`groundwatch generate` draws): generate the scenes again (`groundwatch generate --out DIR`) "
            "and ingest those"
        )
    return scene.mask, transform, crs


def published_mask(
    found: Sequence[Any], transform: Any, crs: str, width_px: int, height_px: int, background: int
) -> tuple[np.ndarray, list[int]]:
    """The published region features (:class:`groundwatch.detections.Region`: lon/lat outlines, as
    served) taken back to the scene's pixels and rasterised, with each one's class in SEG_CLASSES."""
    from rasterio.warp import transform as warp

    inverse = ~transform
    shapes: list[tuple[int, tuple[regions.Ring, ...]]] = []
    for g in found:
        if g.label not in SEG_CLASSES:
            raise ModelsError(
                f"the feed published regions of class {g.label!r}; the synthetic scenes' truth has classes "
                f"{list(SEG_CLASSES)}, so they cannot be compared"
            )
        rings = []
        for ring in g.rings:
            xs, ys = warp("EPSG:4326", crs, [p[0] for p in ring], [p[1] for p in ring])
            rings.append(tuple(inverse @ (x, y) for x, y in zip(xs, ys, strict=True)))
        shapes.append((SEG_CLASSES.index(g.label), tuple(rings)))
    mask = regions.rasterize(shapes, height_px, width_px, fill=background)
    return mask, [c for c, _r in shapes]


def evaluate_feed_regions(scene_results: Callable[[str], Any], truth_dir: Path) -> dict[str, Any]:
    """IoU per class of the region results a running stack published (a segmentation feed).

    `scene_results(scene_id)` returns the scene's :class:`groundwatch.detections.SceneResult` (None
    while it is not complete); `truth_dir` holds the truth files ``groundwatch generate`` wrote
    for the ingested scenes. Each scene's published polygons (the simplified lon/lat outlines, as
    a subscriber gets them) are taken back to scene pixels, rasterised and compared with the
    scene's truth mask; IoU pools the scenes, as :func:`evaluate_segmenter` does."""
    background = 0  # SEG_CLASSES' "sea": never published, the pixels no polygon covers
    tally = IouTally(SEG_CLASSES, background)
    names: list[str] = []
    missing: list[str] = []
    for scene_id, doc in truth_files(truth_dir):
        result = scene_results(scene_id)
        if result is None:
            missing.append(scene_id)
            continue
        truth, transform, crs = truth_mask(scene_id, doc)
        height, width = truth.shape
        predicted, classes = published_mask(result.regions, transform, crs, width, height, background)
        tally.add(predicted, truth, classes)
        names.append(scene_id)
    if not names:
        raise no_results(truth_dir, missing)
    return {
        "per_class": tally.per_class(),
        "mean_iou_foreground": tally.mean_foreground(),
        "scenes": len(names),
        "scene_ids": names,
        "missing": missing,
    }
