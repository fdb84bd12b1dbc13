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

import numpy as np

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
    """One detection per object (see the module doc), best score first; deterministic.

    Each seed is compared with all remaining candidates in one numpy step, so a scene of a few
    thousand raw detections merges in milliseconds.
    """
    order = sorted(detections, key=lambda d: (-d.score, d.tile, d.scene_box_px, d.class_id))
    if not order:
        return []
    boxes = np.array([d.scene_box_px for d in order], dtype=np.float64)
    classes = np.array([d.class_id for d in order])
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    alive = np.ones(len(order), dtype=bool)
    out: list[Detection] = []
    for i, seed in enumerate(order):
        if not alive[i]:
            continue
        alive[i] = False
        cand = np.flatnonzero(alive & (classes == classes[i]))
        members: list[int] = [i]
        if cand.size:
            b = boxes[cand]
            w = np.minimum(boxes[i, 2], b[:, 2]) - np.maximum(boxes[i, 0], b[:, 0])
            h = np.minimum(boxes[i, 3], b[:, 3]) - np.maximum(boxes[i, 1], b[:, 1])
            inter = np.where((w > 0) & (h > 0), w * h, 0.0)
            union = areas[i] + areas[cand] - inter
            smaller = np.minimum(areas[i], areas[cand])
            match = (inter > 0) & (
                ((union > 0) & (inter >= iou * union)) | ((smaller > 0) & (inter >= containment * smaller))
            )
            joined = cand[match]
            alive[joined] = False
            members.extend(int(j) for j in joined)
        cluster = [order[j] for j in members]
        whole = [d for d in cluster if not d.cut]
        keep = whole[0] if whole else cluster[0]
        out.append(replace(keep, score=seed.score, tiles=tuple(sorted({d.tile for d in cluster}))))
    out.sort(key=lambda d: (-d.score, d.scene_box_px))
    return out
