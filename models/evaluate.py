"""Evaluate a detector on held-out synthetic scenes: tile, detect, merge, AP@0.5 per class.

:func:`evaluate_model` takes anything callable on a batch tensor ``[B, C, H, W]`` that returns
contract-1 detections ``[B, K, 6]`` (a loaded TorchScript module, or a wrapper that runs a model
version inside the engine), so other variants can be evaluated the same way.

Tiling: tiles of ``tile_px`` (default 512) with ``overlap_px`` (default 64) overlap; the last
tile in each direction is aligned to the scene edge. Each detection is kept only by the tile
whose *core* holds its centre (cores partition the scene at the middle of each overlap), then a
class-aware NMS merges what is left. AP is VOC-style all-point interpolated average precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundwatch.boxes import iou_matrix
from models.scenes import CLASSES, Scene, SceneConfig, generate_scene

HELD_OUT_SEED_BASE = 1  # training uses seeds from models.train.TRAIN_SEED_BASE (1,000,000) up
STRIDE = 4


@dataclass(frozen=True)
class EvalConfig:
    scenes: int = 4
    size_px: int = 2048
    bands: int = 1
    seed_base: int = HELD_OUT_SEED_BASE
    tile_px: int = 512
    overlap_px: int = 64
    batch_size: int = 8
    iou_threshold: float = 0.5
    nms_iou: float = 0.5
    min_score: float = 0.05
    score_threshold: float = 0.3  # for the precision/recall columns only; AP uses every score


def tile_origins(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets of tiles covering [0, length_px): step tile - overlap, last one edge-aligned."""
    if tile_px >= length_px:
        return [0]
    step = tile_px - overlap_px
    if step <= 0:
        raise ValueError(f"overlap {overlap_px} must be smaller than the tile size {tile_px}")
    origins = list(range(0, length_px - tile_px, step))
    origins.append(length_px - tile_px)
    return origins


def core_bounds(origins: Sequence[int], tile_px: int, length_px: int) -> list[tuple[float, float]]:
    """Per tile, the [lo, hi) range it is responsible for: split at the middle of each overlap."""
    cuts = [0.0] + [(origins[i + 1] + origins[i] + tile_px) / 2 for i in range(len(origins) - 1)]
    cuts.append(float(length_px))
    return [(cuts[i], cuts[i + 1]) for i in range(len(origins))]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2)."""
    return iou_matrix(a, b)


def nms(detections: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware greedy NMS on rows x1, y1, x2, y2, score, class; returns kept rows by score."""
    if len(detections) == 0:
        return detections.reshape(0, 6)
    dets = detections[np.argsort(-detections[:, 4], kind="stable")]
    keep: list[int] = []
    suppressed = np.zeros(len(dets), dtype=bool)
    for i in range(len(dets)):
        if suppressed[i]:
            continue
        keep.append(i)
        same = (dets[:, 5] == dets[i, 5]) & ~suppressed
        same[: i + 1] = False
        if same.any():
            idx = np.nonzero(same)[0]
            suppressed[idx[box_iou(dets[i, :4], dets[idx, :4])[0] > iou_threshold]] = True
    return dets[keep]


BatchFn = Callable[[Any], Any]


def detect_scene(
    model: BatchFn,
    image: np.ndarray,
    tile_px: int = 512,
    overlap_px: int = 64,
    batch_size: int = 8,
    nms_iou: float = 0.5,
    min_score: float = 0.05,
) -> tuple[np.ndarray, int]:
    """Run `model` over a [C, H, W] scene in tiles; return (detections [M, 6] in scene pixels, tiles)."""
    import torch

    _c, h, w = image.shape
    pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    hp, wp = h + pad_h, w + pad_w
    tile_h, tile_w = min(tile_px, hp), min(tile_px, wp)
    rows, cols = tile_origins(hp, tile_h, overlap_px), tile_origins(wp, tile_w, overlap_px)
    row_cores, col_cores = core_bounds(rows, tile_h, hp), core_bounds(cols, tile_w, wp)
    windows = [(r, cc, row_cores[i], col_cores[j]) for i, r in enumerate(rows) for j, cc in enumerate(cols)]
    kept: list[np.ndarray] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = np.stack([image[:, r : r + tile_h, cc : cc + tile_w] for r, cc, _, _ in chunk])
        with torch.no_grad():
            out = model(torch.from_numpy(batch.astype(np.float32)))
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        for (r, cc, (rlo, rhi), (clo, chi)), dets in zip(chunk, out, strict=True):
            dets = dets[dets[:, 4] >= min_score].astype(np.float64)
            dets[:, [0, 2]] += cc
            dets[:, [1, 3]] += r
            cx, cy = (dets[:, 0] + dets[:, 2]) / 2, (dets[:, 1] + dets[:, 3]) / 2
            inside = (cx >= clo) & (cx < chi) & (cy >= rlo) & (cy < rhi)
            kept.append(dets[inside])
    merged = nms(np.concatenate(kept) if kept else np.zeros((0, 6)), nms_iou)
    merged[:, [0, 2]] = merged[:, [0, 2]].clip(0, w)
    merged[:, [1, 3]] = merged[:, [1, 3]].clip(0, h)
    return merged, len(windows)


def match_detections(
    detections: np.ndarray, truth_boxes: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """VOC matching for one image and one class: True per detection (by score order) if it is a TP."""
    order = np.argsort(-detections[:, 4], kind="stable")
    tp = np.zeros(len(detections), dtype=bool)
    if len(truth_boxes) == 0 or len(detections) == 0:
        return tp
    ious = box_iou(detections[order, :4], truth_boxes)
    taken = np.zeros(len(truth_boxes), dtype=bool)
    for rank, i in enumerate(order):
        j = int(np.argmax(ious[rank]))
        if ious[rank, j] >= iou_threshold and not taken[j]:
            taken[j] = True
            tp[i] = True
    return tp


def average_precision(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> float:
    """VOC all-point interpolated AP from every detection's score and TP flag; nan with no truth."""
    if n_truth == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tp_cum / n_truth
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def score_detections(
    per_image: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: Sequence[str] = CLASSES,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> dict[str, dict[str, float]]:
    """Per class AP, truth/detection counts, precision and recall at `score_threshold`.

    per_image: (detections [M, 6], truth boxes [N, 4], truth class ids [N]) per image.
    """
    result: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        scores, flags, n_truth = [], [], 0
        for dets, boxes, ids in per_image:
            d = dets[dets[:, 5] == c]
            t = boxes[ids == c]
            n_truth += len(t)
            scores.append(d[:, 4])
            flags.append(match_detections(d, t, iou_threshold))
        s = np.concatenate(scores) if scores else np.zeros(0)
        f = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
        above = s >= score_threshold
        tp_at = int(f[above].sum())
        result[name] = {
            "ap": average_precision(s, f, n_truth),
            "truth": n_truth,
            "detections": len(s),
            "precision": tp_at / max(int(above.sum()), 1),
            "recall": tp_at / n_truth if n_truth else float("nan"),
        }
    return result


def held_out_scenes(config: EvalConfig) -> Iterable[Scene]:
    """Scenes never used in training (seeds seed_base..; training seeds start at 1,000,000)."""
    for i in range(config.scenes):
        yield generate_scene(
            config.seed_base + i,
            SceneConfig(width_px=config.size_px, height_px=config.size_px, bands=config.bands),
        )


def evaluate_model(
    model: BatchFn,
    scenes: Iterable[Scene] | None = None,
    config: EvalConfig | None = None,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Evaluate a contract-1 detector (callable on [B, C, H, W] batches) on scenes; return the metrics.

    With scenes=None, the held-out scenes of `config` are generated. The result has per class
    ``ap``, ``truth``, ``detections``, ``precision`` and ``recall`` (at config.score_threshold),
    ``map`` (mean AP over classes that have truth), scene and tile counts and timing.
    """
    config = config or EvalConfig()
    scenes = held_out_scenes(config) if scenes is None else scenes
    per_image = []
    tiles, infer_s = 0, 0.0
    seeds = []
    for scene in scenes:
        t0 = time.perf_counter()
        dets, n = detect_scene(
            model,
            scene.image,
            config.tile_px,
            config.overlap_px,
            config.batch_size,
            config.nms_iou,
            config.min_score,
        )
        infer_s += time.perf_counter() - t0
        tiles += n
        seeds.append(scene.seed)
        per_image.append((dets, scene.boxes_px, scene.class_ids))
    per_class = score_detections(per_image, classes, config.iou_threshold, config.score_threshold)
    aps = [v["ap"] for v in per_class.values() if not np.isnan(v["ap"])]
    return {
        "classes": per_class,
        "map": float(np.mean(aps)) if aps else float("nan"),
        "scenes": len(per_image),
        "seeds": seeds,
        "tiles": tiles,
        "seconds": round(infer_s, 2),
        "ms_per_tile": round(1000 * infer_s / max(tiles, 1), 1),
        "iou_threshold": config.iou_threshold,
        "score_threshold": config.score_threshold,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'class':<10} {'AP@' + format(result['iou_threshold'], '.2f'):>8} {'truth':>6} {'dets':>6} "
        f"{'P@' + format(result['score_threshold'], '.2f'):>7} {'R@' + format(result['score_threshold'], '.2f'):>7}"
    ]
    for name, v in result["classes"].items():
        lines.append(
            f"{name:<10} {v['ap']:>8.3f} {v['truth']:>6d} {v['detections']:>6d} "
            f"{v['precision']:>7.3f} {v['recall']:>7.3f}"
        )
    lines.append(f"{'mean':<10} {result['map']:>8.3f}")
    lines.append(
        f"{result['scenes']} scenes (seeds {result['seeds']}), {result['tiles']} tiles, "
        f"{result['seconds']} s, {result['ms_per_tile']} ms per tile (tiling + inference + merge)"
    )
    return "\n".join(lines)
