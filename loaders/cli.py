"""`groundwatch load` and `groundwatch model list|activate|rollback|remove`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from groundwatch.settings import Settings
from loaders import adapterspec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load", help="register a TorchScript (or ONNX) model version in the engine and activate it"
    )
    p.add_argument(
        "file",
        help="TorchScript file (torch.jit.save) with groundwatch.json metadata, or an ONNX model "
        "(.onnx), converted to TorchScript at load time (docs/models.md, ONNX import)",
    )
    p.add_argument("--name", required=True, help="model name, e.g. ship")
    p.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    p.add_argument("--device", default="CPU", help="CPU, GPU, CPU:n or GPU:n")
    p.add_argument("--batch", type=int, default=None, help="engine auto-batching: BATCHSIZE")
    p.add_argument("--min-batch", type=int, default=None, help="MINBATCHSIZE (needs --batch)")
    p.add_argument(
        "--min-batch-timeout", type=int, default=None, help="MINBATCHTIMEOUT in ms (needs --min-batch)"
    )
    p.add_argument(
        "--feeds", default=None, help="comma-separated feeds to serve (default: the --feed setting)"
    )
    p.add_argument(
        "--no-activate", action="store_true", help="store and warm up, but keep the current version"
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="have the engine freeze and optimise the model for inference (CPU; AI.MODELSTORE ... OPTIMIZE)",
    )
    p.add_argument(
        "--variant-of",
        default=None,
        metavar="NAME:VERSION",
        help="compare with this version before activating (found from the file's provenance, or the "
        "same file loaded without --optimize, when left out)",
    )
    p.add_argument(
        "--agree",
        type=float,
        default=0.9,
        help="a variant is activated only if this fraction of detections match its source's (default 0.9)",
    )
    p.add_argument(
        "--max-score-delta",
        type=float,
        default=0.05,
        help="... and the matched detections' mean score difference is at most this (default 0.05)",
    )
    p.add_argument(
        "--compare-samples",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="tiles [N, bands, tile, tile] to compare a variant with its source on (default: the feed's "
        "most recent frames; `groundwatch generate --sample-tiles FILE.npy` writes some)",
    )
    p.add_argument(
        "--compare-tiles",
        type=int,
        default=8,
        help="frames taken from the feed for the comparison (default 8)",
    )
    p.add_argument(
        "--metadata",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="groundwatch.json for an ONNX file whose metadata_props carry none (docs/models.md)",
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        default=None,
        metavar="ABS",
        help="ONNX import: the largest absolute difference from ONNX Runtime accepted on the sample "
        "tiles, in output units (pixels, score) (default 0.001)",
    )
    adapterspec.add_arguments(p)
    p.set_defaults(handler=cmd_load)

    m = sub.add_parser("model", help="list, activate, roll back or remove registered model versions")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    q = msub.add_parser(
        "list", help="versions with metadata and the engine's calls, samples, errors, mean time"
    )
    q.set_defaults(handler=cmd_list)
    q = msub.add_parser("activate", help="make a registered version active on its feeds")
    q.add_argument("name")
    q.add_argument("version", type=int)
    q.set_defaults(handler=cmd_activate)
    q = msub.add_parser("rollback", help="activate the version that was active before")
    q.add_argument("name")
    q.set_defaults(handler=cmd_rollback)
    q = msub.add_parser("remove", help="delete a version that is not active")
    q.add_argument("name")
    q.add_argument("version", type=int)
    q.set_defaults(handler=cmd_remove)


def _samples(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    from loaders import LoaderError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise LoaderError(f"--compare-samples {path}: not a readable .npy array ({e})") from e


def _metadata(path: Path | None) -> Any:
    if path is None:
        return None
    import json

    from loaders import LoaderError

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LoaderError(f"--metadata {path}: not a readable JSON file ({e})") from e


def cmd_load(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch.connection import connect
    from loaders.loader import LoadOptions, load

    feeds = tuple(f.strip() for f in (args.feeds or settings.feed).split(",") if f.strip())
    spec = adapterspec.from_args(args, settings.tile_size)
    source: Any = args.file
    provenance = None
    if spec is not None:
        from loaders.adapters import adapt_file
        from loaders.archive import is_onnx

        if is_onnx(args.file):
            from loaders import onnx_import  # torch, onnx and onnx2torch: only for ONNX files

            tolerance = args.parity_tolerance
            source = onnx_import.adapt_onnx_file(
                args.file,
                spec,
                tolerance=onnx_import.DEFAULT_PARITY_TOLERANCE if tolerance is None else tolerance,
                samples=_samples(args.compare_samples),
            )
        else:
            source = adapt_file(args.file, spec)
        provenance = {"adapter": source.metadata.extra["adapter"]}
    opts = LoadOptions(
        name=args.name,
        feeds=feeds,
        version=args.version,
        device=args.device,
        batch=args.batch,
        min_batch=args.min_batch,
        min_batch_timeout_ms=args.min_batch_timeout,
        activate=not args.no_activate,
        optimize=args.optimize,
        variant_of=args.variant_of,
        agree=args.agree,
        max_score_delta=args.max_score_delta,
        compare_tiles=args.compare_tiles,
        compare_samples=_samples(args.compare_samples),
        metadata=_metadata(args.metadata),
        parity_tolerance=args.parity_tolerance,
        provenance=provenance,
    )
    record = load(connect(settings), source, opts)
    state = "active" if opts.activate else "stored, not active"
    print(
        f"{record.label} ({state}) on feeds {', '.join(record.feeds)}: classes {', '.join(record.classes)}, "
        f"{record.bands} band(s) {record.dtype}, tile {record.tile_size}, sha256 {record.sha256[:12]}"
    )
    prov = record.provenance
    if prov.get("format") == "onnx":
        parity = prov.get("parity", {})
        print(
            f"converted from ONNX ({prov.get('method')}; sha256 {str(prov.get('onnx_sha256'))[:12]}, "
            f"{prov.get('onnx_bytes')} bytes kept): max abs difference from ONNX Runtime "
            f"{parity.get('max_abs_diff', float('nan')):.3g} on {parity.get('tiles')} tiles (tolerance "
            f"{parity.get('tolerance')})"
        )
    if "adapter" in prov:
        a = prov["adapter"]
        print(
            f"adapted ({a['adapter']}): replaced {', '.join(a['replaced_ops']) or 'no operators'}; "
            f"operator check: {a['op_check']['status']}"
        )
    if args.optimize:
        print(
            f"optimized in the engine: {'yes' if prov.get('optimized') else 'no'} ({prov.get('optimize_status')})"
        )
    if "source_version" in prov:
        a = prov.get("agreement", {})
        print(
            f"variant of {prov['source_version']} ({prov.get('method', 'unknown method')}): agreement "
            f"{a.get('fraction')} ({a.get('matched')}/{a.get('source_detections')} detections), mean score "
            f"delta {a.get('mean_score_delta')}"
        )
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch.connection import connect
    from loaders.loader import stats

    rows = stats(connect(settings))
    if not rows:
        print("no models registered: `groundwatch load FILE --name NAME`")
        return 0
    print(f"{'model':<16}{'':2}{'feeds':<18}{'calls':>8}{'samples':>9}{'errors':>7}{'mean ms':>9}  loaded")
    for s in rows:
        mark = "*" if s.active else " "
        print(
            f"{s.record.label:<16}{mark:2}{','.join(s.record.feeds):<18}{s.calls:>8}{s.samples:>9}"
            f"{s.errors:>7}{s.mean_ms:>9.2f}  {s.record.loaded_at}{_variant_note(s.record.provenance)}"
        )
    print("* active")
    return 0


def _variant_note(prov: dict[str, Any]) -> str:
    """ "  from ONNX, adapted (yolo), optimized, int8 ... variant of ship:1 (agreement 0.98)" for
    converted, adapted and variant versions; "" otherwise."""
    parts = []
    if prov.get("format") == "onnx":
        parts.append("from ONNX")
    if isinstance(prov.get("adapter"), dict):
        parts.append(f"adapted ({prov['adapter'].get('adapter')})")
    if prov.get("optimized"):
        parts.append("optimized")
    if prov.get("source_sha256"):
        parts.append(str(prov.get("method", "variant")).split(" + ")[0])
    if "source_version" in prov:
        agreement = prov.get("agreement", {}).get("fraction")
        parts.append(f"variant of {prov['source_version']} (agreement {agreement})")
    return "  " + ", ".join(parts) if parts else ""


def cmd_activate(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch.connection import connect
    from loaders.loader import activate

    print(f"{activate(connect(settings), args.name, args.version).label} is active")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch.connection import connect
    from loaders.loader import rollback

    print(f"rolled back: {rollback(connect(settings), args.name).label} is active")
    return 0


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch.connection import connect
    from loaders.loader import remove

    print(f"removed {remove(connect(settings), args.name, args.version).label}")
    return 0
