"""The consumer loop: frames in, one AI.DAGEXECUTE per frame, results and XACK in one MULTI.

Delivery: at least once from the stream, exactly once in the results. A frame's result is
published in the same MULTI/EXEC that acknowledges it and sets its marker
``keys.frame_done(feed, frame, model version)``; the transaction runs under WATCH of those
markers and of the scenes' tile hashes, so two consumers racing on the same frame (a reclaimed
entry whose first consumer was only slow) or on the last two tiles of a scene cannot both
publish: one EXEC aborts and the retry sees the other's work. A crash before EXEC leaves the
entry pending, and it is processed again (by this consumer on restart, or by another through
XAUTOCLAIM); a crash after EXEC leaves nothing to do.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import redis

from consumers import ConsumerError
from consumers.geo import check_crs, decode_output, georeference
from consumers.merge import merge
from groundwatch import ai, frames, keys, modelmeta
from groundwatch.detections import (
    Detection,
    DetectionFormatError,
    SceneResult,
    TileResult,
    decode_tile,
    encode_scene,
    encode_tile,
    scene_json,
    tile_json,
)
from groundwatch.frames import Frame, FrameError
from groundwatch.modelmeta import ModelMetadata
from groundwatch.settings import DEFAULT_SCORE_THRESHOLD, Settings
from groundwatch.status import THROUGHPUT_SAMPLES

log = logging.getLogger("groundwatch.consumers")

LATENCY_SAMPLES = 1000  # recent latencies kept in keys.latency
RETRY_DELAY_S = 0.25  # pause before frames that failed are tried again
RESULTS_MAXLEN = 100_000  # approximate cap of the detections and scenes streams


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _raw(response: Any, **_options: Any) -> Any:
    return response


@dataclass
class Entry:
    """One frames-stream entry as read: fields None when the entry was deleted (trimmed)."""

    id: str
    fields: dict[bytes, bytes] | None
    deliveries: int = 1
    frame: Frame | None = None


@dataclass
class RunStats:
    """What one consumer did (also kept, feed-wide, in keys.stats)."""

    frames_done: int = 0
    detections: int = 0
    dead: int = 0
    scenes_done: int = 0
    duplicates: int = 0
    retries: int = 0
    conflicts: int = 0
    batches: int = 0
    reasons: list[str] = field(default_factory=list)


class NoActiveModel(ConsumerError):
    """The feed has no active model: frames wait (they are not poison)."""


@dataclass(frozen=True)
class ActiveModel:
    version: str  # "name:version"
    key: str


@dataclass
class Started:
    """A batch whose DAGs are in the engine (or, `isolated`, will run one by one)."""

    todo: list[Entry] = field(default_factory=list)
    dead: list[tuple[Entry, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    model: ActiveModel | None = None
    isolated: bool = False
    inflight: ai.InFlight | None = None


class Consumer:
    """One member of the feed's consumer group. `run()` until `stop()` (or drained, in burst mode)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        burst: bool = False,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConsumerError(
                "the consumer needs a Redis client with decode_responses=False (frames are bytes)"
            )
        self.settings = settings
        self.feed = keys.check_name("feed", settings.feed)
        self.group = settings.group
        self.name = settings.consumer
        self.burst = burst
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        # Our own client object on the same pool, so raw reply parsing does not leak to the caller's.
        self.r = redis.Redis(connection_pool=client.connection_pool)
        for command in ("XREADGROUP", "XAUTOCLAIM", "XPENDING"):
            self.r.set_response_callback(command, _raw)
        self.stream = keys.frames(self.feed)
        self.route = keys.dag_routing(self.feed)
        self.stats = RunStats()
        self._stop = threading.Event()
        self._meta: dict[str, ModelMetadata | None] = {}
        self._retry_own = False
        self._claim_cursor = "0-0"
        self._last_claim = 0.0
        self._ahead: Started | None = None

    # --- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in flight, acknowledge it, and return from run()."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self.r.sadd(keys.feeds(), self.feed)

    def run(self) -> RunStats:
        """Own pending entries first, then new ones and reclaimed ones, until stopped or drained."""
        backoff = 0.1
        first = True
        while not self.stopping:
            try:
                if first:
                    self.ensure_group()
                    self._drain_own()
                    first = False
                busy = self._step()
                backoff = 0.1
                if not busy and self.burst:
                    break
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                    raise
                # the stream or its group vanished (deleted, or a restart without persistence)
                log.warning("consumer %s: %s; creating the group again", self.name, e)
                self._abandon()
                first = True
            except (redis.ConnectionError, redis.TimeoutError) as e:
                # Redis went away (restart, failover): nothing unacknowledged is lost; it is
                # still pending for us, so start over with our own pending entries.
                log.warning(
                    "consumer %s: Redis connection lost (%s); retrying in %.1fs", self.name, e, backoff
                )
                self._abandon()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                first = True
        try:
            self._flush()  # stopped: finish the batch in flight
        except (redis.ConnectionError, redis.TimeoutError):
            self._abandon()
        return self.stats

    def _flush(self) -> None:
        """Finish the batch read ahead, if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._finish(ahead)

    def _abandon(self) -> None:
        """Forget the batch read ahead (its entries stay pending for us: we start over from those)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.inflight is not None:
            ahead.inflight.abandon()

    def _step(self) -> bool:
        """One unit of work; False when there was nothing to do."""
        if self._ahead is not None and (self._retry_own or self.stopping):
            self._flush()
            return True
        if self._retry_own:
            self._retry_own = False
            self._stop.wait(RETRY_DELAY_S)
            self._drain_own()
            return True
        now = time.monotonic()
        if now - self._last_claim >= self.settings.claim_idle_ms / 2000.0:
            claimed = self._autoclaim()
            if claimed and self._ahead is not None:
                # XAUTOCLAIM also returns our own read-ahead entries when finishing the previous
                # batch took longer than claim_idle_ms; they are finished by the flush below.
                mine = {e.id for e in self._ahead.todo}
                claimed = [e for e in claimed if e.id not in mine]
            if claimed:
                self._flush()
                self._process(claimed)
                return True
        # Read ahead: the next batch's DAGs go to the engine before this batch is published, so
        # the engine is not idle while the consumer georeferences, merges and commits.
        batch = self._read(">", None if self.burst or self._ahead else self.settings.block_ms)
        if batch:
            try:
                started = self._start(batch)
            finally:
                self._flush()
            self._ahead = started
            return True
        if self._ahead is not None:
            self._flush()
            return True
        claimed = self._autoclaim()
        if claimed:
            self._process(claimed)
            return True
        if self._retry_own:
            return True
        return False

    # --- reading -----------------------------------------------------------------------------

    @staticmethod
    def _entries(raw: Sequence[Any] | None) -> list[Entry]:
        out = []
        for item in raw or ():
            if item is None:
                continue
            fields = None if item[1] is None else dict(zip(item[1][::2], item[1][1::2], strict=True))
            out.append(Entry(_text(item[0]), fields))
        return out

    def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.name, "COUNT", self.settings.read_count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self.stream, start]
        reply = self.r.execute_command(*args)
        if not reply:
            return []
        entries = self._entries(reply[0][1])
        if start != ">":
            self._fill_deliveries(entries)
        return entries

    def _fill_deliveries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        ids = [e.id for e in entries]
        reply = self.r.execute_command(
            "XPENDING",
            self.stream,
            self.group,
            min(ids, key=_id_key),
            max(ids, key=_id_key),
            len(ids) * 4 + 16,
            self.name,
        )
        counts = {_text(row[0]): int(row[3]) for row in reply or ()}
        for e in entries:
            e.deliveries = counts.get(e.id, e.deliveries)

    def _drain_own(self) -> None:
        """Our own pending entries (XREADGROUP from id 0), read forward until none is left."""
        last = "0"
        while not self.stopping:
            batch = self._read(last, None)
            if not batch:
                return
            last = batch[-1].id
            self._process(batch)

    def _autoclaim(self) -> list[Entry]:
        """Entries idle on other (dead) consumers for claim_idle_ms, now ours."""
        self._last_claim = time.monotonic()
        reply = self.r.execute_command(
            "XAUTOCLAIM",
            self.stream,
            self.group,
            self.name,
            self.settings.claim_idle_ms,
            self._claim_cursor,
            "COUNT",
            self.settings.read_count,
        )
        self._claim_cursor = _text(reply[0])
        entries = self._entries(reply[1])
        if entries:
            log.info("consumer %s: reclaimed %d idle entries", self.name, len(entries))
            self._fill_deliveries(entries)
        return entries

    # --- the model ---------------------------------------------------------------------------

    def active_model(self) -> ActiveModel | None:
        """The feed's active model version (one GET; read again for every batch)."""
        raw = self.r.get(keys.active_model(self.feed))
        if raw is None:
            return None
        text = _text(raw)
        name, _, version = text.rpartition(":")
        try:
            return ActiveModel(text, keys.model(self.feed, name, int(version.lstrip("v"))))
        except (ValueError, Exception) as e:  # a malformed pointer is an operator's mistake: wait
            log.error("feed %s: active model pointer %r is not name:version (%s)", self.feed, text, e)
            return None

    def _wait_for_model(self) -> ActiveModel:
        warned = False
        while True:
            model = self.active_model()
            if model is not None:
                return model
            if self.burst:
                raise NoActiveModel(
                    f"feed {self.feed} has no active model ({keys.active_model(self.feed)} is not set); "
                    "frames stay pending. Load one with `groundwatch load MODEL.pt --feed "
                    f"{self.feed}`, then run again"
                )
            if not warned:
                log.warning("feed %s: no active model yet; frames wait", self.feed)
                warned = True
            if self._stop.wait(self.settings.block_ms / 1000.0):
                raise NoActiveModel("stopped while waiting for an active model")

    def metadata(self, model: ActiveModel) -> ModelMetadata | None:
        """The model's groundwatch.json (read once per model key from AI.MODELGET BLOB)."""
        if model.key not in self._meta:
            meta: ModelMetadata | None = None
            try:
                meta = modelmeta.read(ai.model_blob(self.r, model.key), f"model {model.version}")
            except (ai.EngineError, modelmeta.MetadataError) as e:
                log.warning("model %s: no usable metadata (%s); classes shown as class<id>", model.version, e)
            self._meta[model.key] = meta
        return self._meta[model.key]

    def labels(self, model: ActiveModel) -> tuple[str, ...]:
        """Class names from the model's metadata; empty when it declares none."""
        meta = self.metadata(model)
        return meta.classes if meta is not None else ()

    def threshold(self, model: ActiveModel) -> float:
        """The operator's --score-threshold, else the model's own hint, else the default."""
        if self.settings.score_threshold is not None:
            return self.settings.score_threshold
        meta = self.metadata(model)
        if meta is not None and meta.score_threshold_hint is not None:
            return meta.score_threshold_hint
        return DEFAULT_SCORE_THRESHOLD

    # --- processing --------------------------------------------------------------------------

    def _process(self, batch: list[Entry]) -> None:
        """A batch from start to finish (frames that were read again, reclaimed ones...)."""
        started = self._start(batch)
        if started is not None:
            self._finish(started)

    def _start(self, batch: list[Entry]) -> Started | None:
        """Sort out what cannot run, read the active model, put the batch's DAGs in the engine.

        None when stopped while waiting for a model (the entries stay pending)."""
        self.stats.batches += 1
        started = Started()
        for e in batch:
            if e.fields is None:
                started.deleted.append(e.id)
                continue
            if e.deliveries > self.settings.max_deliveries:
                started.dead.append(
                    (
                        e,
                        f"delivered {e.deliveries} times (max_deliveries "
                        f"{self.settings.max_deliveries}): it failed, or its consumer died, every time",
                    )
                )
                continue
            try:
                e.frame = frames.decode(e.fields)
                check_crs(e.frame.crs)
            except (FrameError, ConsumerError) as err:
                started.dead.append((e, f"bad frame: {err}"))
                continue
            started.todo.append(e)
        if started.todo:
            try:
                started.model = self._wait_for_model()
            except NoActiveModel:
                if self.stopping and not self.burst:
                    return None  # entries stay pending; whoever runs next picks them up
                raise
            # Frames that failed before run alone (in _finish), so a poison frame that broke a
            # whole engine batch does not take its batch-mates to the dead letters with it.
            started.isolated = any(e.deliveries > 1 for e in started.todo)
            if not started.isolated:
                started.inflight = ai.send_concurrently(self.r, self._dags(started.model, started.todo))
        return started

    def _finish(self, started: Started) -> None:
        """Collect the engine's replies, georeference, then publish and XACK (one MULTI)."""
        results: list[tuple[Entry, TileResult]] = []
        dead = started.dead
        if started.todo:
            results, failed = self._infer(started)
            retries = 0
            for e, reason, poison in failed:
                if poison or e.deliveries >= self.settings.max_deliveries:
                    dead.append(
                        (e, reason if poison else f"failed {e.deliveries} times; last error: {reason}")
                    )
                else:
                    retries += 1
                    log.warning(
                        "frame %s (entry %s) failed, will retry: %s",
                        e.frame and e.frame.frame_id,
                        e.id,
                        reason,
                    )
            if retries:
                # left pending: read again (alone) from our own pending entries after a pause
                self.stats.retries += retries
                self._retry_own = True
                self.r.hincrby(keys.stats(self.feed), "retries", retries)
        if results or dead or started.deleted:
            self._commit(results, dead, started.deleted)

    def _infer(
        self, started: Started
    ) -> tuple[list[tuple[Entry, TileResult]], list[tuple[Entry, str, bool]]]:
        """The engine's outputs of a started batch, decoded; (results, [(entry, reason, poison)])."""
        todo, model, isolated = started.todo, started.model, started.isolated
        assert model is not None
        models: list[ActiveModel] = [model] * len(todo)
        if started.inflight is not None:
            inflight, started.inflight = started.inflight, None
            outputs = _outputs(inflight.replies())
        else:
            outputs = self._run_dags(model, todo, isolated)
        missing = [i for i, o in enumerate(outputs) if isinstance(o, ai.DagError) and o.model_missing]
        if missing:
            # The version was removed under us (a switch in progress): read the pointer again, once.
            again = self.active_model()
            if again is not None:
                log.info(
                    "feed %s: model %s is gone; retrying %d frames with %s",
                    self.feed,
                    model.version,
                    len(missing),
                    again.version,
                )
                rerun = self._run_dags(again, [todo[i] for i in missing], isolated)
                for i, out in zip(missing, rerun, strict=True):
                    outputs[i] = out
                    models[i] = again
        failed: list[tuple[Entry, str, bool]] = []
        ok: list[tuple[int, np.ndarray]] = []
        for i, out in enumerate(outputs):
            if isinstance(out, ai.DagError):
                failed.append((todo[i], f"engine: {out}", _is_poison(out)))
                continue
            try:
                ok.append((i, decode_output(out, self.threshold(models[i]))))
            except ConsumerError as err:
                failed.append((todo[i], f"model {models[i].version}: {err}", False))
        results: list[tuple[Entry, TileResult]] = []
        by_model: dict[ActiveModel, list[tuple[int, np.ndarray]]] = {}
        for i, rows in ok:
            by_model.setdefault(models[i], []).append((i, rows))
        for m, items in by_model.items():
            labels = self.labels(m)
            try:
                pairs = [(todo[i].frame, rows) for i, rows in items]
                located: list[list[Detection] | ConsumerError] = list(
                    georeference(pairs, labels, m.version)  # type: ignore[arg-type]
                )
            except ConsumerError:  # find the frame(s) at fault, one by one
                located = []
                for i, rows in items:
                    try:
                        located.extend(georeference([(todo[i].frame, rows)], labels, m.version))  # type: ignore[list-item]
                    except ConsumerError as err:
                        located.append(err)
            for (i, _rows), dets in zip(items, located, strict=True):
                f = todo[i].frame
                assert f is not None
                if isinstance(dets, ConsumerError):
                    failed.append((todo[i], f"cannot georeference: {dets}", True))
                    continue
                results.append(
                    (
                        todo[i],
                        TileResult(
                            feed=self.feed,
                            frame=f.frame_id,
                            scene=f.scene,
                            tile=f.tile,
                            tiles=f.tiles,
                            model=m.version,
                            crs=f.crs,
                            window=tuple(f.window),  # type: ignore[arg-type]
                            acquired=frames.format_time(f.acquired),
                            published_ms=f.published_ms,
                            done_ms=0,
                            detections=tuple(dets),
                        ),
                    )
                )
        results.sort(key=lambda pair: _id_key(pair[0].id))
        return results, failed

    def _dags(self, model: ActiveModel, entries: Sequence[Entry]) -> list[list[Any]]:
        return [
            ai.dag_command(model.key, self.route, e.frame.array()[np.newaxis])  # type: ignore[union-attr]
            for e in entries
        ]

    def _run_dags(
        self, model: ActiveModel, entries: Sequence[Entry], isolated: bool = False
    ) -> list[np.ndarray | ai.DagError]:
        """All DAGs at once (the engine batches them), or one after the other when `isolated`."""
        commands = self._dags(model, entries)
        if isolated:
            return _outputs([ai.execute_concurrently(self.r, [c])[0] for c in commands])
        return _outputs(ai.execute_concurrently(self.r, commands))

    # --- publishing --------------------------------------------------------------------------

    def _commit(
        self,
        results: list[tuple[Entry, TileResult]],
        dead: list[tuple[Entry, str]],
        deleted: list[str],
    ) -> None:
        """Publish, dead-letter and XACK the batch in one MULTI/EXEC (under WATCH; retried on conflict)."""
        feed = self.feed
        ttl = self.settings.scene_ttl_s
        markers = [keys.frame_done(feed, r.frame, r.model) for _, r in results]
        dead_markers = [keys.dead_marker(feed, e.id) for e, _ in dead]
        scene_keys = sorted({keys.scene_tiles(feed, r.scene) for _, r in results})
        for attempt in itertools.count():
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    watched = [*markers, *dead_markers, *scene_keys]
                    if watched:
                        pipe.watch(*watched)
                    flags = pipe.mget(markers + dead_markers) if markers or dead_markers else []
                    already = {k for k, v in zip(markers + dead_markers, flags, strict=True) if v is not None}
                    fresh: list[tuple[Entry, TileResult]] = []
                    duplicates: list[Entry] = []
                    seen: set[str] = set()
                    for (e, r), marker in zip(results, markers, strict=True):
                        if marker in already or marker in seen:
                            duplicates.append(e)
                        else:
                            seen.add(marker)
                            fresh.append((e, r))
                    dead_now = [
                        (e, why) for (e, why), m in zip(dead, dead_markers, strict=True) if m not in already
                    ]
                    now = self.clock_ms()
                    fresh = [(e, replace(r, done_ms=now)) for e, r in fresh]
                    completions = self._completions(pipe, fresh, now)

                    pipe.multi()
                    detections = 0
                    for (e, r), marker in zip(
                        fresh, [keys.frame_done(feed, r.frame, r.model) for _, r in fresh], strict=True
                    ):
                        text = tile_json(r)
                        pipe.set(marker, e.id, ex=ttl)
                        pipe.xadd(
                            keys.detections(feed),
                            encode_tile(r, text),
                            maxlen=RESULTS_MAXLEN,
                            approximate=True,
                        )
                        pipe.publish(keys.detections(feed), text)
                        pipe.hset(keys.scene_tiles(feed, r.scene), str(r.tile), text)
                        pipe.expire(keys.scene_tiles(feed, r.scene), ttl)
                        pipe.lpush(keys.latency(feed), max(0, now - r.published_ms))
                        detections += len(r.detections)
                    for s in completions:
                        text = scene_json(s)
                        pipe.set(keys.scene_result(feed, s.scene), text, ex=ttl)
                        pipe.xadd(
                            keys.scenes(feed), encode_scene(s, text), maxlen=RESULTS_MAXLEN, approximate=True
                        )
                        pipe.publish(keys.scenes(feed), text)
                        pipe.delete(keys.scene_tiles(feed, s.scene))
                    for e, why in dead_now:
                        assert e.fields is not None
                        letter: dict[Any, Any] = {
                            "dead_reason": why,
                            "dead_id": e.id,
                            "dead_consumer": self.name,
                            "dead_deliveries": str(e.deliveries),
                            "dead_ms": str(now),
                        }
                        letter.update({k: v for k, v in e.fields.items() if _text(k) not in letter})
                        pipe.xadd(keys.dead_letters(feed), letter)
                        pipe.set(keys.dead_marker(feed, e.id), why, ex=ttl)
                    ids = [e.id for e, _ in results] + [e.id for e, _ in dead] + deleted
                    if ids:
                        pipe.xack(self.stream, self.group, *ids)
                    stats = keys.stats(feed)
                    for name, n in (
                        ("frames_done", len(fresh)),
                        ("detections", detections),
                        ("dead", len(dead_now)),
                        ("scenes_done", len(completions)),
                        ("duplicates", len(duplicates)),
                        ("deleted", len(deleted)),
                    ):
                        if n:
                            pipe.hincrby(stats, name, n)
                    if fresh:
                        pipe.ltrim(keys.latency(feed), 0, LATENCY_SAMPLES - 1)
                        pipe.lpush(keys.throughput(feed), f"{now} {len(fresh)}")
                        pipe.ltrim(keys.throughput(feed), 0, THROUGHPUT_SAMPLES - 1)
                    pipe.execute()
                except redis.WatchError:
                    self.stats.conflicts += 1
                    if attempt and attempt % 50 == 0:
                        log.warning(
                            "consumer %s: %d WATCH conflicts publishing one batch", self.name, attempt
                        )
                    continue
            break
        self.stats.frames_done += len(fresh)
        self.stats.detections += detections
        self.stats.dead += len(dead_now)
        self.stats.scenes_done += len(completions)
        self.stats.duplicates += len(duplicates)
        for e, why in dead_now:
            self.stats.reasons.append(why)
            log.warning("entry %s -> dead letters: %s", e.id, why)

    def _completions(self, pipe: Any, fresh: list[tuple[Entry, TileResult]], now: int) -> list[SceneResult]:
        """Scenes that this batch completes (read under WATCH, so exactly one batch completes each)."""
        by_scene: dict[str, list[TileResult]] = {}
        for _, r in fresh:
            by_scene.setdefault(r.scene, []).append(r)
        out = []
        for scene, new in sorted(by_scene.items()):
            key = keys.scene_tiles(self.feed, scene)
            have = {int(_text(t)) for t in pipe.hkeys(key) if _text(t).isdigit()}
            tiles = max(r.tiles for r in new)
            indices = have | {r.tile for r in new}
            if not all(i in indices for i in range(tiles)):
                continue
            by_tile: dict[int, TileResult] = {}
            for t, text in pipe.hgetall(key).items():
                try:
                    by_tile[int(_text(t))] = decode_tile(text)
                except (DetectionFormatError, ValueError) as e:  # not ours: someone wrote the hash by hand
                    log.error("scene %s: stored tile %r does not decode (%s); merged without it", scene, t, e)
            for r in new:
                by_tile[r.tile] = r
            parts = [by_tile[i] for i in range(tiles) if i in by_tile]
            dets = [d for p in parts for d in p.detections]
            out.append(
                SceneResult(
                    feed=self.feed,
                    scene=scene,
                    tiles=tiles,
                    models=tuple(sorted({p.model for p in parts})),
                    crs=parts[0].crs,
                    acquired=parts[0].acquired,
                    done_ms=now,
                    detections_in=len(dets),
                    detections=tuple(merge(dets)),
                )
            )
        return out


def _outputs(replies: Sequence[Any]) -> list[np.ndarray | ai.DagError]:
    out: list[np.ndarray | ai.DagError] = []
    for reply in replies:
        try:
            out.append(ai.dag_result(reply))
        except ai.DagError as e:
            out.append(e)
    return out


_TENSOR_ERRORS = ("data length", "invalid data type", "tensor shape", "invalid value", "blob")


def _is_poison(err: ai.DagError) -> bool:
    """The engine refused the tile itself (its TENSORSET): no retry will change that."""
    text = str(err).lower()
    return err.op == 0 or (err.op == -1 and any(t in text for t in _TENSOR_ERRORS))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
