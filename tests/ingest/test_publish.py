"""Publishing scenes to a real Redis: round trip, idempotency, resume, backpressure, retention."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from groundwatch import frames, keys
from groundwatch.frames import Frame
from groundwatch.server import RedisServer
from groundwatch.settings import Settings
from ingest import publisher, scene
from ingest.errors import BackpressureError, IngestError, InputError
from ingest.publisher import backlog, publish_frames, publish_tile, trim_acknowledged, wait_for_room
from ingest.scene import ArraySource, cut_tiles, ingest_file, publish_array, scene_id_for
from tests.ingest.conftest import TRANSFORM, UTM31, scene_array, write_tif

T6 = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)

TTL = Settings().progress_ttl_s


def stream_frames(r: redis.Redis, feed: str = "test") -> list[Frame]:
    return [frames.decode(f) for _id, f in r.xrange(keys.frames(feed))]


def stats(r: redis.Redis, feed: str = "test") -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.stats(feed)).items()}


# Two passes: a budget that fits one read (a row of tiles, a block, GDAL's cache) but not the scene.
@pytest.mark.parametrize("memory_mb", [1024, 0.2], ids=["in-memory", "two-pass"])
@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip_through_redis(
    r: redis.Redis, settings: Settings, tmp_path: Path, tiled: bool, dtype: str, memory_mb: float
) -> None:
    settings = settings.replace(
        ingest_memory_mb=memory_mb * (1 if memory_mb > 1 else np.dtype(dtype).itemsize)
    )
    a = scene_array(2, 301, 263, dtype)  # odd sizes: 3 x 3 tiles of 128 with overlap >= 16
    path = write_tif(
        tmp_path / "S2B_odd.scene.tif",
        a,
        tiled=tiled,
        block=32 if tiled else 7,
        nodata=0,
        tags={"TIFFTAG_DATETIME": "2026:11:25 10:31:07"},
    )
    result = ingest_file(r, settings, path)
    got = stream_frames(r)
    assert result.tiles == result.published == len(got) == 9 and result.skipped == 0
    assert [f.tile for f in got] == list(range(9))
    assert {f.scene for f in got} == {"S2B_odd"} and {f.tiles for f in got} == {9}
    assert [f.frame_id for f in got] == [f"S2B_odd/{i}" for i in range(9)]
    expected_windows = [(c, rr, 128, 128) for rr in (0, 112, 173) for c in (0, 112, 135)]
    assert [tuple(f.window) for f in got] == expected_windows
    for f in got:
        w = f.window
        assert f.shape == (2, 128, 128) and f.dtype == frames.engine_dtype(dtype)
        np.testing.assert_array_equal(
            f.valid(), a[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        )
        assert f.transform == T6 and f.crs == UTM31 and f.nodata == 0.0 and f.bands == (1, 2)
        assert frames.format_time(f.acquired) == "2026-11-25T10:31:07Z"
        assert f.source == "S2B_odd.scene.tif" and f.published_ms > 0
    # neighbours overlap by at least the configured overlap
    assert got[1].window.col_off - got[0].window.col_off <= 128 - 16
    s = stats(r)
    assert s["frames_in"] == 9 and s["scenes_in"] == 1 and s["bytes_in"] == 9 * a[:, :128, :128].nbytes
    assert r.sismember(keys.feeds(), "test")
    marker = json.loads(r.get(keys.scene_ingested("test", "S2B_odd")) or b"")
    assert marker["tiles"] == 9 and marker["source"] == "S2B_odd.scene.tif"


def test_small_scene_is_padded_with_nodata(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    a = scene_array(1, 50, 90, "uint16")
    path = write_tif(tmp_path / "small.tif", a, nodata=7)
    ingest_file(r, settings, path)
    [f] = stream_frames(r)
    assert f.shape == (1, 128, 128) and tuple(f.window) == (0, 0, 90, 50) and f.tiles == 1
    t = f.array()
    np.testing.assert_array_equal(t[:, :50, :90], a)
    assert (t[:, 50:, :] == 7).all() and (t[:, :, 90:] == 7).all()


def test_small_scene_without_nodata_is_padded_with_zero(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    ingest_file(r, settings, write_tif(tmp_path / "small.tif", scene_array(1, 130, 40, "float32")))
    got = stream_frames(r)
    assert [tuple(f.window) for f in got] == [(0, 0, 40, 128), (0, 2, 40, 128)]
    assert all((f.array()[:, :, 40:] == 0).all() and f.nodata is None for f in got)


@pytest.mark.parametrize("memory_mb", [1024, 0.7], ids=["in-memory", "two-pass"])
def test_nodata_tiles_are_skipped_and_counted(
    r: redis.Redis, settings: Settings, tmp_path: Path, memory_mb: float
) -> None:
    settings = settings.replace(ingest_memory_mb=memory_mb)
    a = scene_array(1, 256, 256, "float32")
    a[:, :128, 128:] = np.nan  # the top-right tile is all nodata
    a[:, 128:, :128] = np.nan
    a[0, 200, 50] = 3.0  # ... but the bottom-left has one valid pixel
    path = write_tif(tmp_path / "holes.tif", a, nodata=float("nan"))
    result = ingest_file(r, settings.replace(tile_overlap=0), path)
    got = stream_frames(r)
    assert result.skipped == 1 and result.tiles == 3
    assert [tuple(f.window)[:2] for f in got] == [(0, 0), (0, 128), (128, 128)]  # dense indices 0..2
    assert [f.tile for f in got] == [0, 1, 2] and {f.tiles for f in got} == {3}
    assert stats(r)["tiles_skipped"] == 1


def test_all_nodata_scene_publishes_nothing_but_is_marked(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_tif(tmp_path / "empty.tif", np.zeros((1, 200, 200), "uint8"), nodata=0)
    result = ingest_file(r, settings, path)
    assert result.tiles == 0 and result.skipped == 4 and not r.exists(keys.frames("test"))
    assert ingest_file(r, settings, path).duplicate


def test_same_scene_twice_is_enqueued_once(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    path = write_tif(tmp_path / "twice.tif", scene_array(1, 200, 200))
    first = ingest_file(r, settings, path)
    (tmp_path / "other").mkdir()
    copy = write_tif(tmp_path / "other" / "twice.tif", scene_array(1, 200, 200))
    second = ingest_file(r, settings, copy)  # same scene id from another folder
    assert not first.duplicate and second.duplicate and second.published == 0
    assert r.xlen(keys.frames("test")) == first.tiles == 4
    assert stats(r)["scenes_duplicate"] == 1
    forced = ingest_file(r, settings, path, force=True)
    assert forced.published == 4 and r.xlen(keys.frames("test")) == 8


@pytest.mark.parametrize("memory_mb", [1024, 0.4], ids=["in-memory", "two-pass"])
def test_a_crash_mid_scene_resumes_without_duplicates(
    r: redis.Redis, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_mb: float
) -> None:
    a = scene_array(1, 300, 300)
    path = write_tif(tmp_path / "crash.tif", a)
    settings = settings.replace(publish_batch=2, ingest_memory_mb=memory_mb, progress_ttl_s=1234)

    calls = {"n": 0}
    real = publisher.publish_frames

    def dies_after_two_batches(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the producer dies (a lost connection would be retried)
        return real(*args, **kwargs)

    monkeypatch.setattr(publisher, "publish_frames", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        ingest_file(r, settings, path)
    monkeypatch.undo()
    assert r.xlen(keys.frames("test")) == 4
    assert 1000 < r.ttl(keys.scene_progress("test", "crash")) <= 1234  # the progress_ttl_s setting
    assert not r.exists(keys.scene_ingested("test", "crash"))  # half a scene is not marked done
    assert r.hgetall(keys.scene_progress("test", "crash")) == {b"tiles": b"9", b"published": b"4"}
    result = ingest_file(r, settings, path)
    assert result.published == 5 and not result.duplicate
    ids = Counter(f.frame_id for f in stream_frames(r))
    assert sorted(ids) == [f"crash/{i}" for i in range(9)] and set(ids.values()) == {1}
    assert r.exists(keys.scene_ingested("test", "crash"))
    assert not r.exists(keys.scene_progress("test", "crash"))


def test_a_lost_connection_mid_scene_is_retried_from_the_resume_point(
    r: redis.Redis, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tif(tmp_path / "flaky.tif", scene_array(1, 300, 300))
    settings = settings.replace(publish_batch=2)
    calls = {"n": 0}
    real = publisher.publish_frames

    def loses_the_connection_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # e.g. a cluster failover between two batches
            raise redis.ConnectionError("Connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(publisher, "publish_frames", loses_the_connection_once)
    result = ingest_file(r, settings, path)
    assert not result.duplicate and calls["n"] > 5  # published counts the last attempt's frames
    ids = Counter(f.frame_id for f in stream_frames(r))
    assert sorted(ids) == [f"flaky/{i}" for i in range(9)] and set(ids.values()) == {1}


def test_changed_tiling_after_a_crash_is_refused(r: redis.Redis, settings: Settings) -> None:
    src = ArraySource(scene_array(1, 300, 300), T6, UTM31)
    kept, _ = cut_tiles(src, 128, 16)
    batch = [
        Frame.from_array(
            arr,
            scene="s",
            tile=i,
            tiles=9,
            window=w,
            transform=T6,
            crs=UTM31,
            acquired=src.acquired,
            published_ms=0,
        )
        for i, (w, arr) in enumerate(kept[:2])
    ]
    publish_frames(r, "test", batch, progress_ttl_s=TTL)
    with pytest.raises(IngestError, match=r"tiling .* changed"):
        publish_array(r, settings.replace(tile_size=256), src.array, T6, UTM31, scene="s")


def test_publish_frames_rejects_gaps_and_ignores_repeats(r: redis.Redis) -> None:
    def frame(i: int) -> Frame:
        return Frame.from_array(
            np.full((1, 2, 2), i, "uint8"),
            scene="g",
            tile=i,
            tiles=3,
            window=(0, 0, 2, 2),
            transform=T6,
            crs=UTM31,
            acquired=datetime.now(UTC),
            published_ms=0,
        )

    with pytest.raises(IngestError, match="tile 1 cannot be published before tile 0"):
        publish_frames(r, "test", [frame(1)], progress_ttl_s=TTL)
    assert len(publish_frames(r, "test", [frame(0), frame(1)], progress_ttl_s=TTL).ids) == 2
    assert publish_frames(r, "test", [frame(0), frame(1)], progress_ttl_s=TTL).duplicate
    done = publish_frames(r, "test", [frame(1), frame(2)], progress_ttl_s=TTL)
    assert len(done.ids) == 1 and done.complete
    assert [f.tile for f in stream_frames(r)] == [0, 1, 2]


def test_publish_tile_api(r: redis.Redis) -> None:
    a = scene_array(3, 64, 64, "uint16")
    entry = publish_tile(r, Settings(feed="arrays"), a, TRANSFORM, UTM31, nodata=0)
    assert entry is not None
    assert (
        publish_tile(r, Settings(feed="arrays"), a, TRANSFORM, UTM31, nodata=0) is None
    )  # same content: a no-op
    [f] = stream_frames(r, "arrays")
    np.testing.assert_array_equal(f.array(), a)
    assert f.tiles == 1 and tuple(f.window) == (0, 0, 64, 64) and f.transform == T6
    assert f.scene.startswith("a-")
    ids = [
        publish_tile(
            r,
            Settings(feed="arrays"),
            a[i],
            T6,
            UTM31,
            scene="multi",
            tile=i,
            tiles=3,
            window=(i * 64, 0, 64, 64),
        )
        for i in range(3)
    ]
    assert all(ids) and r.exists(keys.scene_ingested("arrays", "multi"))
    assert [f.window.col_off for f in stream_frames(r, "arrays")[1:]] == [0, 64, 128]


def test_publish_array_tiles_a_scene(r: redis.Redis, settings: Settings) -> None:
    a = scene_array(1, 200, 300, "uint8")
    result = publish_array(r, settings, a, T6, UTM31, scene="mem")
    got = stream_frames(r)
    assert result.tiles == len(got) == 6
    for f in got:
        w = f.window
        np.testing.assert_array_equal(
            f.valid(), a[:, w.row_off : w.row_off + 128, w.col_off : w.col_off + 128]
        )


def test_scene_ids_from_file_names() -> None:
    assert scene_id_for("/x/S2A_MSIL1C_2026.SAFE.tif") == "S2A_MSIL1C_2026"
    assert scene_id_for("pass 12 (svalbard).tif") == "pass_12__svalbard_"
    assert scene_id_for("_x.tif") == "s_x"


# --- backpressure --------------------------------------------------------------------------


def fill(r: redis.Redis, n: int, feed: str = "test") -> None:
    for i in range(n):
        r.xadd(keys.frames(feed), {"filler": str(i)})


def test_no_group_counts_the_stream_length(r: redis.Redis, settings: Settings) -> None:
    assert backlog(r, "test") == [publisher.Backlog(None, 0, 0)]
    fill(r, 5)
    assert backlog(r, "test") == [publisher.Backlog(None, 5, 0)]
    with pytest.raises(BackpressureError, match=r"no consumer group yet, 5 frames queued.*max_lag=5"):
        wait_for_room(r, settings.replace(max_lag=5, backpressure_timeout_s=0.05), poll_s=0.01)
    assert r.xlen(keys.frames("test")) == 5  # nothing trimmed to make room


def test_a_lagging_group_blocks_with_a_clear_message(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    fill(r, 10)
    r.xgroup_create(keys.frames("test"), "detectors", id="0")
    r.xreadgroup("detectors", "c1", {keys.frames("test"): ">"}, count=3)  # 3 pending, lag 7
    assert backlog(r, "test") == [publisher.Backlog("detectors", 7, 3)]
    tight = settings.replace(max_lag=5, backpressure_timeout_s=0.05)
    path = write_tif(tmp_path / "late.tif", scene_array(1, 100, 100))
    with pytest.raises(BackpressureError) as info:
        ingest_file(r, tight, path)
    msg = str(info.value)
    assert "group 'detectors': lag 7, pending 3" in msg and "XGROUP DESTROY" in msg
    assert r.xlen(keys.frames("test")) == 10 and not r.exists(keys.scene_ingested("test", "late"))
    assert stats(r)["backpressure_waits"] == 1


def test_pending_alone_blocks(r: redis.Redis, settings: Settings) -> None:
    fill(r, 6)
    r.xgroup_create(keys.frames("test"), "detectors", id="0")
    r.xreadgroup("detectors", "c1", {keys.frames("test"): ">"})  # lag 0, pending 6
    with pytest.raises(BackpressureError, match="lag 0, pending 6"):
        wait_for_room(r, settings.replace(max_lag=5, backpressure_timeout_s=0.0))


def test_a_group_that_acks_lets_the_producer_proceed(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    stream = keys.frames("test")
    fill(r, 8)
    r.xgroup_create(stream, "detectors", id="0")
    sleeps: list[float] = []

    def consumer_catches_up(seconds: float) -> None:  # runs while the producer waits
        sleeps.append(seconds)
        for _s, entries in r.xreadgroup("detectors", "c1", {stream: ">"}, count=4):
            r.xack(stream, "detectors", *[eid for eid, _f in entries])

    tight = settings.replace(max_lag=5, backpressure_timeout_s=3600)
    wait_for_room(r, tight, sleep=consumer_catches_up, poll_s=0.01)
    assert sleeps and len(sleeps) == 1  # after 4 acks the lag is 4 < 5
    assert backlog(r, "test") == [publisher.Backlog("detectors", 4, 0)]


def test_lag_unknown_to_redis_is_counted(r: redis.Redis) -> None:
    stream = keys.frames("test")
    fill(r, 6)
    r.xgroup_create(stream, "detectors", id="0")
    r.xreadgroup("detectors", "c1", {stream: ">"}, count=2)
    first_undelivered = r.xrange(stream)[3][0]
    r.xdel(stream, first_undelivered)  # a deletion makes Redis report lag as unknown
    [g] = r.xinfo_groups(stream)
    assert g["lag"] is None
    assert backlog(r, "test", limit=100) == [publisher.Backlog("detectors", 3, 2)]


# --- retention -----------------------------------------------------------------------------


def test_trim_keeps_everything_without_groups(r: redis.Redis) -> None:
    fill(r, 5)
    assert trim_acknowledged(r, "test") == 0 and r.xlen(keys.frames("test")) == 5


def test_trim_removes_only_what_every_group_acknowledged(r: redis.Redis) -> None:
    stream = keys.frames("test")
    fill(r, 10)
    ids = [eid for eid, _f in r.xrange(stream)]
    r.xgroup_create(stream, "fast", id="0")
    r.xgroup_create(stream, "slow", id="0")
    [(_s, fast)] = r.xreadgroup("fast", "c", {stream: ">"}, count=8)
    r.xack(stream, "fast", *[eid for eid, _f in fast])  # fast acked 0..7
    [(_s, slow)] = r.xreadgroup("slow", "c", {stream: ">"}, count=6)
    r.xack(stream, "slow", *[eid for eid, _f in slow[:2]] + [slow[3][0]])  # slow: 2 pending (id 2, 4, 5)
    assert trim_acknowledged(r, "test") == 2  # ids 0, 1: the oldest slow still needs is id 2
    remaining = [eid for eid, _f in r.xrange(stream)]
    assert remaining == ids[2:]
    r.xack(stream, "slow", slow[2][0], slow[4][0], slow[5][0])  # slow acked 0..5, delivered up to 5
    assert trim_acknowledged(r, "test") == 4 and [e for e, _f in r.xrange(stream)] == ids[6:]
    r.xgroup_destroy(stream, "slow")
    assert trim_acknowledged(r, "test") == 2 and [e for e, _f in r.xrange(stream)] == ids[8:]
    assert stats(r)["frames_trimmed"] == 8


def test_a_fresh_group_at_zero_keeps_everything(r: redis.Redis) -> None:
    fill(r, 4)
    r.xgroup_create(keys.frames("test"), "new", id="0")
    assert trim_acknowledged(r, "test") == 0


def test_bad_input_leaves_the_stream_untouched(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    path = write_tif(tmp_path / "cut.tif", scene_array(1, 256, 256), block=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(InputError, match=r"cut\.tif"):
        ingest_file(r, settings, path)
    assert not r.exists(keys.frames("test")) and not r.exists(keys.scene_ingested("test", "cut"))


def test_concurrent_producers_of_one_scene_publish_each_tile_once(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """Three producers race on the same scene, one frame per transaction: WATCH keeps it exactly-once."""
    import threading

    path = write_tif(tmp_path / "race.tif", scene_array(1, 400, 400))
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    one_by_one = settings.replace(publish_batch=1)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            ingest_file(redis.Redis(port=redis_server.port), one_by_one, path)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=produce) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = [f.frame_id for f in stream_frames(client)]
    assert got == [f"race/{i}" for i in range(16)]
    assert stats(client)["scenes_in"] == 1 and stats(client)["frames_in"] == 16


def test_a_file_changed_between_the_two_reads_is_refused(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = scene_array(1, 256, 256)
    src = ArraySource(a, T6, UTM31, nodata=0)
    reads = {"n": 0}
    real = src.read_rows

    def second_read_sees_nodata(row_off: int, height: int) -> tuple[int, np.ndarray]:
        reads["n"] += 1
        start, rows = real(row_off, height)
        return start, (rows * 0 if reads["n"] > 3 else rows)  # 3 tile rows per read pass

    monkeypatch.setattr(src, "read_rows", second_read_sees_nodata)
    with pytest.raises(InputError, match="changed while it was ingested"):
        scene.ingest_scene(r, settings.replace(ingest_memory_mb=0, publish_batch=100), src, "moving")
    assert not r.exists(keys.scene_ingested("test", "moving"))


def test_a_two_pass_scene_stops_at_the_first_changed_tile(
    r: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = scene_array(1, 256, 256)
    src = ArraySource(a, T6, UTM31, nodata=0)
    reads = {"n": 0}
    real = src.read_rows

    def later_rows_brighter(row_off: int, height: int) -> tuple[int, np.ndarray]:
        reads["n"] += 1
        start, rows = real(row_off, height)
        return start, (rows + 1 if reads["n"] > 4 else rows)  # the second pass's second tile row

    monkeypatch.setattr(src, "read_rows", later_rows_brighter)
    with pytest.raises(InputError, match="differs between the two reads"):
        scene.ingest_scene(r, settings.replace(ingest_memory_mb=0, publish_batch=1), src, "moving")
    assert not r.exists(keys.scene_ingested("test", "moving"))
    published = [frames.decode(f) for _id, f in r.xrange(keys.frames("test"))]
    assert 0 < len(published) < 9  # only tiles read identically twice went out
    for f in published:
        w = f.window
        np.testing.assert_array_equal(
            f.valid()[0], a[0, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        )


@pytest.mark.parametrize(
    "layout", [{"tiled": True, "block": 64}, {"tiled": False, "block": 16}], ids=["tiled", "striped"]
)
def test_rows_two_rows_of_tiles_share_are_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: dict[str, Any]
) -> None:
    """Each pixel row of the file is read once, though tile rows overlap (the last one by more),
    and the tiles are exactly those of the tile grid."""
    from groundwatch.geometry import tiles_of
    from ingest import rasters

    a = scene_array(2, 300, 260, seed=3)
    path = write_tif(tmp_path / "rows.tif", a, **layout)
    windows: list[tuple[int, int]] = []
    real = rasters.Raster.read

    def read(self: rasters.Raster, window: frames.PixelWindow) -> np.ndarray:
        windows.append((window.row_off, window.height))
        return real(self, window)

    monkeypatch.setattr(rasters.Raster, "read", read)
    with rasters.open_raster(path) as raster:
        got = list(scene.iter_tiles(raster, 128, 16))
    expected, _ = tiles_of(a, 128, 16)
    assert [w for w, _ in got] == [w for w, _ in expected]
    for (_, tile), (_, want) in zip(got, expected, strict=True):
        assert tile is not None and np.array_equal(tile, want)
    assert windows == [(0, 128), (128, 112), (240, 60)]  # rows 0..299, each once
