"""Segmentation feeds (contract 2) on a real Redis with the engine: polygons per tile and per
scene, the merge across tile borders, empty masks, and outputs that break the contract."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from rasterio.warp import transform as warp
from torch import Tensor

from consumers.worker import Consumer
from groundwatch import detections as wire
from groundwatch import keys, regions
from groundwatch.ai import Engine
from groundwatch.settings import Settings
from ingest.scene import ingest_file, publish_array
from tests.consumers.helpers import TRANSFORM, UTM31N

FEED = "segf"
LEVEL = 1000  # the toy model's class 1: band 0 at or above this


class Level(torch.nn.Module):
    """Contract 2, exact: class 1 ("slick") where band 0 >= LEVEL with probability 0.9, else the
    background with 0.8. `shrink` > 1 returns a map that is too small (a broken model)."""

    def __init__(self, level: float, shrink: int) -> None:
        super().__init__()
        self.level = level
        self.shrink = shrink

    def forward(self, x: Tensor) -> Tensor:
        on = (x[:, 0:1].to(torch.float32) >= self.level).to(torch.float32)
        p = torch.cat([0.8 - 0.7 * on, 0.2 + 0.7 * on], dim=1)
        if self.shrink > 1:
            p = p[:, :, :: self.shrink, :: self.shrink]
        return p


def level_model(shrink: int = 1, **extra: Any) -> bytes:
    meta = {
        "contract": 2,
        "classes": ["sea", "slick"],
        "bands": 1,
        "dtype": "uint16",
        "tile_size": 64,
        **extra,
    }
    buf = io.BytesIO()
    torch.jit.save(
        torch.jit.script(Level(float(LEVEL), shrink)),
        buf,
        _extra_files={"groundwatch.json": json.dumps(meta)},
    )
    return buf.getvalue()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        feed=FEED, consumer="c1", claim_idle_ms=60000, block_ms=100, tile_size=64, tile_overlap=16
    )
    values.update(overrides)
    return Settings(**values)


def install(client: redis.Redis, blob: bytes, name: str = "seg") -> None:
    Engine(client).model_store(keys.model(FEED, name, 1), blob, tag="1", batch=8)
    client.set(keys.active_model(FEED), f"{name}:1")


def run(client: redis.Redis, **overrides: Any) -> Any:
    return Consumer(client, settings(**overrides), burst=True).run()


def to_pixels(ring: Any, transform: Any) -> list[tuple[float, float]]:
    """A published lon/lat ring back to scene pixels (what the truth mask is in)."""
    xs, ys = warp("EPSG:4326", UTM31N, [p[0] for p in ring], [p[1] for p in ring])
    a, _b, c, _d, e, f = transform
    return [((x - c) / a, (y - f) / e) for x, y in zip(xs, ys, strict=True)]


def published_mask(scene: wire.SceneResult, transform: Any, h: int, w: int) -> np.ndarray:
    shapes = [(g.class_id, tuple(tuple(to_pixels(r, transform)) for r in g.rings)) for g in scene.regions]
    return regions.rasterize(shapes, h, w)


def disc(h: int, w: int, cy: float, cx: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2 <= radius**2


def test_a_feature_across_tile_overlaps_is_published_once_with_its_area_and_score(
    engine: redis.Redis,
) -> None:
    install(engine, level_model())
    truth = np.zeros((160, 160), dtype=np.int32)
    truth[disc(160, 160, 56, 56, 30)] = 1  # in the overlaps of tiles 0, 1, 3 and 4 (starts 0, 48, 96)
    truth[95:150, 100:150] = 1  # across the cores of tiles 4, 5, 7 and 8 (they meet at 104)
    image = np.where(truth == 1, 2000, 100).astype(np.uint16)[None]
    publish_array(engine, settings(), image, TRANSFORM, UTM31N, scene="two")

    stats = run(engine, simplify_px=0.0)

    assert (stats.frames_done, stats.scenes_done, stats.dead) == (9, 1, 0)
    per_tile = [wire.decode_tile(fields) for _id, fields in engine.xrange(keys.detections(FEED))]
    assert all(t.model == "seg:1" for t in per_tile)
    assert sum(len(t.regions) for t in per_tile) > 2  # the features were cut by the tiles' cores
    # each pixel is in exactly one tile's regions
    assert sum(g.pixels for t in per_tile for g in t.regions) == int(truth.sum())
    scene = wire.decode_scene(engine.get(keys.scene_result(FEED, "two")))
    assert len(scene.regions) == 2 and not scene.detections
    assert sorted(g.pixels for g in scene.regions) == sorted([int(disc(160, 160, 56, 56, 30).sum()), 55 * 50])
    for g in scene.regions:
        assert g.label == "slick" and g.score == pytest.approx(0.9, abs=1e-6)
        assert g.area_m2 == pytest.approx(g.pixels * 100.0)  # 10 m pixels
        assert len(g.tiles) > 1
    back = published_mask(scene, TRANSFORM, 160, 160)
    assert (back == truth).all()  # exact outlines (simplify_px 0), placed on the map and back

    stored = json.loads(engine.get(keys.scene_result(FEED, "two")))
    assert stored["groundwatch"]["v"] == 2 and stored["groundwatch"]["count"] == 2
    assert {f["geometry"]["type"] for f in stored["features"]} == {"Polygon"}


def test_the_scene_drops_regions_under_the_models_minimum_judged_by_the_merged_feature(
    engine: redis.Redis,
) -> None:
    install(engine, level_model(min_region_px=100))
    truth = np.zeros((160, 160), dtype=np.int32)
    truth[50:90, 50:90] = 1  # 1600 px across the cores of tiles 0, 1, 3 and 4: tile 0 holds 36 px
    truth[10:18, 120:128] = 1  # a 64-px speck in tile 2's core
    image = np.where(truth == 1, 2000, 100).astype(np.uint16)[None]
    publish_array(engine, settings(), image, TRANSFORM, UTM31N, scene="specks")

    assert run(engine).scenes_done == 1

    per_tile = [wire.decode_tile(fields) for _id, fields in engine.xrange(keys.detections(FEED))]
    assert all(t.min_region_px == (0, 100) for t in per_tile)
    pieces = sorted(g.pixels for t in per_tile for g in t.regions)
    assert pieces[0] == 36 and 64 in pieces  # the tiles publish every piece, specks too
    scene = wire.decode_scene(engine.get(keys.scene_result(FEED, "specks")))
    assert [(g.pixels, len(g.tiles)) for g in scene.regions] == [(1600, 4)]
    # The operator's 0 (GROUNDWATCH_MIN_REGION_PX, --min-region-px) publishes every region.
    publish_array(engine, settings(), image, TRANSFORM, UTM31N, scene="specks-kept")
    assert run(engine, min_region_px=0).scenes_done == 1
    kept = wire.decode_scene(engine.get(keys.scene_result(FEED, "specks-kept")))
    assert sorted(g.pixels for g in kept.regions) == [64, 1600]


def test_a_mask_without_features_publishes_nothing(engine: redis.Redis) -> None:
    install(engine, level_model())
    publish_array(engine, settings(), np.full((1, 160, 160), 100, np.uint16), TRANSFORM, UTM31N, scene="calm")

    stats = run(engine)

    assert (stats.frames_done, stats.scenes_done, stats.dead) == (9, 1, 0)
    per_tile = [wire.decode_tile(fields) for _id, fields in engine.xrange(keys.detections(FEED))]
    assert len(per_tile) == 9 and all(not t.regions and not t.detections for t in per_tile)
    scene = json.loads(engine.get(keys.scene_result(FEED, "calm")))
    assert scene["features"] == [] and scene["groundwatch"]["count"] == 0


def test_the_loader_refuses_a_segmenter_whose_output_breaks_contract_2(
    engine: redis.Redis, tmp_path: Path
) -> None:
    from loaders import LoaderError
    from loaders.loader import LoadOptions, load

    path = tmp_path / "shrinks.pt"
    path.write_bytes(level_model(shrink=2))
    with pytest.raises(LoaderError, match=r"contract 2 with output 'scores' is \[1, 2, H, W\]"):
        load(engine, path, LoadOptions(name="shrinks", feeds=(FEED,)))
    assert engine.get(keys.active_model(FEED)) is None


def test_an_output_of_the_wrong_shape_is_that_frames_failure_with_a_reason(engine: redis.Redis) -> None:
    install(engine, level_model(shrink=2))
    publish_array(engine, settings(), np.full((1, 64, 64), 2000, np.uint16), TRANSFORM, UTM31N, scene="bad")

    for _ in range(3):  # max_deliveries attempts, then a dead letter
        run(engine, max_deliveries=3)

    dead = engine.xrange(keys.dead_letters(FEED))
    assert len(dead) == 1
    reason = dead[0][1][b"dead_reason"].decode()
    assert "seg:1" in reason and "[1, 2, 32, 32]" in reason and "contract 2" in reason
    assert engine.xlen(keys.detections(FEED)) == 0


def test_the_shipped_segmenter_serves_polygons_that_match_the_truth(
    engine: redis.Redis, tmp_path: Path
) -> None:
    from loaders.loader import LoadOptions, load
    from models.scenes import SceneConfig, generate_scene, write_scene
    from models.segmenter import SHIPPED_SEGMENTER

    # the loader's way: stored, warmed up on 512-px tiles (contract 2 checked), activated
    record = load(engine, SHIPPED_SEGMENTER, LoadOptions(name="coast", feeds=(FEED,), batch=4))
    assert record.label == "coast:1" and engine.get(keys.active_model(FEED)) == b"coast:1"
    scene = generate_scene(11, SceneConfig(width_px=768, height_px=768))  # held out: a coast, a slick
    assert scene.mask is not None and 0.1 < (scene.mask == 1).mean() < 0.9
    tif, _truth = write_scene(scene, tmp_path)
    ingest_file(engine, settings(tile_size=512, tile_overlap=64), tif, scene="coast11")

    stats = run(engine)

    assert (stats.frames_done, stats.scenes_done, stats.dead) == (4, 1, 0)
    result = wire.decode_scene(engine.get(keys.scene_result(FEED, "coast11")))
    land = [g for g in result.regions if g.label == "land"]
    coast = max(land, key=lambda g: g.pixels)
    assert len(coast.tiles) >= 2  # the coast crosses tile borders and is published once
    # The model's min_region_px (land 500) drops the specks on bright sea; what is left beside
    # the coast is little.
    assert all(g.pixels >= 500 for g in land), [g.pixels for g in land]
    assert sum(g.pixels for g in land) - coast.pixels < 0.02 * coast.pixels
    back = published_mask(result, tuple(scene.transform)[:6], 768, 768)
    a, b = back == 1, scene.mask == 1
    iou = (a & b).sum() / (a | b).sum()
    print(f"land IoU of the published polygons, seed 11: {iou:.4f}")
    assert iou >= 0.85
