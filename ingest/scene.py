"""A scene from a file or an array to frames on the stream: read, tile, skip nodata, publish.

Every pixel of a scene is read (and every tile checked for nodata) before its first frame is
published: the frames must carry the scene's tile count, and a file that turns out unreadable
halfway leaves nothing on the stream. A scene whose tiles (about (tile / (tile - overlap))^2
times the bands read, 1.3x with 512/64) fit `ingest_memory_mb` is held between that pass and
publishing; a larger one is read twice. Either way memory is bounded by one row of tiles, not
by the file's layout: a file whose one read cannot fit is refused (InputError).
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis

from groundwatch import keys
from groundwatch.frames import Frame, FrameError, PixelWindow, TileGrid, check_scene_id
from groundwatch.geometry import grid, is_all_nodata, pad
from groundwatch.settings import Settings
from ingest import objectstore, publisher, quicklook
from ingest.errors import InputError
from ingest.rasters import open_raster

Progress = Callable[["SceneProgress"], None]


class Source(Protocol):
    """What a scene must offer to be tiled: a file (rasters.Raster) or an array (ArraySource)."""

    @property
    def width_px(self) -> int: ...
    @property
    def height_px(self) -> int: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def transform(self) -> tuple[float, float, float, float, float, float]: ...
    @property
    def crs(self) -> str: ...
    @property
    def nodata(self) -> float | None: ...
    @property
    def bands(self) -> tuple[int, ...]: ...
    @property
    def acquired(self) -> datetime: ...

    def read_rows(self, row_off_px: int, height_px: int) -> tuple[int, np.ndarray]: ...

    def working_set_bytes(self, rows_px: int) -> int:
        """Memory one read_rows of `rows_px` rows costs, beyond the tiles kept."""
        ...


@dataclass
class ArraySource:
    """A scene held in memory as a (C, H, W) or (H, W) array."""

    array: np.ndarray
    transform: tuple[float, float, float, float, float, float]
    crs: str
    nodata: float | None = None
    acquired: datetime = field(default_factory=lambda: datetime.now(UTC))
    bands: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[np.newaxis]
        if self.array.ndim != 3:
            raise InputError(f"a scene array must be (C, H, W) or (H, W), got shape {self.array.shape}")
        if not self.bands:
            self.bands = tuple(range(1, self.array.shape[0] + 1))

    @property
    def width_px(self) -> int:
        return int(self.array.shape[2])

    @property
    def height_px(self) -> int:
        return int(self.array.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.array.dtype

    def read_rows(self, row_off_px: int, height_px: int) -> tuple[int, np.ndarray]:
        return row_off_px, self.array[:, row_off_px : row_off_px + height_px, :]

    def working_set_bytes(self, rows_px: int) -> int:
        return 0  # a view of the array already held


@dataclass(frozen=True)
class SceneProgress:
    scene: str
    published: int  # frames of the scene on the stream so far
    tiles: int
    nbytes: int  # tile bytes published by this call so far


@dataclass(frozen=True)
class SceneResult:
    scene: str
    tiles: int  # frames the scene has on the stream
    skipped: int  # all-nodata tiles not published
    published: int  # frames this call added (0 for a duplicate)
    nbytes: int  # tile bytes this call added
    duplicate: bool  # the scene had been ingested before: nothing done
    seconds: float
    durability: publisher.Durability | None = None  # what the server confirmed before returning


_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def scene_id_for(path: str | os.PathLike[str]) -> str:
    """The scene id of a file: its name without extensions, other characters replaced by '_'."""
    name = Path(path).name
    stem = name.split(".", 1)[0] or name
    scene = _BAD.sub("_", stem)[:128]
    if not scene[:1].isalnum():
        scene = "s" + scene[:127]
    return check_scene_id(scene)


def parse_bands(text: str) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); '' -> None (all bands)."""
    if not text.strip():
        return None
    try:
        bands = tuple(int(p) for p in text.split(","))
    except ValueError as e:
        raise InputError(f"bands {text!r} must be comma-separated band numbers such as 4,3,2") from e
    if min(bands) < 1:
        raise InputError(f"bands {text!r}: band numbers start at 1")
    return bands


def iter_tiles(src: Source, tile_px: int, overlap_px: int) -> Iterator[tuple[PixelWindow, np.ndarray | None]]:
    """Every tile window of `src` with its pixels padded to tile_px, or None when all nodata.

    Reads one row of tiles at a time (Source.read_rows), and only the rows the previous read did
    not cover: the rows two rows of tiles share (the overlap, more for the last row, which is
    shifted back to the edge) are kept from the previous read, not read and decoded again. What
    is held stays one row of tiles: the kept rows plus the new ones.
    """
    row_off = -1
    parts: list[tuple[int, np.ndarray]] = []  # (first row, rows) covering the current row of tiles
    for w in grid(src.width_px, src.height_px, tile_px, overlap_px):
        if w.row_off != row_off:
            row_off, end = w.row_off, w.row_off + w.height
            kept = [
                (max(start, row_off), np.array(rows[:, max(0, row_off - start) : end - start]))
                for start, rows in parts
                if start < end and start + rows.shape[1] > row_off
            ]
            parts = []  # the previous read goes before the next one is made
            covered = max((start + rows.shape[1] for start, rows in kept), default=row_off)
            if covered < end:
                kept.append(src.read_rows(covered, end - covered))
            parts = kept
        part = _rows_of(parts, w)
        if part.shape[1:] != (w.height, w.width):
            raise InputError(
                f"read {part.shape[1:]} pixels for window {tuple(w)}; the source is inconsistent"
            )
        if is_all_nodata(part, src.nodata):
            yield w, None
        else:
            yield w, np.ascontiguousarray(pad(part, tile_px, src.nodata))


def _rows_of(parts: Sequence[tuple[int, np.ndarray]], w: PixelWindow) -> np.ndarray:
    """The pixels of window `w` from the pieces of rows read (a view when one piece holds it)."""
    r0, r1, c0, c1 = w.row_off, w.row_off + w.height, w.col_off, w.col_off + w.width
    pieces = [
        rows[:, max(0, r0 - start) : r1 - start, c0:c1]
        for start, rows in parts
        if start < r1 and start + rows.shape[1] > r0
    ]
    if not pieces:
        return np.empty((0, 0, 0))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)


def cut_tiles(src: Source, tile_px: int, overlap_px: int) -> tuple[list[tuple[PixelWindow, np.ndarray]], int]:
    """Every tile of `src` that is not entirely nodata (padded to tile_px), and the number skipped."""
    kept: list[tuple[PixelWindow, np.ndarray]] = []
    skipped = 0
    for w, arr in iter_tiles(src, tile_px, overlap_px):
        if arr is None:
            skipped += 1
        else:
            kept.append((w, arr))
    return kept, skipped


def scene_bytes(src: Source, tile_px: int, overlap_px: int) -> int:
    """Bytes of all tiles of a scene (an upper bound: before skipping nodata tiles)."""
    n = len(grid(src.width_px, src.height_px, tile_px, overlap_px))
    return n * len(src.bands) * tile_px * tile_px * src.dtype.itemsize


def ingest_scene(
    client: redis.Redis,
    settings: Settings,
    src: Source,
    scene: str,
    *,
    source: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
) -> SceneResult:
    """Publish one scene to `settings.feed`, exactly once (see ingest.publisher).

    Every pixel is read before the first frame goes out (the frames carry the tile count, and a
    bad file must leave nothing on the stream). Scenes whose tiles fit in
    `settings.ingest_memory_mb` (with one read's working set) are kept in memory between that
    pass and publishing; larger ones are read twice (once to count and check, once to publish),
    holding one row of tiles. A source whose single read does not fit the budget (one row of
    tiles plus one block as the file stores it) is refused with an InputError before any read.
    A lost connection (Redis restarting, a cluster failover, a moved slot) is retried with
    backoff for up to `publisher.RECONNECT_S`: the scene goes on from its resume point.
    """
    check_scene_id(scene)
    if force:
        _reconnecting(scene, lambda: publisher.forget_scene(client, settings.feed, scene))
    return _reconnecting(scene, lambda: _ingest_scene(client, settings, src, scene, source, on_progress))


def _reconnecting(scene: str, step: Callable[[], Any]) -> Any:
    backoff, deadline = 0.1, time.monotonic() + publisher.RECONNECT_S
    while True:
        try:
            return step()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if time.monotonic() > deadline:
                raise
            publisher.log.warning("scene %s: %s; trying again in %.1fs", scene, e, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


def _ingest_scene(
    client: redis.Redis,
    settings: Settings,
    src: Source,
    scene: str,
    source: str | None,
    on_progress: Progress | None,
) -> SceneResult:
    t0 = time.perf_counter()
    feed = settings.feed
    done = publisher.scene_done(client, feed, scene)
    if done is not None:
        client.hincrby(keys.stats(feed), "scenes_duplicate", 1)
        tiles, skipped = int(done.get("tiles", 0)), int(done.get("skipped", 0))
        # A retry after a DurabilityError lands here: wait for durability again before "done".
        durability = publisher.make_durable(client, feed)
        return SceneResult(scene, tiles, skipped, 0, 0, True, time.perf_counter() - t0, durability)
    size, overlap = settings.tile_size, settings.tile_overlap
    budget = int(settings.ingest_memory_mb * 1_000_000)
    working = src.working_set_bytes(size)
    if working > budget:
        raise InputError(_too_big_to_read(src, source or scene, size, working, settings))
    kept: Iterable[tuple[PixelWindow, np.ndarray]]
    if scene_bytes(src, size, overlap) + working <= budget:
        kept, skipped = cut_tiles(src, size, overlap)
        tiles = len(kept)
    else:  # two passes: count (and check every pixel is readable), then read again to publish
        tiles = skipped = 0
        digests: list[tuple[PixelWindow, int]] = []
        for w, arr in iter_tiles(src, size, overlap):
            if arr is None:
                skipped += 1
            else:
                tiles += 1
                digests.append((w, zlib.crc32(np.ascontiguousarray(arr).data)))
        kept = _same_as_first_read(
            ((w, a) for w, a in iter_tiles(src, size, overlap) if a is not None), digests, source or scene
        )
    publisher.register_feed(client, feed)
    if tiles == 0:
        publisher.mark_empty_scene(client, feed, scene, skipped, source)
        durability = publisher.make_durable(client, feed)
        return SceneResult(scene, 0, skipped, 0, 0, False, time.perf_counter() - t0, durability)

    def frame(i: int, w: PixelWindow, arr: np.ndarray) -> Frame:
        try:
            return Frame.from_array(
                arr,
                scene=scene,
                tile=i,
                tiles=tiles,
                window=w,
                transform=src.transform,
                crs=src.crs,
                acquired=src.acquired,
                published_ms=0,
                nodata=src.nodata,
                bands=src.bands,
                source=source,
                grid=TileGrid(src.width_px, src.height_px, size, overlap),
            )
        except FrameError as e:
            raise InputError(f"{source or scene}: cannot be made into frames: {e}") from e

    added = nbytes = sent = 0
    groups: Any = None  # the stream's consumer groups as the last batch read them (for trimming)
    batch_size = max(1, min(settings.publish_batch, settings.max_lag))
    batch: list[Frame] = []
    for i, (w, arr) in enumerate(kept):
        batch.append(frame(i, w, arr))
        if len(batch) < batch_size and i + 1 < tiles:
            continue
        result = publisher.publish_frames(
            client,
            feed,
            batch,
            skipped=skipped,
            source=source,
            progress_ttl_s=settings.progress_ttl_s,
            room=settings,
        )
        groups = result.groups if result.groups is not None else groups
        added += len(result.ids)
        nbytes += sum(len(f.data) for f in batch[len(batch) - len(result.ids) :])
        sent += len(batch)
        batch = []
        if on_progress is not None:
            on_progress(SceneProgress(scene, sent, tiles, nbytes))
        if result.complete:
            break
    if sent != tiles and not publisher.scene_done(client, feed, scene):
        raise InputError(
            f"{source or scene}: {sent} tiles on the second read, {tiles} on the first; "
            "the file changed while it was ingested"
        )
    # The scene is acknowledged (done/, success) only once its frames are durable.
    durability = publisher.make_durable(client, feed)
    publisher.trim_acknowledged(client, feed, groups)
    return SceneResult(scene, tiles, skipped, added, nbytes, added == 0, time.perf_counter() - t0, durability)


def _too_big_to_read(src: Source, what: str, tile_px: int, working: int, settings: Settings) -> str:
    layout = getattr(src, "layout", lambda: "its layout")()
    mb = -(-working // 1_000_000)
    return (
        f"{what}: reading one row of {tile_px}-pixel tiles of this {src.width_px} x {src.height_px} scene "
        f"({len(src.bands)} band(s) of {src.dtype}, stored as {layout}) needs about {mb} MB, more than "
        f"ingest_memory_mb={settings.ingest_memory_mb:g}. Raise it (--memory-mb / GROUNDWATCH_INGEST_MEMORY_MB "
        f">= {mb}), use a smaller --tile-size, or rewrite the file tiled: "
        "`gdal_translate -co TILED=YES -co COMPRESS=DEFLATE in.tif out.tif`"
    )


def _same_as_first_read(
    tiles: Iterable[tuple[PixelWindow, np.ndarray]], digests: list[tuple[PixelWindow, int]], what: str
) -> Iterator[tuple[PixelWindow, np.ndarray]]:
    """The second read's tiles, each checked against the first read before it can be published,
    so a file that changes in between stops the scene at the first changed tile."""
    for i, (w, arr) in enumerate(tiles):
        if i >= len(digests) or digests[i] != (w, zlib.crc32(np.ascontiguousarray(arr).data)):
            raise InputError(
                f"{what}: tile {i} differs between the two reads; the file changed while it was ingested"
            )
        yield w, arr


def ingest_file(
    client: redis.Redis,
    settings: Settings,
    path: str | os.PathLike[str],
    *,
    scene: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
    acquired: datetime | None = None,
    source: str | None = None,
) -> SceneResult:
    """Read, tile and publish one raster file or s3:// object; InputError (nothing published)
    when it is bad, ObjectStoreError when the store fails.

    acquired: the acquisition time to publish (a STAC item's datetime) instead of the file's.
    source: where the scene came from, carried by its frames and results (default: the file
    name, or the s3:// URL of an object).
    """
    modified = None
    if objectstore.is_s3(path):
        loc = objectstore.parse(str(path))
        if acquired is None:  # the object's time stands in for a file's mtime
            modified = objectstore.head(objectstore.client(settings), loc).modified
        location: str | Path = str(loc)
        name = loc.name
        gdal_env = objectstore.gdal_options(settings)
    else:
        location = Path(path)
        name = location.name
        gdal_env = None
    scene = scene or scene_id_for(name)
    bands = parse_bands(settings.ingest_bands)
    with open_raster(
        location,
        bands=bands,
        expect_bands=settings.expect_bands,
        memory_bytes=int(settings.ingest_memory_mb * 1_000_000),
        gdal_env=gdal_env,
        modified=modified,
    ) as raster:
        if acquired is not None:
            raster.acquired = acquired.astimezone(UTC) if acquired.tzinfo else acquired.replace(tzinfo=UTC)
        if source is None:
            source = str(location) if isinstance(location, str) else name
        result = ingest_scene(
            client, settings, raster, scene, source=source, force=force, on_progress=on_progress
        )
        if not result.duplicate:
            quicklook.publish(client, settings.feed, scene, raster, settings.scene_ttl_s)
        return result


def publish_array(
    client: redis.Redis,
    settings: Settings,
    array: np.ndarray,
    transform: Sequence[float],
    crs: str,
    *,
    scene: str | None = None,
    acquired: datetime | None = None,
    nodata: float | None = None,
    bands: Sequence[int] | None = None,
    force: bool = False,
) -> SceneResult:
    """Tile and publish a whole scene held in memory (the array counterpart of ingest_file) to
    settings.feed."""
    arr = np.asarray(array)
    t = tuple(float(x) for x in tuple(transform)[:6])
    src = ArraySource(arr, t, crs, nodata, acquired or datetime.now(UTC), tuple(bands or ()))  # type: ignore[arg-type]
    scene = scene or publisher.content_scene_id(src.array, t, crs)
    return ingest_scene(client, settings, src, scene, force=force)
