"""The models subcommands through the real groundwatch CLI."""

from __future__ import annotations

import json

import pytest
import torch

from groundwatch.cli import main
from models.archive import SHIPPED_MODEL


def test_generate_writes_scene_and_truth(tmp_path, capsys) -> None:
    rc = main(["--data-dir", str(tmp_path), "generate", "--count", "2", "--seed", "3", "--size", "256"])
    assert rc == 0
    written = sorted(p.name for p in (tmp_path / "scenes").iterdir())
    assert written == ["scene-000003.geojson", "scene-000003.tif", "scene-000004.geojson", "scene-000004.tif"]
    doc = json.loads((tmp_path / "scenes" / "scene-000003.geojson").read_text())
    assert doc["groundwatch"]["width_px"] == 256


def test_generate_refuses_bad_bands(tmp_path, capsys) -> None:
    rc = main(["--data-dir", str(tmp_path), "generate", "--bands", "7", "--size", "64"])
    assert rc == 1
    assert "bands" in capsys.readouterr().err


def test_evaluate_prints_a_table(capsys) -> None:
    rc = main(["evaluate", str(SHIPPED_MODEL), "--scenes", "1", "--size", "512", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["classes"]) == {"ship", "platform"}
    assert result["tiles"] == 1
    assert result["score_threshold"] == 0.5  # the shipped model's score_threshold_hint
    rc = main(["evaluate", str(SHIPPED_MODEL), "--scenes", "1", "--size", "256", "--score-threshold", "0.3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "P@0.30" in out and "ship" in out and "platform" in out


def test_evaluate_refuses_a_non_model(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    assert main(["evaluate", str(bad), "--scenes", "1", "--size", "256"]) == 1
    assert "not a TorchScript archive" in capsys.readouterr().err


@pytest.mark.parametrize("bands", [1, 3])
def test_train_exports_a_self_describing_model(tmp_path, capsys, bands) -> None:
    from models.archive import load_model

    out = tmp_path / "tiny.pt"
    rc = main(
        ["train", "--out", str(out), "--steps", "2", "--tiles", "4", "--bands", str(bands), "--no-evaluate"]
    )
    assert rc == 0
    module, meta = load_model(out)
    assert meta["classes"] == ["ship", "platform"] and meta["contract"] == 1
    assert meta["bands"] == bands
    assert "4 tiles" in meta["trained_on"]
    x = torch.zeros(1, bands, 64, 64, dtype=torch.uint16)
    assert module(x).shape == (1, meta["max_detections"], 6)


def test_train_refuses_bad_flags(tmp_path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "x.pt"), "--bands", "5"]) == 1
    assert "bands must be 1..4" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
