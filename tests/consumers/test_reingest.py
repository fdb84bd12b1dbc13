"""`ingest --force` publishes a scene again, and its frames are detected again, not skipped."""

from pathlib import Path

import redis

from consumers.worker import Consumer
from groundwatch import keys
from groundwatch.settings import Settings
from ingest.scene import ingest_file
from tests.consumers import helpers
from tests.ingest.conftest import write_tif

FEED = "again"


def test_forced_reingest_is_detected_again(engine: redis.Redis, tmp_path: Path) -> None:
    helpers.install_model(engine, FEED)
    arr = helpers.scene_array(64, 64, {(20, 20): 60000})
    path = write_tif(tmp_path / "S9.tif", arr)
    settings = Settings(feed=FEED, consumer="c", tile_size=64, tile_overlap=16)
    ingest_file(engine, settings, path)
    Consumer(engine, settings, burst=True).run()
    assert engine.xlen(keys.scenes(FEED)) == 1
    ingest_file(engine, settings, path, force=True)
    stats = Consumer(engine, settings, burst=True).run()
    assert stats.duplicates == 0 and stats.frames_done == 1
    assert len(helpers.detections(engine, FEED)) == 2
    assert engine.xlen(keys.scenes(FEED)) == 2  # the scene completed again
