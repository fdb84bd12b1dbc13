import subprocess
import sys
from pathlib import Path

import pytest
import redis

from groundwatch.cli import build_parser, main

CORE_COMMANDS = {"up", "down", "status", "subscribe", "acl"}


def test_help_lists_every_subcommand_with_a_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "groundwatch.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    names = set(sub.choices)
    assert names >= CORE_COMMANDS
    for name in names:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None and len(line.split()) > 1, f"{name} has no help line"


def test_up_status_down_with_the_embedded_server(
    tmp_path: Path, engine_module: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine_module is None:
        pytest.skip("run without --no-engine: `up` starts the server with the engine")
    monkeypatch.setenv("GROUNDWATCH_ENGINE_MODULE", str(engine_module))
    data = tmp_path / "gw"
    env_args = ["--data-dir", str(data)]
    assert main([*env_args, "up"]) == 0
    try:
        port = int(__import__("json").loads((data / "server.json").read_text())["port"])
        client = redis.Redis(port=port)
        assert client.ping()
        assert b"ai" in {m[b"name"] for m in client.module_list()}
        # The backend came with the server's start: nothing for a client to LOADBACKEND.
        assert client.info("modules")["ai_Torch_version"].startswith("2.")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert main([*env_args, "status"]) == 0
        assert main([*env_args, "up"]) == 0  # a second `up` finds the running one
    finally:
        assert main([*env_args, "down"]) == 0
    assert not (data / "server.json").exists()


def test_status_without_a_server_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(tmp_path), "status"])
    assert code == 1
    assert "groundwatch up" in capsys.readouterr().err
