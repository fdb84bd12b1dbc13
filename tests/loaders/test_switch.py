"""A new version goes live while frames flow: consumers pick it up without a restart and no frame fails."""

import threading
from pathlib import Path

import redis

from consumers.worker import Consumer
from groundwatch import keys
from groundwatch.detections import decode_tile
from groundwatch.settings import Settings
from loaders.loader import LoadOptions, load, rollback
from tests import toymodels
from tests.consumers import helpers

FEED = "live"


def test_switch_and_rollback_under_load(engine: redis.Redis, tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(toymodels.archive(toymodels.BrightestPixel(threshold=1000), toymodels.metadata()))
    load(engine, model, LoadOptions(name="ship", feeds=(FEED,), batch=4))
    worker = Consumer(
        redis.Redis(connection_pool=engine.connection_pool),
        Settings(feed=FEED, consumer="c1", block_ms=50, read_count=4),
    )
    worker.ensure_group()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    published = 0

    def wait_drained() -> None:
        for _ in range(1200):
            if int(engine.hget(keys.stats(FEED), "frames_done") or 0) >= published:
                return
            threading.Event().wait(0.05)
        raise AssertionError(f"the consumer did not finish {published} frames")

    try:
        arr = helpers.scene_array(64, 64, {(20, 20): 60000})
        for step in range(6):
            frames = [f for i in range(5) for f in helpers.scene_frames(f"S{step}-{i}", arr)]
            helpers.publish(engine, FEED, frames)
            published += len(frames)
            # The switches happen while this step's frames are in flight.
            if step == 2:
                load(engine, model, LoadOptions(name="ship", feeds=(FEED,), batch=4))  # ship:2 goes live
            if step == 4:
                rollback(engine, "ship")  # back to ship:1
            wait_drained()
    finally:
        worker.stop()
        thread.join(timeout=30)
    entries = helpers.detections(engine, FEED)
    assert len(entries) == published
    assert engine.xlen(keys.dead_letters(FEED)) == 0
    by_step: dict[str, set[str]] = {}
    for e in entries:
        tile = decode_tile(e)
        by_step.setdefault(tile.scene.split("-")[0], set()).add(tile.model)
    assert by_step["S0"] == by_step["S1"] == {"ship:1"}
    assert by_step["S3"] == {"ship:2"}  # picked up without a restart
    assert by_step["S5"] == {"ship:1"}  # and the rollback too
    assert engine.get(keys.active_model(FEED)) == b"ship:1"
