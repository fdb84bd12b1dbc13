"""`groundwatch ingest FILE...` and `groundwatch watch DIR`.

Imports stay light here (rasterio, numpy and redis load inside the handlers) so `--help` is fast.
Flags whose dest is a Settings field (feed, tile_size, ...) override the settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from groundwatch.settings import Settings


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feed", dest="feed", default=None, help="feed to publish to (default: default)")
    p.add_argument(
        "--bands",
        dest="ingest_bands",
        default=None,
        metavar="N,N,...",
        help="1-based band numbers to read, in order, e.g. 4,3,2 (default: all)",
    )
    p.add_argument(
        "--expect-bands",
        dest="expect_bands",
        type=int,
        default=None,
        metavar="N",
        help="refuse scenes that do not yield N bands (default: any)",
    )
    p.add_argument("--tile-size", dest="tile_size", type=int, default=None, help="tile side in pixels (512)")
    p.add_argument(
        "--tile-overlap",
        dest="tile_overlap",
        type=int,
        default=None,
        help="overlap of neighbouring tiles in pixels (64)",
    )
    p.add_argument(
        "--max-lag",
        dest="max_lag",
        type=int,
        default=None,
        help="wait while a consumer group is this many frames behind (1000)",
    )
    p.add_argument(
        "--backpressure-timeout-s",
        dest="backpressure_timeout_s",
        type=float,
        default=None,
        help="give up waiting for consumers after this many seconds (60)",
    )
    p.add_argument(
        "--memory-mb",
        dest="ingest_memory_mb",
        type=float,
        default=None,
        help="memory budget in MB: a scene's tiles are held up to it, else read twice; a file one row of "
        "tiles of which does not fit is refused (1024)",
    )
    p.add_argument(
        "--publish-batch", dest="publish_batch", type=int, default=None, help="frames per transaction (32)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="tile raster files (GeoTIFF/COG, local or s3://) or STAC items and publish them as frames on a feed",
    )
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="raster files or s3://bucket/key objects (the scene id is the name's stem), or STAC item "
        "JSON files (local or s3://; the scene id is the item id)",
    )
    _settings_flags(p)
    p.add_argument(
        "--asset", default=None, help="STAC: the item's asset to ingest (default: the first GeoTIFF asset)"
    )
    p.add_argument(
        "--collection",
        default=None,
        metavar="CATALOG",
        help="STAC: ingest every item of this static catalogue or collection (a JSON file, local or s3://)",
    )
    p.add_argument(
        "--s3-endpoint",
        dest="s3_endpoint",
        default=None,
        help="S3-compatible endpoint URL (default: AWS; also AWS_ENDPOINT_URL)",
    )
    p.add_argument("--force", action="store_true", help="publish again even if the scene was ingested")
    p.add_argument("--scene", default=None, help="scene id to use (only with one FILE)")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser(
        "watch", help="ingest complete files dropped into DIR; move them to DIR/done or DIR/failed"
    )
    p.add_argument(
        "directory",
        metavar="DIR",
        help="the drop folder (write name.tif.part, rename when complete), or s3://bucket/prefix/",
    )
    _settings_flags(p)
    p.add_argument(
        "--s3-endpoint",
        dest="s3_endpoint",
        default=None,
        help="S3-compatible endpoint URL (default: AWS; also AWS_ENDPOINT_URL)",
    )
    p.add_argument(
        "--s3-done",
        dest="s3_done",
        choices=("move", "tag"),
        default=None,
        help="s3://: move objects to done/ and failed/ prefixes (default), or tag them in place",
    )
    p.add_argument(
        "--poll-s",
        dest="watch_poll_s",
        type=float,
        default=None,
        help="seconds between polls; a file must be unchanged over two polls (2)",
    )
    p.add_argument("--burst", action="store_true", help="process the complete files there now, then exit")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("results", help="write a feed's scene results as STAC items with GeoJSON detections")
    p.add_argument("--feed", dest="feed", default=None, help="feed to read (default: default)")
    p.add_argument(
        "--stac", required=True, metavar="DIR", help="folder to write one STAC item per scene into"
    )
    p.add_argument("--scene", action="append", default=None, help="only this scene (repeatable)")
    p.set_defaults(handler=cmd_results)


class ProgressLine:
    """One updating line on stderr: tiles published and MB/s."""

    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.min_interval_s = min_interval_s
        self.name = ""
        self.t0 = time.perf_counter()
        self._last = 0.0

    def start(self, name: str) -> None:
        self.name, self.t0, self._last = name, time.perf_counter(), 0.0

    def update(self, progress: Any) -> None:
        now = time.perf_counter()
        if not self.name:  # watch mode: a new file starts with its first progress report
            self.start(progress.scene)
        if not self.live or (now - self._last < self.min_interval_s and progress.published < progress.tiles):
            return
        self._last = now
        mb = progress.nbytes / 1e6
        rate = mb / max(now - self.t0, 1e-9)
        self.stream.write(
            f"\r\x1b[K{self.name}: {progress.published}/{progress.tiles} tiles, {mb:.1f} MB, {rate:.1f} MB/s"
        )
        self.stream.flush()

    def finish(self, text: str) -> None:
        self.name = ""
        self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
        self.stream.flush()


def describe(name: str, result: Any) -> str:
    if result.duplicate:
        return f"{name}: scene {result.scene} already ingested ({result.tiles} tiles), nothing published"
    mb = result.nbytes / 1e6
    rate = mb / max(result.seconds, 1e-9)
    tps = result.published / max(result.seconds, 1e-9)
    skipped = f", {result.skipped} all-nodata skipped" if result.skipped else ""
    return (
        f"{name}: scene {result.scene}: {result.published} tiles{skipped}, {mb:.1f} MB in "
        f"{result.seconds:.2f} s ({tps:.0f} tiles/s, {rate:.1f} MB/s)"
    )


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    import redis

    from groundwatch import connection, keys
    from ingest import stac
    from ingest.errors import IngestError, InputError
    from ingest.scene import ingest_file

    if args.scene and len(args.files) != 1:
        print("groundwatch ingest: --scene needs exactly one FILE", file=sys.stderr)
        return 2
    if not args.files and not args.collection:
        print("groundwatch ingest: give FILE(s) or --collection CATALOG", file=sys.stderr)
        return 2
    files = list(args.files)
    if args.collection:
        try:
            files.extend(stac.walk(args.collection, settings))
        except IngestError as e:
            print(f"groundwatch ingest: {e}", file=sys.stderr)
            return 1
    client = connection.connect(settings)
    line = ProgressLine()
    failed = 0
    durability = None
    for path in files:
        line.start(path)
        try:
            if stac.is_stac(path):
                result = stac.ingest_item(
                    client, settings, path, asset=args.asset, force=args.force, on_progress=line.update
                )
            else:
                result = ingest_file(
                    client, settings, path, scene=args.scene, force=args.force, on_progress=line.update
                )
        except InputError as e:
            line.finish(f"groundwatch ingest: {e}")
            failed += 1
            continue
        except IngestError as e:
            # Not this file's fault (backpressure, durability, the object store): stop with the message.
            line.finish(f"groundwatch ingest: {e}")
            return 1
        except redis.RedisError as e:
            line.finish(f"groundwatch ingest: {path}: Redis failed ({e}); nothing is lost: ingest it again")
            return 1
        except MemoryError:
            line.finish(
                f"groundwatch ingest: {path}: ran out of memory; lower --memory-mb or rewrite it tiled"
            )
            failed += 1
            continue
        line.finish(describe(path, result))
        durability = result.durability or durability
    if durability is not None:
        print(f"durability: {durability.detail}", file=sys.stderr)
    print(
        f"{len(files) - failed} of {len(files)} file(s) on {keys.frames(settings.feed)}",
        file=sys.stderr,
    )
    return 1 if failed else 0


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import connection
    from ingest.watch import Outcome, watch

    client = connection.connect(settings)
    line = ProgressLine()

    def report(outcome: Outcome) -> None:
        if outcome.status == "failed":
            line.finish(f"failed: {outcome.name}: {outcome.reason}")
        else:
            line.finish(f"done: {describe(outcome.name, outcome.result)}")

    if not args.burst:
        print(f"watching {args.directory} for feed {settings.feed} (Ctrl-C stops)", file=sys.stderr)
    from ingest.errors import IngestError, InputError

    try:
        outcomes = watch(
            client, settings, args.directory, burst=args.burst, on_progress=line.update, on_outcome=report
        )
    except (InputError, IngestError) as e:
        print(f"groundwatch watch: {e}", file=sys.stderr)
        return 1
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_results(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from groundwatch import connection, keys
    from groundwatch.detections import DetectionFormatError, decode_scene
    from ingest import stac

    client = connection.connect(settings)
    wanted = set(args.scene or ())
    latest = {}
    for _id, fields in client.xrange(keys.scenes(settings.feed)):
        try:
            s = decode_scene(fields)
        except DetectionFormatError as e:
            print(f"groundwatch results: skipping a scenes entry {_id!r}: {e}", file=sys.stderr)
            continue
        if not wanted or s.scene in wanted:
            latest[s.scene] = s  # the newest result of a scene (a forced re-ingest) wins
    written = stac.write_results(list(latest.values()), Path(args.stac), settings)
    for path in written:
        print(path)
    print(f"{len(written)} STAC item(s) from {keys.scenes(settings.feed)} in {args.stac}", file=sys.stderr)
    return 0
