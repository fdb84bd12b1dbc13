"""The shipped detector inside the engine: AI.MODELSTORE, then AI.MODELEXECUTE on a UINT16 tensor."""

from __future__ import annotations

import numpy as np
import torch

from models.archive import SHIPPED_MODEL, load_model
from models.scenes import SceneConfig, generate_scene


def test_shipped_model_runs_in_the_engine(engine) -> None:
    module, meta = load_model(SHIPPED_MODEL)
    scenes = [
        generate_scene(seed, SceneConfig(width_px=512, height_px=512, n_ships=4, n_platforms=2))
        for seed in (601, 602)
    ]
    tiles = np.stack([s.image for s in scenes])  # [2, 1, 512, 512] uint16
    engine.execute_command("AI.MODELSTORE", "m{t}", "TORCH", "CPU", "BLOB", SHIPPED_MODEL.read_bytes())
    engine.execute_command("AI.TENSORSET", "in{t}", "UINT16", *tiles.shape, "BLOB", tiles.tobytes())
    engine.execute_command("AI.MODELEXECUTE", "m{t}", "INPUTS", 1, "in{t}", "OUTPUTS", 1, "out{t}")
    reply = engine.execute_command("AI.TENSORGET", "out{t}", "META", "BLOB")
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    assert fields[b"dtype"] == b"FLOAT"
    assert [int(v) for v in fields[b"shape"]] == [2, meta["max_detections"], 6]
    out = np.frombuffer(fields[b"blob"], dtype=np.float32).reshape(2, -1, 6)
    with torch.no_grad():
        expected = module(torch.from_numpy(tiles.astype(np.int32)).to(torch.uint16)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-3, rtol=1e-4)
    for scene, dets in zip(scenes, out, strict=True):
        assert int((dets[:, 4] >= meta["score_threshold_hint"]).sum()) == len(scene.objects)
