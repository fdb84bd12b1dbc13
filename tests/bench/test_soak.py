"""The soak's own judgement (bench/soak.py): the observer that checks exactly-once over capped
result streams, and the memory verdict. The 60-minute run itself is `make soak`."""

from __future__ import annotations

from typing import Any

import redis

from bench import soak
from groundwatch import keys


def _tile(r: redis.Redis, frame: str, maxlen: int) -> None:
    r.xadd(keys.detections(soak.FEED), {"frame": frame, "v": "1"}, maxlen=maxlen, approximate=False)


def test_observer_counts_every_result_of_a_capped_stream_it_keeps_up_with(r: redis.Redis) -> None:
    observer = soak.Observer(r)
    for i in range(50):
        _tile(r, f"f{i}", maxlen=10)
        if i % 5 == 4:
            observer.poll()
    _tile(r, "f3", maxlen=10)  # a second result for one frame
    observer.poll()
    assert r.xlen(keys.detections(soak.FEED)) == 10
    assert observer.complete()[keys.detections(soak.FEED)] == (51, 51)
    assert observer.per_frame[b"f3"] == 2 and len(observer.per_frame) == 50


def test_observer_that_fell_behind_the_cap_says_so(r: redis.Redis) -> None:
    observer = soak.Observer(r)
    for i in range(30):
        _tile(r, f"f{i}", maxlen=10)
    observer.poll()
    assert observer.complete()[keys.detections(soak.FEED)] == (10, 30)
    r.hset(keys.stats(soak.FEED), mapping={"frames_in": 30, "scenes_in": 0})
    r.xgroup_create(keys.frames(soak.FEED), "detectors", id="0", mkstream=True)
    problems = soak.check(r, observer)["problems"]
    assert any("read 10 of 30" in p for p in problems), problems
    assert any("30 frames published but 10 have a result" in p for p in problems), problems


def _sample(t: float, redis_rss: float, c1: float = 100.0) -> dict[str, Any]:
    return {
        "t_min": t,
        "redis_rss_mb": redis_rss,
        "used_memory_mb": 50.0,
        "consumers_rss_mb": [90.0, c1, 100.0],
        "frames_done": 0,
        "data": {"keys": 1},
    }


def test_memory_verdict_judges_redis_rss_and_long_lived_consumers_after_warm_up() -> None:
    # Warm-up growth (before a quarter of the run) does not count; afterwards 4 % is within.
    steady = [_sample(0, 100.0), _sample(5, 150.0), _sample(15, 200.0), _sample(60, 208.0)]
    g = soak.growth(steady)
    assert g["from_min"] == 15 and g["redis_rss_mb"]["pct"] == 4.0 and g["memory_ok"]
    grown = [_sample(0, 100.0), _sample(15, 200.0), _sample(60, 212.0)]
    assert not soak.growth(grown)["memory_ok"]
    consumer_grew = [_sample(0, 100.0), _sample(15, 200.0, c1=100.0), _sample(60, 200.0, c1=106.0)]
    assert not soak.growth(consumer_grew)["memory_ok"]
