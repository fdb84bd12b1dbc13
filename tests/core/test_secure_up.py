"""`groundwatch up` is safe by default and `up --secure` is production-shaped: the whole flow
runs against it through the CLI with no manual step, each step as its role's user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from groundwatch import connection
from groundwatch.cli import main
from groundwatch.settings import REPO_ROOT, Settings
from tests import toymodels
from tests.ingest.conftest import write_tif

FEED = "sec"


@pytest.fixture
def engine_env(engine_module: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine_module is None:
        pytest.skip("run without --no-engine: `up` starts the server with the engine")
    monkeypatch.setenv("GROUNDWATCH_ENGINE_MODULE", str(engine_module))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("GROUNDWATCH_REDIS_USER", raising=False)


def _port(data: Path) -> int:
    return int(json.loads((data / "server.json").read_text())["port"])


def test_plain_up_disables_debug_and_module_load(
    engine_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gw"
    assert main(["--data-dir", str(data), "up"]) == 0
    try:
        port = _port(data)
        assert f"redis-cli -p {port}" in capsys.readouterr().out
        client = redis.Redis(port=port)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        for command in (("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/nonexistent.so")):
            with pytest.raises(redis.ResponseError, match="not allowed"):
                client.execute_command(*command)
    finally:
        assert main(["--data-dir", str(data), "down"]) == 0


def _cli(data: Path, user: str, *args: str) -> int:
    os.environ["GROUNDWATCH_REDIS_USER"] = user
    try:
        return main(["--data-dir", str(data), *args])
    finally:
        del os.environ["GROUNDWATCH_REDIS_USER"]


def test_up_secure_refuses_strangers_and_runs_the_whole_flow_through_the_cli(
    engine_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gw"
    assert main(["--data-dir", str(data), "up", "--secure"]) == 0
    try:
        out = capsys.readouterr().out
        port = _port(data)
        creds = json.loads((data / "credentials.json").read_text())
        assert set(creds) == {"default", "publisher", "consumer", "loader", "viewer", "operator"}
        assert not any(pw in out for pw in creds.values()), "`up` printed a password"
        assert "--tls --cacert" in out and "rediss://" in out
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for private in ("credentials.json", "users.acl", "tls/ca.key", "tls/server.key"):
            assert stat.S_IMODE((data / private).stat().st_mode) == 0o600, private
        assert creds["default"] not in (data / "users.acl").read_text()  # hashes only

        # plain TCP: the TLS-only server drops it
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=port, socket_timeout=5).ping()
        ca = str(data / "tls" / "ca.crt")
        tls = {"ssl": True, "ssl_ca_certs": ca, "ssl_check_hostname": True, "socket_timeout": 5}
        # TLS without a password
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, **tls).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="guess", **tls).ping()
        admin = redis.Redis(host="127.0.0.1", port=port, password=creds["default"], **tls)
        with pytest.raises(redis.ResponseError, match="not allowed"):
            admin.execute_command("DEBUG", "SLEEP", "0")

        model = tmp_path / "m.pt"
        model.write_bytes(toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
        arr = np.full((1, 112, 112), 100, np.uint16)
        arr[0, 30, 30] = 9000
        scene = write_tif(tmp_path / "pass-1.tif", arr)
        tiles = ["--tile-size", "64", "--tile-overlap", "16"]

        assert _cli(data, "loader", "load", str(model), "--name", "ship", "--feeds", FEED) == 0
        assert _cli(data, "publisher", "ingest", str(scene), "--feed", FEED, *tiles) == 0
        env = {**os.environ, "GROUNDWATCH_REDIS_USER": "viewer", "PYTHONPATH": str(REPO_ROOT)}
        listener = subprocess.Popen(
            [sys.executable, "-m", "groundwatch.cli", "--data-dir", str(data), "subscribe", "--feed", FEED,
             "--channel", "scenes", "--count", "1", "--timeout-s", "120"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stderr is not None
            assert "subscribed" in listener.stderr.readline()
            assert _cli(data, "consumer", "consume", "--feed", FEED, "--burst", "--name", "c1") == 0
            stdout, _ = listener.communicate(timeout=120)
        finally:
            listener.kill()
        assert listener.returncode == 0
        scene_result = json.loads(stdout.strip().splitlines()[-1])
        assert scene_result["groundwatch"]["scene"] == "pass-1" and scene_result["groundwatch"]["tiles"] == 4
        capsys.readouterr()
        assert _cli(data, "viewer", "status", "--feed", FEED) == 0
        shown = capsys.readouterr().out
        assert "frames_done 4" in shown and "ship:1" in shown
        # a role may not do another's part, and the CLI says why
        assert _cli(data, "viewer", "ingest", str(scene), "--feed", FEED, "--force", *tiles) == 1
        assert "no permissions" in capsys.readouterr().err
        assert _cli(data, "publisher", "status") == 1
        assert "docs/security.md" in capsys.readouterr().err
        # no user given: the CLI logs in as the operator
        assert main(["--data-dir", str(data), "model", "list"]) == 0
        url = connection.redis_url(Settings(data_dir=data))
        assert url.startswith("rediss://operator:") and url.endswith(f"@127.0.0.1:{port}/0")
    finally:
        assert main(["--data-dir", str(data), "down"]) == 0

    # up --secure again reuses the users and passwords (the data survives: the scene is there)
    assert main(["--data-dir", str(data), "up", "--secure"]) == 0
    try:
        assert json.loads((data / "credentials.json").read_text()) == creds
        assert _cli(data, "viewer", "status", "--feed", FEED) == 0
        assert "frames_done 4" in capsys.readouterr().out
    finally:
        assert main(["--data-dir", str(data), "down"]) == 0
