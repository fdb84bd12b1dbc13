"""The self-describing archive: metadata round trip and clear errors."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from groundwatch.modelmeta import MetadataError
from models.archive import METADATA_FILE, load_model, read_metadata, save_model
from models.detector import CenterNet
from models.errors import ModelFileError

META = {
    "contract": 1,
    "classes": ["ship", "platform"],
    "bands": 1,
    "dtype": "uint16",
    "tile_size": 512,
    "max_detections": 20,
    "score_threshold_hint": 0.3,
    "trained_on": "test",
}


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(CenterNet(max_detections=20, width=8).eval())


def test_round_trip_path_and_bytes(tmp_path, scripted) -> None:
    path = save_model(scripted, tmp_path / "m.pt", META)
    assert read_metadata(path) == META
    assert read_metadata(str(path)) == META
    assert read_metadata(path.read_bytes()) == META
    module, meta = load_model(path.read_bytes())
    assert meta == META
    assert module(torch.zeros(1, 1, 16, 16)).shape == (1, 20, 6)


def test_model_without_metadata(tmp_path, scripted) -> None:
    path = tmp_path / "bare.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(ModelFileError, match=METADATA_FILE):
        read_metadata(path)


def test_not_torchscript_and_missing_file(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        read_metadata(b"definitely not a zip")
    with pytest.raises(ModelFileError, match="does not exist"):
        read_metadata(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contract": 3}, "contract"),
        ({"classes": []}, "classes"),
        ({"bands": 0}, "bands"),
        ({"dtype": "int64"}, "dtype"),
        ({"score_threshold_hint": 3}, "score_threshold_hint"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, scripted, change, message) -> None:
    path = tmp_path / "bad.pt"
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps({**META, **change})})
    with pytest.raises(ModelFileError, match=message):
        read_metadata(path)
    with pytest.raises(MetadataError):  # the core's error class catches it too
        read_metadata(path.read_bytes())
    with pytest.raises(ModelFileError, match=message):
        save_model(scripted, tmp_path / "never.pt", {**META, **change})
    assert not (tmp_path / "never.pt").exists()


def test_a_zip_that_is_not_torchscript(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"m/extra/{METADATA_FILE}", json.dumps(META))
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        read_metadata(buf.getvalue())
