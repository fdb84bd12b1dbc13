"""Consumers against a real Redis with the engine: detections, merging, poison, idempotency."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from rasterio.warp import transform as warp

from consumers import ConsumerError
from consumers import commit as commit_module
from consumers.worker import ActiveModel, Consumer, Entry, RunStats
from groundwatch import detections as wire
from groundwatch import frames, keys
from groundwatch.settings import Settings
from tests.consumers.helpers import (
    TRANSFORM,
    UTM31N,
    detections,
    install_model,
    publish,
    scene_array,
    scene_frames,
)

FEED = "sea"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"feed": FEED, "consumer": "c1", "claim_idle_ms": 60000, "block_ms": 100}
    values.update(overrides)
    return Settings(**values)


def burst(client: redis.Redis, **overrides: Any) -> RunStats:
    return Consumer(client, settings(**overrides), burst=True).run()


def lonlat(row: float, col: float) -> tuple[float, float]:
    a, b, c, d, e, f = TRANSFORM
    x, y = a * col + b * row + c, d * col + e * row + f
    lon, lat = warp(UTM31N, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


# Spots (row, col) -> value; 160 x 160 scene, 64 px tiles with 16 px overlap: tile starts 0, 48, 96.
SPOTS = {
    (10, 10): 60000,  # tile 0 only
    (30, 56): 60001,  # a platform in the overlap of tiles 0 and 1 (columns 48..63)
    (56, 56): 60000,  # in the overlap of four tiles (0, 1, 3, 4)
    (150, 150): 61000,  # bottom-right corner, tile 8 only
    (100, 20): 62001,  # rows 96..111: tiles 3 and 6
}


def test_a_scene_comes_out_georeferenced_and_merged(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    items = scene_frames("s1", scene_array(160, 160, SPOTS), published_ms=1)
    assert len(items) == 9
    pubsub = engine.pubsub()
    pubsub.subscribe(keys.detections(FEED), keys.scenes(FEED))
    publish(engine, FEED, items)

    stats = burst(engine)

    assert (stats.frames_done, stats.scenes_done, stats.dead) == (9, 1, 0)
    entries = detections(engine, FEED)
    assert sorted(int(e[b"tile"]) for e in entries) == list(range(9))
    per_tile = [wire.decode_tile(e) for e in entries]
    seen = {(t.tile, d.scene_box_px) for t in per_tile for d in t.detections}
    # every sighting, in scene pixels: 1 + 2 + 4 + 1 + 2 sightings
    assert len(seen) == 10
    assert all(t.model == "m:1" for t in per_tile)

    scene = wire.decode_scene(engine.get(keys.scene_result(FEED, "s1")))
    assert engine.ttl(keys.scene_result(FEED, "s1")) > 0
    assert scene.tiles == 9 and scene.models == ("m:1",) and scene.detections_in == 10
    assert len(scene.detections) == len(SPOTS)
    by_pixel = {(int(d.scene_box_px[1]) + 3, int(d.scene_box_px[0]) + 3): d for d in scene.detections}
    assert set(by_pixel) == set(SPOTS)
    for (row, col), value in SPOTS.items():
        d = by_pixel[(row, col)]
        assert d.label == ("platform" if value % 2 else "ship")
        assert d.score == pytest.approx(value / 65535, abs=1e-4)
        assert d.scene_box_px == (col - 3, row - 3, col + 4, row + 4)
        assert d.center == pytest.approx(lonlat(row + 0.5, col + 0.5), abs=1e-7)
    assert by_pixel[(56, 56)].tiles == (0, 1, 3, 4)
    assert by_pixel[(30, 56)].tiles == (0, 1)

    # the same results went out on the channels, and the frames are acknowledged
    messages = []
    while (m := pubsub.get_message(timeout=1.0)) is not None:
        if m["type"] == "message":
            messages.append(m)
    channels = [m["channel"].decode() for m in messages]
    assert channels.count(keys.detections(FEED)) == 9 and channels.count(keys.scenes(FEED)) == 1
    assert json.loads(messages[-1]["data"])["groundwatch"]["kind"] == "scene"
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    counters = engine.hgetall(keys.stats(FEED))
    assert counters[b"frames_done"] == b"9" and counters[b"scenes_done"] == b"1"
    assert counters[b"detections"] == b"10"
    assert engine.llen(keys.latency(FEED)) == 9
    assert not engine.exists(keys.scene_tiles(FEED, "s1"))


def test_poison_frames_go_to_the_dead_letters_and_the_stream_keeps_flowing(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    good = scene_frames("ok", scene_array(64, 64, {(5, 5): 60000}))
    stream = keys.frames(FEED)
    bad = frames.encode(good[0])
    truncated = {**bad, "data": bad["data"][:-2]}
    engine.xadd(stream, {"hello": "world"})
    engine.xadd(stream, truncated)
    engine.xadd(stream, {**bad, "dtype": "UINT32"})
    engine.xadd(stream, {**bad, "crs": "EPSG:999999"})
    engine.xadd(stream, {**bad, "transform": "10,0,1000000000000,0,-10,1000000000000"})  # off the projection
    publish(engine, FEED, good)

    stats = burst(engine)

    assert stats.frames_done == 1 and stats.dead == 5
    dead = engine.xrange(keys.dead_letters(FEED))
    reasons = [fields[b"dead_reason"].decode() for _id, fields in dead]
    assert "missing field" in reasons[0]
    assert "truncated" in reasons[1]
    assert "dtype" in reasons[2]
    assert "EPSG:999999" in reasons[3] and "coordinate reference system" in reasons[3]
    assert reasons[4].startswith("cannot georeference")
    assert dead[0][1][b"hello"] == b"world"  # the original fields travel along
    assert dead[1][1][b"data"] == truncated["data"]
    assert engine.xpending(stream, "detectors")["pending"] == 0
    assert engine.hget(keys.stats(FEED), "dead") == b"5"
    assert len(detections(engine, FEED)) == 1


def test_a_frame_that_fails_in_the_model_is_retried_then_dead_lettered(engine: redis.Redis) -> None:
    install_model(engine, FEED, poison_value=4242)
    items = scene_frames("p", scene_array(112, 64, {(5, 5): 60000, (100, 5): 4242}))  # tile 1 has the pixel
    publish(engine, FEED, items)

    stats = burst(engine, max_deliveries=3)

    # the engine may batch both tiles, so the poison tile can fail its batch-mate once; retried
    # alone, the good tile goes through and only the poison one is dead-lettered
    assert stats.frames_done == 1 and stats.dead == 1 and stats.retries >= 2
    (letter,) = engine.xrange(keys.dead_letters(FEED))
    assert letter[1][b"frame"] == b"p/1"
    assert letter[1][b"dead_reason"].startswith(b"failed 3 times")
    assert b"poison pixel" in letter[1][b"dead_reason"]
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    # the scene never completes (a tile is missing) but its good tile was published
    assert not engine.exists(keys.scene_result(FEED, "p"))


def test_a_redelivered_frame_yields_no_duplicate(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    items = scene_frames("d", scene_array(64, 112, {(5, 5): 60000}))
    publish(engine, FEED, items)
    c = Consumer(engine, settings(), burst=True)
    c.ensure_group()
    raw = engine.xreadgroup("detectors", "c1", {keys.frames(FEED): ">"})[0][1]
    batch = [Entry(i.decode(), f) for i, f in raw]
    c._process(batch)
    # the same entries again (a consumer that stalled past claim_idle_ms, then woke up) ...
    c._process([Entry(i.decode(), f) for i, f in raw])
    # ... and the same frames published again by a producer
    publish(engine, FEED, items)
    c.run()
    assert len(detections(engine, FEED)) == 2
    assert engine.xlen(keys.scenes(FEED)) == 1
    assert c.stats.frames_done == 2 and c.stats.duplicates == 4
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0


def test_two_consumers_share_a_feed_and_complete_each_scene_once(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    scenes = [f"s{i}" for i in range(6)]
    for i, s in enumerate(scenes):
        publish(engine, FEED, scene_frames(s, scene_array(160, 160, SPOTS, seed=i)))
    Consumer(engine, settings()).ensure_group()
    results: dict[str, RunStats] = {}

    def work(name: str) -> None:
        client = redis.Redis(port=engine.connection_pool.connection_kwargs["port"])
        results[name] = Consumer(client, settings(consumer=name, read_count=4), burst=True).run()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(r.frames_done for r in results.values()) == 54
    assert sum(r.scenes_done for r in results.values()) == 6
    entries = detections(engine, FEED)
    assert sorted(e[b"frame"].decode() for e in entries) == sorted(
        f"{s}/{t}" for s in scenes for t in range(9)
    )
    done = [fields[b"scene"].decode() for _id, fields in engine.xrange(keys.scenes(FEED))]
    assert sorted(done) == scenes
    for s in scenes:
        assert len(wire.decode_scene(engine.get(keys.scene_result(FEED, s))).detections) == len(SPOTS)


def test_consumers_committing_tiles_of_one_scene_do_not_conflict(
    engine: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumer a reads under WATCH, then b commits the scene's other tiles before a's EXEC: a's
    transaction must not abort (it watches only its own frames), and the scene is published
    once, by whichever EXEC saw every tile."""
    install_model(engine, FEED)
    publish(engine, FEED, scene_frames("k", scene_array(160, 160, SPOTS)))
    a = Consumer(engine, settings(consumer="a", read_count=5), burst=True)
    b = Consumer(engine, settings(consumer="b", read_count=5), burst=True)
    a.ensure_group()
    first = a._start(a._read(">", None))
    second = b._start(b._read(">", None))
    assert first is not None and second is not None
    real = commit_module.connection.watch_and_read
    calls = {"n": 0}

    def between(pipe: Any, watched: Any, *commands: Any) -> Any:
        replies = real(pipe, watched, *commands)
        calls["n"] += 1
        if calls["n"] == 1:  # a is between its WATCH and its EXEC: b commits the rest of the scene
            b._finish(second)
        return replies

    monkeypatch.setattr(commit_module.connection, "watch_and_read", between)
    a._finish(first)
    monkeypatch.undo()
    assert a.stats.conflicts == 0 and b.stats.conflicts == 0
    assert a.stats.frames_done + b.stats.frames_done == 9
    assert a.stats.scenes_done + b.stats.scenes_done == 1
    assert engine.xlen(keys.scenes(FEED)) == 1
    assert not engine.exists(keys.scene_tiles(FEED, "k"))
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    assert int(engine.hget(keys.stats(FEED), "conflicts") or 0) == 0


def test_a_consumer_dying_between_its_commit_and_the_scene_result_leaves_it_to_the_redelivery(
    engine: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch with a scene's last tiles is committed (results and markers published) and its
    consumer dies before the scene result: the frames stay pending, and when they come back they
    are duplicates that complete the scene, once."""
    install_model(engine, FEED)
    publish(engine, FEED, scene_frames("z", scene_array(160, 160, SPOTS)))

    def dies(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.ConnectionError("killed")

    c = Consumer(engine, settings(), burst=True)
    c.ensure_group()
    monkeypatch.setattr(commit_module.Committer, "_publish_scene", dies)
    with pytest.raises(redis.ConnectionError):
        c._process(c._read(">", None))
    monkeypatch.undo()
    assert len(detections(engine, FEED)) == 9
    assert engine.xlen(keys.scenes(FEED)) == 0
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 9
    stats = burst(engine)  # the same name: its own pending entries first
    assert stats.frames_done == 0 and stats.duplicates == 9 and stats.scenes_done == 1
    assert len(detections(engine, FEED)) == 9
    assert engine.xlen(keys.scenes(FEED)) == 1
    scene = wire.decode_scene(engine.get(keys.scene_result(FEED, "z")))
    assert len(scene.detections) == len(SPOTS) and scene.tiles == 9
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    assert burst(engine).scenes_done == 0


def test_no_active_model_means_wait_not_poison(engine: redis.Redis) -> None:
    publish(engine, FEED, scene_frames("w", scene_array(64, 64, {(5, 5): 60000})))
    with pytest.raises(ConsumerError, match="no active model"):
        burst(engine)
    assert engine.xlen(keys.dead_letters(FEED)) == 0
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 1
    install_model(engine, FEED)
    assert burst(engine).frames_done == 1


def test_a_model_switch_mid_run_loses_no_frame(engine: redis.Redis) -> None:
    install_model(engine, FEED, 1)
    publish(engine, FEED, scene_frames("x", scene_array(160, 160, SPOTS)))
    c = Consumer(engine, settings(read_count=3), burst=True)
    real = c.active_model
    calls = {"n": 0}

    def stale() -> ActiveModel | None:
        calls["n"] += 1
        if calls["n"] == 2:
            # the loader switched to v2 and removed v1 between our GET and our DAGs
            install_model(engine, FEED, 2)
            engine.execute_command("AI.MODELDEL", keys.model(FEED, "m", 1))
            return ActiveModel("m:1", keys.model(FEED, "m", 1))
        return real()

    c.active_model = stale  # type: ignore[method-assign]
    stats = c.run()
    assert stats.frames_done == 9 and stats.dead == 0 and stats.retries == 0
    models = [e[b"model"].decode() for e in detections(engine, FEED)]
    assert models[:3] == ["m:1"] * 3 and models[3:] == ["m:2"] * 6
    scene = wire.decode_scene(engine.get(keys.scene_result(FEED, "x")))
    assert scene.models == ("m:1", "m:2")


def test_deleted_entries_are_acknowledged(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    ids = publish(engine, FEED, scene_frames("t", scene_array(64, 112, {(5, 5): 60000})))
    Consumer(engine, settings()).ensure_group()
    engine.xreadgroup("detectors", "c1", {keys.frames(FEED): ">"}, count=1)
    engine.xdel(keys.frames(FEED), ids[0])  # trimmed while pending
    stats = burst(engine)
    assert stats.frames_done == 1
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0


def test_status_shows_what_consumers_count(engine: redis.Redis) -> None:
    from groundwatch import status

    install_model(engine, FEED)
    publish(engine, FEED, scene_frames("st", scene_array(112, 112, {(5, 5): 60000})))
    engine.xadd(keys.frames(FEED), {"not": "a frame"})
    burst(engine)
    (st,) = status.collect(engine, FEED)
    assert st.counters["frames_done"] == 4 and st.counters["dead"] == 1 and st.counters["scenes_done"] == 1
    assert st.dead_letters == 1 and st.groups[0].pending == 0 and st.groups[0].lag == 0
    assert st.throughput_fps is not None and st.throughput_fps > 0
    assert set(st.latency_ms) == {"p50", "p90", "p99"}
    assert st.model == "m:1" and st.model_stats["samples"] >= 4
    text = status.render([st])
    assert "frames/s" in text and "frames_done 4" in text


def test_prometheus_endpoint_serves_the_feed_figures(engine: redis.Redis) -> None:
    import urllib.request

    from consumers import metrics

    install_model(engine, FEED)
    publish(engine, FEED, scene_frames("pm", scene_array(64, 64, {(5, 5): 60000})))
    burst(engine)
    server = metrics.serve(engine, 0, feed=FEED, host="127.0.0.1")
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    lines = text.splitlines()
    assert 'groundwatch_frames_done_total{feed="sea"} 1' in lines
    assert 'groundwatch_group_pending{feed="sea",group="detectors"} 0' in lines
    assert any(line.startswith('groundwatch_latency_ms{feed="sea",quantile="0.99"} ') for line in lines)
    assert "# TYPE groundwatch_scenes_done_total counter" in lines


def test_result_streams_are_capped_at_results_maxlen(engine: redis.Redis) -> None:
    install_model(engine, FEED)
    # XADD MAXLEN ~ trims whole stream nodes (100 entries by default): small nodes make the
    # cap of a short test visible.
    engine.config_set("stream-node-max-entries", 4)
    try:
        for n in range(3):  # 3 scenes of 9 tiles: 27 tile results, 3 scene results
            publish(engine, FEED, scene_frames(f"cap{n}", scene_array(160, 160, {(10, 10): 60000})))
        stats = burst(engine, results_maxlen=5, read_count=4)
    finally:
        engine.config_set("stream-node-max-entries", 100)
    assert stats.frames_done == 27
    assert engine.xinfo_stream(keys.detections(FEED))["entries-added"] == 27
    assert 5 <= engine.xlen(keys.detections(FEED)) <= 5 + 4
    unbounded = Settings(feed=FEED)
    assert unbounded.results_maxlen == 100_000
