"""`groundwatch quantize`: an int8 detector with the same contract and metadata plus provenance,
close to the float model, running inside the engine on a UINT16 tensor; and the shipped int8 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from groundwatch.cli import main
from loaders.variants import agreement
from models.archive import SHIPPED_MODEL, load_model, read_metadata
from models.errors import ModelsError
from models.quantize import METHOD, QuantizeConfig, quantize_model, sha256_of
from models.scenes import SceneConfig, generate_scene

SHIPPED_INT8 = SHIPPED_MODEL.parent / "detector-int8.pt"


def tiles() -> np.ndarray:
    scenes = [
        generate_scene(seed, SceneConfig(width_px=512, height_px=512, n_ships=4, n_platforms=2))
        for seed in (611, 612)
    ]
    return np.stack([s.image for s in scenes])  # [2, 1, 512, 512] uint16


@pytest.mark.parametrize("source", ["cli", "shipped"])
def test_int8_variant_keeps_the_contract_and_agrees(
    tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if source == "cli":
        out = tmp_path / "q.pt"
        assert main(["quantize", "--out", str(out), "--calibration-tiles", "16"]) == 0
        assert "ptq-static-int8-fbgemm" in capsys.readouterr().out
    else:
        out = SHIPPED_INT8
    meta, float_meta = read_metadata(out), read_metadata(SHIPPED_MODEL)
    assert {k: v for k, v in meta.items() if k != "provenance"} == float_meta
    prov = meta["provenance"]
    assert prov["method"] == METHOD and prov["source_sha256"] == sha256_of(SHIPPED_MODEL)
    q, _ = load_model(out)
    f, _ = load_model(SHIPPED_MODEL)
    x = torch.from_numpy(tiles().astype(np.int32)).to(torch.uint16)
    with torch.no_grad():
        a, b = f(x).numpy(), q(x).numpy()
    assert b.shape == a.shape and b.dtype == np.float32
    # rows are sorted by score, so near-equal scores may swap: match detections class-aware by IoU
    same = agreement(a, b, meta["score_threshold_hint"])
    assert same.source_detections == 12 and same.fraction == 1.0
    assert same.mean_score_delta < 0.02 and same.max_score_delta < 0.05


def test_int8_runs_in_the_engine(engine: redis.Redis) -> None:
    x = tiles()
    engine.execute_command("AI.MODELSTORE", "q{t}", "TORCH", "CPU", "BLOB", SHIPPED_INT8.read_bytes())
    engine.execute_command("AI.TENSORSET", "in{t}", "UINT16", *x.shape, "BLOB", x.tobytes())
    engine.execute_command("AI.MODELEXECUTE", "q{t}", "INPUTS", 1, "in{t}", "OUTPUTS", 1, "out{t}")
    out = np.frombuffer(engine.execute_command("AI.TENSORGET", "out{t}", "BLOB"), np.float32).reshape(
        2, 100, 6
    )
    q, _ = load_model(SHIPPED_INT8)
    with torch.no_grad():
        expected = q(torch.from_numpy(x.astype(np.int32)).to(torch.uint16)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-3, rtol=1e-4)


def test_quantize_refuses_a_model_that_is_not_the_detector(tmp_path: Path) -> None:
    from tests import toymodels

    path = tmp_path / "toy.pt"
    path.write_bytes(toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
    module, meta = load_model(path)
    with pytest.raises(ModelsError, match="not a groundwatch CenterNet"):
        quantize_model(module, meta, QuantizeConfig(calibration_tiles=1))
