"""`groundwatch generate | train | evaluate | quantize`: the models role's subcommands.

Import-light on purpose (numpy, torch and rasterio are imported inside the handlers) so that
`groundwatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from groundwatch import modelmeta
from groundwatch.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="write synthetic georeferenced scenes (GeoTIFF + GeoJSON truth)"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default DATA_DIR/scenes)")
    p.add_argument("--count", type=int, default=1, help="number of scenes (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first scene; scene i uses seed + i")
    p.add_argument("--size", type=int, default=2048, help="width and height in pixels (default 2048)")
    p.add_argument("--bands", type=int, default=1, help="bands, 1 to 4 (default 1)")
    p.add_argument(
        "--sample-tiles",
        dest="sample_tiles",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="instead: write COUNT uint16 tiles of SIZE px, 3 ships and 2 platforms each, for "
        "`groundwatch load --compare-samples`",
    )
    p.set_defaults(handler=_generate)

    p = subparsers.add_parser("train", help="train the detector on synthetic tiles and export TorchScript")
    p.add_argument("--out", type=Path, default=None, help="model file (default DATA_DIR/models/detector.pt)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    p.add_argument("--tiles", type=int, default=None, help="training tiles generated (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="torch/numpy seed (default 0)")
    p.add_argument("--bands", type=int, default=None, help="input bands (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation after training")
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "evaluate", help="AP@0.5 per class of a detector, or IoU per class of a segmenter, on held-out scenes"
    )
    p.add_argument(
        "model_path",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="TorchScript file (default: the shipped models/artifacts/detector.pt), or a registry "
        "version NAME:VERSION (fetched with AI.MODELGET BLOB; an optimised version runs in the engine)",
    )
    p.add_argument(
        "--engine",
        action="store_true",
        help="run the model inside the engine (a file is stored under a temporary key)",
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="with a file: store it in the engine with OPTIMIZE and evaluate it there (implies --engine)",
    )
    p.add_argument("--scenes", type=int, default=None, help="held-out scenes (default 4; a segmenter: 8)")
    p.add_argument(
        "--size", type=int, default=None, help="scene size in pixels (default 2048; a segmenter: 1024)"
    )
    p.add_argument("--seed", type=int, default=None, help="first held-out seed (default 1)")
    p.add_argument(
        "--score-threshold",
        dest="score_threshold",
        type=float,
        default=None,
        help="threshold for the precision/recall columns (default: the model's hint); AP uses all",
    )
    p.add_argument(
        "--feed",
        default=None,
        help="score the scene results a running stack published on this feed instead (needs --truth): "
        "AP per class of a detector feed, IoU per class of a segmentation feed's regions",
    )
    p.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="with --feed: the folder `groundwatch generate` wrote the ingested scenes' truth to",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser(
        "train-segmenter",
        help="train the small segmentation model (contract 2: sea / land / slick) and export TorchScript",
    )
    p.add_argument("--out", type=Path, default=None, help="model file (default DATA_DIR/models/segmenter.pt)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1500)")
    p.add_argument("--tiles", type=int, default=None, help="training scenes generated (default 300)")
    p.add_argument("--seed", type=int, default=None, help="torch/numpy seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    p.set_defaults(handler=_train_segmenter)

    p = subparsers.add_parser(
        "quantize", help="int8 variant of a detector (post-training static quantisation)"
    )
    p.add_argument(
        "model_path",
        nargs="?",
        type=Path,
        default=None,
        metavar="MODEL",
        help="TorchScript detector (default: the shipped models/artifacts/detector.pt)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default DATA_DIR/models/<name>-int8.pt)"
    )
    p.add_argument(
        "--calibration-tiles",
        dest="calibration_tiles",
        type=int,
        default=64,
        help="training-distribution tiles used to calibrate (default 64)",
    )
    p.set_defaults(handler=_quantize)


def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from models.errors import ModelsError
    from models.scenes import SceneConfig, generate_scene, write_scene

    if args.sample_tiles is not None:
        import numpy as np

        from models.scenes import sample_tiles

        try:
            tiles = sample_tiles(args.count, args.size, args.bands)
        except ValueError as e:
            raise ModelsError(f"cannot generate sample tiles: {e}") from e
        np.save(args.sample_tiles, tiles)
        print(f"{args.sample_tiles}  {list(tiles.shape)} {tiles.dtype}")
        return 0
    out = args.out or settings.data_dir / "scenes"
    try:
        config = SceneConfig(width_px=args.size, height_px=args.size, bands=args.bands)
    except ValueError as e:
        raise ModelsError(f"cannot generate: {e}") from e
    for i in range(args.count):
        scene = generate_scene(args.seed + i, config)
        tif, geojson = write_scene(scene, out)
        print(f"{tif}  {geojson}  ({len(scene.objects)} objects)")
    return 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from models.errors import ModelsError
    from models.evaluate import EvalConfig, evaluate_model, format_table, in_process
    from models.train import TrainConfig, train_and_export

    overrides = {
        k: getattr(args, k)
        for k in ("steps", "tiles", "seed", "bands", "threads")
        if getattr(args, k) is not None
    }
    config = dataclasses.replace(TrainConfig(), **overrides)
    if not 1 <= config.bands <= 4 or config.steps < 1 or config.tiles < 1 or config.threads < 1:
        raise ModelsError(
            f"cannot train with bands={config.bands}, steps={config.steps}, tiles={config.tiles}, "
            f"threads={config.threads}: bands must be 1..4 and the others at least 1"
        )
    out = args.out or settings.data_dir / "models" / "detector.pt"
    summary = train_and_export(config, out)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {summary['parameters']} parameters, "
        f"trained in {summary['train_seconds']} s + {summary['data_seconds']} s data)"
    )
    if not args.no_evaluate:
        from models.archive import load_model

        module, _ = load_model(out)
        print(format_table(evaluate_model(in_process(module), config=EvalConfig(bands=config.bands))))
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import torch

    from models.errors import ModelsError

    torch.set_num_threads(settings.intra_op_threads or 2)  # 0 means the default: 2 threads
    if args.feed is not None or args.truth is not None:
        return _evaluate_feed(settings, args)
    if (args.scenes is not None and args.scenes < 1) or (args.size is not None and args.size < 32):
        raise ModelsError(
            f"need at least 1 scene of at least 32 px, got --scenes {args.scenes} --size {args.size}"
        )
    with _model_to_evaluate(settings, args) as (path, module, meta, runs_in):
        return _evaluate_with(settings, args, path, module, meta, runs_in)


@contextlib.contextmanager
def _model_to_evaluate(
    settings: Settings, args: argparse.Namespace
) -> Iterator[tuple[str, Any, dict[str, Any], str]]:
    """(name, batch callable, metadata, where it runs) for a file or a registry version."""
    from models.archive import SHIPPED_MODEL, load_model, read_metadata

    given = args.model_path
    in_engine = args.engine or args.optimize
    if given is None or Path(given).exists():
        path = Path(given) if given else SHIPPED_MODEL
        if not in_engine:
            from models.evaluate import in_process

            module, meta = load_model(path)
            yield str(path), in_process(module), meta, "in-process torch"
            return
        from groundwatch.connection import connect
        from models.engine_eval import engine_runner, stored_in_engine

        meta = read_metadata(path)
        client = connect(settings, timeout_s=300)
        with stored_in_engine(client, path.read_bytes(), optimize=args.optimize) as (key, state):
            where = "engine" + (
                f", optimized={state['optimized']} ({state['optimize_status']})" if args.optimize else ""
            )
            yield str(path), engine_runner(client, key, key, meta["dtype"]), meta, where
        return
    from groundwatch.connection import connect
    from models.engine_eval import engine_runner, registry_model
    from models.evaluate import in_process

    client = connect(settings, timeout_s=300)
    version = registry_model(client, str(given))
    meta = read_metadata(version.blob)
    if in_engine or version.provenance.get("optimized"):
        # the optimisation exists only in the engine: evaluate the copy it serves
        detector = engine_runner(client, version.model_key, version.route_key, meta["dtype"])
        yield (
            version.label,
            detector,
            meta,
            f"engine ({version.model_key}, optimized={bool(version.provenance.get('optimized'))})",
        )
        return
    module, _ = load_model(version.blob)
    yield version.label, in_process(module), meta, "in-process torch (blob from AI.MODELGET BLOB)"


def _evaluate_with(
    settings: Settings, args: argparse.Namespace, path: str, module: Any, meta: dict[str, Any], runs_in: str
) -> int:
    from models.evaluate import HELD_OUT_SEED_BASE, EvalConfig, evaluate_model, format_table

    if meta.get("contract") == modelmeta.SEGMENTATION_CONTRACT:
        return _evaluate_segmenter(settings, args, path, module, meta, runs_in)
    # what the consumers would publish: the operator's threshold, else the model's hint, else the
    # default (only P/R use it, not AP)
    threshold = modelmeta.score_threshold(settings.score_threshold, meta.get("score_threshold_hint"))
    config = EvalConfig(
        scenes=4 if args.scenes is None else args.scenes,
        size_px=2048 if args.size is None else args.size,
        bands=int(meta["bands"]),
        seed_base=HELD_OUT_SEED_BASE if args.seed is None else args.seed,
        tile_px=int(meta["tile_size"]),
        overlap_px=settings.tile_overlap,  # as ingest tiles (GROUNDWATCH_TILE_OVERLAP)
        score_threshold=threshold,
    )
    result = evaluate_model(module, config=config, classes=meta["classes"])
    result["model"] = str(path)
    result["runs_in"] = runs_in
    if isinstance(meta.get("provenance"), dict):
        result["provenance"] = meta["provenance"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {path} ({runs_in})")
        print(format_table(result))
    return 0


def _minimum_text(min_region_px: dict[str, int]) -> str:
    """The minimum region area per class of a segmentation evaluation, in words."""
    named = [f"{px} px ({name})" for name, px in min_region_px.items() if px]
    return f"regions under {', '.join(named)} dropped" if named else "no minimum region area"


def _evaluate_segmenter(
    settings: Settings, args: argparse.Namespace, path: str, module: Any, meta: dict[str, Any], runs_in: str
) -> int:
    from models.segeval import HELD_OUT_SEED_BASE, SegEvalConfig, evaluate_segmenter

    defaults = SegEvalConfig()
    config = SegEvalConfig(
        scenes=defaults.scenes if args.scenes is None else args.scenes,
        size_px=defaults.size_px if args.size is None else args.size,
        bands=int(meta["bands"]),
        seed_base=HELD_OUT_SEED_BASE if args.seed is None else args.seed,
        tile_px=int(meta["tile_size"]),
        overlap_px=settings.tile_overlap,  # as ingest tiles (GROUNDWATCH_TILE_OVERLAP)
        simplify_px=settings.simplify_px,  # as the consumers publish (GROUNDWATCH_SIMPLIFY_PX)
        min_region_px=settings.min_region_px,  # ... and GROUNDWATCH_MIN_REGION_PX
    )
    result = evaluate_segmenter(module, modelmeta.ModelMetadata.from_dict(meta), config)
    result["model"] = str(path)
    result["runs_in"] = runs_in
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"model {path} ({runs_in}): {result['scenes']} scenes of {result['size_px']} px, seeds "
        f"{result['seeds'][0]}-{result['seeds'][1]}, {result['tiles']} tiles, simplified at "
        f"{result['simplify_px']} px, {_minimum_text(result['min_region_px'])}"
    )
    _print_iou_table(result)
    return 0


def _print_iou_table(result: dict[str, Any]) -> None:
    print(f"{'class':<10} {'IoU':>7} {'truth px':>10} {'polygons':>9}")
    for name, row in result["per_class"].items():
        iou = "-" if row["iou"] is None else f"{row['iou']:.4f}"
        print(f"{name:<10} {iou:>7} {row['truth_pixels']:>10} {row['polygons']:>9}")
    print(f"mean IoU of the foreground classes: {result['mean_iou_foreground']}")


def _train_segmenter(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from models.errors import ModelsError
    from models.segmenter import SegTrainConfig, train_and_export

    overrides = {
        k: getattr(args, k) for k in ("steps", "tiles", "seed", "threads") if getattr(args, k) is not None
    }
    config = dataclasses.replace(SegTrainConfig(), **overrides)
    if config.steps < 1 or config.tiles < 1 or config.threads < 1:
        raise ModelsError(
            f"cannot train with steps={config.steps}, tiles={config.tiles}, threads={config.threads}: each "
            "must be at least 1"
        )
    out = args.out or settings.data_dir / "models" / "segmenter.pt"
    summary = train_and_export(config, out)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {summary['parameters']} parameters, "
        f"trained in {summary['train_seconds']} s + {summary['data_seconds']} s data); "
        f"measure it: groundwatch evaluate {out}"
    )
    return 0


def _made_by_segmentation(client: Any, results: list[Any]) -> bool:
    """Whether a feed's scene results come from a segmentation model (contract 2).

    Decided by the model that made them, from its metadata in the engine: an all-sea scene of a
    segmentation feed has no regions and reads like a detector's scene without detections.
    Only when no version that made them is still stored does the presence of regions decide."""
    import redis

    from groundwatch.errors import GroundwatchError
    from models.archive import read_metadata
    from models.engine_eval import registry_model

    for label in dict.fromkeys(m for r in results for m in r.models):
        try:
            meta = read_metadata(registry_model(client, label).blob)
        except (GroundwatchError, redis.RedisError):
            continue  # removed since, or unreadable: try the next version
        return bool(meta.get("contract") == modelmeta.SEGMENTATION_CONTRACT)
    return any(r.regions for r in results)


def _evaluate_feed(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import keys
    from groundwatch.connection import connect
    from groundwatch.detections import decode_scene
    from models.errors import ModelsError
    from models.evaluate import evaluate_feed, format_table, truth_files

    if args.feed is None or args.truth is None or not args.truth.is_dir():
        raise ModelsError(
            "scoring a running stack needs --feed FEED and --truth DIR (the folder of the generated "
            "scenes' .geojson truth files, e.g. from `groundwatch generate --out DIR`)"
        )
    client = connect(settings)
    feed = keys.check_name("feed", args.feed)

    fetched: dict[str, Any] = {}

    def scene_results(scene_id: str) -> Any:
        if scene_id not in fetched:
            raw = client.get(keys.scene_result(feed, scene_id))
            fetched[scene_id] = None if raw is None else decode_scene(raw)
        return fetched[scene_id]

    # A segmentation feed is scored by IoU against the scenes' truth masks, a detector feed by AP,
    # precision and recall against the truth boxes.
    found = [scene_results(scene_id) for scene_id, _doc in truth_files(args.truth)]
    if _made_by_segmentation(client, [r for r in found if r is not None]):
        from models.segeval import evaluate_feed_regions

        result = evaluate_feed_regions(scene_results, args.truth)
        result["feed"] = feed
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"feed {feed}: region results of {result['scenes']} scenes against the truth masks of "
                f"{args.truth} ({len(result['missing'])} not complete)"
            )
            _print_iou_table(result)
        return 0
    result = evaluate_feed(scene_results, args.truth)
    result["feed"] = feed
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"feed {feed}: scene results against {args.truth}")
        print(format_table(result))
    return 0


def _quantize(settings: Settings, args: argparse.Namespace) -> int:
    import torch

    from models.archive import SHIPPED_MODEL
    from models.errors import ModelsError
    from models.quantize import QuantizeConfig, quantize_file

    torch.set_num_threads(settings.intra_op_threads or 2)
    source = args.model_path or SHIPPED_MODEL
    if args.calibration_tiles < 1:
        raise ModelsError(f"--calibration-tiles must be at least 1, got {args.calibration_tiles}")
    out = args.out or settings.data_dir / "models" / f"{Path(source).stem}-int8.pt"
    meta = quantize_file(Path(source), out, QuantizeConfig(calibration_tiles=args.calibration_tiles))
    prov = meta["provenance"]
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {prov['method']} of {source} "
        f"(sha256 {prov['source_sha256'][:12]}), calibrated on {prov['calibration']}"
    )
    print(f"measure it: groundwatch evaluate {out}; register it: groundwatch load {out} --name NAME")
    return 0
