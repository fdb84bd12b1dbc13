"""The drop folder and the `groundwatch ingest` / `groundwatch watch` commands, against a real Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from groundwatch import frames, keys
from groundwatch.cli import main
from groundwatch.settings import Settings
from ingest.errors import BackpressureError
from ingest.watch import DropFolder, watch
from tests.ingest.conftest import scene_array, write_tif


def url(r: redis.Redis) -> str:
    return f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"


def test_good_file_to_done_bad_file_to_failed(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write_tif(drop / "good.tif", scene_array(1, 200, 200))
    (drop / "broken.tif").write_bytes(b"II*\x00garbage")
    write_tif(drop / "plain.tif", scene_array(1, 20, 20), crs=None, transform=None)
    outcomes = watch(r, settings, drop, burst=True, sleep=lambda s: None)
    by_name = {o.name: o for o in outcomes}
    assert set(by_name) == {"good.tif", "broken.tif", "plain.tif"}
    assert by_name["good.tif"].status == "done" and (drop / "done" / "good.tif").exists()
    assert by_name["good.tif"].result is not None and by_name["good.tif"].result.published == 4
    for bad in ("broken.tif", "plain.tif"):
        assert by_name[bad].status == "failed" and (drop / "failed" / bad).exists()
        reason = (drop / "failed" / f"{bad}.reason.txt").read_text()
        assert bad in reason and "InputError" in reason
    assert "not georeferenced" in (drop / "failed" / "plain.tif.reason.txt").read_text()
    assert sorted(p.name for p in drop.iterdir()) == ["done", "failed"]
    # only the good file's frames are on the stream
    assert {frames.decode(f).scene for _i, f in r.xrange(keys.frames("test"))} == {"good"}
    assert r.xlen(keys.frames("test")) == 4


def test_a_bad_file_alone_leaves_no_stream(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    path = write_tif(tmp_path / "cut.tif", scene_array(1, 256, 256), block=64)
    path.write_bytes(path.read_bytes()[:3000])
    [outcome] = watch(r, settings, tmp_path, burst=True, sleep=lambda s: None)
    assert outcome.status == "failed" and "cut.tif" in outcome.reason
    assert not r.exists(keys.frames("test"))


def test_incomplete_files_are_left_alone(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    write_tif(tmp_path / "coming.tif.part", scene_array(1, 50, 50))
    write_tif(tmp_path / ".hidden.tif", scene_array(1, 50, 50))
    growing = write_tif(tmp_path / "growing.tif", scene_array(1, 50, 50))
    folder = DropFolder(r, settings, tmp_path)
    assert folder.poll() == []  # first sight: nothing is known to be stable yet
    with growing.open("ab") as f:  # the station is still writing
        f.write(b"\x00" * 100)
    assert folder.poll() == []
    assert not r.exists(keys.frames("test"))
    (tmp_path / "coming.tif.part").rename(tmp_path / "coming.tif")  # delivery finished
    growing.write_bytes(write_tif(tmp_path / "x.tif.tmp", scene_array(1, 50, 50)).read_bytes())
    os.utime(growing, (1_700_000_000, 1_700_000_000))
    assert folder.poll() == []
    outcomes = folder.poll()
    assert sorted(o.name for o in outcomes) == ["coming.tif", "growing.tif"]
    assert all(o.status == "done" for o in outcomes)
    assert (tmp_path / ".hidden.tif").exists() and (tmp_path / "x.tif.tmp").exists()


def test_a_redelivered_scene_goes_to_done_without_frames(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    write_tif(tmp_path / "again.tif", scene_array(1, 60, 60))
    watch(r, settings, tmp_path, burst=True, sleep=lambda s: None)
    write_tif(tmp_path / "again.tif", scene_array(1, 60, 60))
    [outcome] = watch(r, settings, tmp_path, burst=True, sleep=lambda s: None)
    assert outcome.status == "done" and outcome.reason == "already ingested"
    assert Path(outcome.path).parent.name == "done" and outcome.name.startswith("again.tif.")
    assert r.xlen(keys.frames("test")) == 1


def test_backpressure_is_not_the_files_fault(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    for i in range(3):
        r.xadd(keys.frames("test"), {"filler": str(i)})
    path = write_tif(tmp_path / "waits.tif", scene_array(1, 60, 60))
    tight = settings.replace(max_lag=3, backpressure_timeout_s=0.0)
    with pytest.raises(BackpressureError):
        watch(r, tight, tmp_path, burst=True, sleep=lambda s: None)
    assert path.exists()  # still in the drop folder, to be tried again
    folder = DropFolder(r, tight, tmp_path)
    folder.poll()
    assert folder.poll() == [] and path.exists()  # the loop (not burst) logs and keeps it


def test_cli_ingest(r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_tif(tmp_path / "a.tif", scene_array(3, 300, 300, "uint8"))
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    code = main(
        [
            "--redis-url",
            url(r),
            "ingest",
            str(a),
            str(bad),
            "--feed",
            "cli",
            "--bands",
            "3,1",
            "--tile-size",
            "256",
            "--tile-overlap",
            "32",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "a.tif: scene a: 4 tiles" in err and "MB/s" in err and "tiles/s" in err
    assert "bad.tif: cannot be opened as a raster" in err
    assert "1 of 2 file(s) on gw:{cli}:frames" in err
    got = [frames.decode(f) for _i, f in r.xrange(keys.frames("cli"))]
    assert len(got) == 4 and {f.bands for f in got} == {(3, 1)} and got[0].shape == (2, 256, 256)
    assert main(["--redis-url", url(r), "ingest", str(a), "--feed", "cli"]) == 0
    assert "already ingested" in capsys.readouterr().err and r.xlen(keys.frames("cli")) == 4


def test_cli_watch_burst(r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tif(tmp_path / "one.tif", scene_array(1, 100, 100))
    (tmp_path / "two.tif").write_text("not a raster")
    code = main(["--redis-url", url(r), "watch", str(tmp_path), "--feed", "drop", "--burst", "--poll-s", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert "done: one.tif: scene one: 1 tiles" in err and "failed: two.tif" in err
    assert r.xlen(keys.frames("drop")) == 1 and (tmp_path / "done" / "one.tif").exists()


def test_cli_reports_backpressure(r: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r.xadd(keys.frames("busy"), {"filler": "1"})
    a = write_tif(tmp_path / "a.tif", scene_array(1, 60, 60))
    code = main(
        [
            "--redis-url",
            url(r),
            "ingest",
            str(a),
            "--feed",
            "busy",
            "--max-lag",
            "1",
            "--backpressure-timeout-s",
            "0",
        ]
    )
    assert code == 1
    assert "consumers are behind" in capsys.readouterr().err


def test_a_scene_half_published_with_other_tiling_goes_to_failed(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """The drop folder cannot pass --force: the file goes to failed/ saying how, not retried forever."""
    drop = tmp_path / "drop"
    drop.mkdir()
    write_tif(drop / "half.tif", scene_array(1, 200, 200))
    r.hset(keys.scene_progress("test", "half"), mapping={"tiles": 9, "published": 2})
    [outcome] = watch(r, settings, drop, burst=True, sleep=lambda s: None)
    assert outcome.status == "failed" and (drop / "failed" / "half.tif").exists()
    assert "--force" in (drop / "failed" / "half.tif.reason.txt").read_text()
    assert not r.exists(keys.frames("test"))
