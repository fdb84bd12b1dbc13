"""Evaluate a segmentation model (contract 2) as the service serves it: IoU per class on held-out
synthetic scenes against their truth masks.

The scored polygons go through the service's own functions: the tile grid and padding ingest
publishes (:func:`groundwatch.geometry.tiles_of`), each tile's owned core
(:func:`groundwatch.geometry.core_window`), the consumers' decoding and vectorising
(:func:`groundwatch.regions.decode_mask`, :func:`~groundwatch.regions.vectorise`), the merge
across tiles and the simplification at the served tolerance (:func:`~groundwatch.regions.merge`,
:func:`~groundwatch.regions.simplify`). The published polygons are rasterised back onto the
scene's pixels (pixel centres inside) and compared with the truth mask pixel by pixel; a class's
IoU pools all scenes (intersection and union summed over them). The runner is any
:data:`models.evaluate.TileRunner`: in process, or the engine as the consumers call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundwatch import geometry, regions
from groundwatch.modelmeta import ModelMetadata
from models.evaluate import TileRunner, run_scene
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


def served_regions(
    outputs: Any, meta: ModelMetadata, width_px: int, height_px: int, tile_px: int, overlap_px: int
) -> list[regions.Piece]:
    """What the consumers make of a scene's tile outputs: each tile's core vectorised, merged."""
    pieces: list[regions.Piece] = []
    for index, t in enumerate(outputs):
        out = t.output if t.output.ndim == 4 else t.output[None]
        ids, prob = regions.decode_mask(out, meta, t.tile_h, t.tile_w)
        core = geometry.core_window(t.window, width_px, height_px, tile_px, overlap_px)
        pieces.extend(regions.vectorise(ids, prob, t.window, core, meta.background, index))
    return regions.merge(pieces)


def evaluate_segmenter(
    run: TileRunner, meta: ModelMetadata, config: SegEvalConfig | None = None
) -> dict[str, Any]:
    """IoU per class (pooled over the held-out scenes), with the counts behind it."""
    config = config or SegEvalConfig()
    if tuple(meta.classes) != SEG_CLASSES:
        from models.errors import ModelsError

        raise ModelsError(
            f"the synthetic scenes' segmentation truth has classes {list(SEG_CLASSES)}; the model declares "
            f"{list(meta.classes)}, so they cannot be compared"
        )
    k = len(SEG_CLASSES)
    inter = np.zeros(k, dtype=np.int64)
    union = np.zeros(k, dtype=np.int64)
    truth_px = np.zeros(k, dtype=np.int64)
    polygons = np.zeros(k, dtype=np.int64)
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
            outputs, meta, config.size_px, config.size_px, config.tile_px, config.overlap_px
        )
        shapes = [(p.class_id, regions.simplify(p.rings_px, config.simplify_px)) for p in merged]
        predicted = regions.rasterize(shapes, config.size_px, config.size_px, fill=meta.background)
        for c in range(k):
            a, b = predicted == c, scene.mask == c
            inter[c] += int((a & b).sum())
            union[c] += int((a | b).sum())
            truth_px[c] += int(b.sum())
            polygons[c] += sum(1 for p in merged if p.class_id == c)
    per_class = {
        name: {
            "iou": round(float(inter[c] / union[c]), 4) if union[c] else None,
            "truth_pixels": int(truth_px[c]),
            "polygons": int(polygons[c]),
        }
        for c, name in enumerate(SEG_CLASSES)
    }
    fg = [
        per_class[n]["iou"]
        for c, n in enumerate(SEG_CLASSES)
        if c != meta.background and per_class[n]["iou"] is not None
    ]
    fg_iou = [float(v) for v in fg if v is not None]
    return {
        "per_class": per_class,
        "mean_iou_foreground": round(float(np.mean(fg_iou)), 4) if fg_iou else None,
        "scenes": config.scenes,
        "size_px": config.size_px,
        "seeds": [config.seed_base, config.seed_base + config.scenes - 1],
        "tiles": tiles,
        "simplify_px": config.simplify_px,
        "seconds": round(time.monotonic() - t0, 1),
    }
