"""Writing frames to a feed's stream: idempotency, backpressure, retention.

- :func:`publish_frames` writes consecutive frames of one scene in one MULTI/EXEC that also
  records the scene's resume point (``keys.scene_progress``), under WATCH of that point and of
  the scene's marker (``keys.scene_ingested``): every tile of a scene goes on the stream exactly
  once, even across crashes and concurrent producers; the batch with the last tile sets the
  marker and deletes the resume point.
- :func:`wait_for_room` is backpressure: it waits (bounded) while consumers are behind.
- :func:`trim_acknowledged` is retention: XTRIM MINID to the oldest entry any group still needs.
- :func:`make_durable` is the acknowledgement: before a scene counts as ingested, what was
  written is confirmed durable as far as the server can say (WAITAOF, WAIT, or its AOF policy).
- :func:`publish_tile` is the Python API for feeds that already hold arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

from groundwatch import connection, frames, keys
from groundwatch.frames import Frame, PixelWindow
from groundwatch.settings import Settings
from ingest.errors import BackpressureError, DurabilityError, IngestError, InputError

log = logging.getLogger(__name__)
RECONNECT_S = 60.0  # a producer retries a batch this long while Redis restarts or a cluster fails over


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _s(entry_id).partition("-")
    return int(ms), int(seq or 0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- backpressure --------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """How far one consumer group (or, with group None, the stream without any group) is behind."""

    group: str | None
    lag: int  # entries not yet delivered to the group
    pending: int  # delivered, not acknowledged


def backlog(
    client: redis.Redis, feed: str, limit: int | None = None, read: tuple[Any, Any] | None = None
) -> list[Backlog]:
    """Per consumer group of the feed's stream: lag and pending. With no group: the stream's length.

    Redis 7 reports `lag`; where it cannot (after deletions), the undelivered entries are counted
    with XRANGE, stopping at `limit` + 1. `read`: the replies of XINFO GROUPS and XLEN of the
    stream when the caller has them already (an error reply: there is no stream yet).
    """
    stream = keys.frames(feed)
    if read is None:
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no such key: nothing published yet
            return [Backlog(None, 0, 0)]
        length = None
    else:
        groups, length = read
        if isinstance(groups, redis.ResponseError):
            return [Backlog(None, 0, 0)]
    if not groups:
        return [Backlog(None, int(client.xlen(stream) if length is None else length), 0)]
    out = []
    for g in groups:
        lag = g.get("lag")
        if lag is None:
            count = None if limit is None else limit + 1
            lag = len(client.xrange(stream, min="(" + _s(g["last-delivered-id"]), max="+", count=count))
        out.append(Backlog(_s(g["name"]), int(lag), int(g["pending"])))
    return out


def wait_for_room(
    client: redis.Redis,
    settings: Settings,
    feed: str | None = None,
    *,
    poll_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    first: list[Backlog] | None = None,
) -> float:
    """Return once every group's lag and pending are below `settings.max_lag`.

    Waits at most `settings.backpressure_timeout_s`, then raises BackpressureError naming the
    group that is behind. Returns the seconds waited. `first`: the backlog as just read (saves
    reading it again).
    """
    feed = feed or settings.feed
    limit = settings.max_lag
    start = clock()
    waited = False
    while True:
        try:
            found, first = (first, None) if first is not None else (backlog(client, feed, limit), None)
            behind = [b for b in found if b.lag >= limit or b.pending >= limit]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            # a failover or a moved slot: ask again (within the same time limit)
            if clock() - start >= max(settings.backpressure_timeout_s, RECONNECT_S):
                raise
            log.warning("feed %s: checking the backlog: %s; retrying", feed, e)
            sleep(poll_s)
            continue
        if not behind:
            return clock() - start
        if not waited:
            waited = True
            client.hincrby(keys.stats(feed), "backpressure_waits", 1)
            log.info("feed %s: consumers are behind (%s); waiting", feed, _describe(behind))
        elapsed = clock() - start
        if elapsed >= settings.backpressure_timeout_s:
            raise BackpressureError(_backpressure_message(feed, behind, settings, elapsed))
        sleep(min(poll_s, max(0.0, settings.backpressure_timeout_s - elapsed)))


def _describe(behind: list[Backlog]) -> str:
    return "; ".join(
        f"no consumer group yet, {b.lag} frames queued"
        if b.group is None
        else f"group {b.group!r}: lag {b.lag}, pending {b.pending}"
        for b in behind
    )


def _backpressure_message(feed: str, behind: list[Backlog], settings: Settings, elapsed: float) -> str:
    stream = keys.frames(feed)
    fixes = "start (more) consumers for the feed"
    named = [b.group for b in behind if b.group is not None]
    if named:
        fixes += f", or remove an abandoned group with `XGROUP DESTROY {stream} {named[0]}`"
    return (
        f"feed {feed!r}: consumers are behind ({_describe(behind)}; limit max_lag={settings.max_lag}) and "
        f"did not catch up within {elapsed:.1f}s, so nothing more was published. To fix: {fixes}; "
        f"or raise GROUNDWATCH_MAX_LAG / GROUNDWATCH_BACKPRESSURE_TIMEOUT_S (--max-lag, "
        f"--backpressure-timeout-s). Already published frames stay; ingest again to continue."
    )


# --- retention -----------------------------------------------------------------------------


def trim_acknowledged(client: redis.Redis, feed: str, groups: Sequence[Any] | None = None) -> int:
    """XTRIM MINID to the oldest entry any consumer group still needs; returns entries removed.

    A group needs its oldest pending entry, or (nothing pending) everything after its
    last-delivered-id. With no group, nothing is trimmed: nobody has acknowledged anything.
    `groups`: the stream's XINFO GROUPS as read a moment ago (groups only move forward, so an
    earlier reading trims less, never more).
    """
    stream = keys.frames(feed)
    if groups is None or isinstance(groups, redis.ResponseError):
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:
            return 0
    if not groups:
        return 0
    busy = [g for g in groups if int(g["pending"]) > 0]
    summaries: dict[str, Any] = {}
    if busy:
        pipe = client.pipeline(transaction=False)
        for g in busy:
            pipe.xpending(stream, g["name"])
        summaries = {_s(g["name"]): v for g, v in zip(busy, pipe.execute(), strict=True)}
    needed: list[tuple[int, int]] = []
    for g in groups:
        summary = summaries.get(_s(g["name"]))
        if summary and summary["min"] is not None:
            needed.append(_id(summary["min"]))
        else:  # nothing pending (by now: a consumer may have acknowledged in between)
            ms, seq = _id(g["last-delivered-id"])
            needed.append((ms, seq + 1))
    ms, seq = min(needed)
    removed = int(client.xtrim(stream, minid=f"{ms}-{seq}", approximate=False))
    if removed:
        client.hincrby(keys.stats(feed), "frames_trimmed", removed)
    return removed


# --- durability ----------------------------------------------------------------------------

DURABLE_TIMEOUT_MS = 10_000  # how long replicas / the AOF fsync may take to confirm a scene


@dataclass(frozen=True)
class Durability:
    """How durable the writes acknowledged so far are, as the server could confirm it."""

    method: str  # "waitaof", "wait", "fsync-always", "aof-everysec", "none"
    durable: bool  # survives a crash of the server's machine (AOF fsynced, or on replicas)
    detail: str  # in words, for the operator


_warned: set[str] = set()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def _appendfsync(client: redis.Redis) -> str | None:
    """CONFIG GET appendfsync, or None where CONFIG is not allowed (an ACL without @admin)."""
    try:
        reply = client.config_get("appendfsync")
    except redis.ResponseError:
        return None
    value = reply.get("appendfsync", reply.get(b"appendfsync"))
    return None if value is None else _s(value)


def _wait(client: redis.Redis, feed: str, *command: Any) -> Any:
    """`command` (WAIT / WAITAOF) on the connection of a write just made: both wait for the
    calling connection's last write, which then covers every write the server made before it."""
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.stats(feed), "durability_waits", 1)
    pipe.execute_command(*command)
    return pipe.execute()[1]


def make_durable(client: redis.Redis, feed: str, timeout_ms: int | None = None) -> Durability:
    """Wait until this connection's writes so far are durable, as far as the server offers.

    Redis >= 7.2: ``WAITAOF numlocal numreplicas`` (fsynced to the local AOF when appendonly is
    on, and to every connected replica's). Older servers: ``WAIT`` for the connected replicas,
    and the AOF policy read from the server: ``appendfsync always`` fsyncs before replying;
    ``everysec`` leaves up to about a second that a power cut (or, rarely, a crash while an
    fsync is slow) can lose; no AOF and no replica: nothing is on disk until the next snapshot.
    Raises DurabilityError when replicas or the AOF do not confirm within `timeout_ms`
    (default DURABLE_TIMEOUT_MS).
    """
    timeout_ms = DURABLE_TIMEOUT_MS if timeout_ms is None else timeout_ms
    server = client.info("server", "replication", "persistence")  # one INFO, three sections
    replicas = int(server.get("connected_slaves", 0))
    aof = bool(int(server.get("aof_enabled", 0)))
    if _version(_s(server.get("redis_version", "0"))) >= (7, 2) and (aof or replicas):
        local, remote = (int(n) for n in _wait(client, feed, "WAITAOF", int(aof), replicas, timeout_ms))
        if local < int(aof) or remote < replicas:
            raise DurabilityError(
                f"WAITAOF: fsynced locally {local}/{int(aof)}, on replicas {remote}/{replicas} within "
                f"{timeout_ms} ms; the frames are on the stream but not yet durable. Check the replicas "
                "(INFO replication) and the disk; the file is ingested again (a no-op) and waited for later"
            )
        where = " and ".join(
            w for w in ("the local AOF" if aof else "", f"{replicas} replica(s)" if replicas else "") if w
        )
        return _report(Durability("waitaof", True, f"fsynced to {where} (WAITAOF)"))
    parts: list[str] = []
    method, durable = "none", False
    if replicas:
        acked = int(_wait(client, feed, "WAIT", replicas, timeout_ms))
        if acked < replicas:
            raise DurabilityError(
                f"WAIT: {acked} of {replicas} replica(s) acknowledged the frames within {timeout_ms} ms; "
                "they are on the stream but not yet replicated. Check the replicas (INFO replication); "
                "the file is ingested again (a no-op) and waited for later"
            )
        parts.append(f"on {acked} replica(s) (WAIT)")
        method, durable = "wait", True
    fsync = _appendfsync(client) if aof else None
    if aof and fsync == "always":
        parts.append("fsynced to the AOF before each reply (appendfsync always)")
        method, durable = ("wait" if replicas else "fsync-always"), True
    elif aof:
        parts.append(
            f"in the AOF, fsynced about every second (appendfsync {fsync or 'unknown'}): a power cut can lose "
            "the last second; for a durable acknowledgement use appendfsync always, a replica, or Redis >= 7.2 "
            "(WAITAOF)"
        )
        method = method if replicas else "aof-everysec"
    elif not replicas:
        parts.append(
            "in memory only (appendonly no, no replica): a crash loses what the last snapshot does not hold; "
            "enable appendonly (groundwatch up does) or add a replica"
        )
    return _report(Durability(method, durable, "; ".join(parts)))


def _report(d: Durability) -> Durability:
    if not d.durable and d.detail not in _warned:
        _warned.add(d.detail)
        log.warning("acknowledged frames are not durable: %s", d.detail)
    return d


# --- publishing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    ids: list[str]  # stream entry ids of the frames this call added
    complete: bool  # the scene's marker is set (by this call or before)
    duplicate: bool  # nothing added: the scene (or these tiles) had been published before
    groups: Any = None  # the stream's XINFO GROUPS as read before the batch (with `room`), for trimming


def scene_done(client: redis.Redis, feed: str, scene: str) -> dict[str, Any] | None:
    """The scene's ingest marker (decoded), or None when it was not completely published."""
    raw = client.get(keys.scene_ingested(feed, scene))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = {"value": _s(raw)}
    return value if isinstance(value, dict) else {"value": value}


def publish_frames(
    client: redis.Redis,
    feed: str,
    batch: Sequence[Frame],
    *,
    skipped: int = 0,
    source: str | None = None,
    progress_ttl_s: int,
    room: Settings | None = None,
) -> BatchResult:
    """Publish consecutive tiles of one scene atomically, exactly once.

    `batch` holds tiles i..j of one scene (all with the same `tiles`). Tiles the scene's resume
    point says are already on the stream are left out; a gap (tile i when only tiles below k < i
    are published) is an error. The batch that ends with the scene's last tile sets the marker.
    `skipped` (all-nodata tiles) is recorded with the marker. `room`: apply backpressure first
    (:func:`wait_for_room` with these settings; the backlog is read in the same round trip as
    the scene's state, so a batch costs two round trips: the reads under WATCH, and the EXEC).
    """
    if not batch:
        raise ValueError("empty batch")
    scene, tiles = batch[0].scene, batch[0].tiles
    for k, f in enumerate(batch):
        if f.scene != scene or f.tiles != tiles or f.tile != batch[0].tile + k:
            raise ValueError("a batch holds consecutive tiles of one scene")
    stream = keys.frames(feed)
    marker, progress, stats = (
        keys.scene_ingested(feed, scene),
        keys.scene_progress(feed, scene),
        keys.stats(feed),
    )
    backoff = 0.1
    reconnect_until = time.monotonic() + RECONNECT_S
    while True:
        with client.pipeline(transaction=True) as pipe:
            try:
                # Progress first, then the marker: the last batch sets the marker and deletes the
                # progress in one transaction, so in this order a finished scene is never mistaken
                # for one with nothing published.
                reads: list[Any] = [("HGETALL", progress), ("EXISTS", marker)]
                if room is not None:
                    reads += [("XINFO GROUPS", stream), ("XLEN", stream)]
                got = connection.watch_and_read(pipe, [marker, progress], *reads, raise_errors=False)
                for reply in got[:2]:
                    if isinstance(reply, redis.ResponseError):
                        raise reply
                state = {_s(k): int(v) for k, v in got[0].items()}
                if got[1]:
                    return BatchResult([], complete=True, duplicate=True)
                groups = got[2] if room is not None else None
                if state and state.get("tiles") != tiles:
                    # An InputError: a drop folder moves the file to failed/ instead of retrying forever.
                    raise InputError(
                        f"scene {scene!r} of feed {feed!r} was partly published as {state.get('tiles')} tiles "
                        f"and now has {tiles}: the tiling (tile size, overlap, bands) changed in between. "
                        f"Ingest it with the settings used before, or start over with "
                        f"`groundwatch ingest FILE --feed {feed} --force`"
                    )
                published = state.get("published", 0)
                todo = [f for f in batch if f.tile >= published]
                if not todo:
                    return BatchResult([], complete=False, duplicate=True)
                if todo[0].tile != published:
                    raise IngestError(
                        f"scene {scene!r}: tile {todo[0].tile} cannot be published before tile {published}; "
                        "publish a scene's tiles in order 0..tiles-1"
                    )
                if room is not None:
                    found = backlog(client, feed, room.max_lag, (got[2], got[3]))
                    if any(b.lag >= room.max_lag or b.pending >= room.max_lag for b in found):
                        pipe.reset()  # consumers are behind: wait (unwatched), then look again
                        wait_for_room(client, room, feed, first=found)
                        continue
                end = todo[-1].tile + 1
                stamp = now_ms()
                pipe.multi()
                nbytes = 0
                for f in todo:
                    pipe.xadd(stream, frames.encode(replace(f, published_ms=stamp)))
                    nbytes += len(f.data)
                if end == tiles:
                    done = {"tiles": tiles, "skipped": skipped, "at": stamp, "source": source}
                    pipe.set(marker, json.dumps(done))
                    pipe.delete(progress)
                    pipe.hincrby(stats, "scenes_in", 1)
                    if skipped:
                        pipe.hincrby(stats, "tiles_skipped", skipped)
                else:
                    pipe.hset(progress, mapping={"tiles": tiles, "published": end})
                    pipe.expire(progress, progress_ttl_s)
                pipe.hincrby(stats, "frames_in", len(todo))
                pipe.hincrby(stats, "bytes_in", nbytes)
                replies = pipe.execute()
                # On a cluster, not acknowledged (returned) before a replica has it: a failover
                # keeps it. Should the master die first, the retry finds what made it.
                connection.wait_for_replica(client, stats)
            except redis.WatchError:
                continue  # another producer moved the scene on: look again
            except connection.SlotMigrating:
                # the feed's slot is half-moved (a reshard): the batch cannot be redirected; it
                # is tried again as it is (paced by SlotMigrating) until the slot has moved
                if time.monotonic() > reconnect_until:
                    raise
                continue
            except (redis.ConnectionError, redis.TimeoutError) as e:
                # Redis restarted, a cluster failover or a moved slot: the resume point says
                # what made it, so trying the batch again never publishes a tile twice.
                if time.monotonic() > reconnect_until:
                    raise
                log.warning("feed %s: publishing scene %s: %s; retrying in %.1fs", feed, scene, e, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
        return BatchResult(
            [_s(i) for i in replies[: len(todo)]], complete=end == tiles, duplicate=False, groups=groups
        )


def mark_empty_scene(client: redis.Redis, feed: str, scene: str, skipped: int, source: str | None) -> bool:
    """A scene whose every tile is nodata: nothing to publish; set its marker. False if already set."""
    done = {"tiles": 0, "skipped": skipped, "at": now_ms(), "source": source}
    if not client.set(keys.scene_ingested(feed, scene), json.dumps(done), nx=True):
        return False
    client.hincrby(keys.stats(feed), "scenes_in", 1)
    client.hincrby(keys.stats(feed), "tiles_skipped", skipped)
    return True


def forget_scene(client: redis.Redis, feed: str, scene: str) -> None:
    """Drop a scene's marker and resume point, so it is published again (`--force`), and the
    consumers' per-frame markers and gathered tiles, so its frames are detected again rather
    than acknowledged as already done."""
    doomed = [
        keys.scene_ingested(feed, scene),
        keys.scene_progress(feed, scene),
        keys.scene_tiles(feed, scene),
        keys.scene_result(feed, scene),
    ]
    doomed += client.scan_iter(match=keys.frame_done_pattern(feed, scene), count=1000)
    client.delete(*doomed)


def register_feed(client: redis.Redis, feed: str, *, once: bool = False) -> None:
    """SADD the feed to keys.feeds(). `once`: skip it when this client registered the feed
    before (publish_tile calls it for every tile)."""
    pool = client.connection_pool
    done: set[str] = pool.__dict__.setdefault("_gw_feeds_registered", set())
    if once and feed in done:
        return
    connection.on_slot(client, keys.feeds()).sadd(keys.feeds(), feed)
    done.add(feed)


# --- arrays --------------------------------------------------------------------------------


def content_scene_id(array: np.ndarray, transform: Sequence[float], crs: str) -> str:
    """A deterministic scene id from the array's bytes and georeference (same tile -> same id)."""
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}{tuple(float(x) for x in transform)[:6]}{crs}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return "a-" + h.hexdigest()[:32]


def publish_tile(
    client: redis.Redis,
    settings: Settings,
    array: np.ndarray,
    transform: Sequence[float],
    crs: str,
    *,
    scene: str | None = None,
    tile: int = 0,
    tiles: int = 1,
    window: PixelWindow | tuple[int, int, int, int] | None = None,
    acquired: datetime | None = None,
    nodata: float | None = None,
    bands: Sequence[int] | None = None,
    source: str | None = None,
    wait: bool = True,
) -> str | None:
    """Publish one tile held in memory; returns its stream entry id, or None if already published.

    array: (C, H, W) or (H, W), any engine dtype, published as is. transform: the SCENE's affine
    transform (affine order a, b, c, d, e, f, or an `affine.Affine`); crs: "EPSG:<code>" or WKT.
    window: where the array's valid part lies in the scene, in pixels (default: the array is the
    scene, (0, 0, W, H)). scene: the scene id (default: derived from the content, so publishing
    the same array twice is a no-op). A scene of several tiles is published by calling this for
    tile = 0 .. tiles-1 in order; the scene is marked ingested with its last tile. wait: apply
    backpressure first (settings.max_lag / backpressure_timeout_s). The feed is settings.feed.
    """
    feed = keys.check_name("feed", settings.feed)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if scene is None:
        scene = content_scene_id(arr, tuple(transform), crs)
    if window is None:
        window = PixelWindow(0, 0, int(arr.shape[-1]), int(arr.shape[-2]))
    frame = Frame.from_array(
        arr,
        scene=scene,
        tile=tile,
        tiles=tiles,
        window=window,
        transform=transform,
        crs=crs,
        acquired=acquired or datetime.now(UTC),
        published_ms=now_ms(),
        nodata=nodata,
        bands=None if bands is None else tuple(bands),
        source=source,
    )
    register_feed(client, feed, once=True)
    # The marker (a scene published before) and the backlog are read with the scene's state, in
    # one round trip; then the EXEC, and trimming once the scene is complete.
    result = publish_frames(
        client,
        feed,
        [frame],
        source=source,
        progress_ttl_s=settings.progress_ttl_s,
        room=settings if wait else None,
    )
    if result.complete and not result.duplicate:
        trim_acknowledged(client, feed, result.groups)
    return result.ids[0] if result.ids else None
