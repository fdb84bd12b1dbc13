"""The commit transaction: a batch's results, dead letters and XACK in one MULTI/EXEC.

A frame's result is published in the same MULTI/EXEC that acknowledges it and sets its marker
``keys.frame_done(feed, frame)`` (one per frame, whatever the model version: the first version
to commit wins, a later one's result is only acknowledged and counted); the transaction runs
under WATCH of those markers, of the dead-letter markers and of the scenes' tile hashes and
result keys, so two consumers racing on the same frame (a reclaimed entry whose first consumer
was only slow, maybe with another model version) or on the last two tiles of a scene cannot both
publish: one EXEC aborts and the retry sees the other's work.

One attempt, in order: read which markers are set (idempotency), find the scenes this batch
completes (:mod:`consumers.scenes`), then in MULTI: publish the tiles, publish the scenes, write
the dead letters, XACK, count.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from consumers import scenes
from consumers.reading import Entry, text
from groundwatch import keys
from groundwatch.detections import SceneResult, TileResult, encode_scene, encode_tile, scene_json, tile_json
from groundwatch.status import THROUGHPUT_SAMPLES

log = logging.getLogger("groundwatch.consumers")

LATENCY_SAMPLES = 1000  # recent latencies kept in keys.latency
RESULTS_MAXLEN = 100_000  # approximate cap of the detections and scenes streams


@dataclass
class Outcome:
    """What one committed batch did."""

    fresh: list[tuple[Entry, TileResult]] = field(default_factory=list)
    duplicates: list[Entry] = field(default_factory=list)
    dead: list[tuple[Entry, str]] = field(default_factory=list)  # dead letters written now
    scenes: list[SceneResult] = field(default_factory=list)
    detections: int = 0
    conflicts: int = 0  # WATCH conflicts (attempts retried)
    superseded: int = 0  # duplicates whose result came from another model version than the first


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
    ) -> None:
        self.r = client
        self.feed = feed
        self.stream = keys.frames(feed)
        self.group = group
        self.name = name
        self.ttl_s = ttl_s
        self.clock_ms = clock_ms

    def commit(
        self,
        results: Sequence[tuple[Entry, TileResult]],
        dead: Sequence[tuple[Entry, str]],
        deleted: Sequence[str],
    ) -> Outcome:
        """Publish, dead-letter and XACK the batch in one MULTI/EXEC (under WATCH; retried on conflict)."""
        conflicts = 0
        for attempt in itertools.count():
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    outcome = self._attempt(pipe, results, dead, deleted)
                except redis.WatchError:
                    conflicts += 1
                    if attempt and attempt % 50 == 0:
                        log.warning(
                            "consumer %s: %d WATCH conflicts publishing one batch", self.name, attempt
                        )
                    continue
            outcome.conflicts = conflicts
            return outcome
        raise AssertionError("unreachable")

    def _attempt(
        self,
        pipe: Any,
        results: Sequence[tuple[Entry, TileResult]],
        dead: Sequence[tuple[Entry, str]],
        deleted: Sequence[str],
    ) -> Outcome:
        feed = self.feed
        markers = [keys.frame_done(feed, r.frame) for _, r in results]
        dead_markers = [keys.dead_marker(feed, e.id) for e, _ in dead]
        scene_names = sorted({r.scene for _, r in results})
        watched = [
            *markers,
            *dead_markers,
            *(keys.scene_tiles(feed, s) for s in scene_names),
            *(keys.scene_result(feed, s) for s in scene_names),
        ]
        if watched:
            pipe.watch(*watched)
        already = _set_markers(pipe, markers + dead_markers)
        out = Outcome()
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
        out.scenes = scenes.completions(pipe, feed, [r for _, r in out.fresh], now)

        pipe.multi()
        out.detections = self._publish_tiles(pipe, out.fresh, now)
        self._publish_scenes(pipe, out.scenes)
        self._dead_letters(pipe, out.dead, now)
        ids = [e.id for e, _ in results] + [e.id for e, _ in dead] + list(deleted)
        if ids:
            pipe.xack(self.stream, self.group, *ids)
            pipe.hdel(keys.attempts(feed), *ids, *(f"{i}:error" for i in ids))
        self._count(pipe, out, len(deleted), now)
        pipe.execute()
        return out

    def _publish_tiles(self, pipe: Any, fresh: Sequence[tuple[Entry, TileResult]], now: int) -> int:
        """Each tile result: its marker, the detections stream and channel, the scene's tile hash."""
        feed, ttl = self.feed, self.ttl_s
        detections = 0
        for e, r in fresh:
            doc = tile_json(r)
            pipe.set(keys.frame_done(feed, r.frame), f"{r.model} {e.id}", ex=ttl)
            pipe.xadd(keys.detections(feed), encode_tile(r, doc), maxlen=RESULTS_MAXLEN, approximate=True)
            pipe.publish(keys.detections(feed), doc)
            pipe.hset(keys.scene_tiles(feed, r.scene), str(r.tile), doc)
            pipe.expire(keys.scene_tiles(feed, r.scene), ttl)
            pipe.lpush(keys.latency(feed), max(0, now - r.published_ms))
            detections += len(r.detections)
        return detections

    def _publish_scenes(self, pipe: Any, completed: Sequence[SceneResult]) -> None:
        """Each completed scene: its result key, the scenes stream and channel; its tile hash goes."""
        feed = self.feed
        for s in completed:
            doc = scene_json(s)
            pipe.set(keys.scene_result(feed, s.scene), doc, ex=self.ttl_s)
            pipe.xadd(keys.scenes(feed), encode_scene(s, doc), maxlen=RESULTS_MAXLEN, approximate=True)
            pipe.publish(keys.scenes(feed), doc)
            pipe.delete(keys.scene_tiles(feed, s.scene))

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
            ("dead", len(out.dead)),
            ("scenes_done", len(out.scenes)),
            ("duplicates", len(out.duplicates)),
            ("superseded", out.superseded),
            ("deleted", deleted),
        ):
            if n:
                pipe.hincrby(stats, name, n)
        if out.fresh:
            pipe.ltrim(keys.latency(self.feed), 0, LATENCY_SAMPLES - 1)
            pipe.lpush(keys.throughput(self.feed), f"{now} {len(out.fresh)}")
            pipe.ltrim(keys.throughput(self.feed), 0, THROUGHPUT_SAMPLES - 1)


def _set_markers(pipe: Any, markers: Sequence[str]) -> dict[str, str]:
    """The markers that are set, with their values (read under WATCH: idempotency of results and
    dead letters)."""
    if not markers:
        return {}
    flags = pipe.mget(list(markers))
    return {k: text(v) for k, v in zip(markers, flags, strict=True) if v is not None}
