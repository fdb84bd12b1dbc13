"""The shipped detector: self-describing, honours the contract, and is accurate on held-out scenes."""

from __future__ import annotations

import pytest
import torch

from models.archive import SHIPPED_MODEL, load_model
from models.evaluate import EvalConfig, evaluate_model, in_process
from models.scenes import CLASSES, SceneConfig, generate_scene

# Seeds far from training (1,000,000 and up) and from the default evaluation (1, 2, ...).
HELD_OUT_SEEDS = (501, 502, 503)


@pytest.fixture(scope="module")
def shipped():
    assert SHIPPED_MODEL.exists(), (
        f"{SHIPPED_MODEL} is missing: run `groundwatch train --out {SHIPPED_MODEL}`"
    )
    torch.set_num_threads(2)
    return load_model(SHIPPED_MODEL)


def test_metadata(shipped) -> None:
    _, meta = shipped
    assert meta["contract"] == 1
    assert meta["classes"] == list(CLASSES)
    assert (meta["bands"], meta["dtype"], meta["tile_size"]) == (1, "uint16", 512)
    assert 0 < meta["score_threshold_hint"] < 1
    assert SHIPPED_MODEL.stat().st_size < 5_000_000


def test_uint16_tile(shipped) -> None:
    module, meta = shipped
    scene = generate_scene(
        HELD_OUT_SEEDS[0], SceneConfig(width_px=512, height_px=512, n_ships=5, n_platforms=2)
    )
    out = module(torch.from_numpy(scene.image.astype("int32")).to(torch.uint16).unsqueeze(0))
    assert out.shape == (1, meta["max_detections"], 6) and out.dtype == torch.float32
    assert int((out[0, :, 4] >= meta["score_threshold_hint"]).sum()) == len(scene.objects)


def test_ap_per_class_on_held_out_scenes(shipped) -> None:
    module, _ = shipped
    config = SceneConfig(width_px=768, height_px=768, n_ships=10, n_platforms=5)
    scenes = [generate_scene(seed, config) for seed in HELD_OUT_SEEDS]
    result = evaluate_model(in_process(module), scenes, EvalConfig())
    for name in CLASSES:
        assert result["classes"][name]["truth"] >= 10
        assert result["classes"][name]["ap"] >= 0.9, result
