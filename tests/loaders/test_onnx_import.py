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
from loaders.adapterspec import AdapterSpec
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


def torchvision_spec(tile: int, k: int = 20) -> AdapterSpec:
    from tests.loaders import test_adapters as ad

    return AdapterSpec(
        adapter="torchvision", classes=ad.CLASSES, tile_size=tile, band_map=(0, 0, 0), max_detections=k
    )


def test_an_onnx_torchvision_detector_serves_what_it_computes_in_process(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`groundwatch load det.onnx --adapter torchvision`: the adapters' two-stage detector (NMS on
    the proposals, RoIAlign, per-class NMS), exported as torchvision's detectors export, served
    by the engine gives per tile the boxes the original model gives in process, on every tile of
    a scene (each keeps its own number of boxes, not the traced image's)."""
    from tests.loaders import test_adapters as ad
    from tests.loaders.detectors import TwoStage, export_torchvision_onnx

    model = TwoStage(in_channels=3, num_classes=3, seed=1).eval()
    path = tmp_path / "det.onnx"
    export_torchvision_onnx(model, str(path), 3, ad.TILE)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "Shape"} <= ops
    adapter = ["--adapter", "torchvision", "--classes", ",".join(ad.CLASSES), "--band-map", "0,0,0"]
    adapter += ["--tile-size", str(ad.TILE), "--max-detections", "20"]
    args = ["load", str(path), "--name", "tvonnx", "--feeds", ad.FEED, "--batch", "4", *adapter]
    assert main(["--redis-url", url(engine), *args]) == 0
    assert "converted from ONNX" in capsys.readouterr().out
    record = Registry(engine).get("tvonnx", 1)
    prov = record.provenance
    assert prov["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["adapter"]["adapter"] == "torchvision" and prov["adapter"]["replaced_ops"] == []
    parity = prov["parity"]
    assert parity["compared"] == "detections" and parity["passed"] and parity["count"] > 0
    assert parity["max_box_diff"] <= DEFAULT_PARITY_TOLERANCE and parity["class_mismatches"] == 0
    counts = prov["detections_per_image"]
    assert any(n != counts["traced"] for n in counts["compared"])  # the trace is not what was compared
    assert Registry(engine).original("tvonnx", 1) == path.read_bytes()

    scene, image = ad.scene_file(tmp_path)
    served = ad.run_pipeline(engine, scene)
    assert len({len(ad.cut(rows)) for rows in served.values()}) > 1  # tiles keep different numbers
    assert ad.assert_same(served, ad.torchvision_reference(model, image, 20)) >= 5


def test_a_trace_that_froze_what_nms_keeps_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What onnx2torch's own NonMaxSuppression does under a trace (the kept indices built as a
    tensor from a Python list, so a constant of the traced image): the parity check, on images
    other than the traced one, refuses it naming what follows NMS and what to load instead."""
    from loaders import onnx_torchvision as tv
    from loaders.onnx_import import adapt_onnx_file
    from tests.loaders.detectors import TwoStage, export_torchvision_onnx

    class ListBuilt(tv.ScriptedNonMaxSuppression):
        def forward(self, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return torch.tensor(super().forward(*args).tolist(), dtype=torch.long).reshape(-1, 3)

    real = tv.replace_dynamic

    def freezing(graph_module: torch.nn.Module) -> list[str]:
        names = real(graph_module)
        for name, module in list(graph_module.named_modules()):
            if (
                isinstance(module, torch.jit.ScriptModule)
                and module.original_name == "ScriptedNonMaxSuppression"
            ):
                graph_module.set_submodule(name, ListBuilt(int(module.center_point_box)))
        return names

    monkeypatch.setattr(tv, "replace_dynamic", freezing)
    path = tmp_path / "det.onnx"
    export_torchvision_onnx(TwoStage(in_channels=3, num_classes=3, seed=1).eval(), str(path), 3, 64)
    with pytest.raises(LoaderError, match="cannot be served soundly") as err:
        adapt_onnx_file(path, torchvision_spec(64))
    message = str(err.value)
    assert re.search(
        r"on sample image \d+ the converted graph returns \d+ detections where ONNX Runtime returns \d+",
        message,
    )
    assert "froze a size NMS decides at run time" in message and "RoiAlign" in message
    assert "torch.jit.script(model).save('det.pt')" in message and "--adapter yolo" in message


def test_a_torchvision_export_that_differs_beyond_the_tolerance_is_refused(tmp_path: Path) -> None:
    from loaders.onnx_import import adapt_onnx_file
    from tests.loaders.detectors import TwoStage, export_torchvision_onnx

    path = tmp_path / "det.onnx"
    export_torchvision_onnx(TwoStage(in_channels=3, num_classes=3, seed=1).eval(), str(path), 3, 64)
    assert adapt_onnx_file(path, torchvision_spec(64)).conversion["parity"]["passed"]
    with pytest.raises(LoaderError, match="does not reproduce ONNX Runtime's detections") as err:
        adapt_onnx_file(path, torchvision_spec(64), tolerance=1e-12)
    assert "tolerance 1e-12" in str(err.value) and "--parity-tolerance" in str(err.value)


def test_onnx_nms_in_torchscript_selects_what_onnx_runtime_selects() -> None:
    # Two batches, three classes, corners in either order or centre form, a score threshold and
    # a per-class limit: the selected (batch, class, box) triples, in ONNX Runtime's order.
    import onnxruntime as ort

    from loaders.onnx_torchvision import ScriptedNonMaxSuppression

    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 60, (2, 40, 2, 2))
    for center in (0, 1):
        boxes = corners.reshape(2, 40, 4).astype(np.float32)
        if center:
            boxes[..., 2:] = np.abs(boxes[..., 2:]) / 2 + 1
        scores = rng.random((2, 3, 40)).astype(np.float32)
        node = helper.make_node(
            "NonMaxSuppression", ["b", "s", "k", "iou", "t"], ["sel"], center_point_box=center
        )
        graph = helper.make_graph(
            [node],
            "nms",
            [
                helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 40, 4]),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3, 40]),
            ],
            [helper.make_tensor_value_info("sel", TensorProto.INT64, ["m", 3])],
            [
                helper.make_tensor("k", TensorProto.INT64, [1], [5]),
                helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.3]),
                helper.make_tensor("t", TensorProto.FLOAT, [1], [0.2]),
            ],
        )
        blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        want = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
            None, {"b": boxes, "s": scores}
        )[0]
        nms = torch.jit.script(ScriptedNonMaxSuppression(center))
        got = nms(
            torch.from_numpy(boxes),
            torch.from_numpy(scores),
            torch.tensor([5]),
            torch.tensor([0.3]),
            torch.tensor([0.2]),
        )
        assert len(want) > 12 and np.array_equal(got.numpy(), want), center


def test_an_onnx_torchvision_detector_is_refused_when_its_trace_cannot_be_checked(
    engine: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graph that keeps the same number of detections on every image: a trace that froze that
    number would pass the comparison, so the load is refused before anything is stored, saying
    what to give (--compare-samples) or load instead."""
    # torchvision's export interface: one [C, H, W] image in, boxes, labels, scores out
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, 128, 128])
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "one"], ["m1"]),
        helper.make_node("Expand", ["m1", "shape4"], ["boxes"]),
        helper.make_node(
            "Constant", [], ["labels"], value=helper.make_tensor("l", TensorProto.INT64, [1], [1])
        ),
        helper.make_node(
            "Constant", [], ["scores"], value=helper.make_tensor("s", TensorProto.FLOAT, [1], [0.9])
        ),
    ]
    initializers = [
        helper.make_tensor("one", TensorProto.INT64, [2], [1, 1]),
        helper.make_tensor("shape4", TensorProto.INT64, [2], [1, 4]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "tv", [image], outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    args = ["--redis-url", url(engine), "load", str(path), "--name", "tv", "--feeds", "tvf"]
    adapter = ["--adapter", "torchvision", "--classes", "ship", "--band-map", "0,0,0", "--tile-size", "128"]
    assert main([*args, *adapter]) == 1
    err = capsys.readouterr().err
    assert "this ONNX export of a torchvision-style detector cannot be served soundly" in err
    assert "every sample image keeps 1 detection(s)" in err and "--compare-samples" in err
    assert "torch.jit.script(model).save('det.pt')" in err and "--adapter yolo" in err
    assert engine.keys("gw:{tvf}:*") == [] and not Registry(engine).versions("tv")


@pytest.mark.parametrize("batch", ["input", "both"])
def test_a_batch_of_one_torchvision_export_serves_as_the_one_image_export(batch: str, tmp_path: Path) -> None:
    """An export that takes a batch of one [1, C, H, W] (and may return [1, n, 4], [1, n]): the
    wrapper adds the batch dim before the graph and removes it after, and the load gives what
    the one-image export of the same model gives, tile for tile."""
    from loaders import onnx_torchvision as tv
    from loaders.onnx_import import adapt_onnx_file
    from tests.loaders.detectors import TwoStage, export_torchvision_onnx

    model = TwoStage(in_channels=3, num_classes=3, seed=1).eval()
    single, batched = tmp_path / "single.onnx", tmp_path / "batched.onnx"
    export_torchvision_onnx(model, str(single), 3, 64)
    export_torchvision_onnx(model, str(batched), 3, 64, batch=batch)
    proto = onnx.load(str(batched))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    interface = tv.check_interface(proto, 3, 64, "batched.onnx")
    assert interface.batched_input and interface.batched_outputs == (batch == "both")
    imported = adapt_onnx_file(batched, torchvision_spec(64, k=64))
    assert imported.conversion["parity"]["passed"] and imported.conversion["parity"]["count"] > 0
    counts = imported.conversion["detections_per_image"]
    assert any(n != counts["traced"] for n in counts["compared"])
    reference = adapt_onnx_file(single, torchvision_spec(64, k=64))
    noise = np.random.default_rng(5).integers(0, 3000, (4, 1, 64, 64))
    tiles = torch.from_numpy((noise * np.array([0.1, 0.5, 1.0, 2.0])[:, None, None, None]).astype(np.uint16))
    with torch.no_grad():
        got = torch.jit.load(io.BytesIO(imported.blob))(tiles).numpy()
        want = torch.jit.load(io.BytesIO(reference.blob))(tiles).numpy()
    assert len({int((rows[:, 4] > 0).sum()) for rows in want}) > 1  # the tiles keep different numbers
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def torchvision_graph(inputs: list, outputs: list, nodes: list | None = None) -> onnx.ModelProto:
    """A graph with the given inputs and outputs; outputs not computed by `nodes` are constants
    (one detection), so only the interface differs from what the loader takes."""
    nodes = list(nodes or [])
    computed = {o for n in nodes for o in n.output}
    for value in outputs:
        if value.name in computed:
            continue
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        elem = value.type.tensor_type.elem_type
        tensor = helper.make_tensor(value.name + "_value", elem, dims, [1] * int(np.prod(dims)))
        nodes.append(helper.make_node("Constant", [], [value.name], value=tensor))
    return helper.make_model(
        helper.make_graph(nodes, "tv", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )


def image_info(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


TORCHVISION_OUTPUTS = [
    helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
    helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]),
    helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
]
INSTEAD = ("torch.jit.script(model).save('det.pt')", "--adapter torchvision", "--adapter yolo")


def refusal_of(graph: onnx.ModelProto, tmp_path: Path) -> str:
    """The message `--adapter torchvision` refuses `graph` with (64-px tiles)."""
    from loaders.onnx_import import adapt_onnx_file

    path = tmp_path / "det.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(LoaderError) as err:
        adapt_onnx_file(path, torchvision_spec(64))
    return str(err.value)


@pytest.mark.parametrize(
    ("inputs", "outputs", "named"),
    [
        # two inputs (an image and its size, as some wrappers take)
        (
            [image_info("image", [3, 64, 64]), image_info("size", [2])],
            TORCHVISION_OUTPUTS,
            "image [3, 64, 64], size [2]",
        ),
        # a batch of two images
        ([image_info("images", [2, 3, 64, 64])], TORCHVISION_OUTPUTS, "images [2, 3, 64, 64]"),
        # the wrong number of channels for --band-map 0,0,0
        ([image_info("image", [1, "h", "w"])], TORCHVISION_OUTPUTS, "image [1, ?, ?]"),
    ],
)
def test_a_torchvision_export_taking_another_input_is_refused(
    inputs: list, outputs: list, named: str, tmp_path: Path
) -> None:
    message = refusal_of(torchvision_graph(inputs, outputs), tmp_path)
    assert "takes one float image [3, H, W] or a batch of one [1, 3, H, W]" in message
    assert f"this graph takes {named}." in message
    assert "torch.onnx.export(model, ([torch.rand(3, 64, 64)],), 'det.onnx'" in message
    assert all(s in message for s in INSTEAD)


@pytest.mark.parametrize(
    ("inputs", "outputs", "listed"),
    [
        # four outputs (masks too, as Mask R-CNN returns)
        (
            [image_info("image", [3, 64, 64])],
            [*TORCHVISION_OUTPUTS, image_info("masks", ["n", 1, 64, 64])],
            "4 output(s): boxes FLOAT [?, 4], labels INT64 [?], scores FLOAT [?], masks FLOAT [?, 1, 64, 64]",
        ),
        # three outputs not named so, and two of them could be the scores: no labels told apart
        (
            [image_info("image", [3, 64, 64])],
            [image_info("out0", ["n", 4]), image_info("out1", ["n"]), image_info("out2", ["n"])],
            "3 output(s): out0 FLOAT [?, 4], out1 FLOAT [?], out2 FLOAT [?]",
        ),
        # torchvision's names, but with a batch dim after a single image in: what would dim 0 be?
        (
            [image_info("image", [3, 64, 64])],
            [
                helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "n", 4]),
                helper.make_tensor_value_info("labels", TensorProto.INT64, [1, "n"]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "n"]),
            ],
            "3 output(s): boxes FLOAT [1, ?, 4], labels INT64 [1, ?], scores FLOAT [1, ?]",
        ),
        # a batch of one in, but boxes for a batch of two out
        (
            [image_info("image", [1, 3, 64, 64])],
            [
                helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2, "n", 4]),
                helper.make_tensor_value_info("labels", TensorProto.INT64, [2, "n"]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, "n"]),
            ],
            "3 output(s): boxes FLOAT [2, ?, 4], labels INT64 [2, ?], scores FLOAT [2, ?]",
        ),
    ],
)
def test_a_torchvision_export_returning_other_outputs_is_refused(
    inputs: list, outputs: list, listed: str, tmp_path: Path
) -> None:
    message = refusal_of(torchvision_graph(inputs, outputs), tmp_path)
    assert "returns three outputs, boxes [n, 4] (float), labels [n] (int64) and scores [n] (float)" in message
    assert f"this graph returns {listed}." in message
    assert "output_names=['boxes', 'labels', 'scores']" in message
    assert all(s in message for s in INSTEAD)


def test_a_torchvision_export_with_an_operator_onnx2torch_lacks_is_refused_by_name(tmp_path: Path) -> None:
    from loaders.onnx_import import adapt_onnx_file

    # The scores from Det (no onnx2torch converter) of the image's three 64 x 64 planes.
    det = helper.make_node("Det", ["image"], ["scores"], name="determinant")
    model = torchvision_graph([image_info("image", [3, 64, 64])], TORCHVISION_OUTPUTS, [det])
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    with pytest.raises(LoaderError) as err:
        adapt_onnx_file(path, torchvision_spec(64))
    message = str(err.value)
    assert "this ONNX export of a torchvision-style detector cannot be served soundly" in message
    assert re.search(
        r"onnx2torch \S+ has no converter for Det \(ai\.onnx, opset 17\): 1 node\(s\) determinant", message
    )
    assert all(s in message for s in INSTEAD)
