"""The commit: a batch's results, dead letters and XACKs, without WATCHing any scene-wide key.

A frame's result is published in one MULTI/EXEC that also sets its marker
``keys.frame_done(feed, frame)`` (one per frame, whatever the model version: the first version
to commit wins, a later one's result is only acknowledged and counted). That transaction runs
under WATCH of the batch's own markers (and dead-letter markers) only, so it conflicts only
with another consumer committing the very same frame (a reclaimed entry whose first consumer
was only slow); consumers committing other tiles of the same scene never make it abort.

Scene completion needs no WATCH either: the same transaction HSETs the batch's tiles into the
scene's tile hash and then reads its HLEN, atomically, so of two batches racing on a scene's
last tiles exactly one EXEC sees every tile there. That consumer merges the scene and publishes
its result in a second transaction (under WATCH of the scene's result key and tile hash, so a
recovering consumer and it cannot both publish), which also acknowledges the scene's frames of
the batch; the batch's other result frames are acknowledged right after the first EXEC. Until
a frame is acknowledged it stays pending: a consumer that dies between the two finds, when the
frame comes back, its marker set (a duplicate, only acknowledged) and its scene complete
without a result, and publishes that scene then. Dead letters and deleted entries are
acknowledged in the first transaction.

Round trips per batch: WATCH and MGET of the markers (one), the MULTI/EXEC (one), the XACK of
the result frames (one, or the scene's transaction: two).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import redis

from consumers import scenes
from consumers.reading import Entry, text
from groundwatch import connection, keys
from groundwatch.detections import (
    SceneResult,
    TileResult,
    class_totals,
    encode_scene,
    encode_tile,
    scene_json,
    tile_json,
)
from groundwatch.status import THROUGHPUT_SAMPLES, class_counter

log = logging.getLogger("groundwatch.consumers")

LATENCY_SAMPLES = 1000  # recent latencies kept in keys.latency


@dataclass
class Outcome:
    """What one committed batch did."""

    fresh: list[tuple[Entry, TileResult]] = field(default_factory=list)
    duplicates: list[Entry] = field(default_factory=list)
    dead: list[tuple[Entry, str]] = field(default_factory=list)  # dead letters written now
    scenes: list[SceneResult] = field(default_factory=list)
    detections: int = 0
    regions: int = 0  # region pieces published per tile (a segmentation model's; before the scene merge)
    conflicts: int = 0  # WATCH conflicts (attempts retried)
    superseded: int = 0  # duplicates whose result came from another model version than the first


def class_counts(scene: SceneResult) -> dict[str, int]:
    """The per-class counters a completed scene adds (groundwatch.status.class_counter): its
    class_totals, areas in whole square metres (HINCRBY, as every other counter)."""
    return {
        class_counter(measure, label): round(value)
        for label, totals in class_totals(scene).items()
        for measure, value in totals.items()
        if round(value)
    }


class Committer:
    """Commits batches of one consumer (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        feed: str,
        group: str,
        name: str,
        *,
        ttl_s: int,
        clock_ms: Callable[[], int],
        results_maxlen: int,
    ) -> None:
        self.r = client
        self.feed = feed
        self.stream = keys.frames(feed)
        self.group = group
        self.name = name
        self.ttl_s = ttl_s
        self.results_maxlen = results_maxlen
        self.clock_ms = clock_ms

    def commit(
        self,
        results: Sequence[tuple[Entry, TileResult]],
        dead: Sequence[tuple[Entry, str]],
        deleted: Sequence[str],
    ) -> Outcome:
        """Publish and dead-letter the batch, publish the scenes it completes, XACK it all."""
        (out, complete), _ = self._retrying(
            lambda pipe, conflicts: self._attempt(pipe, results, dead, deleted, conflicts)
        )
        tiles: dict[str, dict[int, TileResult]] = {}
        for _, r in out.fresh:
            tiles.setdefault(r.scene, {})[r.tile] = r
        acked: set[str] = set()
        for scene, count in complete:
            ids = [e.id for e, r in results if r.scene == scene]
            published, conflicts = self._retrying(
                partial(self._publish_scene, scene=scene, count=count, ours=tiles.get(scene, {}), ids=ids)
            )
            out.conflicts += conflicts
            acked.update(ids)
            if published is not None:
                out.scenes.append(published)
        rest = [e.id for e, _ in results if e.id not in acked]
        if rest:
            with self.r.pipeline(transaction=False) as pipe:
                self._ack(pipe, rest)
                pipe.execute()
        return out

    def _retrying(self, attempt: Callable[[Any, int], Any]) -> Any:
        """attempt(pipe, conflicts so far) until no WATCH conflict; (its value, conflicts)."""
        conflicts = 0
        migrating_since: float | None = None
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    value = attempt(pipe, conflicts)
                except (redis.WatchError, connection.SlotMigrating) as e:
                    # redis-py reports a SlotMigrating raised while WATCHing as a WatchError
                    if isinstance(e, connection.SlotMigrating) or isinstance(
                        e.__context__, connection.SlotMigrating
                    ):
                        # The feed's slot is half-moved (a reshard): the commit creates keys, so
                        # no node takes it until the slot has moved. The batch waits here (paced
                        # by SlotMigrating), not read and run again (which would charge its frames
                        # another attempt).
                        migrating_since = migrating_since or time.monotonic()
                        if time.monotonic() - migrating_since > connection.MIGRATION_WAIT_S:
                            raise
                        continue
                    if conflicts and conflicts % 50 == 0:
                        log.warning(
                            "consumer %s: %d WATCH conflicts publishing one batch", self.name, conflicts
                        )
                    conflicts += 1
                    continue
            return value, conflicts
        raise AssertionError("unreachable")

    def _ack(self, pipe: Any, ids: Sequence[str]) -> None:
        pipe.xack(self.stream, self.group, *ids)
        pipe.hdel(keys.attempts(self.feed), *ids, *(f"{i}:error" for i in ids))

    def _attempt(
        self,
        pipe: Any,
        results: Sequence[tuple[Entry, TileResult]],
        dead: Sequence[tuple[Entry, str]],
        deleted: Sequence[str],
        conflicts: int,
    ) -> tuple[Outcome, list[tuple[str, int]]]:
        """The batch's transaction; returns its outcome and the scenes found complete without a
        result (with their tile counts)."""
        feed = self.feed
        markers = [keys.frame_done(feed, r.frame) for _, r in results]
        dead_markers = [keys.dead_marker(feed, e.id) for e, _ in dead]
        watched = markers + dead_markers
        flags = connection.watch_and_read(pipe, watched, ("MGET", *watched)) if watched else [[]]
        already = {k: text(v) for k, v in zip(watched, flags[0], strict=True) if v is not None}
        out = Outcome(conflicts=conflicts)
        seen: dict[str, str] = {}
        now = self.clock_ms()
        for (e, r), marker in zip(results, markers, strict=True):
            first = already.get(marker, seen.get(marker))
            if first is not None:
                out.duplicates.append(e)
                if first.split(" ", 1)[0] != r.model:
                    out.superseded += 1
            else:
                seen[marker] = r.model
                out.fresh.append((e, replace(r, done_ms=now)))
        out.dead = [(e, why) for (e, why), m in zip(dead, dead_markers, strict=True) if m not in already]
        # Every scene the batch touches, duplicates' too: a duplicate may be the redelivery of a
        # frame whose consumer died before publishing the scene it completed.
        counts: dict[str, int] = {}
        for _, r in results:
            counts[r.scene] = max(counts.get(r.scene, 0), r.tiles)

        pipe.multi()
        out.detections, out.regions = self._publish_tiles(pipe, out.fresh, now)
        self._dead_letters(pipe, out.dead, now)
        ids = [e.id for e, _ in dead] + list(deleted)
        if ids:
            self._ack(pipe, ids)
        self._count(pipe, out, len(deleted), now)
        for scene in counts:
            pipe.hlen(keys.scene_tiles(feed, scene))
            pipe.exists(keys.scene_result(feed, scene))
        replies = pipe.execute()
        tail = replies[len(replies) - 2 * len(counts) :] if counts else []
        complete = [
            (scene, n)
            for (scene, n), have, done in zip(counts.items(), tail[::2], tail[1::2], strict=True)
            if int(have) >= n and not int(done)
        ]
        return out, complete

    def _publish_scene(
        self,
        pipe: Any,
        conflicts: int,
        *,
        scene: str,
        count: int,
        ours: dict[int, TileResult],
        ids: Sequence[str],
    ) -> SceneResult | None:
        """The scene's result, once (under WATCH of its result key and tile hash), and the XACK of
        the batch's frames of it; None when another consumer published it first, or its tile hash
        does not hold every tile after all (a field someone wrote by hand)."""
        feed = self.feed
        result_key, tiles_key = keys.scene_result(feed, scene), keys.scene_tiles(feed, scene)
        exists, stored = connection.watch_and_read(
            pipe, [result_key, tiles_key], ("EXISTS", result_key), ("HGETALL", tiles_key)
        )
        made = None if int(exists) else scenes.complete(feed, scene, count, stored, ours, self.clock_ms())
        pipe.multi()
        if made is not None:
            doc = scene_json(made)
            pipe.set(result_key, doc, ex=self.ttl_s)
            pipe.xadd(
                keys.scenes(feed), encode_scene(made, doc), maxlen=self.results_maxlen, approximate=True
            )
            pipe.publish(keys.scenes(feed), doc)
            pipe.delete(tiles_key)
            pipe.hincrby(keys.stats(feed), "scenes_done", 1)
            for counter, n in class_counts(made).items():
                pipe.hincrby(keys.stats(feed), counter, n)
        if conflicts:
            pipe.hincrby(keys.stats(feed), "conflicts", conflicts)
        if ids:
            self._ack(pipe, ids)
        pipe.execute()
        return made

    def _publish_tiles(
        self, pipe: Any, fresh: Sequence[tuple[Entry, TileResult]], now: int
    ) -> tuple[int, int]:
        """Each tile result: its marker, the detections stream and channel, the scene's tile hash.
        Returns the detections and the region pieces published."""
        feed, ttl = self.feed, self.ttl_s
        detections = regions = 0
        by_scene: dict[str, dict[str, str]] = {}
        for e, r in fresh:
            doc = tile_json(r)
            pipe.set(keys.frame_done(feed, r.frame), f"{r.model} {e.id}", ex=ttl)
            pipe.xadd(
                keys.detections(feed), encode_tile(r, doc), maxlen=self.results_maxlen, approximate=True
            )
            pipe.publish(keys.detections(feed), doc)
            by_scene.setdefault(r.scene, {})[str(r.tile)] = doc
            detections += len(r.detections)
            regions += len(r.regions)
        for scene, docs in by_scene.items():
            pipe.hset(keys.scene_tiles(feed, scene), mapping=docs)
            pipe.expire(keys.scene_tiles(feed, scene), ttl)
        if fresh:
            pipe.lpush(keys.latency(feed), *(max(0, now - r.published_ms) for _, r in fresh))
        return detections, regions

    def _dead_letters(self, pipe: Any, dead: Sequence[tuple[Entry, str]], now: int) -> None:
        """Each dead frame: copied to the dead-letter stream with its reason, and its marker set."""
        for e, why in dead:
            assert e.fields is not None
            letter: dict[Any, Any] = {
                "dead_reason": why,
                "dead_id": e.id,
                "dead_consumer": self.name,
                "dead_deliveries": str(e.deliveries),
                "dead_attempts": str(e.attempts),
                "dead_ms": str(now),
            }
            if not e.stripped:
                letter.update({k: v for k, v in e.fields.items() if text(k) not in letter})
            pipe.xadd(keys.dead_letters(self.feed), letter)
            pipe.set(keys.dead_marker(self.feed, e.id), why, ex=self.ttl_s)

    def _count(self, pipe: Any, out: Outcome, deleted: int, now: int) -> None:
        """The feed-wide counters (keys.stats) and the latency / throughput samples."""
        stats = keys.stats(self.feed)
        for name, n in (
            ("frames_done", len(out.fresh)),
            ("detections", out.detections),
            ("regions", out.regions),
            ("dead", len(out.dead)),
            ("duplicates", len(out.duplicates)),
            ("superseded", out.superseded),
            ("deleted", deleted),
            ("conflicts", out.conflicts),
        ):
            if n:
                pipe.hincrby(stats, name, n)
        if out.fresh:
            pipe.ltrim(keys.latency(self.feed), 0, LATENCY_SAMPLES - 1)
            pipe.lpush(keys.throughput(self.feed), f"{now} {len(out.fresh)}")
            pipe.ltrim(keys.throughput(self.feed), 0, THROUGHPUT_SAMPLES - 1)
