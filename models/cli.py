"""`groundwatch generate | train | evaluate`: the models role's subcommands.

Import-light on purpose (numpy, torch and rasterio are imported inside the handlers) so that
`groundwatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from groundwatch.settings import Settings


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="write synthetic georeferenced scenes (GeoTIFF + GeoJSON truth)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default DATA_DIR/scenes)")
    p.add_argument("--count", type=int, default=1, help="number of scenes (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first scene; scene i uses seed + i")
    p.add_argument("--size", type=int, default=2048, help="width and height in pixels (default 2048)")
    p.add_argument("--bands", type=int, default=1, help="bands, 1 to 4 (default 1)")
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

    p = subparsers.add_parser("evaluate", help="AP@0.5 per class of a TorchScript detector on held-out scenes")
    p.add_argument("model_path", nargs="?", type=Path, default=None, metavar="MODEL",
                   help="TorchScript file (default: the shipped models/artifacts/detector.pt)")
    p.add_argument("--scenes", type=int, default=4, help="held-out scenes (default 4)")
    p.add_argument("--size", type=int, default=2048, help="scene size in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=None, help="first held-out seed (default 1)")
    p.add_argument("--score-threshold", dest="score_threshold", type=float, default=None,
                   help="threshold for the precision/recall columns (default: the model's hint); AP uses all")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(handler=_evaluate)


def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from models.errors import ModelsError
    from models.scenes import SceneConfig, generate_scene, write_scene

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
    from models.evaluate import EvalConfig, evaluate_model, format_table
    from models.train import TrainConfig, train_and_export

    overrides = {k: getattr(args, k) for k in ("steps", "tiles", "seed", "bands", "threads")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(TrainConfig(), **overrides)
    if not 1 <= config.bands <= 4 or config.steps < 1 or config.tiles < 1 or config.threads < 1:
        raise ModelsError(
            f"cannot train with bands={config.bands}, steps={config.steps}, tiles={config.tiles}, "
            f"threads={config.threads}: bands must be 1..4 and the others at least 1"
        )
    out = args.out or settings.data_dir / "models" / "detector.pt"
    summary = train_and_export(config, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {summary['parameters']} parameters, "
          f"trained in {summary['train_seconds']} s + {summary['data_seconds']} s data)")
    if not args.no_evaluate:
        from models.archive import load_model

        module, _ = load_model(out)
        print(format_table(evaluate_model(module, config=EvalConfig(bands=config.bands))))
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import torch

    from models.archive import SHIPPED_MODEL, load_model
    from models.errors import ModelsError
    from models.evaluate import HELD_OUT_SEED_BASE, EvalConfig, evaluate_model, format_table

    torch.set_num_threads(settings.intra_op_threads or 2)  # 0 means the default: 2 threads
    path = args.model_path or SHIPPED_MODEL
    if args.scenes < 1 or args.size < 32:
        raise ModelsError(f"need at least 1 scene of at least 32 px, got --scenes {args.scenes} --size {args.size}")
    module, meta = load_model(path)
    # the operator's --score-threshold wins, else the model's own hint (only P/R use it, not AP)
    threshold = settings.score_threshold
    if threshold is None:
        threshold = float(meta.get("score_threshold_hint", 0.5))
    config = EvalConfig(scenes=args.scenes, size_px=args.size, bands=int(meta["bands"]),
                        seed_base=HELD_OUT_SEED_BASE if args.seed is None else args.seed,
                        tile_px=int(meta["tile_size"]), score_threshold=threshold)
    result = evaluate_model(module, config=config, classes=meta["classes"])
    result["model"] = str(path)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {path}")
        print(format_table(result))
    return 0

