"""A model file whose groundwatch.json member is damaged (bad CRC): a message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from groundwatch import keys
from groundwatch.cli import main
from tests import toymodels


def damaged_archive() -> bytes:
    """A TorchScript archive whose groundwatch.json bytes no longer match their CRC-32.

    torch.jit.save stores members uncompressed, so the JSON text is in the file as is; one letter
    of a class name is changed, which only the CRC check can notice.
    """
    blob = toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata())
    at = blob.index(b'"platform"')
    assert blob.count(b'"platform"') == 1
    return blob[: at + 1] + b"q" + blob[at + 2 :]


def test_load_of_a_damaged_metadata_member_prints_a_message(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "damaged.pt"
    path.write_bytes(damaged_archive())
    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    assert main(["--redis-url", url, "load", str(path), "--name", "ship", "--feeds", "s1"]) == 1
    err = capsys.readouterr().err
    assert "groundwatch load:" in err and "damaged" in err and "groundwatch.json" in err
    assert "Traceback" not in err
    assert not engine.exists(keys.active_model("s1"))
    assert engine.keys("gw:*") == []
