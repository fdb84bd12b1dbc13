"""The environment and snapshot settings a redis-server is started with (groundwatch.server)."""

from __future__ import annotations

from pathlib import Path

from groundwatch.server import ENGINE_ENV, SNAPSHOT_CONFIG, RedisServer


def test_the_server_gets_the_engine_wait_policy_unless_the_caller_set_one(tmp_path: Path) -> None:
    """libgomp's threads in the engine sleep between parallel regions (PASSIVE) rather than spin
    on cores the server shares with its clients; a policy in the caller's environment wins.
    (Read from environment(): redis-server overwrites its /proc environ with its title.)"""
    assert ENGINE_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}
    plain = RedisServer(data_dir=tmp_path, env={"PATH": "/usr/bin:/bin"}).environment()
    assert plain == {"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    mine = RedisServer(data_dir=tmp_path, env={"OMP_WAIT_POLICY": "ACTIVE"}).environment()
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_snapshots_suit_an_aof_of_frames(tmp_path: Path) -> None:
    """Imagery hardly compresses: the AOF rewrite's fork should not spend CPU trying (LZF); and
    an AOF of 512 KB frames is not rewritten every 128 of them. Read back from a running server."""
    import redis

    server = RedisServer(data_dir=tmp_path, extra_config=SNAPSHOT_CONFIG).start()
    try:
        got = redis.Redis(port=server.port).config_get("*")
    finally:
        server.stop()
    assert got["rdbcompression"] == "no"
    assert int(got["auto-aof-rewrite-min-size"]) == 512 * 2**20


def test_groundwatch_up_starts_its_server_with_them(tmp_path: Path) -> None:
    from groundwatch.commands import embedded_server
    from groundwatch.settings import Settings

    line = embedded_server(Settings(data_dir=tmp_path)).command_line()
    for name, value in SNAPSHOT_CONFIG:
        assert line[line.index(f"--{name}") + 1] == value
