"""The score threshold: the operator's setting wins, else the model's own hint, else the default."""

import pytest
import redis

from consumers.worker import Consumer
from groundwatch.detections import decode_tile
from groundwatch.settings import Settings
from tests.consumers import helpers

FEED = "thr"


@pytest.mark.parametrize(
    ("hint", "setting", "expected_scores"),
    [
        (0.9, None, [62000]),  # the model's hint drops the weaker object
        (0.9, 0.5, [62000, 52000]),  # the operator's threshold overrides the hint
        (None, None, [62000, 52000]),  # neither: the default threshold (0.3)
    ],
)
def test_threshold_source(
    engine: redis.Redis, hint: float | None, setting: float | None, expected_scores: list[int]
) -> None:
    helpers.install_model(engine, FEED, hint=hint)
    arr = helpers.scene_array(64, 64, {(10, 10): 62000, (40, 40): 52000})
    helpers.publish(engine, FEED, helpers.scene_frames("S1", arr))
    Consumer(engine, Settings(feed=FEED, consumer="c", score_threshold=setting), burst=True).run()
    [entry] = helpers.detections(engine, FEED)
    scores = sorted((d.score for d in decode_tile(entry).detections), reverse=True)
    assert scores == pytest.approx([v / 65535 for v in expected_scores], abs=1e-4)
