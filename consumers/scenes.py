"""Scene completion: when a batch holds a scene's last tiles, the merged scene result.

Each published tile result is also kept in the scene's tile hash (``keys.scene_tiles``). The
commit transaction reads that hash under WATCH, so of two batches racing on a scene's last two
tiles exactly one sees the scene complete (the other's EXEC aborts and its retry finds its
tiles already done).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from consumers.reading import text
from groundwatch import keys
from groundwatch.detections import DetectionFormatError, SceneResult, TileResult, decode_tile
from groundwatch.geometry import merge

log = logging.getLogger("groundwatch.consumers")


def completions(pipe: Any, feed: str, fresh: Sequence[TileResult], now: int) -> list[SceneResult]:
    """Scenes that `fresh` completes, merged (`pipe` is a WATCHing pipeline, before MULTI)."""
    by_scene: dict[str, list[TileResult]] = {}
    for r in fresh:
        by_scene.setdefault(r.scene, []).append(r)
    out = []
    for scene, new in sorted(by_scene.items()):
        if pipe.exists(keys.scene_result(feed, scene)):
            continue  # published already (its tiles are kept no longer): one scene result per scene
        key = keys.scene_tiles(feed, scene)
        have = {int(text(t)) for t in pipe.hkeys(key) if text(t).isdigit()}
        tiles = max(r.tiles for r in new)
        indices = have | {r.tile for r in new}
        if not all(i in indices for i in range(tiles)):
            continue
        by_tile: dict[int, TileResult] = {}
        for t, stored in pipe.hgetall(key).items():
            try:
                by_tile[int(text(t))] = decode_tile(stored)
            except (DetectionFormatError, ValueError) as e:  # not ours: someone wrote the hash by hand
                log.error("scene %s: stored tile %r does not decode (%s); merged without it", scene, t, e)
        for r in new:
            by_tile[r.tile] = r
        parts = [by_tile[i] for i in range(tiles) if i in by_tile]
        out.append(scene_result(feed, scene, tiles, parts, now))
    return out


def scene_result(feed: str, scene: str, tiles: int, parts: Sequence[TileResult], now: int) -> SceneResult:
    """The scene result of its tile results: every detection, tile overlaps merged."""
    dets = [d for p in parts for d in p.detections]
    return SceneResult(
        feed=feed,
        scene=scene,
        tiles=tiles,
        models=tuple(sorted({p.model for p in parts})),
        crs=parts[0].crs,
        acquired=parts[0].acquired,
        done_ms=now,
        detections_in=len(dets),
        detections=tuple(merge(dets)),
        source=parts[0].source,
    )
