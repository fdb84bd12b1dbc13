"""Merging what tile overlaps see twice: class-aware greedy merge in scene pixels (pure).

Candidates are taken best first; every later candidate of the same class that overlaps the
kept one enough (IoU >= `iou`, or the smaller box lies mostly inside the larger one:
intersection / smaller area >= `containment`, which catches an object cut by a tile edge) joins
its cluster. The cluster reports the box of its best member that is not cut by a tile edge
(else its best member), the cluster's highest score, and every tile that saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from groundwatch.detections import Box, Detection

IOU = 0.45
CONTAINMENT = 0.7


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def same_object(a: Box, b: Box, iou: float = IOU, containment: float = CONTAINMENT) -> bool:
    inter = _inter(a, b)
    if inter <= 0:
        return False
    area_a, area_b = _area(a), _area(b)
    union = area_a + area_b - inter
    if union > 0 and inter / union >= iou:
        return True
    smaller = min(area_a, area_b)
    return smaller > 0 and inter / smaller >= containment


def merge(
    detections: Sequence[Detection], iou: float = IOU, containment: float = CONTAINMENT
) -> list[Detection]:
    """One detection per object (see the module doc), best score first; deterministic."""
    order = sorted(
        detections, key=lambda d: (-d.score, d.tile, d.scene_box_px, d.class_id)
    )
    used = [False] * len(order)
    out: list[Detection] = []
    for i, seed in enumerate(order):
        if used[i]:
            continue
        used[i] = True
        cluster = [seed]
        for j in range(i + 1, len(order)):
            if used[j] or order[j].class_id != seed.class_id:
                continue
            if same_object(seed.scene_box_px, order[j].scene_box_px, iou, containment):
                used[j] = True
                cluster.append(order[j])
        whole = [d for d in cluster if not d.cut]
        keep = whole[0] if whole else cluster[0]
        out.append(
            replace(keep, score=seed.score, tiles=tuple(sorted({d.tile for d in cluster})))
        )
    out.sort(key=lambda d: (-d.score, d.scene_box_px))
    return out
