"""Profiles of the tiles a consumer ran and of what the model said (groundwatch.profiles).

Cheap on the hot path: one tile in ``profile_every`` (chosen by a hash of the frame id, so the
choice does not depend on the pixels) of each committed batch is summarised in memory (NumPy over a systematic sample of each tile's
valid pixels, a dictionary of sketch buckets), and the sums are added to Redis at most every
``profile_flush_s`` with one pipeline of HINCRBY per (model version, window). Profiles are
statistics, not results: a consumer killed between two flushes loses at most that many seconds
of figures, never a frame; a frame redelivered after a crash may be counted twice.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import redis

from groundwatch import keys, profiles
from groundwatch.detections import TileResult

log = logging.getLogger(__name__)

KEEP_S = 7 * 24 * 3600  # profiles of a window are kept this long


class Profiler:
    def __init__(
        self,
        client: redis.Redis,
        feed: str,
        window_s: int,
        flush_s: float,
        clock: Callable[[], float] = time.time,
        every: int = 1,
    ) -> None:
        self.r = client
        self.feed = feed
        self.window_s = max(1, int(window_s))
        self.flush_s = flush_s
        self.clock = clock
        self.every = max(1, int(every))
        self.pending: dict[tuple[str, int], profiles.Profile] = {}
        self._last_flush = clock()
        self.seconds = 0.0  # time spent profiling (for the benchmark's share of a tile's cost)

    def add(self, results: Sequence[tuple[Any, TileResult]]) -> None:
        """The committed results of a batch: (entry with its decoded frame, result)."""
        t0 = time.thread_time()
        window = int(self.clock() // self.window_s)
        groups: dict[tuple[str, float | None], list[Any]] = {}
        for entry, result in results:
            frame = getattr(entry, "frame", None)
            if frame is None:
                continue
            if self.every > 1 and zlib.crc32(frame.frame_id.encode()) % self.every:
                continue  # profile one tile in `every`, chosen by its id: a redelivery chooses alike
            groups.setdefault((result.model, frame.nodata), []).append((frame, result))
        for (version, nodata), items in groups.items():
            p = self.pending.setdefault((version, window), profiles.Profile())
            p.add_tiles([f.valid() for f, _ in items], nodata)
            dets = [d for _, result in items for d in result.detections]
            p.add_detections([d.score for d in dets], [d.label for d in dets])
        self.seconds += time.thread_time() - t0
        if self.clock() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Add what is pending to Redis; on a Redis error it is kept for the next flush."""
        self._last_flush = self.clock()
        if not self.pending:
            return
        pipe = self.r.pipeline(transaction=False)
        for (version, window), p in self.pending.items():
            key = keys.profile(self.feed, version, window)
            ints, floats = profiles.to_fields(p)
            for k, v in ints.items():
                pipe.hincrby(key, k, v)
            for k, fv in floats.items():
                pipe.hincrbyfloat(key, k, fv)
            pipe.expire(key, KEEP_S)
            pipe.zadd(keys.profile_index(self.feed), {f"{window}|{version}": window})
        try:
            pipe.execute()
        except redis.RedisError as e:
            log.warning("profiles not flushed now (%s); kept for the next flush", e)
            return
        self.pending.clear()
