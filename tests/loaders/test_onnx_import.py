"""ONNX import against the real engine: the shipped detector exported with torch.onnx.export,
loaded with `groundwatch load model.onnx`, served through ingest and consumers, compared with
the original TorchScript model run in process; unconvertible operators and parity refusals."""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis
import torch
from onnx import TensorProto, helper

from consumers.worker import Consumer
from groundwatch import detections as wire
from groundwatch import keys
from groundwatch.ai import Engine
from groundwatch.cli import main
from groundwatch.settings import REPO_ROOT, Settings
from loaders import LoaderError
from loaders.loader import LoadOptions, load, remove
from loaders.onnx_import import DEFAULT_PARITY_TOLERANCE, compare_rows, unsupported_ops
from loaders.registry import Registry

DETECTOR = REPO_ROOT / "models" / "artifacts" / "detector.pt"
FEED = "onnxfeed"
# Served path (scene pixels, after the overlap merge) of the converted model in the engine vs the
# original TorchScript model in process: float32 rounding of different kernels (ONNX Runtime is
# not involved); boxes in pixels, scores in [0, 1].
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(
    not DETECTOR.exists(), reason="models/artifacts/detector.pt is not built yet (make model)"
)


def original() -> tuple[torch.jit.ScriptModule, dict]:
    from models.archive import load_model

    module, meta = load_model(DETECTOR)
    return module, meta


def export_detector(path: Path, *, with_metadata: bool = True) -> Path:
    """The shipped detector as a user would export it: its weights in the eager module, the
    legacy (TorchScript-based) exporter, free batch and tile size."""
    from models.detector import CenterNet

    scripted, meta = original()
    eager = CenterNet(
        num_classes=len(meta["classes"]), bands=meta["bands"], max_detections=meta["max_detections"]
    )
    eager.load_state_dict(scripted.state_dict())
    eager.eval()
    example = torch.zeros(1, meta["bands"], meta["tile_size"], meta["tile_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            eager,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["tiles"],
            output_names=["detections"],
            dynamic_axes={"tiles": {0: "batch", 2: "height", 3: "width"}, "detections": {0: "batch"}},
        )
    if with_metadata:
        model = onnx.load(str(path))
        helper.set_model_props(model, {"groundwatch.json": json.dumps(meta)})
        onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_detector(tmp_path_factory.mktemp("onnx") / "detector.onnx")


def url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def test_the_onnx_detector_serves_what_the_torch_model_computes(
    engine: redis.Redis, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.scene import ingest_file
    from models.evaluate import detect_scene, in_process
    from models.scenes import SceneConfig, generate_scene, write_scene

    args = ["load", str(exported), "--name", "ship", "--feeds", FEED, "--batch", "4"]
    assert main(["--redis-url", url(engine), *args]) == 0
    out = capsys.readouterr().out
    assert "ship:1 (active)" in out and "converted from ONNX" in out
    record = Registry(engine).get("ship", 1)
    parity = record.provenance["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= DEFAULT_PARITY_TOLERANCE
    assert parity["compared"] == "contract-1 rows" and parity["count"] > 0

    # Raw tile outputs first: the engine's copy against the original module in process.
    module, meta = original()
    rng = np.random.default_rng(7)
    tiles = rng.integers(0, 3000, (3, 1, 512, 512), dtype=np.uint16)
    served = Engine(engine).run(keys.model(FEED, "ship", 1), tiles, keys.model(FEED, "ship", 1))
    with torch.no_grad():
        direct = module(torch.from_numpy(tiles)).numpy()
    assert compare_rows(direct, served, SCORE_TOLERANCE).max_abs_diff <= BOX_TOLERANCE_PX

    # Then whole scenes through the pipeline: GeoTIFFs, ingest, consumers, scene results.
    threshold = float(meta["score_threshold_hint"])
    settings = Settings(feed=FEED, consumer="c1", score_threshold=threshold)
    scenes = {}
    for seed in (1, 2):
        scene = generate_scene(seed, SceneConfig(width_px=1024, height_px=1024))
        tif, _truth = write_scene(scene, tmp_path, f"scene-{seed}")
        assert not ingest_file(engine, settings, tif, scene=f"scene-{seed}").duplicate
        scenes[f"scene-{seed}"] = scene
    stats = Consumer(engine, settings, burst=True).run()
    assert stats.scenes_done == len(scenes) and stats.dead == 0

    found = 0
    for name, scene in scenes.items():
        result = wire.decode_scene(engine.get(keys.scene_result(FEED, name)))
        assert result.models == ("ship:1",)
        want, _tiles = detect_scene(in_process(module), scene.image, threshold=threshold)
        got = sorted(result.detections, key=lambda d: (-d.score, d.scene_box_px))
        want = want[np.lexsort((want[:, 0], -want[:, 4]))]
        assert len(got) == len(want) > 0, name
        for d, w in zip(got, want, strict=True):
            assert d.class_id == int(w[5])
            assert abs(d.score - w[4]) <= SCORE_TOLERANCE
            assert np.abs(np.asarray(d.scene_box_px) - w[:4]).max() <= BOX_TOLERANCE_PX
        found += len(got)
    assert found >= 5  # the scenes hold ships and platforms the detector finds


def test_the_engine_itself_refuses_onnx_as_redisai_does_without_the_backend(
    engine: redis.Redis, exported: Path
) -> None:
    # Why the loader converts: the engine has no ONNX backend (docs/models.md, ONNX import).
    key = keys.model(FEED, "raw", 1)
    with pytest.raises(redis.ResponseError, match="Could not load backend"):
        engine.execute_command("AI.MODELSTORE", key, "ONNX", "CPU", "BLOB", exported.read_bytes())
    assert not engine.exists(key)


def test_the_record_keeps_the_original_bytes_and_their_sha256(engine: redis.Redis, exported: Path) -> None:
    blob = exported.read_bytes()
    record = load(engine, exported, LoadOptions(name="ship", feeds=(FEED,), activate=False))
    registry = Registry(engine)
    assert registry.original("ship", 1) == blob
    assert record.provenance["format"] == "onnx"
    assert record.provenance["onnx_sha256"] == hashlib.sha256(blob).hexdigest()
    assert record.provenance["onnx_bytes"] == len(blob)
    # What the engine stores is the converted TorchScript, hashed as such.
    stored = Engine(engine).model_blob(keys.model(FEED, "ship", 1))
    assert record.sha256 == hashlib.sha256(stored).hexdigest() != record.provenance["onnx_sha256"]
    remove(engine, "ship", 1)
    assert registry.original("ship", 1) is None


def test_metadata_comes_from_the_flag_when_the_file_has_none(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = export_detector(tmp_path / "bare.onnx", with_metadata=False)
    args = ["--redis-url", url(engine), "load", str(bare), "--name", "ship", "--feeds", FEED]
    assert main(args) == 1
    assert "--metadata FILE.json" in capsys.readouterr().err
    meta = tmp_path / "groundwatch.json"
    meta.write_text(json.dumps(original()[1]))
    assert main([*args, "--metadata", str(meta)]) == 0
    assert Registry(engine).get("ship", 1).classes == original()[1]["classes"]
    capsys.readouterr()
    assert main(["--redis-url", url(engine), "model", "list"]) == 0
    assert "from ONNX" in capsys.readouterr().out


def test_a_parity_failure_refuses_the_version_with_the_figures(engine: redis.Redis, exported: Path) -> None:
    # ONNX Runtime and libtorch round differently (~1e-5 px here): a tolerance below that refuses.
    with pytest.raises(LoaderError, match="does not reproduce ONNX Runtime") as err:
        load(engine, exported, LoadOptions(name="ship", feeds=(FEED,), parity_tolerance=1e-9))
    figure = re.search(r"max abs difference ([0-9.e+-]+) \(boxes ([0-9.e+-]+) px", str(err.value))
    assert figure and float(figure.group(1)) > 1e-9, str(err.value)
    assert "tolerance 1e-09" in str(err.value)
    assert not engine.exists(keys.model(FEED, "ship", 1))
    assert Registry(engine).versions("ship") == []


def test_an_onnx_yolo_head_under_the_yolo_adapter_serves_what_it_computes(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The adapters' YOLO-style head and their in-process reading of it (tests/loaders/test_adapters.py),
    # exported to ONNX as ultralytics does (traced, raw [B, 4 + K, N] out, free batch).
    from tests.loaders import test_adapters as ad
    from tests.loaders.detectors import YoloHead

    model = YoloHead(in_channels=3, num_classes=len(ad.CLASSES), seed=2).eval()
    path = tmp_path / "yolo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, ad.TILE, ad.TILE),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        )
    adapter = ["--adapter", "yolo", "--classes", ",".join(ad.CLASSES), "--band-map", "0,0,0"]
    adapter += ["--scale", "0.001", "--tile-size", str(ad.TILE), "--max-detections", "30"]
    args = ["load", str(path), "--name", "yolo", "--feeds", ad.FEED, "--batch", "4", *adapter]
    assert main(["--redis-url", url(engine), *args]) == 0
    assert "converted from ONNX" in capsys.readouterr().out
    record = Registry(engine).get("yolo", 1)
    blob = path.read_bytes()
    assert record.provenance["onnx_sha256"] == hashlib.sha256(blob).hexdigest()
    assert record.provenance["adapter"]["original_sha256"] == record.provenance["onnx_sha256"]
    parity = record.provenance["parity"]
    assert parity["compared"] == "output values" and parity["passed"]
    assert Registry(engine).original("yolo", 1) == blob

    scene, image = ad.scene_file(tmp_path)
    assert ad.assert_same(ad.run_pipeline(engine, scene), ad.yolo_reference(model, image, 30, 0.5)) >= 5


def graph_with(nodes: list[onnx.NodeProto], opsets: dict[str, int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 6])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
    )
    meta = {
        "contract": 1,
        "classes": ["ship"],
        "bands": 1,
        "dtype": "uint16",
        "tile_size": 64,
        "max_detections": 4,
    }
    helper.set_model_props(model, {"groundwatch.json": json.dumps(meta)})
    return model


def test_unconvertible_operators_are_named_before_converting(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two operators onnx2torch has no converter for: a standard one (Det) and a custom domain's.
    model = graph_with(
        [
            helper.make_node("Reshape", ["x", "shape"], ["m"], name="square"),
            helper.make_node("Det", ["m"], ["d"], name="determinant"),
            helper.make_node("Frobnicate", ["d"], ["y"], name="mystery", domain="com.example"),
        ],
        {"": 17, "com.example": 1},
    )
    model.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 64, 64]))
    assert unsupported_ops(model) == [
        "Det (ai.onnx, opset 17): 1 node(s) determinant",
        "Frobnicate (com.example, opset 1): 1 node(s) mystery",
    ]
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    assert main(["--redis-url", url(engine), "load", str(path), "--name", "odd", "--feeds", FEED]) == 1
    err = capsys.readouterr().err
    assert (
        "cannot be converted" in err and "Det (ai.onnx, opset 17)" in err and "Frobnicate (com.example" in err
    )
    assert Registry(engine).versions("odd") == []


def test_a_node_its_converter_refuses_is_named_with_the_reason(tmp_path: Path) -> None:
    # Clip's bound computed from the input's shape: onnx2torch converts constant bounds only.
    model = graph_with(
        [
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("ReduceMax", ["s"], ["largest"], name="largest", keepdims=0),
            helper.make_node("Cast", ["largest"], ["bound"], to=TensorProto.FLOAT, name="bound"),
            helper.make_node("Clip", ["x", "low", "bound"], ["c"], name="clamp"),
            helper.make_node("Reshape", ["c", "rows"], ["y"], name="rows"),
        ],
        {"": 17},
    )
    model.graph.initializer.extend(
        [
            helper.make_tensor("low", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("rows", TensorProto.INT64, [3], [0, -1, 6]),
        ]
    )
    path = tmp_path / "clip.onnx"
    onnx.save(model, str(path))
    from loaders.onnx_import import read_onnx_file

    with pytest.raises(LoaderError, match=r"could not convert the graph: node clamp \(Clip\): Dynamic value"):
        read_onnx_file(path)


def test_a_fixed_batch_export_serves_any_batch_under_an_adapter(tmp_path: Path) -> None:
    # ultralytics' default ONNX export fixes the input at [1, 3, S, S]: ONNX Runtime is run tile
    # by tile for the parity check, and the converted module takes the engine's batches.
    from loaders import adapters
    from loaders.adapterspec import AdapterSpec
    from loaders.onnx_import import adapt_onnx_file
    from tests.loaders.detectors import YoloHead

    model = YoloHead(in_channels=3, num_classes=2, seed=4).eval()
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17)
    assert [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [
        1,
        3,
        64,
        64,
    ]
    spec = AdapterSpec(
        adapter="yolo", classes=("ship", "platform"), tile_size=64, band_map=(0, 0, 0), scale=(0.001,)
    )
    imported = adapt_onnx_file(path, spec)
    assert imported.conversion["parity"]["passed"] and imported.original == path.read_bytes()
    eager = adapters.to_model_file(model, spec, "eager")
    tiles = torch.from_numpy(np.random.default_rng(3).integers(0, 3000, (3, 1, 64, 64)).astype(np.uint16))
    with torch.no_grad():
        got = torch.jit.load(io.BytesIO(imported.blob))(tiles).numpy()
        want = torch.jit.load(io.BytesIO(eager.blob))(tiles).numpy()
    assert got.shape == want.shape == (3, 100, 6)
    assert compare_rows(want, got, SCORE_TOLERANCE).max_abs_diff <= BOX_TOLERANCE_PX


def test_an_interface_that_is_not_contract_1_is_refused(tmp_path: Path) -> None:
    model = graph_with(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["z"])], {"": 17}
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 4, 6]))
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    from loaders.onnx_import import read_onnx_file

    with pytest.raises(LoaderError, match=r"1 input\(s\) and 2 output\(s\)"):
        read_onnx_file(path)


def test_rows_are_paired_across_near_ties_but_real_differences_count() -> None:
    rng = np.random.default_rng(0)
    a = np.zeros((1, 5, 6), np.float32)
    a[0, :, :4] = rng.uniform(0, 500, (5, 4))
    a[0, :, 4] = [0.9, 0.5, 0.5000001, 0.3, 0.1]
    a[0] = a[0][np.argsort(-a[0, :, 4], kind="stable")]
    swapped = a.copy()
    swapped[0, [1, 2]] = swapped[0, [2, 1]]  # tied scores in the other order
    assert compare_rows(a, swapped, 1e-3).max_abs_diff < 1e-6
    moved = a.copy()
    moved[0, 3, 0] += 2.0  # a box two pixels off
    parity = compare_rows(a, moved, 1e-3)
    assert parity.max_box_diff == pytest.approx(2.0, abs=1e-4) and not parity.passed
    relabelled = a.copy()
    relabelled[0, 0, 5] = 1.0
    assert compare_rows(a, relabelled, 1e-3).class_mismatches == 1


def test_an_onnx_torchvision_detector_is_refused_with_the_reason_and_the_fix(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`groundwatch load det.onnx --adapter torchvision`: onnx2torch's NMS and Shape converters are
    Python that a trace freezes, so the load is refused before anything is converted or stored,
    saying what to load instead."""
    # torchvision's export interface: one [C, H, W] image in, boxes, labels, scores out
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, 64, 64])
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "shape4"], ["boxes"]),
        helper.make_node(
            "Constant", [], ["labels"], value=helper.make_tensor("l", TensorProto.INT64, [1], [1])
        ),
        helper.make_node(
            "Constant", [], ["scores"], value=helper.make_tensor("s", TensorProto.FLOAT, [1], [0.9])
        ),
    ]
    shape4 = helper.make_tensor("shape4", TensorProto.INT64, [2], [-1, 4])
    model = helper.make_model(
        helper.make_graph(nodes, "tv", [image], outputs, [shape4]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    args = ["--redis-url", url(engine), "load", str(path), "--name", "tv", "--feeds", "tvf"]
    assert main([*args, "--adapter", "torchvision", "--classes", "ship", "--band-map", "0,0,0"]) == 1
    err = capsys.readouterr().err
    assert "an ONNX export of a torchvision-style detector cannot be served" in err
    assert "torch.jit.script(model).save('det.pt')" in err and "--adapter yolo" in err
    assert engine.keys("gw:{tvf}:*") == [] and not Registry(engine).versions("tv")
