"""`groundwatch load --adapter torchvision|yolo`: a detector of either kind, adapted, stored in the
real engine, run through ingest and the consumers on a written GeoTIFF scene, gives per tile the
boxes the original model gives in process on the same tiles.

The in-process side is the original (eager) model plus this file's own reading of its output
(labels from 1 for torchvision; centre boxes, best class, greedy per-class NMS for YOLO), not the
adapter's code. Tolerance: the published wire format rounds boxes to 0.01 px and scores to 1e-4,
so boxes agree within BOX_TOL px and scores within SCORE_TOL; both sides drop rows within
MARGIN of the threshold, where a rounding difference could put a row on either side.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from rasterio.transform import Affine

from consumers.worker import Consumer
from groundwatch import detections as wire
from groundwatch import keys
from groundwatch.ai import Engine
from groundwatch.cli import main
from groundwatch.registry import RegistryReader
from groundwatch.settings import Settings
from ingest.scene import ingest_file
from loaders import LoaderError, adapters, detops
from loaders.adapterspec import AdapterSpec
from models.scenes import SceneConfig, generate_scene
from tests.ingest.conftest import write_tif
from tests.loaders.detectors import ScriptedPair, TwoStage, YoloHead
from tests.loaders.test_detops import reference_nms

FEED = "byom"
TILE, OVERLAP = 128, 32
SIZE = 352  # tiles start at 0, 96, 192 and 224 (the last shifted back): every tile is full
THRESHOLD = 0.3
BOX_TOL, SCORE_TOL, MARGIN = 0.011, 2e-4, 5e-4
CLASSES = ("ship", "platform")


def scene_file(tmp_path: Path, seed: int = 5) -> tuple[Path, np.ndarray]:
    sc = generate_scene(
        seed, SceneConfig(width_px=SIZE, height_px=SIZE, land=False, n_ships=4, n_platforms=2)
    )
    path = write_tif(tmp_path / "scene.tif", sc.image, transform=Affine(*tuple(sc.transform)[:6]), crs=sc.crs)
    return path, sc.image


def save_script(tmp_path: Path, module: torch.jit.ScriptModule, name: str) -> Path:
    path = tmp_path / name
    torch.jit.save(module, str(path))
    return path


def served_per_tile(client: redis.Redis) -> dict[tuple[int, int], np.ndarray]:
    """Published rows [x1, y1, x2, y2, score, class] in tile pixels, by tile window origin."""
    out = {}
    for _id, fields in client.xrange(keys.detections(FEED)):
        t = wire.decode_tile(fields)
        rows = [[*d.box_px, d.score, d.class_id] for d in t.detections]
        out[(t.window[0], t.window[1])] = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return out


def run_pipeline(client: redis.Redis, path: Path) -> dict[tuple[int, int], np.ndarray]:
    settings = Settings(feed=FEED, tile_size=TILE, tile_overlap=OVERLAP)
    ingest_file(client, settings, path)
    stats = Consumer(client, settings.replace(consumer="c1", score_threshold=THRESHOLD), burst=True).run()
    assert stats.dead == 0 and stats.scenes_done == 1
    return served_per_tile(client)


def windows() -> list[tuple[int, int]]:
    starts = [0, 96, 192, SIZE - TILE]
    return [(c, r) for r in starts for c in starts]


def cut(rows: np.ndarray) -> np.ndarray:
    rows = rows[rows[:, 4] >= THRESHOLD + MARGIN]
    return rows[np.argsort(-rows[:, 4], kind="stable")]


def assert_same(served: dict[tuple[int, int], np.ndarray], want: dict[tuple[int, int], np.ndarray]) -> int:
    assert set(served) == set(want)  # every tile published a result
    n = 0
    for origin, rows in want.items():
        got, exp = cut(served[origin]), cut(rows)
        assert len(got) == len(exp), f"tile at {origin}: {len(got)} served rows, {len(exp)} in process"
        assert np.abs(got[:, :4] - exp[:, :4]).max(initial=0) <= BOX_TOL, origin
        assert np.abs(got[:, 4] - exp[:, 4]).max(initial=0) <= SCORE_TOL, origin
        assert (got[:, 5] == exp[:, 5]).all(), origin
        n += len(exp)
    return n


def torchvision_reference(model: TwoStage, image: np.ndarray, k: int) -> dict[tuple[int, int], np.ndarray]:
    """The original on every tile: three input channels of band 0, labels 1.. -> classes 0.."""
    out = {}
    for c, r in windows():
        tile = torch.from_numpy(image[:, r : r + TILE, c : c + TILE].astype(np.float32))
        with torch.no_grad():
            d = model([tile.expand(3, -1, -1)])[0]
        cls = d["labels"].numpy() - 1
        live = (cls >= 0) & (cls < len(CLASSES))
        boxes = np.clip(d["boxes"].numpy()[live], 0, TILE)
        rows = np.column_stack([boxes, d["scores"].numpy()[live], cls[live]])
        out[(c, r)] = rows[np.argsort(-rows[:, 4], kind="stable")][:k]
    return out


def yolo_reference(
    model: YoloHead, image: np.ndarray, k: int, iou: float
) -> dict[tuple[int, int], np.ndarray]:
    out = {}
    for c, r in windows():
        tile = torch.from_numpy(image[:, r : r + TILE, c : c + TILE].astype(np.float32) * 0.001)
        with torch.no_grad():
            raw = model(tile.expand(3, -1, -1)[None])[0].numpy().T  # [N, 4 + K]
        score, cls = raw[:, 4:].max(axis=1), raw[:, 4:].argmax(axis=1)
        boxes = np.column_stack([raw[:, :2] - raw[:, 2:4] / 2, raw[:, :2] + raw[:, 2:4] / 2])
        rows = []
        for j in range(len(CLASSES)):
            idx = np.flatnonzero((cls == j) & (score >= 0.001))
            for i in reference_nms(boxes[idx], score[idx], iou):
                rows.append([*np.clip(boxes[idx[i]], 0, TILE), score[idx[i]], j])
        arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
        out[(c, r)] = arr[np.argsort(-arr[:, 4], kind="stable")][:k]
    return out


def test_a_torchvision_style_detector_serves_what_it_computes_in_process(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    detops.ensure_schemas()
    model = TwoStage(in_channels=3, num_classes=3, seed=1).eval()
    path = save_script(tmp_path, torch.jit.script(model), "twostage.pt")
    url = f"redis://127.0.0.1:{engine.connection_pool.connection_kwargs['port']}/0"
    args = ["--classes", "ship,platform", "--band-map", "0,0,0", "--tile-size", str(TILE)]
    load = ["--redis-url", url, "load", str(path), "--name", "tv", "--feeds", FEED, "--batch", "4"]
    assert main([*load, "--adapter", "torchvision", *args, "--max-detections", "20"]) == 0
    assert "replaced torchvision::nms, torchvision::roi_align" in capsys.readouterr().out

    record = RegistryReader(engine).get("tv", 1)
    adapted = record.provenance["adapter"]
    assert adapted["adapter"] == "torchvision" and adapted["replaced_ops"] == [
        "torchvision::nms",
        "torchvision::roi_align",
    ]
    assert adapted["original_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert record.classes == list(CLASSES) and record.tile_size == TILE
    assert main(["--redis-url", url, "model", "list"]) == 0
    assert "adapted (torchvision)" in capsys.readouterr().out

    scene, image = scene_file(tmp_path)
    served = run_pipeline(engine, scene)
    n = assert_same(served, torchvision_reference(model, image, 20))
    assert n >= 5  # the comparison covered real detections, not empty tiles
    info = Engine(engine).model_info(keys.model(FEED, "tv", 1))
    assert info.samples > info.calls  # the engine auto-batched tiles: samples stay independent


def test_a_yolo_head_serves_what_it_computes_in_process(engine: redis.Redis, tmp_path: Path) -> None:
    model = YoloHead(in_channels=3, num_classes=len(CLASSES), seed=2).eval()
    # As ultralytics exports: traced at the tile size, raw [B, 4 + K, N] predictions out.
    traced = torch.jit.trace(model, torch.rand(1, 3, TILE, TILE))
    path = save_script(tmp_path, traced, "yolo.torchscript")
    spec = AdapterSpec(
        adapter="yolo", classes=CLASSES, tile_size=TILE, band_map=(0, 0, 0), scale=(0.001,), max_detections=30
    )
    from loaders.loader import LoadOptions, load

    record = load(engine, adapters.adapt_file(path, spec), LoadOptions(name="yolo", feeds=(FEED,), batch=4))
    assert record.source_file == str(path)

    scene, image = scene_file(tmp_path)
    n = assert_same(run_pipeline(engine, scene), yolo_reference(model, image, 30, 0.5))
    assert n >= 5


def test_a_yolo_head_in_the_other_layout_gives_the_same_rows() -> None:
    model = YoloHead(in_channels=1, num_classes=2, seed=3).eval()

    class RowsFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x).transpose(1, 2)  # [B, N, 4 + K]

    spec = AdapterSpec(adapter="yolo", classes=CLASSES, tile_size=64, scale=(0.001,))
    a, _ = adapters.adapt(torch.jit.trace(model, torch.rand(1, 1, 64, 64)), spec)
    b, _ = adapters.adapt(torch.jit.trace(RowsFirst(), torch.rand(1, 1, 64, 64)), spec)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 3000, (2, 1, 64, 64)).astype(np.float32))
    assert torch.equal(a(x), b(x)) and a(x)[:, :, 4].max() > 0


def test_adapted_files_carry_contract_1_metadata(tmp_path: Path) -> None:
    spec = AdapterSpec(
        adapter="yolo", classes=CLASSES, tile_size=64, scale=(0.001,), score_threshold_hint=0.4
    )
    mf = adapters.to_model_file(YoloHead(in_channels=1, num_classes=2).eval(), spec, "yolo-eager")
    extra = {"groundwatch.json": ""}
    torch.jit.load(io.BytesIO(mf.blob), _extra_files=extra)
    assert json.loads(extra["groundwatch.json"])["contract"] == 1
    assert mf.metadata.classes == CLASSES and mf.metadata.tile_size == 64
    assert mf.metadata.score_threshold_hint == 0.4
    assert mf.metadata.extra["adapter"]["adapter"] == "yolo"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (AdapterSpec(adapter="yolo", classes=()), "class names"),
        (AdapterSpec(adapter="yolo", classes=CLASSES, bands=1, band_map=(0, 1, 0)), "sensor bands \\[1\\]"),
        (AdapterSpec(adapter="yolo", classes=CLASSES, scale=(1.0, 2.0)), "one value or one per"),
        (AdapterSpec(adapter="ssd", classes=CLASSES), "unknown adapter"),
    ],
)
def test_bad_specs_say_what_to_fix(spec: AdapterSpec, message: str) -> None:
    with pytest.raises(LoaderError, match=message):
        adapters.adapt(YoloHead(in_channels=1), spec)


def test_a_head_of_the_wrong_width_fails_the_warm_up_with_the_shapes(
    engine: redis.Redis, tmp_path: Path
) -> None:
    from loaders.loader import LoadOptions, load

    spec = AdapterSpec(adapter="yolo", classes=("ship", "platform", "rig"), tile_size=64, band_map=(0, 0, 0))
    mf = adapters.to_model_file(YoloHead(in_channels=3, num_classes=2).eval(), spec, "yolo-2-classes")
    with pytest.raises(LoaderError, match="neither 7 wide nor 7 tall"):
        load(engine, mf, LoadOptions(name="bad", feeds=(FEED,)))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapter", "yolo"], "needs its class names"),
        (["--adapter", "yolo", "--classes", "ship", "--band-map", "0,x"], "comma-separated numbers"),
        (["--classes", "ship"], "add --adapter torchvision or --adapter yolo"),
        (["--adapter", "yolo", "--classes", "ship", "--min-score", "2"], "--min-score must be in [0, 1]"),
    ],
)
def test_the_cli_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    path = save_script(tmp_path, torch.jit.trace(YoloHead(in_channels=1), torch.rand(1, 1, 32, 32)), "y.pt")
    # Refused before any connection is made: the URL points nowhere.
    argv = ["--redis-url", "redis://127.0.0.1:1/0", "load", str(path), "--name", "y", *flags]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_the_operator_check_measures_and_refuses_a_replacement_that_changes_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where torchvision's operators load, the adapter compares its replacements with them. Here the
    # "native" side is the in-process registration (the reference-tested TorchScript functions), so
    # what this checks is the comparison: equal replacements pass with the figure recorded, and a
    # replacement that keeps too many boxes is refused with its numbers.
    detops.ensure_schemas()
    monkeypatch.setattr(detops, "native_available", lambda: True)
    spec = AdapterSpec(adapter="torchvision", classes=CLASSES, tile_size=64, band_map=(0, 0, 0))
    _wrapped, report = adapters.adapt(TwoStage(in_channels=3, num_classes=3, seed=4).eval(), spec)
    assert report["op_check"]["status"] == "ok" and report["op_check"]["max_abs_diff"] <= 1e-6

    @torch.jit.script
    def sloppy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return detops.nms(boxes, scores, 0.999)

    monkeypatch.setitem(detops.REPLACEMENTS, "torchvision::nms", sloppy_nms)
    with pytest.raises(LoaderError, match=r"change this model's output: max abs difference \d"):
        adapters.adapt(TwoStage(in_channels=3, num_classes=3, seed=4).eval(), spec)


def test_the_scripted_torchvision_form_losses_and_detections_gives_the_same_rows() -> None:
    detops.ensure_schemas()
    spec = AdapterSpec(adapter="torchvision", classes=CLASSES, tile_size=64, band_map=(0, 0, 0))
    inner = TwoStage(in_channels=3, num_classes=3, seed=6).eval()
    plain, _ = adapters.adapt(inner, spec)
    pair, report = adapters.adapt(torch.jit.script(ScriptedPair(inner).eval()), spec)
    assert isinstance(pair, torch.jit.ScriptModule) and report["replaced_ops"]
    x = torch.from_numpy(np.random.default_rng(1).integers(100, 3000, (2, 1, 64, 64)).astype(np.float32))
    with torch.no_grad():
        a, b = plain(x), pair(x)
    assert a.shape == (2, 100, 6) and torch.equal(a, b) and a[:, :, 4].max() > 0
