"""AP, matching and the served path (the service's tiling, decoding and merge) on hand-made cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from groundwatch import geometry, keys
from groundwatch.cli import main
from groundwatch.detections import Detection, SceneResult, scene_json
from models.evaluate import (
    ImageResult,
    average_precision,
    detect_scene,
    in_process,
    score_detections,
    true_positives,
)
from models.scenes import SceneConfig, generate_scene, write_scene

TRUTH = np.array([[10, 10, 20, 20], [40, 40, 60, 50], [70, 10, 80, 30], [5, 60, 15, 70]], dtype=np.float32)


def dets(boxes, scores, cls=0) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([boxes, scores, np.full(len(boxes), cls)])


def ap_of(detections: np.ndarray, truth: np.ndarray) -> float:
    ids = np.zeros(len(truth), dtype=np.int64)
    return score_detections([ImageResult(detections, detections, truth, ids)], ["a"])["a"]["ap"]


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
    assert true_positives(d, TRUTH[:1], np.zeros(1, np.int64), 0.5).tolist() == [True, False, False]
    assert ap_of(d, TRUTH[:1]) == pytest.approx(1.0)  # the TP comes first
    assert ap_of(dets(shifted[:1], [0.9]), TRUTH[:1]) == 0.0


def test_empty_cases() -> None:
    assert average_precision(np.zeros(0), np.zeros(0, dtype=bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_classes_are_scored_separately() -> None:
    ids = np.array([0, 0, 1, 1])
    d = np.vstack([dets(TRUTH[:2], [0.9, 0.8], 0), dets(TRUTH[2:], [0.5, 0.4], 0)])  # class 1 labelled 0
    r = score_detections([ImageResult(d, d, TRUTH, ids)], ["a", "b"])
    assert r["a"]["ap"] == pytest.approx(1.0) and r["a"]["precision"] == pytest.approx(0.5)
    assert r["b"]["ap"] == 0.0 and r["b"]["truth"] == 2


def test_precision_and_recall_come_from_the_served_rows() -> None:
    ranked = dets(TRUTH, [0.9, 0.8, 0.2, 0.1])
    served = ranked[:2]  # what the consumers publish at 0.5
    r = score_detections([ImageResult(ranked, served, TRUTH, np.zeros(4, np.int64))], ["a"])["a"]
    assert r["ap"] == pytest.approx(1.0) and r["detections"] == 4 and r["served"] == 2
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(0.5)


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
    merged, tiles = detect_scene(
        in_process(rectangle_finder), image, tile_px=128, overlap_px=40, batch_size=4
    )
    assert tiles == len(geometry.grid(300, 300, 128, 40))
    truth_arr = np.array(truth, dtype=np.float32)
    assert len(merged) == len(truth)
    assert ap_of(merged, truth_arr) == pytest.approx(1.0)


def test_a_scene_smaller_than_a_tile_is_padded_with_nodata_as_ingest_does() -> None:
    seen: list[np.ndarray] = []

    def spy(tiles):
        seen.extend(tiles)
        return [np.zeros((1, 4, 6), np.float32) for _ in tiles]

    image = np.full((1, 40, 150), 7, dtype=np.uint16)  # lower than a tile: padded
    image[0, :, :64] = 9  # the first tile is all nodata (9): skipped
    detect_scene(spy, image, tile_px=64, overlap_px=16, nodata=9, batch_size=8)
    assert len(geometry.grid(150, 40, 64, 16)) == 3 and len(seen) == 2
    assert all(t.shape == (1, 64, 64) and t.dtype == np.uint16 for t in seen)
    assert all(
        (t[0, 40:] == 9).all() and (t[0, :40] == image[0, :, w : w + 64]).all()
        for t, w in zip(seen, (48, 86), strict=True)
    )


def test_detect_scene_serves_what_the_consumers_merge() -> None:
    """An object in an overlap, seen by two tiles (one cut): the consumers' merge keeps one, uncut."""
    outputs = {0: [[60, 10, 64, 20, 0.9, 0]], 1: [[4, 10, 20, 20, 0.8, 0]]}  # tile 1 starts at x = 48
    calls = iter(range(100))

    def fake(tiles):
        out = []
        for _ in tiles:
            rows = np.zeros((1, 3, 6), np.float32)
            for k, row in enumerate(outputs.get(next(calls), [])):
                rows[0, k] = row
            out.append(rows)
        return out

    image = np.ones((1, 64, 112), dtype=np.uint16)
    merged, tiles = detect_scene(fake, image, tile_px=64, overlap_px=16, threshold=0.5)
    assert tiles == 2
    assert merged == pytest.approx(np.array([[52.0, 10.0, 68.0, 20.0, 0.9, 0.0]]))  # uncut box, best score


def box(b: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def test_evaluate_feed_scores_the_scene_results_a_stack_published(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`groundwatch evaluate --feed`: scene results stored as the consumers store them, scored
    against the truth files `groundwatch generate` writes."""
    scene = generate_scene(7, SceneConfig(width_px=256, height_px=256, n_ships=3, n_platforms=2))
    _tif, _truth = write_scene(scene, tmp_path, "S7")
    write_scene(generate_scene(8, SceneConfig(width_px=256, height_px=256)), tmp_path, "S8")  # not ingested
    found = [
        Detection(
            class_id=o.class_id,
            label=o.class_name,
            score=0.9 - 0.1 * i,
            box_px=box(o.box_px),
            scene_box_px=box(o.box_px),
            box_map=(0.0, 0.0, 1.0, 1.0),
            ring=((3.0, 52.0),) * 4,
            center=(3.0, 52.0),
        )
        for i, o in enumerate(scene.objects[:-1])  # the last object was missed
    ]
    result = SceneResult(
        "f", "S7", 1, ("m:1",), scene.crs, "2024-01-01T00:00:00Z", 1, len(found), tuple(found)
    )
    engine.set(keys.scene_result("f", "S7"), scene_json(result))
    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    assert main(["--redis-url", url, "evaluate", "--feed", "f", "--truth", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scene_ids"] == ["S7"] and out["missing"] == ["S8"]
    missed = scene.objects[-1].class_name
    for name, v in out["classes"].items():
        truth = sum(o.class_name == name for o in scene.objects)
        assert v["truth"] == truth and v["precision"] == 1.0
        assert v["recall"] == pytest.approx((truth - (name == missed)) / truth)
    engine.delete(keys.scene_result("f", "S7"))
    assert main(["--redis-url", url, "evaluate", "--feed", "f", "--truth", str(tmp_path)]) == 1
    assert "no scene result" in capsys.readouterr().err
