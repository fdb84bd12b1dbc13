"""Crashes: a consumer killed with SIGKILL mid-scene, and Redis killed and restarted mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from consumers.worker import Consumer
from groundwatch import keys
from groundwatch.settings import Settings
from tests.consumers.helpers import install_model, publish, scene_array, scene_frames

FEED = "sea"
SPOTS = {(10, 10): 60000, (56, 56): 60001, (150, 150): 61000}


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def exactly_one_result_per_frame(client: redis.Redis, scenes: list[str], tiles: int = 9) -> None:
    frames_out = Counter(f[b"frame"].decode() for _i, f in client.xrange(keys.detections(FEED)))
    expected = {f"{s}/{t}" for s in scenes for t in range(tiles)}
    assert set(frames_out) == expected
    assert set(frames_out.values()) == {1}, [k for k, n in frames_out.items() if n > 1]
    scenes_out = Counter(f[b"scene"].decode() for _i, f in client.xrange(keys.scenes(FEED)))
    assert scenes_out == Counter(scenes)
    assert client.xpending(keys.frames(FEED), "detectors")["pending"] == 0


def test_kill_9_mid_scene_then_another_consumer_reclaims(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    scenes = [f"k{i}" for i in range(8)]
    for i, s in enumerate(scenes):
        publish(engine, FEED, scene_frames(s, scene_array(160, 160, SPOTS, seed=i)))
    port = engine.connection_pool.connection_kwargs["port"]
    victim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumers",
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
            "consume",
            "--feed",
            FEED,
            "--name",
            "victim",
            "--read-count",
            "2",
            "--block-ms",
            "100",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            "the victim's first results", lambda: int(engine.hget(keys.stats(FEED), "frames_done") or 0) >= 5
        )
        # Freeze it until it is caught holding frames it has read but not acknowledged, then kill it.
        for _ in range(200):
            victim.send_signal(signal.SIGSTOP)
            holding = [
                c
                for c in engine.xinfo_consumers(keys.frames(FEED), "detectors")
                if c["name"] == b"victim" and c["pending"] > 0
            ]
            if holding:
                break
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        assert holding, "never caught the victim holding frames"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
    orphaned = holding[0]["pending"]
    done_by_victim = int(engine.hget(keys.stats(FEED), "frames_done"))
    assert done_by_victim < 72

    rescuer = Consumer(
        engine, Settings(feed=FEED, consumer="rescuer", claim_idle_ms=0, block_ms=100), burst=True
    )
    stats = rescuer.run()

    assert stats.frames_done == 72 - done_by_victim
    assert orphaned > 0
    exactly_one_result_per_frame(engine, scenes)


def test_redis_killed_and_restarted_mid_run_loses_no_acknowledged_result(server_factory: Any) -> None:
    server = server_factory(extra_config=(("appendonly", "yes"), ("appendfsync", "always")))
    client = redis.Redis(port=server.port, socket_timeout=30)
    install_model(client, FEED)
    scenes = [f"r{i}" for i in range(10)]
    for i, s in enumerate(scenes):
        publish(client, FEED, scene_frames(s, scene_array(160, 160, SPOTS, seed=i)))
    consumer = Consumer(
        redis.Redis(port=server.port, socket_timeout=30),
        Settings(feed=FEED, consumer="steady", block_ms=100, read_count=2),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for("some results", lambda: int(client.hget(keys.stats(FEED), "frames_done") or 0) >= 10)
        published = {f[b"frame"] for _i, f in client.xrange(keys.detections(FEED))}
        server.kill()
        server.start()
        client = redis.Redis(port=server.port, socket_timeout=30)
        after = {f[b"frame"] for _i, f in client.xrange(keys.detections(FEED))}
        assert published <= after  # everything acknowledged before the crash survived it
        wait_for("every frame", lambda: int(client.hget(keys.stats(FEED), "frames_done") or 0) >= 90, 120)
        wait_for("nothing pending", lambda: client.xpending(keys.frames(FEED), "detectors")["pending"] == 0)
    finally:
        consumer.stop()
        thread.join(30)
    assert not thread.is_alive()
    exactly_one_result_per_frame(client, scenes)


def test_sigterm_drains_the_batch_in_flight_and_exits(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    scenes = [f"t{i}" for i in range(20)]
    for i, s in enumerate(scenes):
        publish(engine, FEED, scene_frames(s, scene_array(160, 160, SPOTS, seed=i)))
    port = engine.connection_pool.connection_kwargs["port"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumers",
            "--redis-url",
            f"redis://127.0.0.1:{port}/0",
            "consume",
            "--feed",
            FEED,
            "--name",
            "polite",
            "--read-count",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("some results", lambda: int(engine.hget(keys.stats(FEED), "frames_done") or 0) >= 4)
        # catch it holding a batch, then ask it to stop
        wait_for(
            "a batch in flight",
            lambda: any(
                c["name"] == b"polite" and c["pending"] > 0
                for c in engine.xinfo_consumers(keys.frames(FEED), "detectors")
            ),
            30,
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out.decode(errors="replace")
    held = [c for c in engine.xinfo_consumers(keys.frames(FEED), "detectors") if c["name"] == b"polite"]
    assert held[0]["pending"] == 0  # what it had read was finished and acknowledged
    done = int(engine.hget(keys.stats(FEED), "frames_done"))
    assert done >= 4 and done == engine.xlen(keys.detections(FEED))
    assert b"signal 15: draining" in out


def test_a_stream_deleted_under_a_running_consumer_is_recreated(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    publish(engine, FEED, scene_frames("before", scene_array(64, 64, {(5, 5): 60000})))
    consumer = Consumer(
        redis.Redis(port=engine.connection_pool.connection_kwargs["port"]),
        Settings(feed=FEED, consumer="steady", block_ms=50),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        wait_for("the first scene", lambda: engine.exists(keys.scene_result(FEED, "before")))
        engine.delete(keys.frames(FEED))  # the group goes with it
        publish(engine, FEED, scene_frames("after", scene_array(64, 64, {(5, 5): 60000})))
        wait_for(
            "the scene published after the delete", lambda: engine.exists(keys.scene_result(FEED, "after"))
        )
    finally:
        consumer.stop()
        thread.join(30)
    assert not thread.is_alive()
