"""The consumer's boundary, against a real redis-server with the engine: poison frames, frames
that do not fit the model, faults of the system (missing model key, engine overload, Redis
OOM), a stable identity, and one result per frame across model switches."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from consumers.identity import Lease, host_name
from consumers.worker import Consumer, RunStats
from groundwatch import ai, frames, keys, status
from groundwatch.errors import ConfigError
from groundwatch.server import RedisServer
from groundwatch.settings import Settings
from tests.consumers.helpers import (
    detections,
    install_model,
    publish,
    scene_array,
    scene_frames,
    spots_model,
)

FEED = "sea"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"feed": FEED, "consumer": "c1", "claim_idle_ms": 60000, "block_ms": 50}
    values.update(overrides)
    return Settings(**values)


def burst(client: redis.Redis, **overrides: Any) -> RunStats:
    return Consumer(client, settings(**overrides), burst=True).run()


def wire(f: frames.Frame) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in frames.encode(f).items()}


def good(n: int, scene: str = "g") -> list[frames.Frame]:
    return scene_frames(scene, scene_array(64, 64 + 48 * (n - 1), {(20, 20): 60000}))[:n]


def one_tile(array: np.ndarray, scene: str) -> frames.Frame:
    """A one-tile scene of `array` (C, H, W), whatever its shape and dtype."""
    return frames.Frame.from_array(
        array,
        scene=scene,
        tile=0,
        tiles=1,
        window=(0, 0, 8, 8),
        transform=(10, 0, 500000, 0, -10, 6000000),
        crs="EPSG:32631",
        acquired=frames.parse_time("2026-11-25T10:31:07Z"),
        published_ms=1,
    )


def dead_reasons(r: redis.Redis) -> list[str]:
    return [f[b"dead_reason"].decode() for _id, f in r.xrange(keys.dead_letters(FEED))]


def counters(r: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.stats(FEED)).items()}


@pytest.fixture
def background() -> Iterator[Callable[[Consumer], threading.Thread]]:
    running: list[tuple[Consumer, threading.Thread]] = []

    def start(c: Consumer) -> threading.Thread:
        t = threading.Thread(target=c.run, daemon=True)
        t.start()
        running.append((c, t))
        return t

    yield start
    for c, t in running:
        c.stop()
        t.join(30)


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- poison frames -------------------------------------------------------------------------


def test_the_issues_poison_frames_are_dead_letters_and_good_frames_go_through(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    ok = good(2)
    year1 = wire(scene_frames("y1", scene_array(64, 64, {}))[0]) | {b"acquired": b"0001-01-01T00:00:00+01:00"}
    digits = wire(scene_frames("d1", scene_array(64, 64, {}))[0]) | {b"tile": b"5" * 5000}
    publish(engine, FEED, ok[:1])
    engine.xadd(keys.frames(FEED), year1)
    engine.xadd(keys.frames(FEED), digits)
    publish(engine, FEED, ok[1:])
    stats = burst(engine)
    assert stats.frames_done == 2 and stats.dead == 2
    reasons = dead_reasons(engine)
    assert any("'acquired'" in why for why in reasons) and any("'tile'" in why for why in reasons)
    assert all(why.startswith("bad frame:") for why in reasons)
    assert sorted(d[b"frame"] for d in detections(engine, FEED)) == [b"g/0", b"g/1"]
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0


def test_a_model_with_damaged_metadata_still_runs(engine: redis.Redis) -> None:
    blob = spots_model()
    at = blob.index(b'"platform"')
    damaged = blob[: at + 1] + b"q" + blob[at + 2 :]  # groundwatch.json no longer matches its CRC
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(damaged)).read(
            next(n for n in zipfile.ZipFile(io.BytesIO(damaged)).namelist() if n.endswith("groundwatch.json"))
        )
    ai.Engine(engine).model_store(keys.model(FEED, "m", 1), damaged, batch=8)
    engine.set(keys.active_model(FEED), "m:1")
    publish(engine, FEED, good(3))
    stats = burst(engine)
    assert stats.frames_done == 3 and stats.dead == 0  # no metadata: classes shown as class<id>
    assert b'"class":"class0"' in detections(engine, FEED)[0][b"geojson"]


# --- frames checked against the model ----------------------------------------------------------


def test_frames_that_do_not_fit_the_model_are_dead_at_once_and_shown_in_status(engine: redis.Redis) -> None:
    install_model(engine, FEED)  # metadata: 1 band, uint16, tile_size 64
    bad = [
        one_tile(np.zeros((2, 64, 64), np.uint16), "bands"),
        one_tile(np.zeros((1, 64, 64), np.int32), "dtype"),
        one_tile(np.zeros((1, 300, 64), np.uint16), "big"),
    ]
    publish(engine, FEED, [*bad, *good(1)])
    stats = burst(engine)
    assert stats.frames_done == 1 and stats.dead == 3 and stats.retries == 0  # no engine failures first
    reasons = dead_reasons(engine)
    assert all(why.startswith("does not fit the model:") for why in reasons)
    assert "2 band(s)" in reasons[0] and "INT32" in reasons[1] and "up to 256" in reasons[2]
    assert ai.Engine(engine).model_info(keys.model(FEED, "m", 1)).errors == 0
    [st] = status.collect(engine, FEED)
    assert "model-fit" in st.faults and "FAULT model fit" in status.render([st])
    assert counters(engine)["misfits"] == 3


def test_the_model_fit_fault_clears_on_a_batch_that_fits_and_on_a_model_switch(engine: redis.Redis) -> None:
    install_model(engine, FEED)  # 1 band
    two_bands = one_tile(np.zeros((2, 64, 64), np.uint16), "bands")

    def fit_fault() -> str | None:
        [st] = status.collect(engine, FEED)
        return st.faults.get(keys.MODEL_FIT, (None, 0))[0]

    publish(engine, FEED, [two_bands])
    burst(engine)
    assert "2 band(s)" in (fit_fault() or "")
    publish(engine, FEED, good(2))  # the producer was fixed: the next batch fits
    stats = burst(engine)
    assert (
        stats.frames_done == 2
        and fit_fault() is None
        and "FAULT model fit" not in status.render(status.collect(engine, FEED))
    )
    # Another consumer meets a misfit again; a consumer whose clock stands still clears the
    # entry at most once a second on fitting batches, but at once when the active model changed.
    now = int(time.time() * 1000)
    a = Consumer(engine, settings(consumer="a"), burst=True, clock_ms=lambda: now)
    publish(engine, FEED, good(1, scene="a1"))
    a.run()
    publish(engine, FEED, [two_bands])
    burst(engine, consumer="b")
    assert fit_fault() is not None
    publish(engine, FEED, good(1, scene="a2"))
    a.run()
    assert fit_fault() is not None  # within the second, same model: left for the next clear
    install_model(engine, FEED, 2)
    publish(engine, FEED, good(1, scene="a3"))
    a.run()
    assert fit_fault() is None
    assert len(detections(engine, FEED)) == 5


def test_a_frame_over_max_frame_bytes_is_a_dead_letter(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    publish(engine, FEED, good(1))
    stats = burst(engine, max_frame_bytes=1000)
    assert stats.dead == 1 and "max_frame_bytes=1000" in dead_reasons(engine)[0]


# --- faults of the system -------------------------------------------------------------------


def test_a_missing_model_key_leaves_frames_pending_and_the_consumer_resumes(
    engine: redis.Redis, background: Callable[[Consumer], threading.Thread]
) -> None:
    install_model(engine, FEED, 1)
    engine.set(keys.active_model(FEED), "m:2")  # names a version whose key does not exist
    publish(engine, FEED, good(4))
    c = Consumer(engine, settings())
    background(c)
    wait_for(lambda: counters(engine).get("fault_waits", 0) >= 3)  # it tried, several times
    assert detections(engine, FEED) == [] and engine.xlen(keys.dead_letters(FEED)) == 0
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 4
    [st] = status.collect(engine, FEED)
    assert "is gone" in st.faults["c1"][0] and "FAULT consumer c1" in status.render([st])
    attempts = {k: int(v) for k, v in engine.hgetall(keys.attempts(FEED)).items() if not k.endswith(b"error")}
    assert set(attempts.values()) <= {0}  # faults of the system are not charged
    install_model(engine, FEED, 2)  # the fault clears: the consumer resumes by itself
    wait_for(lambda: len(detections(engine, FEED)) == 4)
    wait_for(lambda: not engine.hexists(keys.faults(FEED), "c1"))
    assert engine.xlen(keys.dead_letters(FEED)) == 0 and c.stats.dead == 0
    assert {d[b"model"] for d in detections(engine, FEED)} == {b"m:2"}


def test_an_engine_that_times_out_for_load_is_a_fault_not_the_frames(engine: redis.Redis) -> None:
    assert ai.DagError("TIMEDOUT: the engine timed out the request", -1).system_fault
    assert not ai.DagError("poison pixel", 1).system_fault
    # The engine holds requests until 64 are queued or 5 s pass: with a 200 ms DAG TIMEOUT, each
    # frame is answered TIMEDOUT. Nothing is dead, nothing charged; later they run.
    ai.Engine(engine).model_store(
        keys.model(FEED, "m", 1), spots_model(), batch=64, min_batch=64, min_batch_timeout_ms=5000
    )
    engine.set(keys.active_model(FEED), "m:1")
    publish(engine, FEED, good(3))
    c = Consumer(engine, settings(dag_timeout_ms=200))
    t = threading.Thread(target=c.run, daemon=True)
    t.start()
    wait_for(lambda: counters(engine).get("fault_waits", 0) >= 1)
    wait_for(lambda: engine.hexists(keys.faults(FEED), "c1"))
    assert "refused for load" in json.loads(engine.hget(keys.faults(FEED), "c1") or b"{}")["reason"]
    c.stop()
    t.join(30)
    assert not engine.hexists(keys.faults(FEED), "c1")  # a consumer that stopped backs off on nothing
    assert c.stats.dead == 0 and c.stats.frames_done == 0 and c.stats.faults >= 1
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 3
    stats = burst(engine, dag_timeout_ms=10000, max_deliveries=1)  # charged attempts would kill them now
    assert stats.frames_done == 3 and stats.dead == 0


def test_a_full_engine_queue_is_a_fault_not_the_frames(
    server_factory: Callable[..., RedisServer], background: Callable[[Consumer], threading.Thread]
) -> None:
    """The engine loaded with MAX_QUEUE_LENGTH 2 refuses the DAGs past the second of a batch
    ("queue ... is full"): those frames stay pending, uncharged (max_deliveries 1 would send a
    charged retry to the dead letters), the fault is in status, and every frame runs later."""
    server = server_factory(module_args=("MAX_QUEUE_LENGTH", "2"))
    r = redis.Redis(port=server.port, socket_timeout=60)
    # Requests wait in the queue for company (8) up to 1.5 s: two sit there, the rest are refused.
    ai.Engine(r).model_store(
        keys.model(FEED, "m", 1), spots_model(), batch=8, min_batch=8, min_batch_timeout_ms=1500
    )
    r.set(keys.active_model(FEED), "m:1")
    publish(r, FEED, good(6))
    c = Consumer(r, settings(max_deliveries=1))
    background(c)
    seen: list[str] = []

    def fault_shown() -> bool:
        [st] = status.collect(r, FEED)
        if "c1" in st.faults:
            seen.append(st.faults["c1"][0])
            seen.append(status.render([st]))
        return bool(seen)

    wait_for(fault_shown)
    assert "refused for load" in seen[0] and "MAX_QUEUE_LENGTH 2" in seen[0]
    assert "FAULT consumer c1" in seen[1]
    wait_for(lambda: len(detections(r, FEED)) == 6, 60)
    wait_for(lambda: not r.hexists(keys.faults(FEED), "c1"))  # cleared by itself
    assert r.xlen(keys.dead_letters(FEED)) == 0 and c.stats.dead == 0 and c.stats.faults >= 1
    assert sorted(d[b"frame"] for d in detections(r, FEED)) == sorted(f.frame_id.encode() for f in good(6))
    assert r.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    assert counters(r)["fault_waits"] >= 1 and "retries" not in counters(r)


def test_an_engine_slower_than_claim_idle_ms_gets_no_frame_reclaimed_run_twice_or_charged(
    engine: redis.Redis, background: Callable[[Consumer], threading.Thread]
) -> None:
    """The issue: DAGs slower than claim_idle_ms (the DAG socket timeout was 300 s) got healthy
    frames reclaimed by a second consumer, run twice and counted as failures. Now the DAG's
    engine TIMEOUT (claim_idle_ms // 3) answers first: a fault of the system, nothing charged,
    nothing run twice; when the engine is fast again every frame is published once."""
    slow = keys.model(FEED, "m", 1)
    # every request waits 6 s in the engine for company that never comes: twice claim_idle_ms
    ai.Engine(engine).model_store(slow, spots_model(), batch=64, min_batch=64, min_batch_timeout_ms=6000)
    engine.set(keys.active_model(FEED), "m:1")
    publish(engine, FEED, good(3))
    fleet = [Consumer(engine, settings(consumer=name, claim_idle_ms=3000)) for name in ("a", "b")]
    assert fleet[0].settings.dag_timeout == 1000
    for c in fleet:
        background(c)
    time.sleep(7.0)  # more than twice claim_idle_ms
    assert detections(engine, FEED) == [] and engine.xlen(keys.dead_letters(FEED)) == 0
    assert counters(engine).get("fault_waits", 0) >= 1 and "retries" not in counters(engine)
    assert ai.Engine(engine).model_info(slow).calls == 0  # timed out in the queue, never run
    install_model(engine, FEED, 2)  # a fast engine again
    wait_for(lambda: len(detections(engine, FEED)) == 3)
    time.sleep(0.5)
    assert sorted(d[b"frame"] for d in detections(engine, FEED)) == [b"g/0", b"g/1", b"g/2"]
    assert engine.xlen(keys.dead_letters(FEED)) == 0 and sum(c.stats.retries for c in fleet) == 0
    assert sum(c.stats.duplicates for c in fleet) == 0


def test_redis_oom_is_waited_out(
    server_factory: Callable[..., RedisServer], background: Callable[[Consumer], threading.Thread]
) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port, socket_timeout=60)
    install_model(r, FEED)
    publish(r, FEED, good(3))
    r.config_set("maxmemory", "1")
    c = Consumer(r, settings())
    background(c)
    time.sleep(1.5)
    admin = redis.Redis(port=server.port)
    assert admin.xlen(keys.detections(FEED)) == 0 and admin.xlen(keys.dead_letters(FEED)) == 0
    admin.config_set("maxmemory", "0")
    wait_for(lambda: admin.xlen(keys.detections(FEED)) == 3)
    assert c.stats.dead == 0 and admin.xpending(keys.frames(FEED), "detectors")["pending"] == 0


def test_the_dag_timeout_is_inside_claim_idle_ms() -> None:
    assert Settings().dag_timeout == 10000 and Settings().claim_idle_ms == 30000
    assert Settings(claim_idle_ms=0).dag_timeout is None
    with pytest.raises(ConfigError, match="half of claim_idle_ms"):
        Settings(claim_idle_ms=30000, dag_timeout_ms=20000)


def test_redeliveries_that_never_ran_do_not_send_good_frames_to_the_dead_letters(engine: redis.Redis) -> None:
    """The issue: crashes and reclaims raised XPENDING's delivery count, and after three of them
    good frames went to the dead letters ("delivered 4 times") without ever running."""
    install_model(engine, FEED)
    engine.xgroup_create(keys.frames(FEED), "detectors", id="0", mkstream=True)
    ids = publish(engine, FEED, good(3))
    engine.xreadgroup("detectors", "crashed-0", {keys.frames(FEED): ">"}, count=10)
    for n in range(1, 6):  # five more consumers took them and died before running them
        engine.xclaim(keys.frames(FEED), "detectors", f"crashed-{n}", 0, ids)
    [row] = engine.xpending_range(keys.frames(FEED), "detectors", ids[0], ids[0], 1)
    assert row["times_delivered"] == 6
    stats = burst(engine, claim_idle_ms=0)
    assert stats.frames_done == 3 and stats.dead == 0


# --- identity --------------------------------------------------------------------------------


def test_default_names_are_stable_per_host_and_slot(engine: redis.Redis) -> None:
    a = Lease(engine, FEED, "detectors")
    b = Lease(engine, FEED, "detectors")
    assert (a.name, b.name) == (f"{host_name()}-0", f"{host_name()}-1")  # two live consumers
    b.release()
    assert Lease(engine, FEED, "detectors").name == f"{host_name()}-1"
    assert Lease(engine, FEED, "detectors", "explicit").name == "explicit"


def test_a_restarted_consumer_takes_its_name_back_and_finishes_its_own_pending_first(
    engine: redis.Redis,
) -> None:
    install_model(engine, FEED)
    name = f"{host_name()}-0"
    engine.xgroup_create(keys.frames(FEED), "detectors", id="0", mkstream=True)
    publish(engine, FEED, good(3))
    # the previous consumer on slot 0 read them and died (its process id no longer exists)
    engine.xreadgroup("detectors", name, {keys.frames(FEED): ">"}, count=10)
    engine.set(keys.consumer_lease(FEED, "detectors", name), f"{host_name()} 999999999", ex=60)
    publish(engine, FEED, good(2, scene="later"))
    c = Consumer(engine, settings(consumer="", claim_idle_ms=3_600_000))
    assert c.name == name
    c.burst = True
    stats = c.run()
    assert stats.frames_done == 5  # the 3 it held (no XAUTOCLAIM needed), then the 2 new ones
    order = [d[b"frame"] for d in detections(engine, FEED)]
    assert order[:3] == [b"g/0", b"g/1", b"g/2"]
    assert not engine.exists(keys.consumer_lease(FEED, "detectors", name))  # released on exit


# --- exactly one result per frame across model switches ----------------------------------------


def test_one_result_per_frame_when_a_reclaimed_frame_runs_under_two_versions(engine: redis.Redis) -> None:
    install_model(engine, FEED, 1)
    items = good(4, scene="sw")
    publish(engine, FEED, items)
    slow = Consumer(engine, settings(consumer="slow"))
    slow.ensure_group()
    batch = slow._read(">", None)
    started = slow._start(batch)  # slow's DAGs run with m:1 ...
    assert started is not None and started.model is not None and started.model.version == "m:1"
    install_model(engine, FEED, 2)  # ... the feed switches to m:2 ...
    fast = burst(engine, consumer="fast", claim_idle_ms=0)  # ... and fast reclaims and commits them
    assert fast.frames_done == 4
    slow._finish(started)  # slow commits its m:1 results last: only acknowledged and counted
    assert slow.stats.frames_done == 0 and slow.stats.duplicates == 4 and slow.stats.superseded == 4
    results = detections(engine, FEED)
    assert len(results) == 4 and {d[b"model"] for d in results} == {b"m:2"}
    assert engine.xlen(keys.scenes(FEED)) == 1
    assert counters(engine)["superseded"] == 4
    # a redelivery after the scene completed publishes nothing either
    publish(engine, FEED, items[:1])
    burst(engine, consumer="late")
    assert len(detections(engine, FEED)) == 4 and engine.xlen(keys.scenes(FEED)) == 1


def test_a_one_tile_scene_reclaimed_across_a_switch_has_one_tile_result_and_one_scene_result(
    engine: redis.Redis,
) -> None:
    """The issue's other case: a one-tile scene completes with its only tile, so each version's
    commit would also have published the scene result."""
    install_model(engine, FEED, 1)
    [only] = scene_frames("one", scene_array(64, 64, {(20, 20): 60000}))
    assert only.tiles == 1
    publish(engine, FEED, [only])
    slow = Consumer(engine, settings(consumer="slow"))
    slow.ensure_group()
    started = slow._start(slow._read(">", None))
    assert started is not None and started.model is not None and started.model.version == "m:1"
    install_model(engine, FEED, 2)
    fast = burst(engine, consumer="fast", claim_idle_ms=0)
    assert fast.frames_done == 1 and fast.scenes_done == 1
    slow._finish(started)
    assert slow.stats.frames_done == 0 and slow.stats.duplicates == 1
    assert [d[b"frame"] for d in detections(engine, FEED)] == [b"one/0"]
    [(_id, scene)] = engine.xrange(keys.scenes(FEED))
    assert scene[b"scene"] == b"one" and scene[b"models"] == b"m:2"
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
