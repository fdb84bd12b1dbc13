"""Profiles, drift and alerts on a real Redis: the consumer's profiler writes, the monitor judges.

Synthetic feeds whose statistics shift by a known amount, seeded: the profiles go through the
same Profiler the consumer uses (consumers.profiling), window by window on an injected clock,
and every window is checked by monitor.checks against real Redis keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis

from consumers import metrics
from consumers.profiling import Profiler
from consumers.worker import Consumer
from groundwatch import keys, profiles, status
from groundwatch.settings import Settings
from monitor import checks
from tests.consumers.helpers import install_model, publish, scene_array, scene_frames

FEED = "watchful"
VERSION = "m:1"
WINDOW_S = 60
PER_WINDOW = 200


@dataclass
class FakeFrame:
    array: np.ndarray
    nodata: float | None = 0.0

    def valid(self) -> np.ndarray:
        return self.array


def synthetic_batch(rng: np.random.Generator, n: int, scale: float) -> list[tuple[Any, Any]]:
    """n 1-band 64x64 uint16 tiles (gamma, mean 1000 x scale) with Poisson(2) detections."""
    out = []
    for _ in range(n):
        tile = np.clip(rng.gamma(4.0, 250.0 * scale, size=(1, 64, 64)), 1, 65535).astype(np.uint16)
        k = int(rng.poisson(2.0))
        dets = [
            SimpleNamespace(score=float(rng.uniform(0.5, 1.0)), label=str(rng.choice(["ship", "platform"])))
            for _ in range(k)
        ]
        out.append((SimpleNamespace(frame=FakeFrame(tile)), SimpleNamespace(model=VERSION, detections=dets)))
    return out


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "feed": FEED,
        "profile_window_s": WINDOW_S,
        "baseline_frames": 500,
        "quiet_s": 1e9,
    }
    values.update(kw)
    return Settings(**values)


def run_windows(
    r: redis.Redis, s: Settings, scales: list[float], seed: int = 7
) -> list[list[tuple[str, str]]]:
    """One window per scale; after each, a check. Returns each check's (event, alert) list."""
    rng = np.random.default_rng(seed)
    now = [1_000_000.0]
    prof = Profiler(r, FEED, WINDOW_S, flush_s=0.0, clock=lambda: now[0])
    r.set(keys.active_model(FEED), VERSION)
    events = []
    for scale in scales:
        for _ in range(PER_WINDOW // 50):
            prof.add(synthetic_batch(rng, 50, scale))
        prof.flush()
        report = checks.check(r, s, FEED, int(now[0] * 1000) + 1)
        events.append([(e.event, e.alert) for e in report.events])
        now[0] += WINDOW_S
    return events


def test_no_alert_over_10000_frames_without_a_shift(r: redis.Redis) -> None:
    windows = 10_000 // PER_WINDOW
    events = run_windows(r, settings(), [1.0] * windows)
    assert [e for e in events if e] == []
    assert r.xlen(keys.alerts(FEED)) == 0
    ref = profiles.from_fields(r.hgetall(keys.profile_reference(FEED, VERSION)))
    assert ref.tiles == 600  # the first windows holding at least baseline_frames (500) frames
    figures = status.collect(r, FEED)[0].drift
    assert 0 <= figures["band:0"] < 0.05 and figures["band:0:mean"] < 0.02  # judged, and stable


def test_a_20_percent_mean_shift_raises_one_alert_within_one_window_and_clears_once(r: redis.Redis) -> None:
    scales = [1.0] * 6 + [1.2] * 5 + [1.0] * 4
    events = run_windows(r, settings(), scales)
    assert events[6] == [("raised", "drift:band:0:mean")]  # the first shifted window
    assert all(e == [] for e in events[7:11]), events  # raised once, not again while it lasts
    assert events[11] == [("cleared", "drift:band:0:mean")]
    assert all(e == [] for e in events[:6] + events[12:]), events
    stream = r.xrange(keys.alerts(FEED))
    assert [(f[b"event"], f[b"alert"]) for _id, f in stream] == [
        (b"raised", b"drift:band:0:mean"),
        (b"cleared", b"drift:band:0:mean"),
    ]
    raised = stream[0][1]
    assert raised[b"version"] == VERSION.encode() and float(raised[b"value"]) == pytest.approx(0.2, abs=0.03)
    assert b"band 1 mean" in raised[b"detail"]


def test_alerts_are_published_on_the_channel_and_exported_as_gauges(r: redis.Redis) -> None:
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(keys.alerts(FEED))
    run_windows(r, settings(), [1.0] * 3 + [1.2])
    msg = None
    for _ in range(50):
        msg = sub.get_message(timeout=0.1)
        if msg:
            break
    assert msg is not None and b'"drift:band:0:mean"' in msg["data"]
    text = metrics.render(status.collect(r, FEED))
    assert f'groundwatch_alert_active{{feed="{FEED}",alert="drift:band:0:mean"}} 1' in text
    assert f'groundwatch_drift{{feed="{FEED}",measure="band:0"}}' in text
    sub.close()


def test_a_baseline_from_a_time_range_replaces_the_reference(r: redis.Redis) -> None:
    run_windows(r, settings(baseline_frames=10**9), [1.0, 1.0, 1.2, 1.2])
    assert not r.exists(keys.profile_reference(FEED, VERSION))  # too few frames for the default
    w = checks.windows(r, FEED, VERSION)
    ref = checks.set_reference(r, FEED, VERSION, w[2:], "test")
    assert ref.tiles == 2 * PER_WINDOW
    assert ref.bands[0].mean == pytest.approx(1200, rel=0.05)


def test_a_feed_gone_quiet_raises_once(r: redis.Redis) -> None:
    r.xadd(keys.frames(FEED), {"x": "1"}, id="1000-0")
    s = settings(quiet_s=60)
    first = checks.check(r, s, FEED, 1000 + 120_000)
    again = checks.check(r, s, FEED, 1000 + 180_000)
    assert [(e.event, e.alert) for e in first.events] == [("raised", "quiet")]
    assert again.events == []
    r.xadd(keys.frames(FEED), {"x": "2"}, id="181000-0")
    back = checks.check(r, s, FEED, 182_000)
    assert [(e.event, e.alert) for e in back.events] == [("cleared", "quiet")]


def test_the_consumer_profiles_what_it_ran(engine: redis.Redis) -> None:
    feed = "profiled"
    install_model(engine, feed)
    spots = {(10, 10): 60000, (100, 100): 60001}
    arr = scene_array(160, 160, spots)
    publish(engine, feed, scene_frames("s1", arr))
    s = Settings(feed=feed, consumer="c1", block_ms=100, claim_idle_ms=60000, profile_every=1)
    Consumer(engine, s, burst=True).run()
    (member,) = engine.zrange(keys.profile_index(feed), 0, -1)
    window = int(member.decode().split("|")[0])
    p = profiles.from_fields(engine.hgetall(keys.profile(feed, "m:1", window)))
    assert p.tiles == 9
    valid = arr.astype(np.float64)
    # every tile's valid pixels (overlaps counted once per tile that holds them)
    assert p.bands[0].count > valid.size
    assert p.detections >= 2 and set(p.classes) <= {"ship", "platform"}
    assert p.bands[0].mean == pytest.approx(float(np.mean(valid[valid > 0])), rel=0.05)
