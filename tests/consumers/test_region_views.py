"""Regions (contract 2) in the downstream views: the per-class counters of `groundwatch status`
and its Prometheus form, and the STAC export of `groundwatch results`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import redis
from shapely.geometry import shape

from consumers import metrics
from consumers.worker import Consumer
from groundwatch import keys, status
from groundwatch.cli import main
from groundwatch.settings import Settings
from ingest.scene import publish_array
from tests.consumers.helpers import TRANSFORM, UTM31N, install_model, scene_array
from tests.consumers.test_segmentation import disc, install, level_model, settings

FEED = "segf"  # test_segmentation's feed: its install() and settings() name it


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def _signed_area(ring: list[list[float]]) -> float:
    return sum(ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1] for i in range(len(ring) - 1)) / 2


@pytest.fixture
def ring_and_square(engine: redis.Redis) -> np.ndarray:
    """A slick with a hole (a ring across four tiles) and a square one, published and consumed."""
    install(engine, level_model())
    truth = disc(160, 160, 56, 56, 30) & ~disc(160, 160, 56, 56, 12)
    truth[110:150, 110:150] = True
    image = np.where(truth, 2000, 100).astype(np.uint16)[None]
    publish_array(engine, settings(), image, TRANSFORM, UTM31N, scene="rings")
    stats = Consumer(engine, settings(), burst=True).run()
    assert (stats.scenes_done, stats.dead) == (1, 0)
    assert stats.regions > 2 and stats.detections == 0  # pieces cut by the tiles' cores
    assert float(engine.hget(keys.stats(FEED), "regions")) == stats.regions
    return truth


def test_status_counts_regions_and_their_area_per_class(
    engine: redis.Redis, ring_and_square: np.ndarray
) -> None:
    (st,) = status.collect(engine, FEED)
    area = int(ring_and_square.sum()) * 100  # 10 m pixels
    assert st.classes == {"slick": {"regions": 2.0, "area_m2": float(area)}}
    assert not any(k.startswith(status.CLASS_COUNTER) for k in st.counters)  # not among the flat ones
    text = status.render([st])
    assert f"per class        slick 2 regions {area / 1e6:.3g} km² (completed scenes)" in text
    prom = metrics.render([st])
    assert f'groundwatch_class_regions_total{{feed="{FEED}",class="slick"}} 2' in prom
    assert f'groundwatch_class_area_m2_total{{feed="{FEED}",class="slick"}} {area:g}' in prom


def test_a_detector_feed_counts_its_merged_detections_per_class(engine: redis.Redis) -> None:
    install_model(engine, "det")
    spots = {(20, 20): 60000, (56, 100): 60001, (140, 40): 60000}  # 60000: ship, 60001: platform
    config = Settings(feed="det", consumer="c1", tile_size=64, tile_overlap=16, block_ms=100)
    publish_array(engine, config, scene_array(160, 160, spots), TRANSFORM, UTM31N, scene="d3")
    Consumer(engine, config, burst=True).run()
    (st,) = status.collect(engine, "det")
    assert st.classes == {"ship": {"detections": 2.0}, "platform": {"detections": 1.0}}
    assert "per class        platform 1 detections, ship 2 detections" in status.render([st])


def test_results_exports_regions_as_valid_geojson_polygons_with_their_area(
    engine: redis.Redis, ring_and_square: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stac"
    assert main(["--redis-url", _url(engine), "results", "--feed", FEED, "--stac", str(out)]) == 0
    item = json.loads((out / "rings" / "rings-detections.json").read_text())
    pystac.Item.from_dict(item)  # parsed (validating needs the STAC schemas from the network)
    props = item["properties"]
    area = int(ring_and_square.sum()) * 100.0
    assert props["groundwatch:count"] == 2
    assert props["groundwatch:classes"] == {"slick": {"regions": 2, "area_m2": area}}
    assert item["geometry"]["type"] == "Polygon" and len(item["bbox"]) == 4  # the regions' bbox
    asset = item["assets"]["detections"]
    assert asset["type"] == "application/geo+json" and asset["title"] == "regions of scene rings"
    doc = json.loads((out / "rings" / asset["href"].removeprefix("./")).read_text())
    holes = 0
    for f in doc["features"]:
        g = f["geometry"]
        assert g["type"] == "Polygon" and f["properties"]["kind"] == "region"
        for i, ring in enumerate(g["coordinates"]):  # RFC 7946 3.1.6: linear rings
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(len(p) == 2 and -180 <= p[0] <= 180 and -90 <= p[1] <= 90 for p in ring)
            assert (_signed_area(ring) > 0) == (i == 0)  # exterior counter-clockwise, holes clockwise
        holes += len(g["coordinates"]) - 1
        assert shape(g).is_valid
        p = f["properties"]
        assert p["area_m2"] == pytest.approx(p["pixels"] * 100.0)
        lons = [q[0] for q in g["coordinates"][0]]
        lats = [q[1] for q in g["coordinates"][0]]
        assert f["bbox"] == [min(lons), min(lats), max(lons), max(lats)]
    assert holes == 1  # the ring's hole is a hole, not a second feature
    assert sum(f["properties"]["area_m2"] for f in doc["features"]) == pytest.approx(area)
