"""The real detector (models/artifacts/detector.pt) end to end on synthetic scenes with truth."""

from __future__ import annotations

import math

import pytest
import redis
from rasterio.warp import transform as warp

from consumers.worker import Consumer
from groundwatch import detections as wire
from groundwatch import keys
from groundwatch.ai import Engine
from groundwatch.settings import REPO_ROOT, Settings
from tests.consumers.helpers import publish, scene_frames

DETECTOR = REPO_ROOT / "models" / "artifacts" / "detector.pt"
FEED = "northsea"
SEEDS = (1, 2, 3)


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dx = (a[0] - b[0]) * 111_320 * math.cos(math.radians(a[1]))
    dy = (a[1] - b[1]) * 110_540
    return math.hypot(dx, dy)


@pytest.mark.skipif(
    not DETECTOR.exists(), reason="models/artifacts/detector.pt is not built yet (make model)"
)
def test_the_detector_finds_the_truth_once_each_in_lon_lat(engine: redis.Redis) -> None:
    from models.scenes import SceneConfig, generate_scene

    Engine(engine).model_store(keys.model(FEED, "ship", 1), DETECTOR.read_bytes(), tag="1", batch=8)
    engine.set(keys.active_model(FEED), "ship:1")
    config = SceneConfig(width_px=1024, height_px=1024, land=False)
    scenes = {seed: generate_scene(seed, config) for seed in SEEDS}
    for seed, sc in scenes.items():
        publish(
            engine,
            FEED,
            scene_frames(
                f"scene-{seed}", sc.image, tile=512, overlap=64, transform=tuple(sc.transform)[:6], crs=sc.crs
            ),
        )

    stats = Consumer(engine, Settings(feed=FEED, consumer="c1", score_threshold=0.5), burst=True).run()
    assert stats.scenes_done == len(SEEDS) and stats.dead == 0

    for seed, sc in scenes.items():
        result = wire.decode_scene(engine.get(keys.scene_result(FEED, f"scene-{seed}")))
        assert result.models == ("ship:1",)
        assert result.detections_in > len(result.detections)  # overlaps saw objects more than once
        unmatched = list(result.detections)
        for obj in sc.objects:
            x1, y1, x2, y2 = obj.box_px
            cx, cy = sc.transform * ((x1 + x2) / 2, (y1 + y2) / 2)
            lon, lat = warp(sc.crs, "EPSG:4326", [cx], [cy])
            near = [
                d for d in unmatched if d.label == obj.class_name and metres(d.center, (lon[0], lat[0])) < 25
            ]
            assert len(near) == 1, f"seed {seed}: {obj} matched {near}"
            unmatched.remove(near[0])
        assert unmatched == [], f"seed {seed}: detections with no truth object: {unmatched}"
