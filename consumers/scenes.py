"""Scene completion: the merged scene result of a scene whose tiles all have a result.

Each published tile result is also kept in the scene's tile hash (``keys.scene_tiles``). The
commit transaction that adds a batch's tiles reads the hash's length in the same EXEC, so of
two batches racing on a scene's last tiles exactly one sees it complete; that consumer reads the
hash (under WATCH, with the scene's result key) and builds the result here (consumers.commit).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from consumers import ConsumerError
from consumers.reading import text
from consumers.segment import merge_scene
from groundwatch.detections import DetectionFormatError, SceneResult, TileResult, decode_tile
from groundwatch.geometry import merge

log = logging.getLogger("groundwatch.consumers")


def complete(
    feed: str, scene: str, tiles: int, stored: Mapping[Any, Any], ours: Mapping[int, TileResult], now: int
) -> SceneResult | None:
    """The scene result from its tile hash `stored` (tile index -> tile JSON) and the results
    this batch just wrote there (`ours`: not decoded again); None when a tile is missing."""
    by_tile: dict[int, TileResult] = dict(ours)
    for t, doc in stored.items():
        name = text(t)
        if not name.isdigit():
            continue
        index = int(name)
        if index in by_tile or index >= tiles:
            continue
        try:
            by_tile[index] = decode_tile(doc)
        except (DetectionFormatError, ValueError) as e:  # not ours: someone wrote the hash by hand
            log.error("scene %s: stored tile %r does not decode (%s); merged without it", scene, name, e)
            by_tile.setdefault(index, None)  # type: ignore[arg-type]
    if not all(i in by_tile for i in range(tiles)):
        return None
    parts = [by_tile[i] for i in range(tiles) if by_tile[i] is not None]
    if not parts:
        return None
    return scene_result(feed, scene, tiles, parts, now)


def scene_result(feed: str, scene: str, tiles: int, parts: Sequence[TileResult], now: int) -> SceneResult:
    """The scene result of its tile results: every detection, tile overlaps merged."""
    dets = [d for p in parts for d in p.detections]
    try:
        regions = tuple(merge_scene(parts))
    except ConsumerError as e:  # results written by hand without a transform: published unmerged
        log.error("scene %s: regions not merged (%s)", scene, e)
        regions = tuple(g for p in parts for g in p.regions)
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
        regions=regions,
    )
