"""The segmentation target of the synthetic scenes, the segmentation network, its training and
export, and the shipped segmenter's IoU through the served path (held-out scenes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundwatch import regions
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError
from loaders.loader import check_output, warmup_input
from models.archive import load_model
from models.evaluate import in_process
from models.scenes import SEG_CLASSES, SceneConfig, draw_scene, draw_scene_with_mask, generate_scene
from models.segeval import SegEvalConfig, evaluate_segmenter
from models.segmenter import SHIPPED_SEGMENTER, STRIDE, SegTrainConfig, TinyUNet, train_and_export


def test_the_truth_mask_leaves_the_pixels_as_they_were() -> None:
    config = SceneConfig(width_px=384, height_px=384, land=True)
    image, objects, land, mask = draw_scene_with_mask(11, config)
    image0, objects0, land0 = draw_scene(11, config)
    assert np.array_equal(image, image0) and objects == objects0 and land == land0
    assert mask.dtype == np.uint8 and mask.shape == (384, 384) and set(np.unique(mask)) <= {0, 1, 2}
    assert (mask == 1).mean() == pytest.approx(land)
    assert generate_scene(11, config).mask is not None


def test_slicks_are_darker_than_the_sea_around_them() -> None:
    scene = generate_scene(4, SceneConfig(width_px=1024, height_px=1024))
    assert scene.mask is not None and (scene.mask == 2).sum() > 1000
    values = scene.image[0].astype(np.float64)
    assert np.median(values[scene.mask == 2]) < 0.8 * np.median(values[scene.mask == 0])  # (bright ships too)


def test_the_network_honours_contract_2() -> None:
    module = torch.jit.script(TinyUNet(width=4).eval())
    x = torch.randint(0, 3000, (2, 1, 2 * STRIDE, 3 * STRIDE)).to(torch.float32)
    out = module(x)
    assert out.shape == (2, len(SEG_CLASSES), 2 * STRIDE, 3 * STRIDE)
    assert torch.allclose(out.sum(1), torch.ones(2, 2 * STRIDE, 3 * STRIDE), atol=1e-5)
    with pytest.raises(Exception, match=f"multiples of {STRIDE}"):
        module(torch.zeros(1, 1, STRIDE + 1, STRIDE))


def test_training_exports_a_model_the_loader_accepts(tmp_path) -> None:
    out = tmp_path / "seg.pt"
    summary = train_and_export(
        SegTrainConfig(tiles=4, scene_px=160, steps=2, width=4, calib_scenes=2, calib_px=256), out
    )
    module, meta = load_model(out)
    parsed = ModelMetadata.from_dict(meta)
    assert parsed.segmentation and parsed.classes == SEG_CLASSES and summary["parameters"] > 0
    assert parsed.min_region_px == (0, 500, 0)
    small = ModelMetadata.from_dict({**meta, "tile_size": 64})
    tiles = warmup_input(small, 2)
    check_output(module(torch.from_numpy(tiles.astype(np.float32))).detach().numpy(), small, 2)
    with pytest.raises(LoaderError, match="contract 2"):
        check_output(np.zeros((2, 3, 32, 32), np.float32), small, 2)


@pytest.fixture(scope="module")
def shipped():
    assert SHIPPED_SEGMENTER.exists(), (
        f"{SHIPPED_SEGMENTER} is missing: run `groundwatch train-segmenter --out {SHIPPED_SEGMENTER}`"
    )
    torch.set_num_threads(2)
    module, meta = load_model(SHIPPED_SEGMENTER)
    return module, ModelMetadata.from_dict(meta)


def test_the_shipped_segmenter_describes_itself(shipped) -> None:
    _, meta = shipped
    assert meta.contract == 2 and meta.classes == SEG_CLASSES and meta.background == 0
    assert (meta.bands, meta.dtype, meta.tile_size, meta.extra["stride"]) == (1, "uint16", 512, STRIDE)
    assert meta.min_region_px == (0, 500, 0)  # land specks dropped, every slick kept
    assert SHIPPED_SEGMENTER.stat().st_size < 2_000_000


def test_the_shipped_segmenter_on_held_out_scenes(shipped) -> None:
    """IoU through the served path on scenes the card does not use (seeds 501-503)."""
    module, meta = shipped
    result = evaluate_segmenter(in_process(module), meta, SegEvalConfig(scenes=3, size_px=768, seed_base=501))
    print(json.dumps(result))
    assert result["per_class"]["sea"]["iou"] >= 0.9, result
    if result["per_class"]["land"]["truth_pixels"]:
        assert result["per_class"]["land"]["iou"] >= 0.8, result
    if result["per_class"]["slick"]["truth_pixels"]:
        # 0.586 measured (SEGMENTER_CARD.md). Three scenes hold a handful of slicks, so this
        # figure is noisy: the previous model scored 0.72 here and 0.66 on the card's 8 scenes,
        # the shipped one 0.59 here and 0.72 there (on 64 further scenes 0.66 and 0.71).
        assert result["per_class"]["slick"]["iou"] >= 0.55, result


def test_scenes_without_features_give_no_polygons(shipped) -> None:
    module, meta = shipped
    calm = np.full((1, 1, 512, 512), 150, dtype=np.uint16)  # flat, mid-grey sea
    out = module(torch.from_numpy(calm.astype(np.float32))).detach().numpy()
    ids, prob = regions.decode_mask(out, meta, 512, 512)
    from groundwatch.frames import PixelWindow

    whole = PixelWindow(0, 0, 512, 512)
    assert regions.vectorise(ids, prob, whole, whole, meta.background) == []


def test_groundwatch_evaluate_scores_a_segmenter_through_the_engine(engine, capsys) -> None:
    """`groundwatch evaluate SEGMENTER --engine`: IoU per class, the tiles run as the consumers run them."""
    from groundwatch.cli import main

    port = engine.connection_pool.connection_kwargs["port"]
    args = ["--redis-url", f"redis://127.0.0.1:{port}/0", "evaluate", str(SHIPPED_SEGMENTER)]
    rc = main([*args, "--engine", "--scenes", "1", "--size", "768", "--seed", "11", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["per_class"]) == set(SEG_CLASSES) and result["tiles"] == 4
    assert result["runs_in"] == "engine" and result["per_class"]["land"]["iou"] >= 0.8
    assert main([*args, "--scenes", "1", "--size", "512"]) == 0
    assert "mean IoU of the foreground classes" in capsys.readouterr().out
