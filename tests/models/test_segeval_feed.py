"""`groundwatch evaluate --feed` of a segmentation feed: IoU per class of the regions a real
engine and consumer published, against the truth masks of the generated scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from consumers.worker import Consumer
from groundwatch.cli import main
from groundwatch.modelmeta import ModelMetadata
from groundwatch.settings import Settings
from ingest.scene import ingest_file
from loaders.loader import LoadOptions, load
from models.archive import load_model
from models.errors import ModelsError
from models.evaluate import in_process
from models.scenes import SEG_CLASSES, SceneConfig, generate_scene, write_scene
from models.segeval import SegEvalConfig, evaluate_segmenter, truth_mask
from models.segmenter import SHIPPED_SEGMENTER

FEED = "segeval"
SEED, SIZE = 11, 768  # a held-out scene with a coast and a slick; 4 tiles of 512 px


def test_evaluate_feed_reports_iou_per_class_of_the_published_regions(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(engine, SHIPPED_SEGMENTER, LoadOptions(name="coast", feeds=(FEED,), batch=4))
    scene = generate_scene(SEED, SceneConfig(width_px=SIZE, height_px=SIZE))
    tif, _truth = write_scene(scene, tmp_path)
    settings = Settings(feed=FEED, consumer="c1", claim_idle_ms=60000, block_ms=100, tile_overlap=64)
    ingest_file(engine, settings, tif)  # scene id scene-000011, as the truth file is named
    write_scene(generate_scene(SEED + 1, SceneConfig(width_px=256, height_px=256)), tmp_path)  # not ingested
    stats = Consumer(engine, settings, burst=True).run()
    assert (stats.frames_done, stats.scenes_done, stats.dead) == (4, 1, 0)

    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    assert main(["--redis-url", url, "evaluate", "--feed", FEED, "--truth", str(tmp_path), "--json"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["scene_ids"] == ["scene-000011"] and served["missing"] == ["scene-000012"]
    assert set(served["per_class"]) == set(SEG_CLASSES)

    # The same scene through the offline served path (models.segeval, in process): the published
    # lon/lat outlines taken back to pixels give the same IoU as the simplified pixel outlines, up
    # to the engine's float rounding of the probabilities and the 7 decimals of lon/lat (~1 cm).
    module, meta = load_model(SHIPPED_SEGMENTER)
    offline = evaluate_segmenter(
        in_process(module),
        ModelMetadata.from_dict(meta),
        SegEvalConfig(scenes=1, size_px=SIZE, seed_base=SEED, tile_px=512, overlap_px=64),
    )
    for name in SEG_CLASSES:
        got, want = served["per_class"][name], offline["per_class"][name]
        print(f"{name}: IoU served {got['iou']} offline {want['iou']}, polygons {got['polygons']}")
        assert got["truth_pixels"] == want["truth_pixels"]
        assert got["iou"] == pytest.approx(want["iou"], abs=0.002)
        assert got["polygons"] == want["polygons"]
    assert served["per_class"]["land"]["iou"] >= 0.8

    assert main(["--redis-url", url, "evaluate", "--feed", FEED, "--truth", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "region results of 1 scenes" in table and "mean IoU of the foreground classes" in table


def test_a_truth_file_that_does_not_match_its_seed_is_refused_with_the_fix(tmp_path: Path) -> None:
    scene = generate_scene(3, SceneConfig(width_px=128, height_px=128))  # as `groundwatch generate` draws
    _tif, truth = write_scene(scene, tmp_path)
    doc = json.loads(truth.read_text())
    mask, transform, crs = truth_mask("s", doc)
    assert (
        mask.shape == (128, 128) and crs == scene.crs and tuple(transform)[:6] == tuple(scene.transform)[:6]
    )
    doc["features"].append({"properties": {"pixel_box": [0, 0, 1, 1]}})  # not the seed's scene
    with pytest.raises(ModelsError, match="groundwatch generate"):
        truth_mask("s", doc)
    del doc["groundwatch"]["seed"]
    with pytest.raises(ModelsError, match="only scenes written by `groundwatch generate`"):
        truth_mask("s", doc)


def test_a_feed_is_scored_by_the_kind_of_model_that_made_it_even_without_regions(engine: redis.Redis) -> None:
    """An all-sea scene of a segmentation feed has no regions, like a detector's scene without
    detections: the model that made it decides how the feed is scored."""
    from types import SimpleNamespace

    from models.archive import SHIPPED_MODEL
    from models.cli import _made_by_segmentation

    load(engine, SHIPPED_SEGMENTER, LoadOptions(name="coast", feeds=(FEED,), batch=4))
    load(engine, SHIPPED_MODEL, LoadOptions(name="ship", feeds=("ships",), batch=4))
    empty_seg = SimpleNamespace(models=("coast:1",), regions=())
    empty_det = SimpleNamespace(models=("ship:1",), regions=())
    assert _made_by_segmentation(engine, [empty_seg])
    assert not _made_by_segmentation(engine, [empty_det])
    # a version removed since: the results themselves decide
    gone = SimpleNamespace(models=("coast:9",), regions=("a region",))
    assert _made_by_segmentation(engine, [gone]) and not _made_by_segmentation(engine, [empty_det, gone])
