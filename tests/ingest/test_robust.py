"""Ingest memory bounded by the tile row, the per-file boundary of the drop folder, and the
durable acknowledgement of a scene, with real GeoTIFFs and real redis-servers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from groundwatch import frames, keys
from groundwatch.frames import PixelWindow
from groundwatch.server import RedisServer
from groundwatch.settings import Settings
from ingest import publisher
from ingest.errors import DurabilityError, InputError
from ingest.rasters import Raster
from ingest.scene import ingest_file
from ingest.watch import DropFolder
from tests.ingest.conftest import scene_array, write_tif


def stream(r: redis.Redis, feed: str = "test") -> list[frames.Frame]:
    return [frames.decode(f) for _id, f in r.xrange(keys.frames(feed))]


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[PixelWindow]:
    seen: list[PixelWindow] = []
    real = Raster.read

    def read(self: Raster, window: PixelWindow) -> np.ndarray:
        seen.append(window)
        return real(self, window)

    monkeypatch.setattr(Raster, "read", read)
    return seen


def check_pixels(got: list[frames.Frame], a: np.ndarray) -> None:
    for f in got:
        w = f.window
        np.testing.assert_array_equal(
            f.valid(), a[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        )


# Budgets: the scene's tiles (~1 MB) plus one read do not fit, so it takes two passes; one read
# does: a row of tiles, GDAL's cache (a quarter), and the strip as decoded (GDAL splits an
# uncompressed single strip into rows; a compressed one is decoded whole, 0.6 MB, held twice).
@pytest.mark.parametrize("compress,memory_mb", [(None, 1.2), ("deflate", 2.5)])
def test_a_single_strip_file_is_read_one_row_of_tiles_at_a_time(
    r: redis.Redis,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compress: str | None,
    memory_mb: float,
) -> None:
    a = scene_array(1, 600, 500)
    opts: dict[str, Any] = {"compress": compress} if compress else {}
    path = write_tif(tmp_path / "strip.tif", a, tiled=False, block=600, **opts)  # one strip
    reads = record_reads(monkeypatch)
    result = ingest_file(r, settings.replace(ingest_memory_mb=memory_mb), path)
    got = stream(r)
    assert result.tiles == len(got) == 30
    check_pixels(got, a)
    assert reads and max(w.height for w in reads) <= settings.tile_size  # never the whole strip
    assert len(reads) == 2 * 6  # six rows of tiles, two passes


def test_a_compressed_strip_larger_than_the_budget_is_refused_with_a_reason(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    a = scene_array(1, 2000, 1000)
    path = write_tif(tmp_path / "big-strip.tif", a, tiled=False, block=2000, compress="deflate")
    with pytest.raises(InputError, match=r"single strip.*--memory-mb.*TILED=YES"):
        ingest_file(r, settings.replace(ingest_memory_mb=4), path)  # the strip decodes to 4 MB, x2
    assert stream(r) == []
    # the same file within a budget that holds its strip
    assert ingest_file(r, settings.replace(ingest_memory_mb=64), path).tiles > 0


def test_huge_strips_are_read_in_tile_rows_within_the_budget(
    r: redis.Redis, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = scene_array(2, 900, 300)
    path = write_tif(tmp_path / "huge.tif", a, tiled=False, block=450, compress="deflate")
    reads = record_reads(monkeypatch)
    result = ingest_file(r, settings.replace(ingest_memory_mb=2.5), path)
    assert result.tiles == len(stream(r)) == 24
    check_pixels(stream(r), a)
    assert max(w.height for w in reads) <= settings.tile_size


def test_an_acquired_tag_out_of_range_is_the_files_fault(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_tif(drop / "old.tif", scene_array(1, 64, 64), tags={"acquired": "0001-01-01T00:00:00+01:00"})
    folder = DropFolder(r, settings, drop)
    folder.poll()
    [outcome] = folder.poll()
    assert outcome.status == "failed" and "outside the years 1..9999" in outcome.reason
    assert (drop / "failed" / "old.tif.reason.txt").exists()
    assert stream(r) == []


def test_any_failure_of_one_file_is_that_files_and_the_watcher_goes_on(
    r: redis.Redis, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in ("a-oom.tif", "b-bug.tif", "c-good.tif"):
        write_tif(drop / name, scene_array(1, 64, 64))
    real = Raster.read

    def read(self: Raster, window: PixelWindow) -> np.ndarray:
        if Path(self.path).name == "a-oom.tif":
            raise MemoryError
        if Path(self.path).name == "b-bug.tif":
            raise ZeroDivisionError("a bug this file provokes")
        return real(self, window)

    monkeypatch.setattr(Raster, "read", read)
    folder = DropFolder(r, settings, drop)
    folder.poll()
    outcomes = {o.name.split(".")[0]: o for o in folder.poll()}
    assert outcomes["a-oom"].status == "failed" and "ran out of memory" in outcomes["a-oom"].reason
    assert outcomes["b-bug"].status == "failed" and "ZeroDivisionError" in outcomes["b-bug"].reason
    assert outcomes["c-good"].status == "done"
    assert sorted(p.name for p in (drop / "failed").iterdir()) == [
        "a-oom.tif",
        "a-oom.tif.reason.txt",
        "b-bug.tif",
        "b-bug.tif.reason.txt",
    ]
    assert folder.poll() == [] and [f.scene for f in stream(r)] == ["c-good"]


def test_redis_refusing_writes_is_not_the_files_fault(
    server_factory: Callable[..., RedisServer], settings: Settings, tmp_path: Path
) -> None:
    server = server_factory(with_engine=False)
    r = redis.Redis(port=server.port)
    drop = tmp_path / "drop"
    drop.mkdir()
    write_tif(drop / "s.tif", scene_array(1, 64, 64))
    r.config_set("maxmemory", "1")  # every write is refused with OOM
    folder = DropFolder(r, settings, drop)
    folder.poll()
    assert folder.poll() == []  # not ingested, not failed: still in the folder
    assert (drop / "s.tif").exists() and not list((drop / "failed").iterdir())
    r.config_set("maxmemory", "0")
    [outcome] = folder.poll()  # the next poll tries it again
    assert outcome.status == "done" and len(stream(r)) == 1


# --- durability ------------------------------------------------------------------------------


def test_durability_on_this_server_without_aof_is_reported_not_durable(
    r: redis.Redis, settings: Settings
) -> None:
    from ingest.publisher import publish_tile

    publish_tile(r, settings, np.ones((1, 4, 4), np.uint16), (1, 0, 0, 0, -1, 0), "EPSG:32631", scene="d")
    d = publisher.make_durable(r, "test")
    assert (d.method, d.durable) == ("none", False) and "appendonly no" in d.detail


@pytest.mark.parametrize(
    "fsync,method,durable", [("always", "fsync-always", True), ("everysec", "aof-everysec", False)]
)
def test_durability_with_the_aof(
    server_factory: Callable[..., RedisServer],
    settings: Settings,
    tmp_path: Path,
    fsync: str,
    method: str,
    durable: bool,
) -> None:
    server = server_factory(with_engine=False, extra_config=(("appendonly", "yes"), ("appendfsync", fsync)))
    r = redis.Redis(port=server.port)
    version = r.info("server")["redis_version"]
    path = write_tif(tmp_path / "s.tif", scene_array(1, 64, 64))
    result = ingest_file(r, settings, path)
    assert result.durability is not None
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):  # WAITAOF confirms the fsync itself
        assert (result.durability.method, result.durability.durable) == ("waitaof", True)
    else:  # 7.0: no WAITAOF; the server's own policy says what an acknowledgement is worth
        with pytest.raises(redis.ResponseError, match="unknown command"):
            r.execute_command("WAITAOF", 1, 0, 100)
        assert (result.durability.method, result.durability.durable) == (method, durable)
        assert f"appendfsync {fsync}" in result.durability.detail


def test_a_replica_must_confirm_before_the_file_is_done(
    server_factory: Callable[..., RedisServer],
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    primary = server_factory(with_engine=False)
    replica = server_factory(with_engine=False, extra_config=(("replicaof", f"127.0.0.1 {primary.port}"),))
    r = redis.Redis(port=primary.port)
    deadline = time.monotonic() + 20
    while r.info("replication")["connected_slaves"] < 1 or (
        redis.Redis(port=replica.port).info("replication").get("master_link_status") != "up"
    ):
        assert time.monotonic() < deadline, "the replica did not connect"
        time.sleep(0.1)
    drop = tmp_path / "drop"
    drop.mkdir()
    write_tif(drop / "s.tif", scene_array(1, 64, 64))
    pid = int(redis.Redis(port=replica.port).info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)  # connected, but acknowledges nothing
    try:
        folder = DropFolder(r, settings, drop)
        monkeypatch.setattr(publisher, "DURABLE_TIMEOUT_MS", 200)
        folder.poll()
        assert folder.poll() == []  # frames published, but not confirmed: the file stays
        assert (drop / "s.tif").exists() and len(stream(r)) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
        monkeypatch.undo()
    [outcome] = folder.poll()  # the scene is a duplicate now; its durability is waited for again
    assert outcome.status == "done" and outcome.result is not None and outcome.result.durability is not None
    assert outcome.result.durability.method == "wait" and outcome.result.durability.durable
    assert len(stream(r)) == 1
    assert len(stream(redis.Redis(port=replica.port))) == 1


def test_durability_error_is_raised_for_waitaof_shortfall() -> None:
    """The Redis >= 7.2 path, with a stand-in client (this machine's redis-server is 7.0)."""

    class Seven2:
        sent: tuple[Any, ...] = ()

        def info(self, *sections: str) -> dict[str, Any]:
            info: dict[str, dict[str, Any]] = {
                "server": {"redis_version": "7.2.4"},
                "replication": {"connected_slaves": 1},
                "persistence": {"aof_enabled": 1},
            }
            return {k: v for section in sections for k, v in info[section].items()}

        def pipeline(self, transaction: bool = True) -> Any:
            outer = self

            class Pipe:
                def hincrby(self, *a: Any) -> None:
                    pass

                def execute_command(self, *a: Any) -> None:
                    outer.sent = a

                def execute(self) -> list[Any]:
                    return [1, [1, 0]]

            return Pipe()

    client: Any = Seven2()
    with pytest.raises(DurabilityError, match="on replicas 0/1"):
        publisher.make_durable(client, "test", 50)
    assert client.sent == ("WAITAOF", 1, 1, 50)
