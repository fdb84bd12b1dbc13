"""AP, matching, NMS, tiling and tile merging on hand-made cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models.evaluate import (
    average_precision,
    core_bounds,
    detect_scene,
    match_detections,
    nms,
    score_detections,
    tile_origins,
)

TRUTH = np.array([[10, 10, 20, 20], [40, 40, 60, 50], [70, 10, 80, 30], [5, 60, 15, 70]], dtype=np.float32)


def dets(boxes, scores, cls=0) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([boxes, scores, np.full(len(boxes), cls)])


def ap_of(detections: np.ndarray, truth: np.ndarray) -> float:
    return score_detections([(detections, truth, np.zeros(len(truth), dtype=np.int64))], ["a"])["a"]["ap"]


def test_perfect_detections_give_ap_one() -> None:
    assert ap_of(dets(TRUTH, [0.9, 0.8, 0.7, 0.6]), TRUTH) == pytest.approx(1.0)


def test_missing_half_gives_half() -> None:
    assert ap_of(dets(TRUTH[:2], [0.9, 0.8]), TRUTH) == pytest.approx(0.5)


def test_false_positive_ranked_first_lowers_ap() -> None:
    fp = [[100, 100, 110, 110]]
    high = ap_of(dets(np.vstack([fp, TRUTH]), [0.99, 0.9, 0.8, 0.7, 0.6]), TRUTH)
    low = ap_of(dets(np.vstack([TRUTH, fp]), [0.9, 0.8, 0.7, 0.6, 0.5]), TRUTH)
    assert low == pytest.approx(1.0)
    # precisions 1/2, 2/3, 3/4, 4/5 at recalls 1/4 .. 1; the all-point envelope makes each 4/5
    assert high == pytest.approx(0.8)
    fp_mid = ap_of(dets(np.vstack([TRUTH[:2], fp, TRUTH[2:]]), [0.9, 0.8, 0.7, 0.6, 0.5]), TRUTH)
    assert fp_mid == pytest.approx(0.5 * 1.0 + 0.5 * 0.8)


def test_duplicates_and_poor_overlap_are_false_positives() -> None:
    shifted = TRUTH + np.array([6, 0, 6, 0], dtype=np.float32)  # IoU < 0.5 for the 10 px boxes
    d = dets(np.vstack([TRUTH[:1], TRUTH[:1], shifted[:1]]), [0.9, 0.8, 0.7])
    assert match_detections(d, TRUTH[:1]).tolist() == [True, False, False]
    assert ap_of(d, TRUTH[:1]) == pytest.approx(1.0)  # the TP comes first
    assert ap_of(dets(shifted[:1], [0.9]), TRUTH[:1]) == 0.0


def test_empty_cases() -> None:
    assert average_precision(np.zeros(0), np.zeros(0, dtype=bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_classes_are_scored_separately() -> None:
    ids = np.array([0, 0, 1, 1])
    d = np.vstack([dets(TRUTH[:2], [0.9, 0.8], 0), dets(TRUTH[2:], [0.5, 0.4], 0)])  # class 1 labelled 0
    r = score_detections([(d, TRUTH, ids)], ["a", "b"])
    assert r["a"]["ap"] == pytest.approx(1.0) and r["a"]["precision"] == pytest.approx(0.5)
    assert r["b"]["ap"] == 0.0 and r["b"]["truth"] == 2


def test_nms_is_class_aware() -> None:
    d = np.vstack([dets([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], 0), dets([[0, 0, 10, 10]], [0.7], 1)])
    kept = nms(d, 0.5)
    assert kept[:, 4].tolist() == [0.9, 0.7]


def test_tiling_covers_and_cores_partition() -> None:
    for length in (512, 700, 2048, 2000):
        origins = tile_origins(length, 512, 64)
        assert origins[0] == 0 and origins[-1] == length - 512
        assert all(b - a <= 448 for a, b in itertools.pairwise(origins))
        cores = core_bounds(origins, 512, length)
        assert cores[0][0] == 0 and cores[-1][1] == length
        for (lo, hi), o in zip(cores, origins, strict=True):
            assert o <= lo < hi <= o + 512
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cores))
    assert tile_origins(300, 512, 64) == [0]


def rectangle_finder(batch: torch.Tensor) -> torch.Tensor:
    """A fake contract-1 model: each distinct value > 0 in a tile is one object; box = its extent."""
    out = torch.zeros(batch.shape[0], 20, 6)
    for b, tile in enumerate(batch[:, 0].numpy()):
        for row, value in enumerate(v for v in np.unique(tile) if v > 0):
            ys, xs = np.nonzero(tile == value)
            out[b, row] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.5 + value / 100, 0])
    scores = out[:, :, 4]
    order = torch.argsort(scores, dim=1, descending=True)
    return torch.gather(out, 1, order.unsqueeze(2).expand(-1, -1, 6))


def test_detect_scene_merges_objects_cut_by_tile_borders() -> None:
    image = np.zeros((1, 300, 300), dtype=np.uint16)
    truth = []
    for i, (x, y) in enumerate([(10, 10), (120, 60), (90, 130), (150, 150), (275, 280), (60, 250)]):
        image[0, y : y + 14, x : x + 20] = i + 1  # several straddle the 128-px tile borders
        truth.append([x, y, x + 20, y + 14])
    merged, tiles = detect_scene(rectangle_finder, image, tile_px=128, overlap_px=40, batch_size=4)
    assert tiles == len(tile_origins(300, 128, 40)) ** 2
    truth_arr = np.array(truth, dtype=np.float32)
    assert len(merged) == len(truth)
    assert ap_of(merged, truth_arr) == pytest.approx(1.0)
